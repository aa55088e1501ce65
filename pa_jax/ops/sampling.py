"""Fixed-size balanced sampling of positives and negatives (detectron2 `subsample_labels`).

Boolean indexing has a data-dependent shape, so instead every element gets a random priority
and `lax.top_k` picks the highest-priority candidates of each class; counts are kept as traced
scalars and turned into a `valid` mask. Cost: two `top_k` over `M`, i.e. O(M log k).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pa_jax.ops.matching import Assignment


def _top_k_padded(priority: jnp.ndarray, k: int) -> jnp.ndarray:
  """Indices of the k largest priorities; `M < k` is allowed (the tail is filled with index 0)."""
  m = priority.shape[0]
  if k == 0:
    return jnp.zeros((0,), jnp.int32)
  if m >= k:
    return jax.lax.top_k(priority, k)[1].astype(jnp.int32)
  idx = jax.lax.top_k(priority, m)[1].astype(jnp.int32)
  return jnp.concatenate([idx, jnp.zeros((k - m,), jnp.int32)])


def sample_balanced(key: jax.Array, assignment: jnp.ndarray, num_samples: int,
                    positive_fraction: float,
                    valid: jnp.ndarray | None = None) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Samples up to `num_samples` elements, at most `positive_fraction` of them positive.

  Takes `min(#positives, int(num_samples * positive_fraction))` random positives and fills the
  rest with random negatives (as many as exist). IGNORE elements and elements with
  `valid=False` are never sampled. All picks are uniformly random without replacement.

  Args:
    key: `jax.random` key.
    assignment: int `[M]` of `Assignment` values (IGNORE -1, NEGATIVE 0, POSITIVE 1).
    num_samples: static output size (e.g. 256 anchors, 512 RoIs, 128 PA pixels).
    positive_fraction: static cap on the positive share (0.5 RPN, 0.25 RoI heads).
    valid: optional bool `[M]`; False marks padding, which is never sampled.

  Returns:
    `(indices [num_samples] int32, sampled_valid [num_samples] bool)`. The valid entries come
    first: the sampled positives, then the sampled negatives. Invalid entries hold index 0 so
    they are always safe to gather with; weight them by `sampled_valid`.
  """
  m = assignment.shape[0]
  is_pos = assignment == Assignment.POSITIVE
  is_neg = assignment == Assignment.NEGATIVE
  if valid is not None:
    is_pos &= valid.astype(bool)
    is_neg &= valid.astype(bool)
  max_pos = int(num_samples * positive_fraction)  # Python int, like detectron2

  # Uniform priorities in [0, 1); non-candidates get -1 so top_k ranks them last. One shared
  # draw is fine: positives and negatives are disjoint.
  priority = jax.random.uniform(key, (m,), jnp.float32)
  pos_idx = _top_k_padded(jnp.where(is_pos, priority, -1.0), max_pos)
  neg_idx = _top_k_padded(jnp.where(is_neg, priority, -1.0), num_samples)

  num_pos = jnp.minimum(jnp.sum(is_pos, dtype=jnp.int32), max_pos)
  num_neg = jnp.minimum(jnp.sum(is_neg, dtype=jnp.int32), num_samples - num_pos)

  # Slot p holds positive p for p < num_pos, then negative p - num_pos.
  slot = jnp.arange(num_samples, dtype=jnp.int32)
  from_pos = slot < num_pos
  if max_pos > 0:
    pos_pick = pos_idx[jnp.clip(slot, 0, max_pos - 1)]
  else:
    pos_pick = jnp.zeros((num_samples,), jnp.int32)
  neg_pick = neg_idx[jnp.clip(slot - num_pos, 0, num_samples - 1)]
  sampled_valid = slot < num_pos + num_neg
  indices = jnp.where(from_pos, pos_pick, neg_pick)
  indices = jnp.where(sampled_valid, indices, 0).astype(jnp.int32)
  return indices, sampled_valid


def indices_to_mask(indices: jnp.ndarray, indices_valid: jnp.ndarray, size: int) -> jnp.ndarray:
  """Boolean membership mask `[size]` of the valid `indices` (e.g. sampled anchors).

  Args:
    indices: int32 `[K]`; indices_valid: bool `[K]`; size: static length `M` of the mask.

  Returns:
    bool `[size]`, True at every index of a valid entry.
  """
  return jnp.zeros((size,), bool).at[indices].max(indices_valid.astype(bool))
