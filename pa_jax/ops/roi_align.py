"""RoIAlign (He et al. 2017) with torchvision's exact sampling rules, for one image.

For each RoI and each of the `out_h x out_w` bins, `sampling_ratio**2` points on a regular
grid inside the bin are bilinearly interpolated and averaged. Rules copied in behaviour (not
code) from torchvision's `roi_align`:
- `aligned=True`: box coordinates are scaled then shifted by -0.5, so that pixel centres sit
  at integer + 0.5 (the correct alignment; detectron2's `ROIAlignV2`). `aligned=False` keeps
  the legacy behaviour, including forcing RoIs to be at least 1x1 feature cell.
- a sample point with y < -1 or y > H (or x < -1 or x > W) contributes 0; otherwise
  coordinates are clamped into the map and the usual 4-neighbour interpolation applies.
- the average is over all `sampling_ratio**2` points, including the ones contributing 0.
Only a fixed (static) `sampling_ratio > 0` is supported; torchvision's adaptive mode
(`sampling_ratio=0`, `ceil(roi_size / out_size)` points) has data-dependent shapes.

Implementation: the interpolation is separable, so each axis gives for every bin and sample
point two integer taps with weights; the output is a sum over `(2 * sampling_ratio)**2`
gathers of `[R, out_h, out_w, C]` (16 for the default ratio 2), with no Python loop over RoIs
and peak memory O(R * out_h * out_w * C), never O(R * H * W). Multi-level pooling flattens all
levels into one `[sum H_l * W_l, C]` table and gives each RoI its level's offset, size and
scale, so every RoI is pooled once (not once per level).

Boxes are float32 `(x0, y0, x1, y1)` in absolute image pixels; features are `[H, W, C]`.
"""

from __future__ import annotations

from typing import Sequence, Union

import jax
import jax.numpy as jnp

from pa_jax.ops.boxes import box_area

Size = Union[int, Sequence[int]]


def _pair(size: Size) -> tuple[int, int]:
  if isinstance(size, int):
    return size, size
  out_h, out_w = size
  return int(out_h), int(out_w)


def _axis_taps(start: jnp.ndarray, bin_size: jnp.ndarray, extent: jnp.ndarray, pooled: int,
               sampling_ratio: int):
  """Bilinear taps along one axis.

  Args:
    start: float32 `[R]` RoI start in feature cells (after scale and alignment shift).
    bin_size: float32 `[R]` bin length in feature cells.
    extent: int32 `[R]` (or scalar) map length along this axis.
    pooled: number of bins; sampling_ratio: sample points per bin along this axis.

  Returns:
    `(index [R, pooled * S, 2] int32, weight [R, pooled * S, 2] float32)`, the low and high
    neighbour of every sample point (bins outer, points inner).
  """
  s = sampling_ratio
  # Position of sample point j of bin p in bin units: p + (j + 0.5) / S.
  t = (jnp.arange(pooled, dtype=jnp.float32)[:, None]
       + (jnp.arange(s, dtype=jnp.float32)[None, :] + 0.5) / s).reshape(-1)  # [P * S]
  c = start[:, None] + t[None, :] * bin_size[:, None]  # [R, P * S]
  extent = jnp.broadcast_to(jnp.asarray(extent, jnp.int32), start.shape)[:, None]
  inside = (c >= -1.0) & (c <= extent.astype(jnp.float32))
  c = jnp.maximum(c, 0.0)
  low = jnp.floor(c).astype(jnp.int32)
  at_end = low >= extent - 1  # clamp the last cell: both neighbours are the border cell
  low = jnp.where(at_end, extent - 1, low)
  high = jnp.where(at_end, extent - 1, low + 1)
  frac = jnp.where(at_end, 0.0, c - low.astype(jnp.float32))
  inside = inside.astype(jnp.float32)
  index = jnp.stack([low, high], axis=-1)
  weight = jnp.stack([(1.0 - frac) * inside, frac * inside], axis=-1)
  return index, weight


def roi_align_taps(boxes: jnp.ndarray, output_size: Size, spatial_scale, heights, widths,
                   sampling_ratio: int = 2, aligned: bool = True, base_offsets=0):
  """Flat gather indices and weights whose weighted sum is RoIAlign.

  `RoIAlign(F)[r, p, q] = sum_k weight_k[r, p, q] * F_flat[index_k[r, p, q]]` where `F_flat`
  is the `[H * W, ...]` row-major flattening of the map (plus `base_offsets[r]` for maps
  stacked in one table). Exposed so that other pooled quantities (e.g. the 0/1 mask of one
  instance of a label map, see `masks.mask_targets`) reuse exactly the same sampling.

  Args:
    boxes: float32 `[R, 4]` `(x0, y0, x1, y1)` absolute image pixels.
    output_size: `out` or `(out_h, out_w)`, static.
    spatial_scale: feature cells per image pixel (1 / stride); scalar or float32 `[R]`.
    heights, widths: map size, int scalars or int32 `[R]`.
    sampling_ratio: static sample points per bin and axis (> 0).
    aligned: torchvision `aligned` flag (shift by -0.5 cell).
    base_offsets: int scalar or int32 `[R]` added to every index.

  Returns:
    list of `(index [R, out_h, out_w] int32, weight [R, out_h, out_w] float32)`, of length
    `(2 * sampling_ratio) ** 2`. Weights already include the `1 / sampling_ratio**2` average.
  """
  if sampling_ratio <= 0:
    raise ValueError(f"sampling_ratio must be > 0 (static), got {sampling_ratio}")
  out_h, out_w = _pair(output_size)
  r = boxes.shape[0]
  boxes = boxes.astype(jnp.float32)
  scale = jnp.broadcast_to(jnp.asarray(spatial_scale, jnp.float32), (r,))
  shift = 0.5 if aligned else 0.0
  x0 = boxes[:, 0] * scale - shift
  y0 = boxes[:, 1] * scale - shift
  roi_w = boxes[:, 2] * scale - shift - x0
  roi_h = boxes[:, 3] * scale - shift - y0
  if not aligned:  # legacy: RoIs are at least one cell
    roi_w = jnp.maximum(roi_w, 1.0)
    roi_h = jnp.maximum(roi_h, 1.0)
  widths = jnp.broadcast_to(jnp.asarray(widths, jnp.int32), (r,))
  heights = jnp.broadcast_to(jnp.asarray(heights, jnp.int32), (r,))
  base = jnp.broadcast_to(jnp.asarray(base_offsets, jnp.int32), (r,))
  yi, yw = _axis_taps(y0, roi_h / out_h, heights, out_h, sampling_ratio)  # [R, out_h*S, 2]
  xi, xw = _axis_taps(x0, roi_w / out_w, widths, out_w, sampling_ratio)  # [R, out_w*S, 2]
  s = sampling_ratio
  yi = yi.reshape(r, out_h, s * 2)
  yw = yw.reshape(r, out_h, s * 2)
  xi = xi.reshape(r, out_w, s * 2)
  xw = xw.reshape(r, out_w, s * 2)
  row_start = base[:, None, None] + yi * widths[:, None, None]  # [R, out_h, 2S]
  norm = 1.0 / (s * s)
  taps = []
  for a in range(2 * s):
    for b in range(2 * s):
      index = row_start[:, :, None, a] + xi[:, None, :, b]
      weight = (yw[:, :, None, a] * xw[:, None, :, b]) * norm
      taps.append((index, weight))
  return taps


def _pool(flat: jnp.ndarray, taps) -> jnp.ndarray:
  """Weighted sum of gathers from `flat [T, C]`; accumulates in float32."""
  acc = None
  for index, weight in taps:
    term = flat[index].astype(jnp.float32) * weight[..., None]
    acc = term if acc is None else acc + term
  return acc


def roi_align(features: jnp.ndarray, boxes: jnp.ndarray, output_size: Size,
              spatial_scale: float, sampling_ratio: int = 2,
              aligned: bool = True) -> jnp.ndarray:
  """RoIAlign of one image (torchvision semantics, NHWC).

  Args:
    features: `[H, W, C]` (float32 or bfloat16) feature map of one image.
    boxes: float32 `[R, 4]` `(x0, y0, x1, y1)` absolute image pixels. Padding boxes are fine
      (they pool something finite); mask them downstream.
    output_size: `out` or `(out_h, out_w)`, static (7 box head, 14 mask head).
    spatial_scale: 1 / stride of `features`.
    sampling_ratio: static sample points per bin and axis (> 0); 2 in the paper's setting.
    aligned: True for the half-pixel-correct version (detectron2 ROIAlignV2).

  Returns:
    `[R, out_h, out_w, C]` in `features.dtype` (accumulated in float32).
  """
  h, w, c = features.shape
  taps = roi_align_taps(boxes, output_size, spatial_scale, h, w, sampling_ratio, aligned)
  return _pool(features.reshape(h * w, c), taps).astype(features.dtype)


def batched_roi_align(features: jnp.ndarray, boxes: jnp.ndarray, output_size: Size,
                      spatial_scale: float, sampling_ratio: int = 2,
                      aligned: bool = True) -> jnp.ndarray:
  """`roi_align` over a batch: `features [B, H, W, C]`, `boxes [B, R, 4]` ->
  `[B, R, out_h, out_w, C]`."""
  fn = lambda f, b: roi_align(f, b, output_size, spatial_scale, sampling_ratio, aligned)
  return jax.vmap(fn)(features, boxes)


def assign_levels(boxes: jnp.ndarray, min_level: int, max_level: int,
                  canonical_box_size: float = 224.0, canonical_level: int = 4) -> jnp.ndarray:
  """FPN level of each RoI (FPN paper eq. 1, detectron2 `assign_boxes_to_levels`).

  `k = floor(canonical_level + log2(sqrt(area) / canonical_box_size + 1e-8))`, clamped to
  `[min_level, max_level]`. Zero-area boxes go to `min_level`.

  Args:
    boxes: float32 `[R, 4]` `(x0, y0, x1, y1)` absolute pixels.
    min_level, max_level: e.g. 2 and 5 (P2..P5).
    canonical_box_size, canonical_level: the ImageNet-size box (224) maps to this level (4).
      Nuclei are small, so most RoIs land on P2 with the defaults.

  Returns:
    int32 `[R]` level numbers (not indices) in `[min_level, max_level]`.
  """
  size = jnp.sqrt(box_area(boxes.astype(jnp.float32)))
  level = jnp.floor(canonical_level + jnp.log2(size / canonical_box_size + 1e-8))
  return jnp.clip(level, min_level, max_level).astype(jnp.int32)


def multilevel_roi_align(features_per_level: Sequence[jnp.ndarray], boxes: jnp.ndarray,
                         output_size: Size, levels: Sequence[int] = (2, 3, 4, 5),
                         sampling_ratio: int = 2, aligned: bool = True,
                         canonical_box_size: float = 224.0,
                         canonical_level: int = 4) -> jnp.ndarray:
  """RoIAlign of one image from an FPN pyramid, each RoI on the level of its size.

  Args:
    features_per_level: `[H_l, W_l, C]` maps of one image, one per entry of `levels`, same C
      and dtype.
    boxes: float32 `[R, 4]` `(x0, y0, x1, y1)` absolute image pixels.
    output_size: static `out` or `(out_h, out_w)`.
    levels: FPN level number of each map; level `k` has stride `2**k` (P2 = stride 4).
      Must be consecutive and increasing.
    sampling_ratio, aligned: as in `roi_align`.
    canonical_box_size, canonical_level: level assignment, see `assign_levels`.

  Returns:
    `[R, out_h, out_w, C]` in the features' dtype. Equals `roi_align` on the assigned level
    with `spatial_scale = 2**-k`.
  """
  levels = tuple(int(k) for k in levels)
  if len(levels) != len(features_per_level):
    raise ValueError(f"{len(features_per_level)} feature maps for levels {levels}")
  if list(levels) != list(range(levels[0], levels[0] + len(levels))):
    raise ValueError(f"levels must be consecutive and increasing, got {levels}")
  c = features_per_level[0].shape[-1]
  dtype = features_per_level[0].dtype
  sizes = [tuple(f.shape[:2]) for f in features_per_level]
  offsets, total = [], 0
  for h, w in sizes:
    offsets.append(total)
    total += h * w
  flat = jnp.concatenate([f.reshape(-1, c).astype(dtype) for f in features_per_level], axis=0)
  level_index = assign_levels(boxes, levels[0], levels[-1], canonical_box_size,
                              canonical_level) - levels[0]
  # Per-level constants looked up per RoI.
  heights = jnp.asarray([h for h, _ in sizes], jnp.int32)[level_index]
  widths = jnp.asarray([w for _, w in sizes], jnp.int32)[level_index]
  base = jnp.asarray(offsets, jnp.int32)[level_index]
  scales = jnp.asarray([2.0 ** -k for k in levels], jnp.float32)[level_index]
  taps = roi_align_taps(boxes, output_size, scales, heights, widths, sampling_ratio, aligned,
                        base_offsets=base)
  return _pool(flat, taps).astype(dtype)


def batched_multilevel_roi_align(features_per_level: Sequence[jnp.ndarray], boxes: jnp.ndarray,
                                 output_size: Size, levels: Sequence[int] = (2, 3, 4, 5),
                                 sampling_ratio: int = 2, aligned: bool = True,
                                 canonical_box_size: float = 224.0,
                                 canonical_level: int = 4) -> jnp.ndarray:
  """`multilevel_roi_align` over a batch: maps `[B, H_l, W_l, C]`, `boxes [B, R, 4]` ->
  `[B, R, out_h, out_w, C]`."""
  fn = lambda f, b: multilevel_roi_align(f, b, output_size, levels, sampling_ratio, aligned,
                                         canonical_box_size, canonical_level)
  return jax.vmap(fn)(list(features_per_level), boxes)
