"""Axis-aligned box arithmetic.

Every box in this module is float32 `(x0, y0, x1, y1)` in absolute pixels (COCO/torchvision
order), with `x0 <= x1`, `y0 <= y1` for a real box. Width is `x1 - x0` (no "+1", the
detectron2/torchvision convention since 2019), so a box covering pixels 0..9 is
`(0, 0, 10, 10)`: pixel `i` spans `[i, i + 1)` and its centre is `i + 0.5`.

All functions are pure, shape-static and broadcast over leading dimensions.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax.numpy as jnp

# detectron2's default: exp(dw) may scale an anchor by at most 1000/16 = 62.5x. Without it a
# wild early-training logit overflows exp() and puts Inf/NaN in the loss.
DEFAULT_SCALE_CLAMP = math.log(1000.0 / 16)

# Degenerate (zero-size) boxes appear as padding. Encoding against them would divide by zero
# or take log(0); clamping sizes to this keeps every delta finite. Such entries are masked out
# by their `valid` flag downstream, so the exact value never matters, only its finiteness.
_MIN_SIZE = 1e-6


def box_area(boxes: jnp.ndarray) -> jnp.ndarray:
  """Area of `(x0, y0, x1, y1)` boxes.

  Args:
    boxes: float32 `[..., 4]`, `(x0, y0, x1, y1)` absolute pixels.

  Returns:
    float32 `[...]`. Inverted boxes (x1 < x0 or y1 < y0) have area 0, never negative.
  """
  w = jnp.maximum(boxes[..., 2] - boxes[..., 0], 0.0)
  h = jnp.maximum(boxes[..., 3] - boxes[..., 1], 0.0)
  return w * h


def box_centers(boxes: jnp.ndarray) -> jnp.ndarray:
  """Centres of `(x0, y0, x1, y1)` boxes.

  Args:
    boxes: float32 `[..., 4]`.

  Returns:
    float32 `[..., 2]` as `(cx, cy)`.
  """
  return jnp.stack([(boxes[..., 0] + boxes[..., 2]) * 0.5,
                    (boxes[..., 1] + boxes[..., 3]) * 0.5], axis=-1)


def pairwise_intersection(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
  """Intersection areas of every box of `a` with every box of `b`.

  Args:
    a: float32 `[N, 4]`, b: float32 `[M, 4]`, both `(x0, y0, x1, y1)`.

  Returns:
    float32 `[N, M]`, >= 0.
  """
  x0 = jnp.maximum(a[:, None, 0], b[None, :, 0])
  y0 = jnp.maximum(a[:, None, 1], b[None, :, 1])
  x1 = jnp.minimum(a[:, None, 2], b[None, :, 2])
  y1 = jnp.minimum(a[:, None, 3], b[None, :, 3])
  return jnp.maximum(x1 - x0, 0.0) * jnp.maximum(y1 - y0, 0.0)


def pairwise_iou(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
  """Intersection over union of every box of `a` with every box of `b`.

  Args:
    a: float32 `[N, 4]`, b: float32 `[M, 4]`, both `(x0, y0, x1, y1)` absolute pixels.

  Returns:
    float32 `[N, M]` in [0, 1]. A pair whose union is empty (two zero-area boxes, e.g.
    padding) has IoU 0, never NaN, so padding can never look like a match.
  """
  inter = pairwise_intersection(a, b)
  union = box_area(a)[:, None] + box_area(b)[None, :] - inter
  # Double `where` so the untaken 0/0 branch cannot leak NaN into gradients either.
  safe_union = jnp.where(union > 0, union, 1.0)
  return jnp.where(union > 0, inter / safe_union, 0.0)


def _sizes_and_centers(boxes: jnp.ndarray):
  w = boxes[..., 2] - boxes[..., 0]
  h = boxes[..., 3] - boxes[..., 1]
  cx = boxes[..., 0] + 0.5 * w
  cy = boxes[..., 1] + 0.5 * h
  return w, h, cx, cy


def encode_boxes(boxes: jnp.ndarray, anchors: jnp.ndarray,
                 weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0)) -> jnp.ndarray:
  """Regression targets that turn `anchors` into `boxes` (detectron2 `Box2BoxTransform`).

  `dx = wx * (cx_box - cx_anchor) / w_anchor`, `dy` likewise,
  `dw = ww * log(w_box / w_anchor)`, `dh` likewise.

  Args:
    boxes: float32 `[..., 4]` targets, `(x0, y0, x1, y1)` absolute pixels.
    anchors: float32 `[..., 4]` reference boxes (anchors or proposals), broadcastable.
    weights: `(wx, wy, ww, wh)`; (1, 1, 1, 1) for the RPN, (10, 10, 5, 5) for the box head.

  Returns:
    float32 `[..., 4]` deltas `(dx, dy, dw, dh)`. Zero-size boxes or anchors (padding) give
    finite but meaningless deltas; mask them with their `valid` flag.
  """
  wx, wy, ww, wh = weights
  aw, ah, acx, acy = _sizes_and_centers(anchors)
  bw, bh, bcx, bcy = _sizes_and_centers(boxes)
  aw = jnp.maximum(aw, _MIN_SIZE)
  ah = jnp.maximum(ah, _MIN_SIZE)
  dx = wx * (bcx - acx) / aw
  dy = wy * (bcy - acy) / ah
  dw = ww * jnp.log(jnp.maximum(bw, _MIN_SIZE) / aw)
  dh = wh * jnp.log(jnp.maximum(bh, _MIN_SIZE) / ah)
  return jnp.stack([dx, dy, dw, dh], axis=-1)


def decode_deltas(deltas: jnp.ndarray, anchors: jnp.ndarray,
                  weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
                  scale_clamp: float = DEFAULT_SCALE_CLAMP) -> jnp.ndarray:
  """Applies `(dx, dy, dw, dh)` deltas to `anchors`; the inverse of `encode_boxes`.

  Args:
    deltas: float32 `[..., 4]` `(dx, dy, dw, dh)` (as predicted, i.e. still weighted).
    anchors: float32 `[..., 4]` `(x0, y0, x1, y1)` absolute pixels, broadcastable.
    weights: the `(wx, wy, ww, wh)` used by `encode_boxes`.
    scale_clamp: `dw / ww` and `dh / wh` are clamped to at most this before `exp`, so a box
      can grow at most `exp(scale_clamp)` times its anchor (detectron2 default 1000/16).

  Returns:
    float32 `[..., 4]` boxes `(x0, y0, x1, y1)` absolute pixels (not clipped to the image).
  """
  wx, wy, ww, wh = weights
  aw, ah, acx, acy = _sizes_and_centers(anchors.astype(jnp.float32))
  deltas = deltas.astype(jnp.float32)
  dx = deltas[..., 0] / wx
  dy = deltas[..., 1] / wy
  dw = jnp.minimum(deltas[..., 2] / ww, scale_clamp)
  dh = jnp.minimum(deltas[..., 3] / wh, scale_clamp)
  cx = dx * aw + acx
  cy = dy * ah + acy
  w = jnp.exp(dw) * aw
  h = jnp.exp(dh) * ah
  return jnp.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], axis=-1)


def scale_boxes(boxes: jnp.ndarray, scale: float) -> jnp.ndarray:
  """Boxes [..., 4] (x0, y0, x1, y1) scaled by `scale` about their centres (same shape and
  dtype; `scale` = 1 returns `boxes` itself). Not clipped: a frame may reach past the image,
  where RoIAlign reads zeros and pasting drops the outside."""
  if scale == 1.0:
    return boxes
  c = (boxes[..., :2] + boxes[..., 2:]) / 2
  half = (boxes[..., 2:] - boxes[..., :2]) * (scale / 2)
  return jnp.concatenate([c - half, c + half], axis=-1)


def clip_boxes(boxes: jnp.ndarray, height, width) -> jnp.ndarray:
  """Clips `(x0, y0, x1, y1)` boxes to the image `[0, width] x [0, height]`.

  Args:
    boxes: float32 `[..., 4]` absolute pixels.
    height, width: image size in pixels; Python numbers or (traced) scalars, or arrays that
      broadcast against `boxes[..., 0]` (e.g. per-image sizes `[B, 1]` for `[B, N, 4]`).

  Returns:
    float32 `[..., 4]`; x in [0, width], y in [0, height] (torchvision/detectron2 clamp to the
    size itself, not size - 1, because a box edge lies between pixels).
  """
  x0 = jnp.clip(boxes[..., 0], 0, width)
  y0 = jnp.clip(boxes[..., 1], 0, height)
  x1 = jnp.clip(boxes[..., 2], 0, width)
  y1 = jnp.clip(boxes[..., 3], 0, height)
  return jnp.stack([x0, y0, x1, y1], axis=-1).astype(boxes.dtype)
