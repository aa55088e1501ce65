"""Greedy non-maximum suppression with static shapes.

Algorithm: sort candidates by descending score (padding last, ties by original index), then
walk them in order with a `lax.while_loop`, keeping a boolean "suppressed" vector. A candidate
that is not suppressed when reached is kept and suppresses every candidate whose IoU with it
is > `iou_threshold` (strict, as torchvision). The loop stops as soon as `max_output` boxes are
kept or only padding is left. This gives exactly torchvision's `nms` result (same order) on
the valid entries, truncated to `max_output`.

Complexity: O(N log N) for the sort plus O(N) per visited candidate, i.e. O(N * V) time with
V <= N candidates visited, and O(N) memory: IoUs are computed one row at a time, the N x N
matrix is never built (N = 4000 -> ~0.1 GFLOP, a few ms to tens of ms on CPU). The loop is
sequential, so on accelerators it is latency-bound (one step per visited candidate); vmap over
images runs the images in lock-step.

Boxes are float32 `(x0, y0, x1, y1)` absolute pixels.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pa_jax.ops.boxes import box_area


def score_order(scores: jnp.ndarray, valid: jnp.ndarray) -> jnp.ndarray:
  """Permutation sorting valid entries by descending score, ties by index, padding last.

  Args:
    scores: float `[N]`; valid: bool `[N]`.

  Returns:
    int32 `[N]`.
  """
  # Lexicographic (invalid?, -score, index): argsort is stable, so equal keys keep index order.
  key = jnp.where(valid, -scores.astype(jnp.float32), jnp.inf)
  order = jnp.argsort(key, stable=True)
  # Invalid entries share +inf so keep index order; valid -inf/NaN scores are user errors.
  return order.astype(jnp.int32)


def _iou_one_to_many(box: jnp.ndarray, area: jnp.ndarray, boxes: jnp.ndarray,
                     areas: jnp.ndarray) -> jnp.ndarray:
  w = jnp.maximum(jnp.minimum(box[2], boxes[:, 2]) - jnp.maximum(box[0], boxes[:, 0]), 0.0)
  h = jnp.maximum(jnp.minimum(box[3], boxes[:, 3]) - jnp.maximum(box[1], boxes[:, 1]), 0.0)
  inter = w * h
  union = area + areas - inter
  return jnp.where(union > 0, inter / jnp.where(union > 0, union, 1.0), 0.0)


def nms(boxes: jnp.ndarray, scores: jnp.ndarray, valid: jnp.ndarray, iou_threshold: float,
        max_output: int) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Greedy NMS of one set of boxes, padded to a fixed number of outputs.

  Args:
    boxes: float32 `[N, 4]` `(x0, y0, x1, y1)` absolute pixels.
    scores: float32 `[N]`.
    valid: bool `[N]`; padding (False) is never kept and suppresses nothing.
    iou_threshold: a kept box removes later boxes with IoU strictly greater than this. May
      be a traced scalar.
    max_output: static number K of output slots.

  Returns:
    `(indices [K] int32, valid [K] bool)`: indices into the inputs of the kept boxes in
    descending score order, then padding (index 0, valid False). Zero-area boxes have IoU 0
    with everything, so they are kept if valid and never suppress anything.
  """
  n = boxes.shape[0]
  if n == 0 or max_output == 0:
    return jnp.zeros((max_output,), jnp.int32), jnp.zeros((max_output,), bool)
  valid = valid.astype(bool)
  order = score_order(scores, valid)
  sboxes = boxes.astype(jnp.float32)[order]
  svalid = valid[order]
  sareas = box_area(sboxes)

  def cond(state):
    i, _, _, count = state
    return (i < n) & (count < max_output) & svalid[jnp.minimum(i, n - 1)]

  def body(state):
    i, suppressed, kept, count = state
    keep = ~suppressed[i]
    iou = _iou_one_to_many(sboxes[i], sareas[i], sboxes, sareas)
    suppressed = suppressed | (keep & (iou > iou_threshold))
    # `count` < max_output inside the loop, so the write is in bounds; a non-kept candidate
    # rewrites the slot with its old value.
    kept = kept.at[count].set(jnp.where(keep, i, kept[count]))
    return i + 1, suppressed, kept, count + keep.astype(jnp.int32)

  init = (jnp.int32(0), jnp.zeros((n,), bool), jnp.zeros((max_output,), jnp.int32),
          jnp.int32(0))
  _, _, kept, count = jax.lax.while_loop(cond, body, init)
  out_valid = jnp.arange(max_output) < count
  indices = jnp.where(out_valid, order[kept], 0).astype(jnp.int32)
  return indices, out_valid


def batched_nms(boxes: jnp.ndarray, scores: jnp.ndarray, valid: jnp.ndarray,
                iou_threshold: float, max_output: int) -> tuple[jnp.ndarray, jnp.ndarray]:
  """`nms` over a batch of images: `boxes [B, N, 4]`, `scores [B, N]`, `valid [B, N]`.

  Returns:
    `(indices [B, K] int32, valid [B, K] bool)`, per image as in `nms`.
  """
  return jax.vmap(nms, in_axes=(0, 0, 0, None, None))(boxes, scores, valid, iou_threshold,
                                                       max_output)


def grouped_nms(boxes: jnp.ndarray, scores: jnp.ndarray, valid: jnp.ndarray,
                group_ids: jnp.ndarray, iou_threshold: float,
                max_output: int) -> tuple[jnp.ndarray, jnp.ndarray]:
  """NMS applied independently within each group (class or FPN level), merged by score.

  Same result as torchvision's `batched_nms(boxes, scores, idxs)`: boxes of different groups
  never suppress each other. Implemented with torchvision's trick of shifting each group's
  boxes by `group_id * (max_coordinate + 1)` so groups cannot overlap, then one `nms`.

  Args:
    boxes: float32 `[N, 4]` `(x0, y0, x1, y1)` absolute pixels.
    scores: float32 `[N]`; valid: bool `[N]`.
    group_ids: int `[N]`, >= 0.
    iou_threshold: as in `nms`; max_output: static K.

  Returns:
    `(indices [K] int32, valid [K] bool)` as in `nms`, over all groups in descending score.
    With many groups over a large span the shifted coordinates lose float32 precision
    (~1e-7 relative), which can flip an IoU lying within that of the threshold, as in
    torchvision. Fine for the 5 FPN levels or a few classes.
  """
  boxes = boxes.astype(jnp.float32)
  valid = valid.astype(bool)
  # Span of all valid coordinates; shifting by more than it separates the groups. The
  # minimum is subtracted first so negative coordinates are handled too.
  lo = jnp.min(jnp.where(valid[:, None], boxes, jnp.inf), initial=jnp.inf)
  hi = jnp.max(jnp.where(valid[:, None], boxes, -jnp.inf), initial=-jnp.inf)
  lo = jnp.where(jnp.isfinite(lo), lo, 0.0)
  span = jnp.where(jnp.isfinite(hi), hi - lo, 0.0) + 1.0
  shift = (group_ids.astype(jnp.float32) * span)[:, None]
  return nms(boxes - lo + shift, scores, valid, iou_threshold, max_output)
