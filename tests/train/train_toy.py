"""A tiny Task for the training-system tests: a 2-layer conv net predicting per-pixel
foreground (`labels > 0`) on small synthetic nuclei images, plus a fake aux term."""

from __future__ import annotations

import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from pa_jax.data import pipeline  # noqa: E402
from pa_jax.data.synthetic import synthetic_image  # noqa: E402
from pa_jax.train.task import Task  # noqa: E402

CANVAS = 32


class ToyNet(nn.Module):

  @nn.compact
  def __call__(self, x):
    offset = self.variable("consts", "offset", lambda: jnp.full((), 0.1, jnp.float32))
    x = nn.Conv(4, (3, 3), name="conv1")(x)
    x = nn.GroupNorm(num_groups=2, name="norm")(x)
    x = nn.relu(x)
    x = nn.Conv(1, (1, 1), name="conv2")(x)
    return x[..., 0] + offset.value


def toy_task(evaluate=None, noise: bool = True) -> Task:
  model = ToyNet()

  def init(rng, batch):
    return model.init(rng, jnp.asarray(batch.image))

  def loss_fn(params, variables, batch, rng):
    logits = model.apply({"params": params, **variables}, batch.image)
    # rng matters (a per-step random logit scale) so that resume must reproduce it
    if noise:
      logits = logits * (1.0 + 0.05 * jax.random.normal(rng, ()))
    target = (batch.labels > 0).astype(jnp.float32)
    per_px = jnp.maximum(logits, 0) - logits * target + jnp.log1p(jnp.exp(-jnp.abs(logits)))
    fg_loss = jnp.mean(jnp.mean(per_px, axis=(1, 2)))
    reg_loss = 1e-3 * sum(jnp.sum(p ** 2) for p in jax.tree.leaves(params) if p.ndim > 1)
    aux = {"fg_loss": fg_loss, "reg_loss": reg_loss, "fg_fraction": jnp.mean(target)}
    return fg_loss + reg_loss, aux

  return Task(init=init, loss_fn=loss_fn, evaluate=evaluate)


def toy_examples(n: int = 8, size: int = 40, seed: int = 0) -> list:
  out = []
  for i in range(n):
    img, lab = synthetic_image(seed * 1000 + i, size, size, n_nuclei=4, radius=(3, 6))
    out.append(pipeline.TrainExample(f"toy{i}", pipeline.normalize_image(img), lab, None))
  return out


class NaNSource:
  """Wraps a BatchSource; the batch of step index `nan_index` gets a NaN image."""

  def __init__(self, source, nan_index: int):
    self.source, self.nan_index = source, nan_index

  def batch(self, step):
    b = self.source.batch(step)
    if step == self.nan_index:
      b = b.replace(image=np.full_like(b.image, np.nan))
    return b

  def iterate(self, start_step=0):
    step = start_step
    while True:
      yield self.batch(step)
      step += 1


class SlowSource:
  """Wraps a BatchSource with a per-batch delay (so a test can kill it mid-run)."""

  def __init__(self, source, delay: float):
    self.source, self.delay = source, delay

  def batch(self, step):
    return self.source.batch(step)

  def iterate(self, start_step=0):
    import time

    step = start_step
    while True:
      time.sleep(self.delay)
      yield self.source.batch(step)
      step += 1


def toy_source(global_batch: int = 4, process_index: int = 0, process_count: int = 1,
               seed: int = 0, n: int = 8):
  return pipeline.BatchSource(toy_examples(n), global_batch=global_batch, canvas=CANVAS,
                              max_instances=16, seed=seed, process_index=process_index,
                              process_count=process_count)


def toy_config(**train) -> ml_collections.ConfigDict:
  from configs.base import get_config

  c = get_config()
  c.seed = 0
  t = c.train
  t.steps, t.batch_size, t.learning_rate, t.warmup_steps = 8, 4, 0.1, 2
  t.log_every, t.checkpoint_every, t.keep_checkpoints, t.eval_every = 1, 2, 3, 0
  for k, v in train.items():
    t[k] = v
  return c


def flat_params(params) -> dict:
  leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(params))[0]
  return {jax.tree_util.keystr(p): np.asarray(v) for p, v in leaves}
