"""Ignore rules that keep unannotated nuclei out of the background (DESIGN.md PA 6).

An anchor (RPN, IoU threshold 0.3) or a RoI (box head, 0.5) that is background w.r.t. the
annotations but overlaps a PA box enough is probably an unannotated nucleus: it becomes
IGNORE instead of NEGATIVE. Positives are never touched, and nothing changes without PA boxes.
Also `pa_coverage`, host-side diagnostics for the training log.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from pa_jax.ops.boxes import pairwise_iou
from pa_jax.ops.matching import Assignment

# PA boxes are compared with the candidates in blocks of this many, so the IoU block is
# [N, 64] (RPN on a 1024^2 canvas: ~1.3M anchors -> 330 MiB per block at most, instead of
# [N, 512] = 2.7 GiB if XLA did not fuse the IoU into the reduction).
_PA_BLOCK = 64


def ignore_near_pa_boxes(assignment: jnp.ndarray, candidates: jnp.ndarray, pa_boxes: jnp.ndarray,
                         pa_valid: jnp.ndarray, iou_threshold: float) -> jnp.ndarray:
  """Turns NEGATIVE candidates that overlap a valid PA box into IGNORE.

  Args:
    assignment: int32 `[N]` `Assignment` values (from `ops.matching.match` against the
      annotated boxes).
    candidates: float32 `[N, 4]` anchors or RoIs, `(x0, y0, x1, y1)` absolute pixels.
    pa_boxes: float32 `[K, 4]` `(x0, y0, x1, y1)` (from `pa_boxes`; no gradient needed).
    pa_valid: bool `[K]`, True for real PA boxes.
    iou_threshold: IoU at or above which a NEGATIVE becomes IGNORE (0.3 RPN, 0.5 RoI).

  Returns:
    int32 `[N]`: `assignment` with NEGATIVE -> IGNORE where max IoU over valid PA boxes
    >= iou_threshold; POSITIVE and IGNORE entries unchanged. Jittable, static shapes; vmap
    for a batch.
  """
  assignment = assignment.astype(jnp.int32)
  pa_boxes = jax.lax.stop_gradient(pa_boxes.astype(jnp.float32))
  candidates = jax.lax.stop_gradient(candidates.astype(jnp.float32))
  pa_valid = pa_valid.astype(bool)
  k = pa_boxes.shape[0]
  n = candidates.shape[0]
  if k == 0 or n == 0:
    return assignment

  def near_block(boxes, ok):
    iou = pairwise_iou(candidates, boxes)                     # [N, block]
    # `iou > 0` too: with iou_threshold <= 0 a box far away (IoU 0) must not silence every
    # negative.
    return jnp.any((iou >= iou_threshold) & (iou > 0) & ok[None, :], axis=1)

  if k <= _PA_BLOCK:
    near = near_block(pa_boxes, pa_valid)
  else:
    nb = -(-k // _PA_BLOCK)
    pad = nb * _PA_BLOCK - k
    boxes = jnp.concatenate([pa_boxes, jnp.zeros((pad, 4), jnp.float32)])
    ok = jnp.concatenate([pa_valid, jnp.zeros((pad,), bool)])
    blocks = (boxes.reshape(nb, _PA_BLOCK, 4), ok.reshape(nb, _PA_BLOCK))

    def step(acc, blk):
      return acc | near_block(*blk), None

    near = jax.lax.scan(step, jnp.zeros((n,), bool), blocks)[0]
  return jnp.where((assignment == Assignment.NEGATIVE) & near, Assignment.IGNORE,
                   assignment).astype(jnp.int32)


def _instance_boxes(labels: np.ndarray) -> dict[int, np.ndarray]:
  """{id: (x0, y0, x1, y1) float} of every instance of an integer label map (pixel edges)."""
  out = {}
  for idx, sl in enumerate(ndimage.find_objects(labels.astype(np.int64)), start=1):
    if sl is not None:
      out[idx] = np.array([sl[1].start, sl[0].start, sl[1].stop, sl[0].stop], np.float32)
  return out


def _iou_np(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  x0 = np.maximum(a[:, None, 0], b[None, :, 0])
  y0 = np.maximum(a[:, None, 1], b[None, :, 1])
  x1 = np.minimum(a[:, None, 2], b[None, :, 2])
  y1 = np.minimum(a[:, None, 3], b[None, :, 3])
  inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
  area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
  area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
  union = area_a[:, None] + area_b[None, :] - inter
  return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def pa_coverage(pa_boxes, pa_valid, full_labels, annotated_labels,
                iou_threshold: float = 0.5) -> dict:
  """How many unannotated nuclei the PA boxes find (host numpy; for training logs).

  Accepts one image (`pa_boxes [K, 4]`, `pa_valid [K]`, label maps `[H, W]`) or a batch
  (`[B, K, 4]`, `[B, K]`, `[B, H, W]`); counts are summed over the batch.

  Args:
    pa_boxes: float `(x0, y0, x1, y1)` absolute pixels of the canvas.
    pa_valid: bool, True for real PA boxes.
    full_labels: integer label map with EVERY nucleus (`Batch.full_labels`).
    annotated_labels: integer label map of the annotated nuclei (`Batch.labels`).
    iou_threshold: box IoU at which an unannotated nucleus counts as covered (0.5).

  Returns:
    dict of Python numbers:
    - num_pa_boxes: valid PA boxes;
    - num_unannotated: nuclei of `full_labels` that share no pixel with an annotated nucleus;
    - num_covered: those whose box has IoU >= iou_threshold with some valid PA box;
    - coverage: num_covered / num_unannotated, NaN when there is none (aggregate the counts
      across steps rather than averaging this ratio).
  """
  pa_boxes = np.asarray(pa_boxes, np.float32)
  pa_valid = np.asarray(pa_valid, bool)
  full_labels = np.asarray(full_labels)
  annotated_labels = np.asarray(annotated_labels)
  if full_labels.ndim == 2:
    pa_boxes, pa_valid = pa_boxes[None], pa_valid[None]
    full_labels, annotated_labels = full_labels[None], annotated_labels[None]
  num_pa = num_unannotated = num_covered = 0
  for boxes, ok, full, ann in zip(pa_boxes, pa_valid, full_labels, annotated_labels):
    num_pa += int(ok.sum())
    annotated_ids = set(np.unique(full[ann > 0]).tolist()) - {0}
    gt = [box for idx, box in _instance_boxes(full).items() if idx not in annotated_ids]
    num_unannotated += len(gt)
    if gt and ok.any():
      iou = _iou_np(np.stack(gt), boxes[ok])
      num_covered += int(np.sum(iou.max(axis=1) >= iou_threshold))
  coverage = num_covered / num_unannotated if num_unannotated else float("nan")
  return {"num_pa_boxes": num_pa, "num_unannotated": num_unannotated,
          "num_covered": num_covered, "coverage": coverage}


def off_the_edge(boxes: jnp.ndarray, image_size: jnp.ndarray) -> jnp.ndarray:
  """bool `[M]`: boxes (float32 `[M, 4]`, `(x0, y0, x1, y1)` pixel edges) that touch no
  edge of the image `image_size` (int32 `[2]`, height and width: a training crop's).

  A nucleus the crop cuts may keep a sliver whose centre, and so its PA box, lies outside:
  coverage counted over the nuclei off the edge says what the module finds among the
  nuclei it can see whole. A 256-px crop of 30-px nuclei placed at random cuts about a
  third of them (1 - (226 / 286)^2); the log's `pa_unannotated_whole_per_image` beside
  `pa_unannotated_per_image` gives the measured share.
  """
  h, w = image_size[0].astype(boxes.dtype), image_size[1].astype(boxes.dtype)
  return ((boxes[:, 0] > 0) & (boxes[:, 1] > 0) & (boxes[:, 2] < w) & (boxes[:, 3] < h))


def pa_hits_device(pa_boxes: jnp.ndarray, pa_valid: jnp.ndarray, boxes: jnp.ndarray,
                   iou_threshold: float = 0.5) -> jnp.ndarray:
  """bool `[M]`: the `boxes` (float32 `[M, 4]`) that some valid PA box (`[K, 4]`, `[K]`)
  matches with IoU >= threshold; padding rows are not masked (AND with their valid).

  The jittable side of `pa_coverage` for the training log (one image; vmap for a batch):
  `pa_unannotated_covered` counts `hits & Batch.unannotated_valid` over `unannotated_valid`
  (partial/training.py), which is `pa_coverage`'s `num_covered / num_unannotated`."""
  if pa_boxes.shape[0] == 0:
    return jnp.zeros(boxes.shape[:1], bool)
  iou = pairwise_iou(boxes, jax.lax.stop_gradient(pa_boxes))
  return jnp.any((iou >= iou_threshold) & pa_valid[None, :], axis=1)
