"""Greedy non-maximum suppression with static shapes, computed tile by tile.

Result: exactly greedy NMS (torchvision's `nms`, same order) on the valid entries, truncated
to `max_output`. Greedy NMS walks the candidates by descending score; a candidate not yet
suppressed is kept and suppresses every later candidate whose IoU with it is > `iou_threshold`
(strict, as torchvision).

Algorithm (tiled NMS, the shape of scenic's `nms.py`): sort by descending score (ties by
index; padding and NaN scores last, never kept), cut the sorted list into blocks of
`block_size` boxes and visit the blocks in order with a `lax.while_loop`. For each block:
1. Drop the boxes that overlap a box kept in an earlier block: one `[B, K]` IoU matrix
   against a buffer of the boxes kept so far. Only the first K = `max_output` kept boxes
   are ever needed, because the loop stops once K are kept.
2. Resolve the rest inside the block with a fixed-point iteration on the `[B, B]` matrix
   `S[i, j] = (IoU > thr) & (i < j)`: `keep <- cand & ~any(S & keep[:, None], axis=0)`,
   starting from `keep = cand`, until an update changes nothing.
Why step 2 is exact: greedy's answer `g` satisfies `g = f(g)` for that update `f`, and it is
the only fixed point, since entry j of `f(x)` depends only on entries i < j of `x` (induction
on j). For the same reason, after t updates the first t + 1 entries are final, so the
iteration stops after at most B updates, and when it stops it sits on that unique fixed point.
The first update always runs and sits in the block body; the `while_loop` turns only for the
later ones. Their number is the length of the longest chain of suppressions that get undone
(j suppressed by i, itself suppressed by h, ...): zero for a block without overlaps, a few for
real proposals, up to B - 1 for a contrived chain (measured: bench/nms_depth.py).

Sequential depth: at most ceil(N / B) block turns (fewer when K boxes are kept early or only
padding is left) plus the fixed-point turns of each block, instead of one turn per visited
candidate. That matters on accelerators, where every `while_loop` turn is a round trip for the
loop predicate and, vmapped over a batch sharded on `"data"`, a cross-device reduction.

Cost: O(N log N) for the sort plus O(N * (K + B)) IoU work. Memory per image: the `[B, K]`
and `[B, B]` IoU blocks (XLA:CPU materialises them as bool; B = 256, K = 2000: 0.6 M pairs)
and the `[4, K]` buffer; vmap multiplies by the batch. No `[N, N]` matrix is built. Every
block is compared against all K buffer slots, filled or not, so with K = N the work is N^2
like the old loop's (on 2 CPU cores 1.2-1.3x faster at N = K = 10k; with K = 2000, 4.0x at
the default B = 256: `python bench/nms_depth.py` -> bench/results/nms_depth.json).
Under vmap the images run in lock-step: each loop turns as often as its slowest image needs.

Boxes are float32 `(x0, y0, x1, y1)` absolute pixels.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from pa_jax.ops.boxes import box_area

# The smallest tile that keeps 10k RPN-like proposals within N / 128 sequential turns (59 with
# K = N, 50 with K = 2000; B = 128 takes 101 and 84). On 2 CPU cores B = 128 and 256 time
# about the same, B = 512 up to 1.4x slower at N = 10k (likely its `[B, K]` block outgrowing the
# cache); bench/nms_depth.py.
DEFAULT_BLOCK_SIZE = 256


class NmsTurns(NamedTuple):
  """Sequential loop turns one `nms` call took (int32 scalars; one per image under vmap).

  `blocks` counts turns of the outer loop over blocks, `fixed_point` the turns of the
  fixed-point loops inside all blocks together. Their sum is the sequential depth.
  """
  blocks: jnp.ndarray
  fixed_point: jnp.ndarray


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


def _nms_order(scores: jnp.ndarray, valid: jnp.ndarray) -> jnp.ndarray:
  """Like `score_order`, but every invalid entry strictly after every valid one.

  `score_order` gives invalid entries and valid -inf scores the same key, so they interleave;
  the block loop stops at the first block that starts with an invalid entry, which is only
  right if no valid entry follows it.
  """
  n = scores.shape[0]
  invalid = (~valid).astype(jnp.int32)
  # lax.sort treats -0.0 and 0.0 as equal and is stable, so ties stay in index order.
  neg = jnp.where(valid, -scores.astype(jnp.float32), 0.0)
  _, _, order = jax.lax.sort((invalid, neg, jnp.arange(n, dtype=jnp.int32)), num_keys=2,
                             is_stable=True)
  return order


def _iou_above(a: jnp.ndarray, area_a: jnp.ndarray, b_rows: jnp.ndarray, area_b: jnp.ndarray,
               iou_threshold) -> jnp.ndarray:
  """`IoU(a[i], b[j]) > iou_threshold` for boxes `a [M, 4]` and `b_rows [4, P]` (`b.T`).

  Decided as `inter > iou_threshold * union` rather than `inter / union > iou_threshold`:
  a float32 multiply is correctly rounded on every backend, while XLA's GPU division need not
  be (on an H200, 2026-11-30, the division form kept one box fewer than greedy NMS on
  whole-pixel boxes, where IoU ties such as exactly 1/2 are common; the division is its one
  inexact step, and the multiply form passes there). For whole-pixel boxes (exact areas) the two forms
  agree with the float64 ratio for every threshold tested (tests/ops/test_ops_nms.py), and
  the kept set does not change with the tiling. Returns bool `[M, P]`.
  """
  w = jnp.maximum(jnp.minimum(a[:, 2:3], b_rows[2][None]) - jnp.maximum(a[:, 0:1], b_rows[0][None]),
                  0.0)
  h = jnp.maximum(jnp.minimum(a[:, 3:4], b_rows[3][None]) - jnp.maximum(a[:, 1:2], b_rows[1][None]),
                  0.0)
  inter = w * h
  union = area_a[:, None] + area_b[None, :] - inter
  # An empty union (two zero-area boxes) never suppresses: 0 > threshold * 0 is False.
  return (inter > iou_threshold * union) & (union > 0)


def nms_with_turns(boxes: jnp.ndarray, scores: jnp.ndarray, valid: jnp.ndarray,
                   iou_threshold: float, max_output: int, block_size: int = DEFAULT_BLOCK_SIZE
                   ) -> tuple[jnp.ndarray, jnp.ndarray, NmsTurns]:
  """`nms`, plus how many sequential loop turns it took (for tests and bench/nms_depth.py).

  Args:
    As `nms`.

  Returns:
    `(indices [K] int32, valid [K] bool, NmsTurns)`; the first two exactly as `nms`.
  """
  if block_size < 1:
    raise ValueError(f"block_size must be >= 1, got {block_size}")
  n = boxes.shape[0]
  zero = jnp.int32(0)
  if n == 0 or max_output == 0:
    return (jnp.zeros((max_output,), jnp.int32), jnp.zeros((max_output,), bool),
            NmsTurns(zero, zero))
  # A NaN score has no place in the order; treating it as padding keeps the sort total.
  valid = valid.astype(bool) & ~jnp.isnan(scores)
  order = _nms_order(scores, valid)

  b = min(block_size, n)  # N < B: one block of N, no padding to compute on.
  n_blocks = -(-n // b)
  pad = n_blocks * b - n
  sboxes = jnp.pad(boxes.astype(jnp.float32)[order], ((0, pad), (0, 0)))
  blk_boxes = sboxes.reshape(n_blocks, b, 4)
  blk_areas = box_area(sboxes).reshape(n_blocks, b)
  blk_valid = jnp.pad(valid[order], (0, pad)).reshape(n_blocks, b)
  # Buffer of kept boxes: at most K are needed (the loop stops at K), and at most N exist.
  # Stored as coordinate rows `[4, cap]` with their areas: the `[B, cap]` IoU then reads
  # contiguous rows and no area is recomputed per pair, which halves its time on CPU.
  cap = min(max_output, n)
  # Strict upper triangle: only a higher-ranked (earlier) box can suppress a later one.
  later = jnp.arange(b)[:, None] < jnp.arange(b)[None, :]

  def block_cond(state):
    blk, count = state[0], state[1]
    # Sorted valid-first, so a block starting with padding holds nothing but padding.
    live = blk_valid[jnp.minimum(blk, n_blocks - 1), 0]
    return (blk < n_blocks) & (count < max_output) & live

  def block_body(state):
    blk, count, kept_pos, kept_rows, kept_areas, fp_turns = state
    bx, area = blk_boxes[blk], blk_areas[blk]
    # Empty buffer slots hold zero boxes; masked anyway so no slot value can matter.
    filled = jnp.arange(cap) < count
    hit_prev = _iou_above(bx, area, kept_rows, kept_areas, iou_threshold) & filled[None, :]
    cand = blk_valid[blk] & ~jnp.any(hit_prev, axis=1)
    # sup[i, j]: box i, if kept, suppresses box j.
    sup = _iou_above(bx, area, bx.T, area, iou_threshold) & later

    def update(keep):
      return cand & ~jnp.any(sup & keep[:, None], axis=0)

    def fp_body(s):
      keep, _, turns = s
      new = update(keep)
      return new, jnp.any(new != keep), turns + 1

    # The first update always runs, so it sits in the block body; the loop only turns while
    # an update still changes something (no turn at all for a block without overlaps).
    first = update(cand)
    keep, _, fp_turns = jax.lax.while_loop(lambda s: s[1], fp_body,
                                           (first, jnp.any(first != cand), fp_turns))
    # Append this block's kept boxes in score order; slots past the buffer are dropped,
    # which only happens in the last block visited (count reaches K).
    slot = jnp.where(keep, count + jnp.cumsum(keep) - 1, cap)
    kept_pos = kept_pos.at[slot].set(blk * b + jnp.arange(b, dtype=jnp.int32), mode="drop")
    kept_rows = kept_rows.at[:, slot].set(bx.T, mode="drop")
    kept_areas = kept_areas.at[slot].set(area, mode="drop")
    count = count + jnp.sum(keep, dtype=jnp.int32)
    return blk + 1, count, kept_pos, kept_rows, kept_areas, fp_turns

  init = (zero, zero, jnp.zeros((cap,), jnp.int32), jnp.zeros((4, cap), jnp.float32),
          jnp.zeros((cap,), jnp.float32), zero)
  blocks, count, kept_pos, _, _, fp_turns = jax.lax.while_loop(block_cond, block_body, init)
  out_valid = jnp.arange(max_output) < count
  kept_pos = jnp.pad(kept_pos, (0, max_output - cap))
  indices = jnp.where(out_valid, order[kept_pos], 0).astype(jnp.int32)
  return indices, out_valid, NmsTurns(blocks, fp_turns)


def nms(boxes: jnp.ndarray, scores: jnp.ndarray, valid: jnp.ndarray, iou_threshold: float,
        max_output: int, block_size: int = DEFAULT_BLOCK_SIZE
        ) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Greedy NMS of one set of boxes, padded to a fixed number of outputs.

  Args:
    boxes: float32 `[N, 4]` `(x0, y0, x1, y1)` absolute pixels.
    scores: float32 `[N]`. A NaN score counts as padding.
    valid: bool `[N]`; padding (False) is never kept and suppresses nothing.
    iou_threshold: a kept box removes later boxes with IoU strictly greater than this. May
      be a traced scalar.
    max_output: static number K of output slots.
    block_size: static tile size B; changes the speed and the `[B, K]`, `[B, B]` IoU
      blocks' memory, never the result.

  Returns:
    `(indices [K] int32, valid [K] bool)`: indices into the inputs of the kept boxes in
    descending score order (ties by index), then padding (index 0, valid False). Zero-area
    boxes have IoU 0 with everything, so they are kept if valid and never suppress anything.
  """
  indices, out_valid, _ = nms_with_turns(boxes, scores, valid, iou_threshold, max_output,
                                         block_size)
  return indices, out_valid


def batched_nms(boxes: jnp.ndarray, scores: jnp.ndarray, valid: jnp.ndarray,
                iou_threshold: float, max_output: int,
                block_size: int = DEFAULT_BLOCK_SIZE) -> tuple[jnp.ndarray, jnp.ndarray]:
  """`nms` over a batch of images: `boxes [I, N, 4]`, `scores [I, N]`, `valid [I, N]`.

  `iou_threshold`, `max_output` and `block_size` are shared by all images, as in `nms`.

  Returns:
    `(indices [I, K] int32, valid [I, K] bool)`, per image as in `nms`.
  """
  def one(b, s, v, thr):
    return nms(b, s, v, thr, max_output, block_size)
  return jax.vmap(one, in_axes=(0, 0, 0, None))(boxes, scores, valid, iou_threshold)


def grouped_nms(boxes: jnp.ndarray, scores: jnp.ndarray, valid: jnp.ndarray,
                group_ids: jnp.ndarray, iou_threshold: float, max_output: int,
                block_size: int = DEFAULT_BLOCK_SIZE) -> tuple[jnp.ndarray, jnp.ndarray]:
  """NMS applied independently within each group (class or FPN level), merged by score.

  Same result as torchvision's `batched_nms(boxes, scores, idxs)`: boxes of different groups
  never suppress each other. Implemented with torchvision's trick of shifting each group's
  boxes by `group_id * (max_coordinate + 1)` so groups cannot overlap, then one `nms`.

  Args:
    boxes: float32 `[N, 4]` `(x0, y0, x1, y1)` absolute pixels.
    scores: float32 `[N]`; valid: bool `[N]`.
    group_ids: int `[N]`, >= 0.
    iou_threshold: as in `nms`; max_output: static K; block_size: as in `nms`.

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
  return nms(boxes - lo + shift, scores, valid, iou_threshold, max_output, block_size)
