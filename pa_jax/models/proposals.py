"""The per-image stages of Mask R-CNN: anchors per FPN level, RPN targets, proposal
generation, RoI sampling.

Pure functions of ONE image (scenic style), lifted over the batch with `jax.vmap` inside
`jax.shard_map` over "data" by `MaskRCNN` (`pa_jax.ops.per_device.per_image`), so each
device runs the loops (NMS, sampling) of its own images. With the partial-annotation
module, background anchors / RoIs near a PA box become IGNORE (`pa_jax.partial.ignore`).
Boxes are float32 `(x0, y0, x1, y1)` absolute canvas pixels.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from pa_jax.models.spec import ModelSpec
from pa_jax.ops import anchors as anchor_ops
from pa_jax.ops import boxes as box_ops
from pa_jax.ops import nms as nms_ops
from pa_jax.ops.matching import Assignment, match
from pa_jax.ops.sampling import sample_balanced


def level_anchors(
    spec: ModelSpec, canvas_hw: tuple[int, int]
) -> tuple[list[np.ndarray], list[tuple[int, int]]]:
  """Anchors per FPN level (numpy constants) and the level feature shapes."""
  shapes = anchor_ops.feature_shapes(canvas_hw[0], canvas_hw[1], spec.anchor_strides)
  per_level = anchor_ops.generate_anchors(
      shapes, spec.anchor_strides, spec.anchor_sizes, spec.anchor_ratios
  )
  return per_level, shapes


def rpn_targets(
    anchors: jax.Array,
    gt_boxes: jax.Array,
    gt_valid: jax.Array,
    key: jax.Array,
    spec: ModelSpec,
    pa_boxes: jax.Array | None = None,
    pa_valid: jax.Array | None = None,
):
  """Sampled anchors of one image and their objectness / box targets.

  Args:
    anchors: f32 [A, 4]; gt_boxes: f32 [M, 4]; gt_valid: bool [M]; key: PRNG key.
    pa_boxes/pa_valid: f32 [K, 4] / bool [K] — with the partial module, background anchors
      with IoU >= rpn_ignore_iou with a PA box are IGNORED (never sampled as negatives).
  Returns:
    (indices [S] int32, sampled bool [S], is_positive bool [S], box_targets f32 [S, 4],
    ignored_by_pa int32 scalar: negatives turned IGNORE by PA boxes), S = rpn_batch_per_image.
  """
  iou = box_ops.pairwise_iou(gt_boxes, anchors)
  matched, assignment = match(iou, gt_valid, spec.rpn_fg_iou, spec.rpn_bg_iou, True)
  ignored = jnp.int32(0)
  if pa_boxes is not None:
    from pa_jax.partial.ignore import ignore_near_pa_boxes

    before = assignment
    assignment = ignore_near_pa_boxes(assignment, anchors, pa_boxes, pa_valid, spec.rpn_ignore_iou)
    ignored = jnp.sum(assignment != before).astype(jnp.int32)
  idx, sampled = sample_balanced(
      key, assignment, spec.rpn_batch_per_image, spec.rpn_positive_fraction
  )
  positive = sampled & (assignment[idx] == Assignment.POSITIVE)
  targets = box_ops.encode_boxes(gt_boxes[matched[idx]], anchors[idx])
  return idx, sampled, positive, targets, ignored


def generate_proposals(
    objectness: Sequence[jax.Array],
    deltas: Sequence[jax.Array],
    anchors: Sequence[np.ndarray],
    image_hw: jax.Array,
    pre_nms_topk: int,
    post_nms_topk: int,
    nms_iou: float,
    anchors_in_image: bool = False,
):
  """RPN proposals of one image: per-level top-k, decode, clip, per-level NMS, top-k.

  Args:
    objectness: per level f32 [n_l] logits; deltas: per level f32 [n_l, 4];
    anchors: per level [n_l, 4]; image_hw: int32 [2] real image size inside the canvas.
    anchors_in_image: only anchors centred inside the image compete (`model.mask_padding`):
      a bigger canvas then adds no candidate, so the proposals do not depend on it.
  Returns:
    (boxes f32 [P, 4], scores f32 [P] logits, valid bool [P]), P = post_nms_topk, sorted by
    score. Proposals carry no gradient (as in Faster R-CNN's approximate joint training).
  """
  all_boxes, all_scores, all_levels = [], [], []
  for lvl, (obj, dlt, anc) in enumerate(zip(objectness, deltas, anchors)):
    k = min(pre_nms_topk, obj.shape[0])
    if anchors_in_image:
      centre = (np.asarray(anc)[:, :2] + np.asarray(anc)[:, 2:]) / 2  # (x, y), static
      inside = (centre[:, 0] < image_hw[1]) & (centre[:, 1] < image_hw[0])
      obj = jnp.where(inside, obj, -jnp.inf)
    scores, idx = jax.lax.top_k(obj, k)
    boxes = box_ops.decode_deltas(dlt[idx], jnp.asarray(anc)[idx])
    boxes = box_ops.clip_boxes(boxes, image_hw[0], image_hw[1])
    all_boxes.append(boxes)
    all_scores.append(scores)
    all_levels.append(jnp.full((k,), lvl, jnp.int32))
  boxes = jax.lax.stop_gradient(jnp.concatenate(all_boxes))
  scores = jax.lax.stop_gradient(jnp.concatenate(all_scores))
  levels = jnp.concatenate(all_levels)
  wh = boxes[:, 2:] - boxes[:, :2]
  valid = jnp.all(wh > 1e-3, axis=-1) & jnp.isfinite(scores)
  keep, keep_valid = nms_ops.grouped_nms(
      boxes, scores, valid, levels, nms_iou, min(post_nms_topk, boxes.shape[0])
  )
  return boxes[keep], jnp.where(keep_valid, scores[keep], -jnp.inf), keep_valid


def sample_rois(
    rois: jax.Array,
    roi_valid: jax.Array,
    gt_boxes: jax.Array,
    gt_valid: jax.Array,
    key: jax.Array,
    spec: ModelSpec,
    pa_boxes: jax.Array | None = None,
    pa_valid: jax.Array | None = None,
):
  """Samples the RoIs of one image for the box and mask heads.

  Args:
    rois: f32 [R, 4] proposals + ground-truth boxes (+ PA boxes); roi_valid: bool [R].
  Returns:
    (boxes f32 [S, 4], sampled bool [S], positive bool [S], matched_gt int32 [S],
    ignored_by_pa int32 scalar) with the sampled positives first (`sample_balanced`
    order), S = roi_batch_per_image.
  """
  iou = box_ops.pairwise_iou(gt_boxes, rois)
  matched, assignment = match(iou, gt_valid, spec.roi_fg_iou, spec.roi_fg_iou, False)
  ignored = jnp.int32(0)
  if pa_boxes is not None:
    from pa_jax.partial.ignore import ignore_near_pa_boxes

    before = assignment
    assignment = ignore_near_pa_boxes(assignment, rois, pa_boxes, pa_valid, spec.roi_ignore_iou)
    ignored = jnp.sum((assignment != before) & roi_valid).astype(jnp.int32)
  idx, sampled = sample_balanced(
      key, assignment, spec.roi_batch_per_image, spec.roi_positive_fraction, valid=roi_valid
  )
  positive = sampled & (assignment[idx] == Assignment.POSITIVE)
  return rois[idx], sampled, positive, matched[idx], ignored
