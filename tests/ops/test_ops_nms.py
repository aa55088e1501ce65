"""Tests of pa_jax.ops.nms against greedy NMS written independently in Python and numpy.

The references sort, compute IoU and suppress on their own, in float64, one candidate at a
time (the textbook loop); nothing is shared with the tiled implementation. Large random cases
use whole-pixel coordinates: then intersections and unions are exact small integers in both
float32 and float64, and no IoU can land between float32(thr) and thr, so the two precisions
agree on every comparison and the kept lists must be equal, not merely close.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pa_jax.ops.nms import batched_nms, grouped_nms, nms, nms_with_turns


def iou_one(p, q):
  iw = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
  ih = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
  inter = iw * ih
  union = (p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - inter
  return inter / union if union > 0 else 0.0


def ref_nms(boxes, scores, valid, thr, k, groups=None):
  """Pure-Python greedy NMS; NaN scores count as padding."""
  cand = [i for i in range(len(boxes)) if valid[i] and not math.isnan(scores[i])]
  cand.sort(key=lambda i: (-scores[i], i))
  kept = []
  for i in cand:
    if all(iou_one(boxes[i], boxes[j]) <= thr or (groups is not None and groups[i] != groups[j])
           for j in kept):
      kept.append(i)
  return kept[:k]


def ref_nms_np(boxes, scores, valid, thr, k, groups=None):
  """The same greedy loop with one numpy IoU row per kept box, fast enough for N = 10k."""
  boxes = np.asarray(boxes, np.float64)
  scores = np.asarray(scores, np.float64)
  cand = np.flatnonzero(np.asarray(valid, bool) & ~np.isnan(scores))
  cand = cand[np.lexsort((cand, -scores[cand]))]  # Last key first: -score, then index.
  area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
  suppressed = np.zeros(len(boxes), bool)
  kept = []
  for i in cand:
    if len(kept) == k:
      break
    if suppressed[i]:
      continue
    kept.append(int(i))
    iw = np.maximum(np.minimum(boxes[i, 2], boxes[:, 2]) - np.maximum(boxes[i, 0], boxes[:, 0]),
                    0.0)
    ih = np.maximum(np.minimum(boxes[i, 3], boxes[:, 3]) - np.maximum(boxes[i, 1], boxes[:, 1]),
                    0.0)
    inter = iw * ih
    union = area[i] + area - inter
    iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
    hit = iou > thr
    if groups is not None:
      hit &= groups == groups[i]
    suppressed |= hit
  return kept


def random_case(rng, n, zero_frac=0.1):
  xy = rng.uniform(0, 60, (n, 2))
  wh = rng.uniform(2, 20, (n, 2))
  wh[rng.uniform(size=n) < zero_frac] = 0.0
  boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
  scores = rng.uniform(size=n).astype(np.float32)
  scores[:4] = scores[4]  # some ties
  return boxes, scores


def pixel_case(rng, n, span=100, zero_frac=0.05, tie_frac=0.2, dup_frac=0.1):
  """Whole-pixel boxes with zero-area boxes, duplicated boxes and tied scores mixed in."""
  xy = rng.integers(0, span, (n, 2))
  wh = rng.integers(1, 25, (n, 2))
  wh[rng.uniform(size=n) < zero_frac, rng.integers(0, 2)] = 0
  boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
  dup = rng.uniform(size=n) < dup_frac
  boxes[dup] = boxes[rng.integers(0, n, dup.sum())]
  # Scores on a coarse grid so many are tied exactly.
  scores = (rng.integers(0, max(2, int(n * (1 - tie_frac))), n) / 7.0).astype(np.float32)
  return boxes, scores


def rpn_like_case(rng, n, canvas=384, n_objects=150):
  """bench/nms_depth.py's RPN-like proposals, rounded to whole pixels (module docstring)."""
  import nms_depth  # bench/ is on sys.path (tests/conftest.py)

  boxes, scores = nms_depth.rpn_like_boxes(rng, n, canvas, n_objects)
  return np.round(boxes), scores


def check(result, ref, k):
  idx, ok = np.asarray(result[0]), np.asarray(result[1])
  assert idx.shape == (k,) and ok.shape == (k,) and idx.dtype == np.int32
  np.testing.assert_array_equal(ok, np.arange(k) < len(ref))
  np.testing.assert_array_equal(idx[ok], ref)
  assert np.all(idx[~ok] == 0)


jit_turns = jax.jit(nms_with_turns, static_argnames=("max_output", "block_size"))


def jit_nms(*args, **kwargs):
  # `nms` is `nms_with_turns` minus the counts; one jitted function shares the compile cache.
  return jit_turns(*args, **kwargs)[:2]
jit_grouped = jax.jit(grouped_nms, static_argnames=("max_output", "block_size"))


def test_three_boxes_by_hand():
  boxes = jnp.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], jnp.float32)
  scores = jnp.array([0.8, 0.9, 0.7])
  fn = jax.jit(nms, static_argnums=(4,))
  idx, ok = fn(boxes, scores, jnp.ones(3, bool), 0.5, 4)
  np.testing.assert_array_equal(idx, [1, 2, 0, 0])
  np.testing.assert_array_equal(ok, [True, True, False, False])
  # IoU(0, 1) = 81 / 119 = 0.68: a higher threshold keeps all three, in score order.
  idx, ok = fn(boxes, scores, jnp.ones(3, bool), 0.7, 3)
  np.testing.assert_array_equal(idx, [1, 0, 2])
  # Padding is neither kept nor suppresses.
  idx, ok = fn(boxes, scores, jnp.array([True, False, True]), 0.5, 3)
  np.testing.assert_array_equal(idx[ok], [0, 2])


@pytest.mark.parametrize("thr,k", [(0.5, 30), (0.3, 8), (0.7, 100)])
def test_against_reference(thr, k):
  rng = np.random.default_rng(int(thr * 10) + k)
  fn = jax.jit(nms, static_argnums=(4,))
  for trial in range(4):
    boxes, scores = random_case(rng, 80)
    valid = rng.uniform(size=80) < 0.85
    if trial == 0:
      valid[:] = False
    result = fn(boxes, scores, valid, thr, k)
    check(result, ref_nms(boxes, scores, valid, thr, k), k)


def test_references_agree():
  # The numpy reference stands in for the Python one on large inputs, so it must agree.
  rng = np.random.default_rng(11)
  for n, thr in [(60, 0.5), (150, 0.3), (200, 0.7)]:
    boxes, scores = pixel_case(rng, n)
    valid = rng.uniform(size=n) < 0.9
    groups = rng.integers(0, 3, n)
    for k in (5, n):
      assert ref_nms_np(boxes, scores, valid, thr, k) == ref_nms(boxes, scores, valid, thr, k)
      assert (ref_nms_np(boxes, scores, valid, thr, k, groups)
              == ref_nms(boxes, scores, valid, thr, k, groups))


@pytest.mark.parametrize("n,block,k", [(80, 256, 80), (300, 64, 300), (300, 64, 30),
                                       (256, 64, 256), (37, 7, 37), (50, 1, 50),
                                       (513, 512, 513)])
def test_random_blocks_against_reference(n, block, k):
  # N < B, N a multiple of B, N not a multiple (padded last block), B = 1 (the old loop); K
  # above and below the number kept. The threshold is traced: one compile serves all three.
  rng = np.random.default_rng(n * 31 + block + k)
  for thr in (0.3, 0.5, 0.7):
    boxes, scores = pixel_case(rng, n)
    valid = rng.uniform(size=n) < 0.9
    ref = ref_nms_np(boxes, scores, valid, thr, k)
    check(jit_nms(boxes, scores, valid, thr, max_output=k, block_size=block), ref, k)


@pytest.mark.parametrize("block", [128, 256, 1000])
def test_10k_boxes_against_reference(block):
  rng = np.random.default_rng(block)
  n = 10_000
  boxes, scores = rpn_like_case(rng, n)
  valid = rng.uniform(size=n) < 0.98
  ref = ref_nms_np(boxes, scores, valid, 0.7, 2000)
  check(jit_nms(boxes, scores, valid, 0.7, max_output=2000, block_size=block), ref, 2000)


def test_ties_keep_index_order():
  # Equal scores: the lower index ranks first, so it is the one kept among duplicates.
  boxes = np.array([[0, 0, 10, 10]] * 4 + [[50, 50, 60, 60]] * 3, np.float32)
  scores = np.array([0.5, 0.5, 0.9, 0.5, 0.7, 0.7, 0.7], np.float32)
  for block in (1, 3, 256):
    idx, ok = jit_nms(boxes, scores, np.ones(7, bool), 0.5, max_output=7, block_size=block)
    np.testing.assert_array_equal(np.asarray(idx)[np.asarray(ok)], [2, 4])
  # Ties between boxes that do not overlap: all kept, in index order.
  boxes = np.array([[i * 20, 0, i * 20 + 10, 10] for i in range(9)], np.float32)
  idx, ok = jit_nms(boxes, np.full(9, 0.3, np.float32), np.ones(9, bool), 0.5, max_output=9,
                    block_size=4)
  np.testing.assert_array_equal(idx, np.arange(9))
  assert np.all(ok)


def test_duplicates_suppress_at_any_threshold_below_one():
  # A duplicate has IoU exactly 1: removed for every threshold < 1, kept at threshold 1.
  boxes = np.array([[3, 3, 9, 9]] * 5, np.float32)
  scores = np.array([0.1, 0.5, 0.3, 0.5, 0.2], np.float32)
  for thr in (0.0, 0.5, 0.99):
    idx, ok = jit_nms(boxes, scores, np.ones(5, bool), thr, max_output=5, block_size=2)
    np.testing.assert_array_equal(np.asarray(idx)[np.asarray(ok)], [1])
  idx, ok = jit_nms(boxes, scores, np.ones(5, bool), 1.0, max_output=5, block_size=2)
  np.testing.assert_array_equal(idx, [1, 3, 2, 4, 0])


def test_zero_area_boxes_are_kept_and_suppress_nothing():
  boxes = np.array([[5, 5, 5, 5], [5, 5, 5, 5], [0, 0, 10, 10], [4, 4, 4, 9], [0, 0, 0, 0]],
                   np.float32)
  scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5], np.float32)
  for block in (1, 2, 256):
    idx, ok = jit_nms(boxes, scores, np.ones(5, bool), 0.0, max_output=5, block_size=block)
    np.testing.assert_array_equal(idx, [0, 1, 2, 3, 4])
    assert np.all(ok)


def test_iou_equal_to_threshold_keeps_both():
  boxes = jnp.array([[0, 0, 2, 1], [0, 0, 1, 1]], jnp.float32)  # IoU = 1/2, exact in float32
  idx, ok = nms(boxes, jnp.array([0.9, 0.8]), jnp.ones(2, bool), 0.5, 2)
  assert ok.all()
  # Just below the IoU, the second box goes.
  idx, ok = jit_nms(boxes, jnp.array([0.9, 0.8]), jnp.ones(2, bool), 0.4999, max_output=2)
  np.testing.assert_array_equal(ok, [True, False])


def test_all_invalid_and_max_output_zero():
  rng = np.random.default_rng(5)
  boxes, scores = pixel_case(rng, 300)
  for block in (64, 512):
    idx, ok, turns = jit_turns(boxes, scores, np.zeros(300, bool), 0.5, max_output=20,
                               block_size=block)
    assert not np.any(ok) and np.all(idx == 0) and idx.shape == (20,)
    assert int(turns.blocks) == 0  # Sorted padding-first block: the loop never turns.
  idx, ok = jit_nms(boxes, scores, np.ones(300, bool), 0.5, max_output=0)
  assert idx.shape == (0,) and ok.shape == (0,)


def test_k_smaller_than_kept_stops_early():
  rng = np.random.default_rng(6)
  boxes, scores = pixel_case(rng, 2000, span=400)
  valid = np.ones(2000, bool)
  full = ref_nms_np(boxes, scores, valid, 0.5, 2000)
  assert len(full) > 300
  rank = np.empty(2000, int)
  rank[np.lexsort((np.arange(2000), -scores))] = np.arange(2000)
  for k in (1, 7, 300):
    idx, ok, turns = jit_turns(boxes, scores, valid, 0.5, max_output=k, block_size=64)
    check((idx, ok), full[:k], k)
    # The loop stops after the block holding the K-th kept box; later blocks are never visited.
    assert int(turns.blocks) == rank[full[k - 1]] // 64 + 1


def test_nan_and_infinite_scores():
  # A NaN score is padding: never kept, suppresses nothing. -inf is a valid lowest score.
  boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [0, 0, 9, 9], [30, 30, 40, 40],
                    [31, 31, 40, 40], [60, 60, 70, 70]], np.float32)
  scores = np.array([np.nan, 0.5, np.nan, -np.inf, np.inf, -np.inf], np.float32)
  valid = np.ones(6, bool)
  for block in (1, 2, 256):
    idx, ok = jit_nms(boxes, scores, valid, 0.5, max_output=6, block_size=block)
    ref = ref_nms(boxes, scores, valid, 0.5, 6)
    assert ref == [4, 1, 5]
    check((idx, ok), ref, 6)
  idx, ok = jit_nms(boxes, np.full(6, np.nan, np.float32), valid, 0.5, max_output=3)
  assert not np.any(ok)


def test_long_suppression_chain():
  # Boxes shifted one pixel each, descending score: each overlaps its neighbour with IoU 9/11
  # and the next-but-one with 8/12, so at 0.7 greedy keeps every second box. Inside one block
  # this is the fixed point's worst case: each update settles one more link of the chain.
  n = 40
  boxes = np.array([[i, 0, i + 10, 10] for i in range(n)], np.float32)
  scores = np.linspace(1, 0, n).astype(np.float32)
  for block in (1, 8, 64):
    idx, ok, turns = jit_turns(boxes, scores, np.ones(n, bool), 0.7, max_output=n,
                               block_size=block)
    check((idx, ok), list(range(0, n, 2)), n)
  # The worst case for depth (about one turn per box of the block), and still exact.
  assert int(turns.fixed_point) >= n // 2 - 1


@pytest.mark.parametrize("block", [16, 256])
def test_batched_and_grouped(block):
  rng = np.random.default_rng(3)
  boxes, scores, valid, groups = [], [], [], []
  for _ in range(3):
    b, s = random_case(rng, 50)
    boxes.append(b)
    scores.append(s)
    valid.append(rng.uniform(size=50) < 0.9)
    groups.append(rng.integers(0, 3, 50))
  boxes, scores, valid, groups = map(np.stack, (boxes, scores, valid, groups))
  fn = jax.jit(batched_nms, static_argnames=("max_output", "block_size"))
  idx, ok = fn(boxes, scores, valid, 0.4, max_output=20, block_size=block)
  assert idx.shape == (3, 20)
  for b in range(3):
    check((idx[b], ok[b]), ref_nms(boxes[b], scores[b], valid[b], 0.4, 20), 20)
  for b in range(3):
    result = jit_grouped(boxes[b] - 30.0, scores[b], valid[b], groups[b], 0.4, max_output=40,
                         block_size=block)
    check(result, ref_nms(boxes[b], scores[b], valid[b], 0.4, 40, groups[b]), 40)


@pytest.mark.parametrize("n,block,k", [(1000, 128, 1000), (3000, 256, 300)])
def test_grouped_large_against_reference(n, block, k):
  rng = np.random.default_rng(n + block)
  boxes, scores = rpn_like_case(rng, n)
  valid = rng.uniform(size=n) < 0.95
  levels = rng.integers(0, 5, n)  # As the RPN: one group per FPN level.
  ref = ref_nms_np(boxes, scores, valid, 0.7, k, levels)
  check(jit_grouped(boxes, scores, valid, levels, 0.7, max_output=k, block_size=block), ref, k)


def test_groups_never_suppress_each_other():
  boxes = np.array([[0, 0, 10, 10]] * 4, np.float32)
  scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
  idx, ok = jit_grouped(boxes, scores, np.ones(4, bool), np.array([0, 1, 0, 2]), 0.5,
                        max_output=4, block_size=2)
  np.testing.assert_array_equal(np.asarray(idx)[np.asarray(ok)], [0, 1, 3])


def test_vmapped_turns_are_per_image():
  rng = np.random.default_rng(8)
  boxes, scores = zip(*(pixel_case(rng, 500, span=300) for _ in range(2)))
  boxes, scores = np.stack(boxes), np.stack(scores)
  valid = np.ones((2, 500), bool)
  valid[1, 100:] = False  # The second image ends after two blocks of 64.
  fn = jax.jit(jax.vmap(nms_with_turns, in_axes=(0, 0, 0, None, None, None)),
               static_argnums=(4, 5))
  idx, ok, turns = fn(boxes, scores, valid, 0.5, 500, 64)
  assert turns.blocks.tolist() == [8, 2]
  for b in range(2):
    check((idx[b], ok[b]), ref_nms_np(boxes[b], scores[b], valid[b], 0.5, 500), 500)


def test_empty_inputs():
  idx, ok = nms(jnp.zeros((0, 4)), jnp.zeros((0,)), jnp.zeros((0,), bool), 0.5, 5)
  assert idx.shape == (5,) and not np.any(ok)
  idx, ok = grouped_nms(jnp.zeros((4, 4)), jnp.zeros((4,)), jnp.zeros((4,), bool),
                        jnp.zeros((4,), jnp.int32), 0.5, 3)
  assert not np.any(ok)


@pytest.mark.parametrize("k", [2000, 10_000])
def test_sequential_depth_on_10k_proposals(k):
  # The point of the tiling (issue target): at most N / 128 sequential loop turns on RPN-sized
  # inputs with the default block size, where the old loop took one turn per candidate.
  n = 10_000
  boxes, scores = rpn_like_case(np.random.default_rng(0), n)
  idx, ok, turns = jit_turns(boxes, scores, np.ones(n, bool), 0.7, max_output=k)
  check((idx, ok), ref_nms_np(boxes, scores, np.ones(n, bool), 0.7, k), k)
  depth = int(turns.blocks) + int(turns.fixed_point)
  assert depth <= n / 128, turns


def test_whole_pixel_iou_decisions_equal_the_exact_ratio():
  # Every (intersection, union) pair of whole-pixel areas up to 400: box a = [0,0,u,1] and
  # b = [0,0,i,1] overlap by min(u, i) over max(u, i). The decision must be the exact
  # (float64) ratio's, including IoU == threshold exactly (1/2, 3/10, 7/10 ...): a GPU's
  # inexact float32 division once flipped such a tie (docs/performance.md).
  from pa_jax.ops.nms import _iou_above

  sides = np.arange(0, 401, dtype=np.float32)
  boxes = np.stack([np.zeros_like(sides), np.zeros_like(sides), sides, np.ones_like(sides)], 1)
  area = sides.copy()
  lo, hi = np.minimum.outer(sides, sides), np.maximum.outer(sides, sides)
  for thr in (0.05, 0.3, 0.5, 0.7, 0.9):
    got = np.asarray(jax.jit(_iou_above)(boxes, area, boxes.T, area, np.float32(thr)))
    ratio = np.where(hi > 0, lo.astype(np.float64) / np.where(hi > 0, hi, 1), 0.0)
    np.testing.assert_array_equal(got, ratio > thr)
