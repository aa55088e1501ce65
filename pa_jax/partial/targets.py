"""Centerness targets, pixel sampling, anchors and losses of the PA module (DESIGN.md PA 3-4).

Geometry. The centerness head lives on P2 (stride `s = 4`). Feature cell `(i, j)` covers image
pixels `[s*j, s*j + s) x [s*i, s*i + s)` and its centre is `((j + 0.5) * s, (i + 0.5) * s)`
in image pixels (the same point `centerness_anchors` centres its anchor on). Boxes are float32
`(x0, y0, x1, y1)` absolute image pixels (pixel edges: a one-pixel nucleus at column 5 has
x0 = 5, x1 = 6), as everywhere in pa_jax.

Targets (from the *annotated* instances only; DESIGN PA 3):
- Mask projection: a cell belongs to the mask of the instance whose label is found at the
  pixel `(s*i + s//2, s*j + s//2)` (the pixel just below-right of the cell centre). One gather,
  static and jittable; at stride 4 a majority vote over the 4x4 block would change only
  boundary cells, which matter little because they are 0-targets of a sampled loss.
- Centre box of a nucleus with box `(x0, y0, x1, y1)`: `cx ± center_scale * w / 2`,
  `cy ± center_scale * h / 2`. At stride `s` it covers the cells whose *centres* lie inside
  it, plus always the cell that contains `(cx, cy)` so every nucleus, however small, has at
  least one positive cell. The result is a contiguous rectangle of cells.
- target = 1 inside any centre box, 0 inside an annotated mask but outside every centre box,
  -1 (ignored) elsewhere: background and unannotated nuclei are never negatives.
- Where centre boxes overlap, a cell regresses the box of SMALLEST AREA (FCOS' rule: the
  smaller nucleus is the one the cell is more specific to); equal areas -> lowest slot.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from pa_jax import losses
from pa_jax.ops.boxes import encode_boxes
from pa_jax.ops.matching import Assignment
from pa_jax.ops.sampling import indices_to_mask, sample_balanced


def _center_cell_range(lo_px: jnp.ndarray, hi_px: jnp.ndarray, center_px: jnp.ndarray,
                       stride: int) -> tuple[jnp.ndarray, jnp.ndarray]:
  """First/last cell index (inclusive, int32) whose centre lies in `[lo_px, hi_px]`,
  widened to include the cell containing `center_px` (so the range is never empty)."""
  first = jnp.ceil(lo_px / stride - 0.5)
  last = jnp.floor(hi_px / stride - 0.5)
  c = jnp.floor(center_px / stride)
  return (jnp.minimum(first, c).astype(jnp.int32), jnp.maximum(last, c).astype(jnp.int32))


def centerness_targets(labels: jnp.ndarray, boxes: jnp.ndarray, valid: jnp.ndarray,
                       out_hw: tuple[int, int], stride: int = 4,
                       center_scale: float = 0.3) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Centerness target map and per-cell box target for ONE image (vmap for a batch).

  Args:
    labels: int32 `[H, W]` annotated label map of the canvas; value `k + 1` is instance slot
      `k`, 0 is background or an unannotated nucleus (`Batch.labels[b]`).
    boxes: float32 `[M, 4]` `(x0, y0, x1, y1)` absolute pixels of the annotated instances.
    valid: bool `[M]`, True for real instances (padding slots take no part at all).
    out_hw: static `(h, w)` of the centerness map (P2: `ceil(H / 4), ceil(W / 4)`).
    stride: static stride of the map (4 for P2).
    center_scale: static fraction of the box width/height kept by the centre box (0.3).

  Returns:
    `(target, box_target)`:
    - target: int32 `[h, w]` in {-1, 0, 1} (`Assignment` IGNORE / NEGATIVE / POSITIVE).
      Cells whose sample pixel falls outside the canvas are -1 unless a centre box covers them.
    - box_target: float32 `[h, w, 4]` `(x0, y0, x1, y1)` image pixels of the nucleus whose
      centre box covers the cell (smallest area on overlap); zeros where target != 1.

  Memory/cost: the per-cell choice is an argmin over `[M, h, w]`; XLA materialises only the
  boolean coverage (`M*h*w` bytes: 8 MiB for M=512, h=w=128, measured) and fuses the float
  cost into the reduction. About 0.1 s per such image on one CPU core, negligible on GPU.
  """
  h, w = out_hw
  H, W = labels.shape
  m = boxes.shape[0]
  boxes = boxes.astype(jnp.float32)
  valid = valid.astype(bool)

  # --- Mask projection: the label at one pixel per cell (static gather). ---
  ys = stride * np.arange(h) + stride // 2
  xs = stride * np.arange(w) + stride // 2
  inside = (ys < H)[:, None] & (xs < W)[None, :]           # numpy [h, w]; static
  cell_label = labels[np.minimum(ys, H - 1)[:, None], np.minimum(xs, W - 1)[None, :]]
  cell_label = jnp.where(inside, cell_label.astype(jnp.int32), 0)
  slot = jnp.clip(cell_label - 1, 0, max(m - 1, 0))
  annotated = (cell_label > 0) & (cell_label <= m)
  if m > 0:
    annotated &= valid[slot]

  if m == 0:
    target = jnp.where(annotated, Assignment.NEGATIVE, Assignment.IGNORE).astype(jnp.int32)
    return target, jnp.zeros((h, w, 4), jnp.float32)

  # --- Centre boxes as inclusive cell ranges, vectorised over M. ---
  bw = boxes[:, 2] - boxes[:, 0]
  bh = boxes[:, 3] - boxes[:, 1]
  cx = 0.5 * (boxes[:, 0] + boxes[:, 2])
  cy = 0.5 * (boxes[:, 1] + boxes[:, 3])
  j0, j1 = _center_cell_range(cx - 0.5 * center_scale * bw, cx + 0.5 * center_scale * bw, cx,
                              stride)
  i0, i1 = _center_cell_range(cy - 0.5 * center_scale * bh, cy + 0.5 * center_scale * bh, cy,
                              stride)
  ii = jnp.arange(h, dtype=jnp.int32)
  jj = jnp.arange(w, dtype=jnp.int32)
  row_in = (ii[None, :] >= i0[:, None]) & (ii[None, :] <= i1[:, None]) & valid[:, None]  # [M, h]
  col_in = (jj[None, :] >= j0[:, None]) & (jj[None, :] <= j1[:, None])                   # [M, w]
  in_center = row_in[:, :, None] & col_in[:, None, :]                                    # [M, h, w]

  # Smallest box wins on overlap; argmin returns the first (lowest slot) among equal areas.
  area = jnp.maximum(bw, 0.0) * jnp.maximum(bh, 0.0)
  cost = jnp.where(in_center, area[:, None, None], jnp.inf)
  chosen = jnp.argmin(cost, axis=0)                                                       # [h, w]
  positive = jnp.any(in_center, axis=0)

  target = jnp.where(positive, Assignment.POSITIVE,
                     jnp.where(annotated, Assignment.NEGATIVE, Assignment.IGNORE))
  box_target = jnp.where(positive[..., None], boxes[chosen], 0.0)
  return target.astype(jnp.int32), box_target.astype(jnp.float32)


def sample_pixels(key: jax.Array, target: jnp.ndarray, num_samples: int = 128,
                  positive_fraction: float = 0.5) -> jnp.ndarray:
  """One balanced sample of centerness pixels over the WHOLE batch (DESIGN PA 4).

  `min(#positives, int(num_samples * positive_fraction))` random positive cells, the rest
  random negative (0) cells, as many as exist; -1 cells are never sampled. The batch is
  flattened first, so an image with many nuclei contributes more pixels than an empty one,
  as "per batch, sample 128 pixels" asks.

  Args:
    key: `jax.random` key.
    target: int32 `[B, h, w]` from `centerness_targets` (vmapped).
    num_samples: static number of pixels (128).
    positive_fraction: static cap on the positive share (0.5).

  Returns:
    bool `[B, h, w]`, True at the sampled cells; exactly `min(num_samples, #positives capped
    + #negatives)` of them are True.
  """
  shape = target.shape
  flat = target.reshape(-1)
  idx, ok = sample_balanced(key, flat, num_samples, positive_fraction)
  return indices_to_mask(idx, ok, flat.shape[0]).reshape(shape)


def centerness_anchors(out_hw: tuple[int, int], stride: int,
                       anchor_wh: jnp.ndarray) -> jnp.ndarray:
  """The fixed-size anchor of every centerness cell (DESIGN PA 3).

  Args:
    out_hw: static `(h, w)` of the centerness map.
    stride: static stride (4 for P2).
    anchor_wh: float32 `[2]` `(width, height)` of the anchor in image pixels: the dataset's
      median nucleus size (`median_nucleus_size`) or a fixed window (32, 32). May be traced.

  Returns:
    float32 `[h * w, 4]` `(x0, y0, x1, y1)` image pixels, row-major over `(i, j)` (so it lines
    up with `deltas.reshape(h * w, 4)`), centred on the cell centres `((j+.5)s, (i+.5)s)`.
  """
  h, w = out_hw
  anchor_wh = jnp.asarray(anchor_wh, jnp.float32).reshape(2)
  cy, cx = np.meshgrid((np.arange(h) + 0.5) * stride, (np.arange(w) + 0.5) * stride,
                       indexing="ij")
  centers = jnp.asarray(np.stack([cx, cy, cx, cy], -1).reshape(-1, 4), jnp.float32)
  half = 0.5 * jnp.concatenate([-anchor_wh, anchor_wh])
  return centers + half[None, :]


def median_nucleus_size(label_maps: Sequence[np.ndarray],
                        zooms: Sequence[float] | None = None) -> tuple[float, float]:
  """Median box width and height (pixels) over every instance of every label map (host).

  Args:
    label_maps: iterable of integer numpy `[H, W]` instance label maps (0 = background; ids
      need not be consecutive). Typically the *annotated* training labels.
    zooms: optional zoom of each map (`TrainExample.zoom`): sizes are measured as the
      model sees them, after the size normalisation.

  Returns:
    `(width, height)` Python floats; a box spans pixel edges, so a one-pixel nucleus is 1x1.

  Raises:
    ValueError: when the maps hold no instance at all.
  """
  from pa_jax.data.pipeline import instance_boxes

  widths, heights = [], []
  zooms = [1.0] * len(label_maps) if zooms is None else list(zooms)
  for lab, z in zip(label_maps, zooms, strict=True):
    lab = np.asarray(lab)
    if lab.ndim != 2:
      raise ValueError(f"label map must be 2-D, got shape {lab.shape}")
    _, boxes = instance_boxes(lab)
    widths.extend(((boxes[:, 2] - boxes[:, 0]) * z).tolist())
    heights.extend(((boxes[:, 3] - boxes[:, 1]) * z).tolist())
  if not widths:
    raise ValueError("median_nucleus_size: the label maps contain no instance")
  return float(np.median(widths)), float(np.median(heights))


def centerness_losses(logits: jnp.ndarray, deltas: jnp.ndarray, target: jnp.ndarray,
                      box_target: jnp.ndarray, sampled: jnp.ndarray, anchor_wh: jnp.ndarray,
                      stride: int, beta: float = 1.0 / 9.0,
                      weights: Sequence[float] = (10.0, 10.0, 5.0, 5.0)):
  """L_centerness and L_centerbox of the PA module (DESIGN PA 4).

  Args:
    logits: float32 `[B, h, w]` centerness logits (`CenternessOutput.logits`).
    deltas: float32 `[B, h, w, 4]` predicted `(dx, dy, dw, dh)` in the `weights` coding.
    target: int32 `[B, h, w]` in {-1, 0, 1} (`centerness_targets`, vmapped).
    box_target: float32 `[B, h, w, 4]` `(x0, y0, x1, y1)` image pixels.
    sampled: bool `[B, h, w]` from `sample_pixels` (only targets >= 0 are ever sampled).
    anchor_wh: float32 `[2]` anchor `(width, height)` (see `centerness_anchors`).
    stride: static stride of the map (4).
    beta: smooth-L1 transition point. 1/9 is the RPN value of maskrcnn-benchmark, the code
      base of the paper's release (detectron2 later defaults to 0, plain L1).
    weights: static box-coder weights `(wx, wy, ww, wh)`; (10, 10, 5, 5) as released
      (`model.partial.centerbox_weights`). They scale the targets, hence how the smooth-L1
      transition at `beta` falls: with (1, 1, 1, 1) nearly every residual stays quadratic.

  Returns:
    `(l_centerness, l_centerbox, stats)`:
    - l_centerness: float32 scalar, sum of the binary cross-entropy of the sampled cells
      (label 1 for target 1, 0 for target 0) / max(#sampled, 1).
    - l_centerbox: float32 scalar, sum over the sampled positive cells and the 4 coordinates
      of smooth-L1(deltas - encode_boxes(box_target, anchor)) / max(#sampled, 1) (normalised
      by ALL sampled cells, like detectron2's RPN, as DESIGN PA 4 says).
    - stats: dict of float32 scalars for logging: num_sampled, num_sampled_positive,
      num_positive_targets, num_negative_targets, accuracy (sampled cells, p > 0.5).
  """
  b, h, w = logits.shape
  logits = logits.astype(jnp.float32)
  deltas = deltas.astype(jnp.float32)
  sampled = sampled.astype(bool) & (target >= 0)
  is_pos = target == Assignment.POSITIVE
  n = jnp.sum(sampled, dtype=jnp.float32)
  norm = jnp.maximum(n, 1.0)  # for the accuracy statistic

  l_centerness = losses.sigmoid_binary_cross_entropy(logits, is_pos, sampled, normalizer=n)

  anchors = centerness_anchors((h, w), stride, anchor_wh).reshape(1, h, w, 4)
  reg_target = jax.lax.stop_gradient(encode_boxes(box_target.astype(jnp.float32), anchors,
                                                  tuple(weights)))
  pos_sampled = sampled & is_pos
  # Normalised by ALL sampled cells (DESIGN PA 4), not by the positives.
  l_centerbox = losses.smooth_l1(deltas.reshape(-1, 4), reg_target.reshape(-1, 4),
                                 pos_sampled.reshape(-1), beta, normalizer=n)

  correct = (logits > 0) == is_pos
  stats = {
      "num_sampled": n,
      "num_sampled_positive": jnp.sum(pos_sampled, dtype=jnp.float32),
      "num_positive_targets": jnp.sum(is_pos, dtype=jnp.float32),
      "num_negative_targets": jnp.sum(target == Assignment.NEGATIVE, dtype=jnp.float32),
      "accuracy": jnp.sum(sampled & correct, dtype=jnp.float32) / norm,
  }
  return l_centerness, l_centerbox, stats
