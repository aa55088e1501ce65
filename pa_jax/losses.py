"""Loss functions: free, weighted, normalised explicitly.

Every function takes per-element `weights` (0 for padding / unsampled elements) and
returns the weighted sum divided by a normaliser, by default max(sum(weights), 1) — so a
batch with no positive sample gives a loss of 0, never NaN. Detection losses are summed
over the whole global batch before normalising (as detectron2 does per batch), which
also makes the data-parallel gradient identical to the single-device one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _kept(x: jax.Array, keep: jax.Array) -> jax.Array:
  """`x` with its masked-out slots replaced by 0 BEFORE any nonlinearity: a `where` on the
  loss alone zeroes the value but not the gradient of a non-finite slot (d/dx of
  |x - inf| is NaN, and NaN · 0 = NaN)."""
  return jnp.where(keep, x, jnp.zeros_like(x))


def _weighted_sum(per: jax.Array, weights: jax.Array) -> jax.Array:
  """sum(per · weights) where a zero weight really removes its element (`where`, not a bare
  product: 0 · inf = NaN). With the inputs cleaned by `_kept`, a non-finite value in a
  masked-out slot (e.g. the box target of a padded or unsampled element) reaches neither
  the loss nor its gradient."""
  return jnp.sum(jnp.where(weights > 0, per * weights, 0.0))


def _normalise(total: jax.Array, weights: jax.Array, normalizer: jax.Array | float | None):
  denom = jnp.sum(weights) if normalizer is None else normalizer
  return total / jnp.maximum(denom, 1.0)


def sigmoid_binary_cross_entropy(logits: jax.Array, targets: jax.Array, weights: jax.Array,
                                 normalizer: jax.Array | float | None = None) -> jax.Array:
  """Weighted mean BCE-with-logits.

  Args:
    logits: float [...]; targets: float/bool [...] in {0, 1} (or soft);
    weights: float/bool [...] broadcastable to logits; normalizer: default sum(weights).
  Returns: float32 scalar.
  """
  logits = logits.astype(jnp.float32)
  targets = targets.astype(jnp.float32)
  weights = jnp.broadcast_to(weights.astype(jnp.float32), logits.shape)
  logits, targets = _kept(logits, weights > 0), _kept(targets, weights > 0)
  # log(1 + exp(-|x|)) form: stable for large |x|.
  per = jnp.maximum(logits, 0) - logits * targets + jnp.log1p(jnp.exp(-jnp.abs(logits)))
  return _normalise(_weighted_sum(per, weights), weights, normalizer)


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array, weights: jax.Array,
                          normalizer: jax.Array | float | None = None) -> jax.Array:
  """Weighted mean softmax cross-entropy.

  Args:
    logits: float [N, C]; labels: int [N] in [0, C); weights: [N]. Returns: scalar.
  """
  weights = weights.astype(jnp.float32)
  logits = _kept(logits.astype(jnp.float32), (weights > 0)[:, None])
  logp = jax.nn.log_softmax(logits, axis=-1)
  nll = -jnp.take_along_axis(logp, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]
  return _normalise(_weighted_sum(nll, weights), weights, normalizer)


def smooth_l1(pred: jax.Array, target: jax.Array, weights: jax.Array, beta: float,
              normalizer: jax.Array | float | None = None) -> jax.Array:
  """Smooth-L1 (Huber with slope 1) summed over the last axis, weighted per element.

  Args:
    pred, target: float [N, 4]; weights: [N]; beta: quadratic zone (0 = plain L1).
    normalizer: default sum(weights) (Fast R-CNN style uses the number *sampled*).
  Returns: scalar.
  """
  weights = weights.astype(jnp.float32)
  keep = (weights > 0)[:, None]
  diff = jnp.abs(_kept(pred.astype(jnp.float32), keep) - _kept(target.astype(jnp.float32), keep))
  if beta > 0:
    per = jnp.where(diff < beta, 0.5 * diff * diff / beta, diff - 0.5 * beta)
  else:
    per = diff
  return _normalise(_weighted_sum(per.sum(-1), weights), weights, normalizer)
