"""Instance masks: training targets from the label map, and paste-back at inference.

Masks never exist as `N` full-size arrays in a batch: targets are pooled straight from the
instance label map (`label_map == id` is evaluated only at the RoIAlign sample points), and
predictions are rendered into one label map one detection at a time.

Conventions
- Boxes are float32 `(x0, y0, x1, y1)` absolute image pixels; pixel `(y, x)` has its centre
  at `(x + 0.5, y + 0.5)`.
- Mask targets (detectron2 `BitMasks.crop_and_resize` + `mask_rcnn_loss`): RoIAlign with
  `aligned=True` of the 0/1 instance mask over the RoI box onto a `size x size` grid, then
  `>= 0.5` -> hard {0, 1} targets (the loss is BCE on hard targets). `binarize=False` returns
  the soft fractions instead. detectron2 samples adaptively (`ceil(roi / 28)` points per
  bin); here the count is static (`sampling_ratio`, default 2, exact for boxes up to 56 px).
- Paste-back (detectron2 `paste_masks_in_image`, i.e. `grid_sample(align_corners=False)`
  with zero padding): the `S x S` mask cell `j` is centred at `x0 + (j + 0.5) * w / S`; an
  image pixel takes the bilinear interpolation of the mask at its centre, cells outside the
  mask count as 0, and the pixel is foreground when the value is `>= threshold`.
  Zero-width or zero-height boxes paste nothing.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pa_jax.ops.nms import score_order
from pa_jax.ops.roi_align import stacked_taps


def mask_targets(label_map: jnp.ndarray, instance_ids: jnp.ndarray, boxes: jnp.ndarray,
                 size: int = 28, sampling_ratio: int = 2, binarize: bool = True) -> jnp.ndarray:
  """Mask-head targets of RoIs, pooled from the instance label map.

  Args:
    label_map: int `[H, W]` instance labels of one image, 0 = background.
    instance_ids: int `[R]`, label value of the nucleus each RoI is matched to. Ids <= 0
      (background / padding) give all-zero targets.
    boxes: float32 `[R, 4]` `(x0, y0, x1, y1)` absolute pixels (the proposals, not the
      ground-truth boxes, as in Mask R-CNN).
    size: static output side (28).
    sampling_ratio: static sample points per bin and axis.
    binarize: True -> `>= 0.5` hard targets (detectron2); False -> soft fractions.

  Returns:
    float32 `[R, size, size]` in [0, 1]. Memory O(R * size**2), independent of H * W.
  """
  h, w = label_map.shape
  flat = label_map.reshape(-1)
  ids = instance_ids.astype(flat.dtype)
  # One gather of all taps [R, size, size, K] (RoIAlign's own sampling), then the sum.
  index, weight = stacked_taps(boxes, size, 1.0, h, w, sampling_ratio, aligned=True)
  inside = (flat[index] == ids[:, None, None, None]).astype(jnp.float32)
  acc = jnp.sum(weight * inside, axis=-1)
  acc = jnp.where((instance_ids > 0)[:, None, None], acc, 0.0)
  if binarize:
    return (acc >= 0.5).astype(jnp.float32)
  return acc


def _paste_weights(lo, hi, start, n_pixels: int, mask_size: int) -> jnp.ndarray:
  """`[n_pixels, mask_size]` bilinear weights of pixels `start .. start + n - 1` along an axis.

  Row p holds the weights of the (at most two) mask cells interpolated at the pixel centre;
  cells outside `[0, mask_size)` are dropped (zero padding) simply because `one_hot` of an
  out-of-range index is all zeros.
  """
  length = hi - lo
  ok = length > 0
  centre = start + jnp.arange(n_pixels, dtype=jnp.float32) + 0.5
  u = (centre - lo) / jnp.where(ok, length, 1.0) * mask_size - 0.5
  u = jnp.clip(u, -2.0, mask_size + 1.0)  # keeps the int cast defined; taps there are 0
  f = jnp.floor(u)
  frac = (u - f)[:, None]
  i0 = f.astype(jnp.int32)
  weights = ((1.0 - frac) * jax.nn.one_hot(i0, mask_size, dtype=jnp.float32)
             + frac * jax.nn.one_hot(i0 + 1, mask_size, dtype=jnp.float32))
  return jnp.where(ok, weights, 0.0)


def _paste_one(mask: jnp.ndarray, box: jnp.ndarray, y_start, x_start, n_rows: int,
               n_cols: int) -> jnp.ndarray:
  """Probabilities `[n_rows, n_cols]` of one mask pasted into the image window whose top-left
  pixel is `(y_start, x_start)`. Separable: `Wy @ mask @ Wx^T`, O(n_rows * n_cols * S)."""
  s = mask.shape[-1]
  box = box.astype(jnp.float32)
  wy = _paste_weights(box[1], box[3], y_start, n_rows, s)
  wx = _paste_weights(box[0], box[2], x_start, n_cols, s)
  hi = jax.lax.Precision.HIGHEST  # TPU's default bf16 passes would move the 0.5 contour
  return jnp.matmul(jnp.matmul(wy, mask.astype(jnp.float32), precision=hi), wx.T, precision=hi)


def paste_masks_soft(masks: jnp.ndarray, boxes: jnp.ndarray, height: int,
                     width: int) -> jnp.ndarray:
  """Mask probabilities pasted into the image, before thresholding.

  Args:
    masks: float32 `[R, S, S]` probabilities; boxes: float32 `[R, 4]` `(x0, y0, x1, y1)`.
    height, width: static image size.

  Returns:
    float32 `[R, height, width]`.
  """
  return jax.vmap(lambda m, b: _paste_one(m, b, 0.0, 0.0, height, width))(masks, boxes)


def paste_masks(masks: jnp.ndarray, boxes: jnp.ndarray, height: int, width: int,
                threshold: float = 0.5) -> jnp.ndarray:
  """Binary full-image masks: `paste_masks_soft(...) >= threshold`.

  Args:
    masks: float32 `[R, S, S]` probabilities; boxes: float32 `[R, 4]` `(x0, y0, x1, y1)`.
    height, width: static image size; threshold: foreground cut (0.5).

  Returns:
    bool `[R, height, width]` (O(R * H * W) memory; prefer `masks_to_label_map`).
  """
  return paste_masks_soft(masks, boxes, height, width) >= threshold


def masks_to_label_map(masks: jnp.ndarray, boxes: jnp.ndarray, scores: jnp.ndarray,
                       valid: jnp.ndarray, height: int, width: int, threshold: float = 0.5,
                       window: int | None = None,
                       overlap_threshold: float | None = None) -> jnp.ndarray:
  """Renders detections into one instance label map; overlaps go to the higher score.

  Detections are sorted by descending score (`nms.score_order`: ties by index, invalid
  last); detection of rank `k` gets label `k + 1`. A `fori_loop` paints them from the lowest
  score to the highest, so a higher score overwrites a lower one. A detection whose mask is
  empty or fully covered leaves its label unused (labels may have gaps).

  Mask-overlap suppression (`overlap_threshold`, panoptic FPN's `overlap_threshold`):
  detections are painted from the highest score down onto unclaimed pixels only, and one
  with at least `overlap_threshold` of its mask pixels already claimed by the detections
  painted before it is dropped entirely, instead of leaving its unclaimed remainder (a
  crescent or sliver beside the nucleus that won, a false positive at every IoU); its
  pixels stay free for lower scores. Without drops this is the same map as painting
  lowest first with overwrites, so 1.0 (drops only the fully covered, which paint nothing
  anyway) gives the map of None bit for bit.

  Args:
    masks: float32 `[R, S, S]` probabilities of each detection's class.
    boxes: float32 `[R, 4]` `(x0, y0, x1, y1)` absolute pixels.
    scores: float32 `[R]`; valid: bool `[R]` (invalid detections paint nothing).
    height, width: static size of the output map.
    threshold: a pixel belongs to a detection when its pasted probability is `>= threshold`.
    window: None -> each detection is evaluated over the whole image: exact, O(R * H * W * S)
      time. An int -> only over a `window x window` block starting one mask cell and one pixel
      above/left of the box (clamped to the image): O(R * window**2 * S), exact while every
      box side is at most `(window - 3) / (1 + 2 / S)` pixels (window 64, S 28: 56 px);
      bigger masks are cut at the block edge.
    overlap_threshold: None -> no suppression (overwrite by score, as above). A float in
      (0, 1] -> drop a detection when `claimed >= overlap_threshold * area` (pixel counts of
      its thresholded mask, inside the window where one is used). The rule follows the
      score, not the size: in held-out pairs where one mask lies mostly inside another, a
      smaller higher-scoring mask is usually the nucleus and the larger one a merge or an
      over-extended outline, so "drop the inner one" removes the better detection
      (bench/mask_overlap.py, docs/outlines.md).

  Returns:
    int32 `[height, width]`: 0 = background, `k + 1` = detection `score_order(scores,
    valid)[k]`. Memory O(H * W + R * S**2); no `[R, H, W]` array is built.
  """
  r, s = masks.shape[0], masks.shape[-1]
  valid = valid.astype(bool)
  order = score_order(scores, valid)
  masks_sorted = masks.astype(jnp.float32)[order]
  boxes_sorted = boxes.astype(jnp.float32)[order]
  valid_sorted = valid[order]
  label_map = jnp.zeros((height, width), jnp.int32)
  if r == 0:
    return label_map
  win_h = height if window is None else min(window, height)
  win_w = width if window is None else min(window, width)

  def render(k, label_map):
    """(mask `on` [win_h, win_w] of rank k, its window of `label_map`, window origin)."""
    box = boxes_sorted[k]
    if window is None:
      y_start = x_start = jnp.int32(0)
    else:
      # One mask cell of margin: interpolation reaches half a cell outside the box.
      y_start = jnp.floor(box[1] - (box[3] - box[1]) / s).astype(jnp.int32) - 1
      x_start = jnp.floor(box[0] - (box[2] - box[0]) / s).astype(jnp.int32) - 1
      y_start = jnp.clip(y_start, 0, height - win_h)
      x_start = jnp.clip(x_start, 0, width - win_w)
    probs = _paste_one(masks_sorted[k], box, y_start.astype(jnp.float32),
                       x_start.astype(jnp.float32), win_h, win_w)
    on = (probs >= threshold) & valid_sorted[k]
    current = jax.lax.dynamic_slice(label_map, (y_start, x_start), (win_h, win_w))
    return on, current, (y_start, x_start)

  def paint(j, label_map):
    k = r - 1 - j  # lowest rank first, so higher scores are painted last and win
    on, current, origin = render(k, label_map)
    painted = jnp.where(on, k + 1, current).astype(jnp.int32)
    return jax.lax.dynamic_update_slice(label_map, painted, origin)

  def paint_unclaimed(k, label_map):
    # Highest rank first: everything already painted outranks rank k.
    on, current, origin = render(k, label_map)
    free = current == 0
    area = jnp.sum(on, dtype=jnp.float32)
    claimed = area - jnp.sum(on & free, dtype=jnp.float32)
    keep = claimed < overlap_threshold * area  # an empty mask (0 < 0) paints nothing anyway
    painted = jnp.where(on & free & keep, k + 1, current).astype(jnp.int32)
    return jax.lax.dynamic_update_slice(label_map, painted, origin)

  # Invalid detections sort last and paint nothing: loop over the valid ranks only (a
  # traced trip count, i.e. a while_loop). Dense outputs keep ~5 % of their 1000 slots
  # valid, so this is most of the inference cost saved, with the same result.
  # (Counted as the last valid rank + 1, not a sum, so that even a valid NaN-score
  # detection sorted among the invalid ones still paints.)
  n_valid = jnp.max(jnp.where(valid_sorted, jnp.arange(1, r + 1, dtype=jnp.int32), 0))
  if overlap_threshold is None:
    return jax.lax.fori_loop(r - n_valid, r, paint, label_map)
  return jax.lax.fori_loop(0, n_valid, paint_unclaimed, label_map)
