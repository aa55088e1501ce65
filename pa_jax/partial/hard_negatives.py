"""Regions a person rejected ("not a nucleus", `Batch.negative_boxes`) as explicit negatives.

Used with `model.partial.hard_negatives` (the annotation loop): a rejected region is never
a PA box, its centerness cells become 0-targets instead of ignored, and it joins the RoI
candidates as background (`pa_jax.partial.training.extra_rois`). One image per call; vmap
(or `pa_jax.ops.per_device.per_image`) for a batch. Boxes are float32 `(x0, y0, x1, y1)`
absolute canvas pixels.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pa_jax.ops.boxes import pairwise_iou


def negatives_in_centerness(target: jax.Array, neg_boxes: jax.Array, neg_valid: jax.Array,
                            stride: int) -> jax.Array:
  """Ignored centerness cells whose centre lies in a rejected box become negatives (0).

  Args:
    target: int32 `[h, w]` in {-1, 0, 1} (`targets.centerness_targets`).
    neg_boxes: float32 `[N, 4]`; neg_valid: bool `[N]`.
    stride: static stride of the map; cell `(i, j)` has centre `((j + .5) s, (i + .5) s)`.

  Returns:
    int32 `[h, w]`: `target` with -1 -> 0 inside any valid rejected box (half-open box);
    positives and existing negatives unchanged.
  """
  h, w = target.shape
  cx = (jnp.arange(w, dtype=jnp.float32) + 0.5) * stride
  cy = (jnp.arange(h, dtype=jnp.float32) + 0.5) * stride
  inside = ((cx[None, None, :] >= neg_boxes[:, 0, None, None])
            & (cx[None, None, :] < neg_boxes[:, 2, None, None])
            & (cy[None, :, None] >= neg_boxes[:, 1, None, None])
            & (cy[None, :, None] < neg_boxes[:, 3, None, None]) & neg_valid[:, None, None])
  return jnp.where((target < 0) & jnp.any(inside, axis=0), 0, target)


def suppress_near(boxes: jax.Array, valid: jax.Array, neg_boxes: jax.Array,
                  neg_valid: jax.Array, iou_threshold: float) -> jax.Array:
  """`valid` with every box that has IoU >= `iou_threshold` with a valid rejected box off.

  Args:
    boxes: float32 `[K, 4]` (PA boxes); valid: bool `[K]`.
    neg_boxes: float32 `[N, 4]`; neg_valid: bool `[N]`.

  Returns:
    bool `[K]`.
  """
  iou = pairwise_iou(boxes, neg_boxes)
  return valid & ~jnp.any((iou >= iou_threshold) & neg_valid[None, :], axis=1)
