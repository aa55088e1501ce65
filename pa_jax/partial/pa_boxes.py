"""PA boxes: boxes of probable nuclei read off the centerness map (DESIGN.md PA 5).

sigmoid(centerness) > threshold -> connected components (4-connectivity, scipy's default, as
the paper's released code; 8 on request) -> in each component the cell of highest
probability -> decode its 4 deltas against its fixed-size anchor (coder weights (10, 10, 5, 5)
as released) -> clip to the real image -> keep the `max_boxes` most confident components
(static K + `valid`).

Everything has static shapes: components carry canonical ids (1 + smallest flat index, see
`pa_jax.ops.components`), so a component is addressed by its smallest cell and per-component
reductions are `segment_max`/`segment_min` over `h * w + 1` segments. Both component backends
produce identical ids, hence identical boxes.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from pa_jax.ops.boxes import clip_boxes, decode_deltas
from pa_jax.ops.components import label_components
from pa_jax.partial.targets import centerness_anchors


def pa_boxes(logits: jnp.ndarray, deltas: jnp.ndarray, anchor_wh: jnp.ndarray, stride: int,
             image_hw: jnp.ndarray, threshold: float = 0.95, max_boxes: int = 512,
             backend: str = "device", connectivity: int = 4,
             weights: Sequence[float] = (10.0, 10.0, 5.0, 5.0),
             ) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
  """PA boxes of ONE image (vmap for a batch; both backends support vmap).

  Args:
    logits: float32 `[h, w]` centerness logits.
    deltas: float32 `[h, w, 4]` `(dx, dy, dw, dh)` encoded with coder `weights`.
    anchor_wh: float32 `[2]` `(width, height)` of the centerness anchor (image pixels).
    stride: static stride of the map (4).
    image_hw: int32 `[2]` `(height, width)` of the real image inside the canvas. Cells whose
      centre lies outside it (canvas padding) never seed a box, and boxes are clipped to it.
    threshold: static probability threshold (0.95).
    max_boxes: static K; the K components of highest peak probability are kept.
    backend: 'device' or 'host' connected-component labelling (same result).
    connectivity: static 4 (plus-shaped neighbourhood) or 8 (3x3) for the components.
    weights: static `(wx, wy, ww, wh)` the deltas were encoded with
      (`model.partial.centerbox_weights`; the same in `targets.centerness_losses`).

  Returns:
    `(boxes, scores, valid)`, all wrapped in `stop_gradient` (PA boxes carry no gradient):
    - boxes: float32 `[K, 4]` `(x0, y0, x1, y1)` image pixels, sorted by decreasing score
      (ties: smaller component id first); zeros where not valid.
    - scores: float32 `[K]` peak sigmoid probability of each component; 0 where not valid.
    - valid: bool `[K]`, True for a real box (a component exists and its clipped box has
      positive area).
    Within a component the peak cell is the one of highest probability, ties broken by the
    smallest row-major flat index.
  """
  h, w = logits.shape
  n = h * w
  logits = jax.lax.stop_gradient(logits.astype(jnp.float32))
  deltas = jax.lax.stop_gradient(deltas.astype(jnp.float32))
  image_hw = jnp.asarray(image_hw)
  img_h = image_hw[0].astype(jnp.float32)
  img_w = image_hw[1].astype(jnp.float32)

  prob = jax.nn.sigmoid(logits)
  cy = (np.arange(h, dtype=np.float32) + 0.5) * stride
  cx = (np.arange(w, dtype=np.float32) + 0.5) * stride
  in_image = (cy[:, None] < img_h) & (cx[None, :] < img_w)
  fg = (prob > threshold) & in_image

  # [n] 0 or 1 + root flat index
  comp = label_components(fg, backend=backend, connectivity=connectivity).reshape(-1)
  score = prob.reshape(-1)
  flat_idx = jnp.arange(n, dtype=jnp.int32)
  # Peak probability per component; background goes to segment 0, which is never read.
  peak = jax.ops.segment_max(jnp.where(comp > 0, score, -1.0), comp, num_segments=n + 1)
  is_peak = (comp > 0) & (score == peak[comp])
  peak_cell = jax.ops.segment_min(jnp.where(is_peak, flat_idx, n), comp, num_segments=n + 1)

  # Component c (id c) is represented by its root cell c - 1: a cell is a root iff comp == 1 +
  # its own index. Rank roots by their component's peak probability.
  is_root = comp == flat_idx + 1
  root_score = jnp.where(is_root, peak[1:], -1.0)               # [n], indexed by root cell
  k = min(max_boxes, n)
  top_score, top_root = jax.lax.top_k(root_score, k)            # ties -> smaller index first
  top_valid = top_score >= 0.0
  cell = jnp.clip(peak_cell[top_root + 1], 0, n - 1)

  anchors = centerness_anchors((h, w), stride, anchor_wh)       # [n, 4]
  boxes = decode_deltas(deltas.reshape(n, 4)[cell], anchors[cell], tuple(weights))
  boxes = clip_boxes(boxes, img_h, img_w)
  area_ok = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
  valid = top_valid & area_ok
  boxes = jnp.where(valid[:, None], boxes, 0.0)
  scores = jnp.where(valid, top_score, 0.0)
  if k < max_boxes:  # tiny maps: pad to the static K the caller asked for
    pad = max_boxes - k
    boxes = jnp.concatenate([boxes, jnp.zeros((pad, 4), jnp.float32)])
    scores = jnp.concatenate([scores, jnp.zeros((pad,), jnp.float32)])
    valid = jnp.concatenate([valid, jnp.zeros((pad,), bool)])
  return (jax.lax.stop_gradient(boxes.astype(jnp.float32)),
          jax.lax.stop_gradient(scores.astype(jnp.float32)), jax.lax.stop_gradient(valid))
