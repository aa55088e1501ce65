"""The optimiser: SGD with momentum, masked weight decay, clipping, warm-up + schedule.

Built from `config.train`:
  clip_by_global_norm(clip_grad_norm)            (skipped when clip_grad_norm == 0)
  → add_decayed_weights(weight_decay, mask)      (only leaves with ndim > 1: conv/dense
                                                  kernels; never biases, norm scales)
  → sgd(learning_rate_fn, momentum)              (PyTorch/Detectron2 SGD ordering: decay
                                                  is added to the clipped gradient
                                                  before the momentum buffer)

Gradient accumulation (`train.grad_accum = k`) is NOT done here with `optax.MultiSteps`:
`pa_jax.train.step` splits the global batch into k micro-batches and scans over them
inside the single jitted step, then applies the optimiser once. Rationale: one call of
`train_step` is always exactly one optimiser step (the step counter, the learning rate,
checkpoints and logs all count optimiser steps), and `train.batch_size` stays the
effective batch per update; activation memory is that of batch_size / (k · devices).

Learning rate of the update numbered s (0-based, `TrainState.step` before the update):
  warm-up (s < W):  peak · (s + 1) / W     — a line from 0; no update is wasted at lr 0
  then 'constant':  peak
       'cosine':    peak · ½(1 + cos(π · (s − W) / (steps − W)))  (→ 0 at the last step)
       'step':      peak · 0.1^(#milestones ≤ s), milestones ⌊2/3·steps⌋, ⌊8/9·steps⌋
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from pa_jax.errors import InputError

SCHEDULES = ("constant", "cosine", "step")


def learning_rate_fn(train_config) -> Callable[[Any], jax.Array]:
  """`lr(step)`: the learning rate used by the update whose 0-based index is `step`.

  Works on Python ints (for logging) and traced int arrays (inside optax).
  """
  peak = float(train_config.learning_rate)
  warmup = int(train_config.warmup_steps)
  total = int(train_config.steps)
  schedule = str(train_config.schedule)
  if schedule not in SCHEDULES:
    raise InputError("train.schedule", f"{schedule!r} is not one of {', '.join(SCHEDULES)}")
  if warmup < 0:
    raise InputError("train.warmup_steps", f"{warmup} must be >= 0")
  if peak < 0:
    raise InputError("train.learning_rate", f"{peak} must be >= 0")
  milestones = (int(total * 2 / 3), int(total * 8 / 9))

  def lr(step):
    s = jnp.asarray(step, jnp.float32)
    if schedule == "constant":
      after = jnp.asarray(peak, jnp.float32)
    elif schedule == "cosine":
      span = max(total - warmup, 1)
      t = jnp.clip((s - warmup) / span, 0.0, 1.0)
      after = peak * 0.5 * (1.0 + jnp.cos(jnp.pi * t))
    else:  # step
      n = sum((s >= m).astype(jnp.float32) for m in milestones)
      after = peak * jnp.power(0.1, n)
    if warmup > 0:
      warm = peak * (s + 1.0) / warmup
      return jnp.where(s < warmup, warm, after).astype(jnp.float32)
    return jnp.asarray(after, jnp.float32)

  return lr


def learning_rate_at(train_config, step: int) -> float:
  """Host-side float learning rate of the update with 0-based index `step` (for logs)."""
  return float(learning_rate_fn(train_config)(step))


def weight_decay_mask(params: Any) -> Any:
  """True for leaves that get weight decay: weights with ndim > 1 (kernels), not biases,
  norm scales/offsets or other vectors/scalars."""
  return jax.tree.map(lambda p: jnp.ndim(p) > 1, params)


def make_optimizer(train_config, trainable: Callable[[Any], Any] | None = None
                   ) -> optax.GradientTransformation:
  """The optax transformation described in the module docstring.

  `trainable` (`Task.trainable`): params -> bools; leaves marked False (frozen) get no
  weight decay. Their gradient is zero, so with the decay off they never move.
  """
  momentum = float(train_config.momentum)
  wd = float(train_config.weight_decay)
  clip = float(train_config.clip_grad_norm)
  if not 0.0 <= momentum < 1.0:
    raise InputError("train.momentum", f"{momentum} must be in [0, 1)")
  if wd < 0:
    raise InputError("train.weight_decay", f"{wd} must be >= 0")
  if clip < 0:
    raise InputError("train.clip_grad_norm", f"{clip} must be >= 0 (0 disables)")
  if int(train_config.grad_accum) < 1:
    raise InputError("train.grad_accum", f"{train_config.grad_accum} must be >= 1")
  parts = []
  if clip > 0:
    parts.append(optax.clip_by_global_norm(clip))
  if wd > 0:
    mask = weight_decay_mask
    if trainable is not None:
      mask = lambda p: jax.tree.map(lambda a, b: a and b, weight_decay_mask(p), trainable(p))  # noqa: E731
    parts.append(optax.add_decayed_weights(wd, mask=mask))
  parts.append(optax.sgd(learning_rate_fn(train_config), momentum=momentum or None))
  return optax.chain(*parts)
