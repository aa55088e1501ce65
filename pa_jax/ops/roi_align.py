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
point two integer taps with weights; their products are `K = (2 * sampling_ratio)**2` taps
per output cell (16 for the default ratio 2), computed once as stacked `[R, out_h, out_w, K]`
indices and weights (`stacked_taps`).
- Forward: the weighted sum of the K gathers of `[R, out_h, out_w, C]` from the flattened map,
  written tap by tap so that XLA fuses all K gathers and the sum into one loop: peak memory
  O(R * out_h * out_w * C), never O(R * H * W). (One gather of the stacked `[..., K, C]`
  block was measured 20-30x slower on XLA:CPU: it is not fused and materialises K times the
  output; bench/roi_align_speed.py.)
- Backward (custom VJP): by default no scatter-add at all. The pooled value is `Wy[r] @ F @ Wx[r]^T`
  with per-axis interpolation matrices `Wy [R, out_h, H]`, `Wx [R, out_w, W]` (2S non-zeros
  per row), so the map's gradient is `sum_r Wy[r]^T G[r] Wx[r]`: two dense contractions,
  the second one GEMM over (R, out_w). K scatter-adds of R * out_h * out_w rows run as a
  serial loop on CPU and as atomics on GPU (non-deterministic order); the GEMM is
  deterministic and fast on both. Except on XLA:CPU: in the whole train step XLA runs the
  dense form's per-RoI batched matmuls on a slow path (10x the scatter at the paper's
  sizes), so there the backward is the K scatter-adds (`BACKWARD`). No gradient flows to the boxes (as in torchvision's
  `roi_align`, and pa_jax stops it before the heads anyway).
Multi-level pooling flattens all levels into one `[sum H_l * W_l, C]` table and gives each RoI
its level's offset, size and scale, so every RoI is pooled once (not once per level); its
backward runs the two contractions per level with the RoIs of other levels weighted 0.

Boxes are float32 `(x0, y0, x1, y1)` in absolute image pixels; features are `[H, W, C]`.

Where the map ends. A sample's clamping and its "contributes 0" test use the map's size by
default. A canvas padded beyond the image would then change the pooled values of RoIs at the
image's bottom and right edges (clamped to the last cell on a small canvas, interpolated
toward the padding on a bigger one); `extent_hw` (the multilevel functions) makes every level
end where the smallest multiple-of-32 canvas holding the image would end, whatever the
canvas (`model.mask_padding`, pa_jax/models/padding.py).
"""

from __future__ import annotations

import functools
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


def _roi_axes(boxes: jnp.ndarray, output_size: Size, spatial_scale, heights, widths,
              sampling_ratio: int, aligned: bool, ends=None):
  """Per-axis taps of every RoI, arguments as `roi_align_taps`; `ends` = optional
  `(rows, columns)` int32 `[R]` where each RoI's map ends for sampling (<= its size;
  default its size).

  Returns `(yi [R, out_h, 2S] int32, yw [R, out_h, 2S] float32, xi [R, out_w, 2S],
  xw [R, out_w, 2S], heights [R], widths [R])`: for each bin its S sample points x (low,
  high) neighbour row / column and weight, without the `1 / S**2` average.
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
  end_h, end_w = (heights, widths) if ends is None else ends
  yi, yw = _axis_taps(y0, roi_h / out_h, end_h, out_h, sampling_ratio)  # [R, out_h*S, 2]
  xi, xw = _axis_taps(x0, roi_w / out_w, end_w, out_w, sampling_ratio)  # [R, out_w*S, 2]
  s2 = 2 * sampling_ratio
  return (yi.reshape(r, out_h, s2), yw.reshape(r, out_h, s2), xi.reshape(r, out_w, s2),
          xw.reshape(r, out_w, s2), heights, widths)


def stacked_taps(boxes: jnp.ndarray, output_size: Size, spatial_scale, heights, widths,
                 sampling_ratio: int = 2, aligned: bool = True, base_offsets=0, ends=None):
  """`roi_align_taps` stacked on a last axis: `(index [R, out_h, out_w, K] int32,
  weight [R, out_h, out_w, K] float32)`, K = `(2 * sampling_ratio) ** 2`, tap `k` of
  `roi_align_taps` at `[..., k]`. Arguments as `roi_align_taps`; `ends` as `_roi_axes`
  (the map's `widths` stay its row pitch)."""
  yi, yw, xi, xw, _, widths = _roi_axes(boxes, output_size, spatial_scale, heights, widths,
                                        sampling_ratio, aligned, ends)
  r, out_h, s2 = yi.shape
  out_w = xi.shape[1]
  base = jnp.broadcast_to(jnp.asarray(base_offsets, jnp.int32), (r,))
  # (y tap a, x tap b) -> k = a * 2S + b, the order of `roi_align_taps`.
  row_start = base[:, None, None] + yi * widths[:, None, None]
  index = row_start[:, :, None, :, None] + xi[:, None, :, None, :]
  norm = 1.0 / (sampling_ratio * sampling_ratio)
  weight = (yw[:, :, None, :, None] * xw[:, None, :, None, :]) * norm
  return (index.reshape(r, out_h, out_w, s2 * s2),
          weight.reshape(r, out_h, out_w, s2 * s2))


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
  index, weight = stacked_taps(boxes, output_size, spatial_scale, heights, widths,
                               sampling_ratio, aligned, base_offsets)
  return [(index[..., k], weight[..., k]) for k in range(index.shape[-1])]


def _pool(flat: jnp.ndarray, index: jnp.ndarray, weight: jnp.ndarray) -> jnp.ndarray:
  """`sum_k weight[..., k] * flat[index[..., k]]` from `flat [T, C]`, in float32.

  Tap by tap on purpose: K gathers of `[..., C]` feeding one sum fuse into a single loop
  (see the module docstring for the measured alternative).
  """
  acc = None
  for k in range(index.shape[-1]):
    term = flat[index[..., k]].astype(jnp.float32) * weight[..., k, None]
    acc = term if acc is None else acc + term
  return acc


def _level_layout(maps):
  """`(sizes, offsets)`: each map's `(H_l, W_l)` and its first row in the flat table."""
  sizes = [tuple(int(d) for d in f.shape[:2]) for f in maps]
  offsets = [0]
  for h, w in sizes[:-1]:
    offsets.append(offsets[-1] + h * w)
  return sizes, offsets


def _level_table(maps):
  """Flattened `[sum H_l * W_l, C]` table of the maps, their sizes and row offsets."""
  c, dtype = maps[0].shape[-1], maps[0].dtype
  sizes, offsets = _level_layout(maps)
  flat = jnp.concatenate([f.reshape(-1, c).astype(dtype) for f in maps], axis=0)
  return flat, sizes, offsets


def _per_roi(level_index, sizes, offsets, scales):
  """Per-RoI map height, width, table offset and scale of its level."""
  pick = lambda v, dt: jnp.asarray(v, dt)[level_index]  # noqa: E731
  return (pick([h for h, _ in sizes], jnp.int32), pick([w for _, w in sizes], jnp.int32),
          pick(offsets, jnp.int32), pick(scales, jnp.float32))


def _ends(extent_hw, heights, widths, scale):
  """Per-RoI `(rows, columns)` where its level's map ends for sampling: `extent_hw` int32
  `[2]` canvas pixels times the level's scale, at least 1 and at most the map; None when
  `extent_hw` is None (the map's own size)."""
  if extent_hw is None:
    return None
  ext = jnp.asarray(extent_hw, jnp.float32)
  end = lambda e, size: jnp.clip(jnp.ceil(e * scale).astype(jnp.int32), 1, size)  # noqa: E731
  return end(ext[0], heights), end(ext[1], widths)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _pyramid_align(maps, boxes, level_index, extent_hw, static):
  """RoIAlign of one image from `maps` (list of `[H_l, W_l, C]`), RoI r on map
  `level_index[r]`, every map ending at `extent_hw` canvas pixels (int32 `[2]`, or None:
  its size); `static = (out_h, out_w, scales per map, sampling_ratio, aligned)`.
  Returns float32 `[R, out_h, out_w, C]`."""
  out_h, out_w, scales, ratio, aligned = static
  flat, sizes, offsets = _level_table(maps)
  heights, widths, base, scale = _per_roi(level_index, sizes, offsets, scales)
  index, weight = stacked_taps(boxes, (out_h, out_w), scale, heights, widths, ratio, aligned,
                               base_offsets=base, ends=_ends(extent_hw, heights, widths, scale))
  return _pool(flat, index, weight)


def _pyramid_align_fwd(maps, boxes, level_index, extent_hw, static):
  return (_pyramid_align(maps, boxes, level_index, extent_hw, static),
          (maps, boxes, level_index, extent_hw))


#: How `_pyramid_align`'s backward pass forms the maps' gradient: "dense" (two contractions
#: per level, deterministic), "scatter" (K scatter-adds into the flat table, the transpose
#: of the forward's gathers) or "auto" (the default): scatter on the CPU backend, dense on
#: the others, whose sums must stay deterministic (scatter-adds are atomics on a GPU).
#: Inside the train step XLA:CPU runs the dense form's per-RoI batched matmuls on a slow
#: path: the paper-size step's RoIAlign backward took 1.05 s dense against 0.08 s
#: scattered, the CPU-sized step's 65 against 16 ms (step 0.30 -> 0.26 s; bench/profile_step.py,
#: docs/performance.md). Timed alone (bench/roi_align_speed.py) the dense form can still
#: win, e.g. at the mask head's 14x14; in the whole step it did not. Read at trace time.
BACKWARD: str = "auto"


def _use_scatter() -> bool:
  if BACKWARD in ("dense", "scatter"):
    return BACKWARD == "scatter"
  if BACKWARD != "auto":
    raise ValueError(f"roi_align.BACKWARD must be 'auto', 'dense' or 'scatter', got {BACKWARD!r}")
  return jax.default_backend() == "cpu"


def _scatter_grads(maps, boxes, level_index, extent_hw, static, g):
  """The maps' gradient as the transpose of the forward's K gathers: K scatter-adds of the
  `[R, out_h, out_w, C]` cotangent, weighted, into the flat `[sum H_l * W_l, C]` table."""
  out_h, out_w, scales, ratio, aligned = static
  c = maps[0].shape[-1]
  sizes, offsets = _level_layout(maps)
  heights, widths, base, scale = _per_roi(level_index, sizes, offsets, scales)
  index, weight = stacked_taps(boxes, (out_h, out_w), scale, heights, widths, ratio, aligned,
                               base_offsets=base, ends=_ends(extent_hw, heights, widths, scale))
  g = g.astype(jnp.float32)
  flat = jnp.zeros((offsets[-1] + sizes[-1][0] * sizes[-1][1], c), jnp.float32)
  for k in range(index.shape[-1]):  # one scatter per tap, as autodiff of `_pool` would do
    flat = flat.at[index[..., k].reshape(-1)].add(
        (g * weight[..., k, None]).reshape(-1, c))
  return [flat[o:o + h * w].reshape(h, w, c).astype(f.dtype)
          for o, (h, w), f in zip(offsets, sizes, maps)]


def _pyramid_align_bwd(static, res, g):
  """d/dF_l of `sum_r <G[r], Wy[r] F_l Wx[r]^T>` = `sum_r Wy[r]^T G[r] Wx[r]`, RoIs of
  other levels weighted 0; two dense contractions per level, no scatter (or, on the CPU,
  `_scatter_grads`: see `BACKWARD`)."""
  out_h, out_w, scales, ratio, aligned = static
  maps, boxes, level_index, extent_hw = res
  if _use_scatter():
    return (_scatter_grads(maps, boxes, level_index, extent_hw, static, g),
            jnp.zeros_like(boxes), None, None)
  sizes, _ = _level_layout(maps)
  heights, widths, _, scale = _per_roi(level_index, sizes, [0] * len(sizes), scales)
  yi, yw, xi, xw, _, _ = _roi_axes(boxes, (out_h, out_w), scale, heights, widths, ratio,
                                   aligned, _ends(extent_hw, heights, widths, scale))
  g = g.astype(jnp.float32)
  hi = jax.lax.Precision.HIGHEST  # TPU's default bf16 passes would round the gradient
  grads = []
  for lvl, ((h, w), f) in enumerate(zip(sizes, maps)):
    # Interpolation matrices of this level: [R, out, extent], the 1/S**2 average in wy.
    sel = (level_index == lvl).astype(jnp.float32) / (ratio * ratio)
    wy = jnp.sum(yw[..., None] * jax.nn.one_hot(yi, h, dtype=jnp.float32), axis=2)
    wx = jnp.sum(xw[..., None] * jax.nn.one_hot(xi, w, dtype=jnp.float32), axis=2)
    wy = wy * sel[:, None, None]
    rows = jnp.einsum("rph,rpqc->rhqc", wy, g, precision=hi)  # [R, H, out_w, C]
    grads.append(jnp.einsum("rhqc,rqw->hwc", rows, wx, precision=hi).astype(f.dtype))
  return grads, jnp.zeros_like(boxes), None, None


_pyramid_align.defvjp(_pyramid_align_fwd, _pyramid_align_bwd)


def roi_align(features: jnp.ndarray, boxes: jnp.ndarray, output_size: Size,
              spatial_scale: float, sampling_ratio: int = 2,
              aligned: bool = True) -> jnp.ndarray:
  """RoIAlign of one image (torchvision semantics, NHWC).

  Args:
    features: `[H, W, C]` (float32 or bfloat16) feature map of one image.
    boxes: float32 `[R, 4]` `(x0, y0, x1, y1)` absolute image pixels. Padding boxes are fine
      (they pool something finite); mask them downstream.
    output_size: `out` or `(out_h, out_w)`, static (7 box head, 14 mask head).
    spatial_scale: 1 / stride of `features`, a Python float (static).
    sampling_ratio: static sample points per bin and axis (> 0); 2 in the paper's setting.
    aligned: True for the half-pixel-correct version (detectron2 ROIAlignV2).

  Returns:
    `[R, out_h, out_w, C]` in `features.dtype` (accumulated in float32).
  """
  static = _pair(output_size) + ((float(spatial_scale),), int(sampling_ratio), bool(aligned))
  level_index = jnp.zeros(boxes.shape[:1], jnp.int32)
  return _pyramid_align([features], boxes, level_index, None, static).astype(features.dtype)


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
                         canonical_level: int = 4, extent_hw=None) -> jnp.ndarray:
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
    extent_hw: optional int32 `[2]` canvas pixels `(H, W)` where every level ends for
      sampling (level k: `ceil(H / 2**k)` rows), as if the canvas were that size; None:
      each map's own size (module docstring, "Where the map ends").

  Returns:
    `[R, out_h, out_w, C]` in the features' dtype. Equals `roi_align` on the assigned level
    with `spatial_scale = 2**-k`.
  """
  levels = tuple(int(k) for k in levels)
  if len(levels) != len(features_per_level):
    raise ValueError(f"{len(features_per_level)} feature maps for levels {levels}")
  if list(levels) != list(range(levels[0], levels[0] + len(levels))):
    raise ValueError(f"levels must be consecutive and increasing, got {levels}")
  dtype = features_per_level[0].dtype
  level_index = assign_levels(boxes, levels[0], levels[-1], canonical_box_size,
                              canonical_level) - levels[0]
  static = _pair(output_size) + (tuple(2.0 ** -k for k in levels), int(sampling_ratio),
                                 bool(aligned))
  maps = [f.astype(dtype) for f in features_per_level]
  return _pyramid_align(maps, boxes, level_index, extent_hw, static).astype(dtype)


def batched_multilevel_roi_align(features_per_level: Sequence[jnp.ndarray], boxes: jnp.ndarray,
                                 output_size: Size, levels: Sequence[int] = (2, 3, 4, 5),
                                 sampling_ratio: int = 2, aligned: bool = True,
                                 canonical_box_size: float = 224.0,
                                 canonical_level: int = 4, extent_hw=None) -> jnp.ndarray:
  """`multilevel_roi_align` over a batch: maps `[B, H_l, W_l, C]`, `boxes [B, R, 4]`,
  optional `extent_hw` int32 `[B, 2]` -> `[B, R, out_h, out_w, C]`."""
  fn = lambda f, b, e: multilevel_roi_align(f, b, output_size, levels, sampling_ratio,  # noqa: E731
                                            aligned, canonical_box_size, canonical_level, e)
  return jax.vmap(fn)(list(features_per_level), boxes, extent_hw)
