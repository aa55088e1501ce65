"""The mask head on the slots that need it, in fixed-size chunks, with static shapes.

Both stages of Mask R-CNN give the mask head a static number of slots of which only a
prefix is real: at inference `max_detections` NMS slots (about 5 % valid), in training
`roi.batch_per_image * positive_fraction` RoI slots per image, of which only the sampled
positives carry a loss (about 25 of 128 on a dh360 batch at the paper's sizes, see
docs/performance.md). Running the head on every slot is most of the cost of both on a CPU;
these two functions run it on the used chunks only and give the same result as one call
on all slots.

  * `masks_in_chunks` (inference): a `lax.while_loop` over a traced number of chunks. No
    gradient flows through it.
  * `mask_loss_in_chunks` (training): the chunks unrolled, each behind a `lax.cond`. Not a
    loop because the backward pass must hold no loop: under GSPMD the mask head's
    weight-gradient all-reduce would land inside the loop's body (one cross-device round
    trip per turn), which the HLO test in tests/train/ forbids. A `cond` is differentiable
    and its skipped branch computes nothing in either pass; two costs remain: its backward
    pass still returns a gradient for every value the branch closes over, zeros of the whole
    FPN pyramid when skipped (the `cond` ops took 8 ms of the CPU-sized step and 71 ms at
    paper size: bench/results/profile_step_*.json), and on a GPU each `cond` reads
    its predicate back to the host before launching a branch (untimed here).
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp


def _equal_chunks(k: int, chunk: int) -> tuple[int, int]:
  """(number of chunks, slots per chunk) covering `k` slots in chunks of at most `chunk`,
  with the least padding (k 300, chunk 256: 2 x 150, not 2 x 256)."""
  n_chunks = -(-k // max(1, int(chunk)))
  return n_chunks, -(-k // n_chunks)


def masks_in_chunks(
    mask_fn: Callable[[jax.Array], jax.Array], boxes: jax.Array, valid: jax.Array, chunk: int
) -> jax.Array:
  """Runs `mask_fn` on the valid detections only, `chunk` slots at a time.

  Args:
    mask_fn: boxes float32 [B, M, 4] -> float [B, M, ...] (a pure function of arrays; M is
      always ceil(K / ceil(K / chunk)) <= chunk, so it is traced once).
    boxes: float32 [B, K, 4] (x0, y0, x1, y1) canvas pixels, score-sorted (NMS order).
    valid: bool [B, K]; NMS puts the valid detections first.
    chunk: static slots per call (`ModelSpec.mask_batch`).
  Returns:
    [B, K, ...] `mask_fn` outputs; 0 in every invalid slot.

  Only ceil(n / M) calls run (a `lax.while_loop` with a traced trip count), n = the
  last valid slot + 1 over the batch: dense images (2,000 nuclei) get every mask, while a
  typical image (~5 % of 1,000 slots valid) pays for one chunk, not K slots. Counting up to
  the last valid slot rather than summing `valid` keeps this exact even if the valid
  slots were not a prefix. Shapes stay static; the result equals `mask_fn` on all K slots
  wherever `valid` is True.
  """
  b, k = boxes.shape[:2]
  # Equal chunks, so a full image never computes more than K slots.
  n_chunks, m = _equal_chunks(k, chunk)
  boxes = jnp.pad(boxes, ((0, 0), (0, n_chunks * m - k), (0, 0)))
  out = jax.eval_shape(mask_fn, jax.ShapeDtypeStruct((b, m, 4), boxes.dtype))
  n_used = jnp.max(jnp.where(valid, jnp.arange(1, k + 1, dtype=jnp.int32), 0), initial=0)
  todo = (n_used + m - 1) // m

  def body(carry):
    i, acc = carry
    part = mask_fn(jax.lax.dynamic_slice_in_dim(boxes, i * m, m, axis=1))
    acc = jax.lax.dynamic_update_slice_in_dim(acc, part.astype(acc.dtype), i * m, axis=1)
    return i + 1, acc

  acc = jnp.zeros((b, n_chunks * m) + out.shape[2:], out.dtype)
  _, acc = jax.lax.while_loop(lambda c: c[0] < todo, body, (jnp.int32(0), acc))
  keep = valid.reshape(valid.shape + (1,) * (acc.ndim - 2))
  return jnp.where(keep, acc[:, :k], 0).astype(out.dtype)


def mask_loss_in_chunks(
    chunk_loss: Callable[..., jax.Array],
    positive: jax.Array,
    operands: Sequence[jax.Array],
    chunk: int,
) -> jax.Array:
  """sum over chunks k of `chunk_loss(*[x[:, slots of k] for x in operands])`, where only
  the chunks that hold a positive slot in some image run; the rest add 0.

  Args:
    chunk_loss: per-slot arrays [B, M, ...] (one chunk of each operand) -> float32 scalar,
      a loss SUM (not a mean) that is 0 on a chunk with no positive slot: e.g. the mask
      BCE weighted by `positive`. It may close over traced values (the head's parameters);
      their gradients flow through the `lax.cond`.
    positive: bool [B, S]; the slots that carry a loss. Any order works; with the sampler's
      order (positives first) the skipped chunks are exactly the trailing ones.
    operands: arrays [B, S, ...] sliced along the slot axis into chunks (zero-padded: a
      padded slot is not positive, so `chunk_loss` gives it no weight).
    chunk: static slots per call (`ModelSpec.mask_train_chunk`); <= 0 or >= S: one call on
      all S slots, unconditionally (the plain computation).
  Returns:
    float32 scalar: the sum over the computed chunks. It equals `chunk_loss` on all S slots
    at once up to float summation order, as do its gradients.
  """
  s = positive.shape[1]
  if chunk <= 0 or chunk >= s:
    return chunk_loss(*operands)
  n_chunks, m = _equal_chunks(s, chunk)
  pad = n_chunks * m - s
  padded = [jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2)) for x in operands]
  positive = jnp.pad(positive, ((0, 0), (0, pad)))
  skip = lambda *_: jnp.zeros((), jnp.float32)  # noqa: E731
  total = jnp.zeros((), jnp.float32)
  for i in range(n_chunks):  # static, unrolled: no loop in the compiled step
    part = [x[:, i * m : (i + 1) * m] for x in padded]
    run = jnp.any(positive[:, i * m : (i + 1) * m])
    total = total + jax.lax.cond(run, lambda *xs: chunk_loss(*xs).astype(jnp.float32), skip, *part)
  return total
