"""IoU-based matching of predictions (anchors, proposals) to ground truth.

Semantics follow detectron2's `Matcher` with thresholds `[low, high]` and labels
`[NEGATIVE, IGNORE, POSITIVE]`:
- max IoU < low           -> NEGATIVE
- low <= max IoU < high   -> IGNORE (empty band when low == high, as in the RoI heads)
- max IoU >= high         -> POSITIVE
Padded ground truth (`gt_valid` False) takes no part at all. Shapes are static.
"""

from __future__ import annotations

import jax.numpy as jnp


class Assignment:
  """Per-prediction training role (int32 values)."""
  IGNORE = -1
  NEGATIVE = 0
  POSITIVE = 1


def match(iou: jnp.ndarray, gt_valid: jnp.ndarray, high_threshold: float,
          low_threshold: float, allow_low_quality_matches: bool) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Assigns each prediction to its best ground truth and to a training role.

  Args:
    iou: float32 `[N_gt, M]`, IoU of each ground-truth box with each prediction (e.g. from
      `boxes.pairwise_iou(gt_boxes, anchors)`). Rows of padded ground truth may hold anything.
    gt_valid: bool `[N_gt]`, True for real ground truth.
    high_threshold: IoU at or above which a prediction is POSITIVE (RPN 0.7, RoI 0.5).
    low_threshold: IoU below which a prediction is NEGATIVE (RPN 0.3, RoI 0.5).
    allow_low_quality_matches: if True, for every valid ground truth the predictions with the
      highest IoU with it (ties included) become POSITIVE even below `high_threshold`, as in
      detectron2 (RPN). Their `matched_gt_index` stays their own best ground truth. Unlike
      detectron2, a ground truth whose best IoU is 0 promotes nothing (detectron2 would make
      every prediction that does not touch it positive).

  Returns:
    `(matched_gt_index [M] int32, assignment [M] int32)`: the index of the highest-IoU valid
    ground truth (first on ties; 0 when there is no valid ground truth; only meaningful where
    assignment is POSITIVE), and an `Assignment` value. With no valid ground truth every
    prediction is NEGATIVE.
  """
  if low_threshold > high_threshold:
    raise ValueError(f"low_threshold {low_threshold} > high_threshold {high_threshold}")
  gt_valid = gt_valid.astype(bool)
  # -1 is below any real IoU, so padded rows can never be the max nor reach a threshold.
  masked = jnp.where(gt_valid[:, None], iou.astype(jnp.float32), -1.0)
  n_gt, m = masked.shape
  if n_gt == 0:
    return (jnp.zeros((m,), jnp.int32), jnp.full((m,), Assignment.NEGATIVE, jnp.int32))
  best = jnp.max(masked, axis=0)
  # argmax as "first row equal to the max": two plain reductions (max, min), which XLA:CPU
  # vectorises; its (value, index) argmax reduction was the single slowest op of the
  # CPU-sized train step (anchors x 256 ground-truth slots; docs/performance.md).
  rows = jnp.arange(n_gt, dtype=jnp.int32)[:, None]
  matched = jnp.min(jnp.where(masked == best[None, :], rows, n_gt - 1), axis=0)
  assignment = jnp.where(best >= high_threshold, Assignment.POSITIVE,
                         jnp.where(best >= low_threshold, Assignment.IGNORE,
                                   Assignment.NEGATIVE)).astype(jnp.int32)
  if allow_low_quality_matches:
    best_per_gt = jnp.max(masked, axis=1, keepdims=True)  # [N_gt, 1]
    is_best = (masked == best_per_gt) & (best_per_gt > 0) & gt_valid[:, None]
    assignment = jnp.where(jnp.any(is_best, axis=0), Assignment.POSITIVE, assignment)
  # Without any valid ground truth `best` is -1 -> NEGATIVE already, even if low_threshold <= -1
  # were passed; make it explicit for any threshold.
  assignment = jnp.where(jnp.any(gt_valid), assignment, Assignment.NEGATIVE).astype(jnp.int32)
  return matched, assignment
