"""masks_to_label_map's mask-overlap suppression (`overlap_threshold`): hand cases, the old
map bit for bit when off, the window path, and a numpy reference of the rule."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pa_jax.ops import masks as M


@functools.lru_cache(maxsize=None)
def label_map_fn(h, w, overlap, window=None):
  """Jitted masks_to_label_map at a static size, mask cut 0.5 and overlap threshold."""
  return jax.jit(lambda m, b, sc, v: M.masks_to_label_map(
      m, b, sc, v, h, w, 0.5, window=window, overlap_threshold=overlap))


def boxes_map(boxes, scores, h, w, overlap, valid=None):
  """Label map of full-ones masks on integer boxes. With at least one mask cell per pixel
  (sides <= 16 here) each covers exactly its box's pixels: the edge pixels' centres sample
  no padding."""
  boxes = np.asarray(boxes, np.float32)
  valid = np.ones(len(boxes), bool) if valid is None else np.asarray(valid)
  masks = np.ones((len(boxes), 16, 16), np.float32)
  return np.asarray(label_map_fn(h, w, overlap)(masks, boxes, np.asarray(scores, np.float32),
                                                valid))


def ref_overlap_map(probs, scores, valid, overlap):
  """The rule in numpy: by descending score (ties: lower index first), a detection whose
  thresholded mask has `claimed >= overlap * area` pixels already painted is dropped, else
  it paints its unclaimed pixels with label rank + 1. probs: [R, H, W] pasted masks."""
  order = sorted(np.flatnonzero(valid), key=lambda i: (-scores[i], i))
  lm = np.zeros(probs.shape[1:], np.int32)
  for k, i in enumerate(order):
    on = probs[i] >= 0.5
    area, claimed = on.sum(), (on & (lm > 0)).sum()
    # float32 as the op compares, so that a ratio on the threshold is decided alike
    if np.float32(claimed) < np.float32(overlap) * np.float32(area):
      lm[on & (lm == 0)] = k + 1
  return lm


def random_detections(rng, r, h, w, s, max_side):
  """Masks [R, S, S] and boxes [R, 4] with many overlaps; box 0 has zero width."""
  masks = rng.uniform(size=(r, s, s)).astype(np.float32)
  xy = rng.uniform(-2, [w - 3, h - 3], (r, 2))
  boxes = np.concatenate([xy, xy + rng.uniform(2, max_side, (r, 2))], 1).astype(np.float32)
  boxes[0, 2] = boxes[0, 0]
  return masks, boxes


def random_scored(rng, r, h, w, s, max_side):
  """`random_detections` plus uniform float32 scores, drawn in that order."""
  masks, boxes = random_detections(rng, r, h, w, s, max_side)
  return masks, boxes, rng.uniform(size=r).astype(np.float32)


def test_lower_scoring_box_mostly_inside_a_bigger_one_is_dropped():
  # Big 12 x 12 (score 0.9); small 8 x 8 (0.5) with 36 of its 64 pixels inside the big.
  boxes, scores = [[2, 2, 14, 14], [8, 8, 16, 16]], [0.9, 0.5]
  before = boxes_map(boxes, scores, 18, 18, None)
  after = boxes_map(boxes, scores, 18, 18, 0.5)
  want = np.zeros((18, 18), np.int32)
  want[2:14, 2:14] = 1
  np.testing.assert_array_equal(after, want)
  # Today the small one keeps its L-shaped remainder outside the big one.
  assert (before == 2).sum() == 64 - 36
  np.testing.assert_array_equal(before[before != 2], want[before != 2])


def test_higher_scoring_box_inside_a_bigger_one_follows_the_score():
  # A small high-scoring box inside a big one claims 16 of its 144 pixels: the big one
  # stays, with the hole (the rule follows the score, not the size).
  boxes, scores = [[2, 2, 14, 14], [5, 5, 9, 9]], [0.5, 0.9]
  want = np.full((16, 16), 0, np.int32)
  want[2:14, 2:14] = 2
  want[5:9, 5:9] = 1
  for overlap in (None, 0.5):
    np.testing.assert_array_equal(boxes_map(boxes, scores, 16, 16, overlap), want)
  # Only a threshold under the claimed fraction (16 / 144 = 0.11) drops the big one.
  dropped = boxes_map(boxes, scores, 16, 16, 0.1)
  np.testing.assert_array_equal(dropped, np.where(want == 1, 1, 0))
  # A higher-scoring box covering 30 of a lower one's 36 pixels: the sliver left goes.
  boxes, scores = [[2, 2, 8, 8], [2, 2, 7, 8]], [0.5, 0.9]
  after = boxes_map(boxes, scores, 10, 10, 0.5)
  assert set(np.unique(after)) == {0, 1} and (after == 1).sum() == 30
  assert (boxes_map(boxes, scores, 10, 10, None) == 2).sum() == 6


def test_half_overlapping_nuclei_both_stay():
  # 40 of B's 100 pixels lie in A: under 0.5, so B keeps its other 60.
  boxes, scores = [[0, 0, 10, 10], [0, 6, 10, 16]], [0.9, 0.8]
  after = boxes_map(boxes, scores, 16, 12, 0.5)
  np.testing.assert_array_equal(after, boxes_map(boxes, scores, 16, 12, None))
  assert (after == 1).sum() == 100 and (after == 2).sum() == 60
  # ... and at 0.35 (claimed 40 >= 35) B goes.
  assert (boxes_map(boxes, scores, 16, 12, 0.35) == 2).sum() == 0


def test_no_detections_all_invalid_and_zero_area():
  empty = M.masks_to_label_map(jnp.zeros((0, 4, 4)), jnp.zeros((0, 4)), jnp.zeros((0,)),
                               jnp.zeros((0,), bool), 6, 7, overlap_threshold=0.5)
  np.testing.assert_array_equal(empty, np.zeros((6, 7)))
  boxes, scores = [[0, 0, 4, 4], [1, 1, 5, 5]], [0.9, 0.8]
  np.testing.assert_array_equal(boxes_map(boxes, scores, 6, 6, 0.5, valid=[False, False]), 0)
  # A zero-area box (rank 0, the highest score) paints nothing and claims nothing.
  boxes, scores = [[3, 3, 3, 6], [0, 0, 4, 4], [2, 2, 7, 7]], [0.99, 0.9, 0.8]
  got = boxes_map(boxes, scores, 8, 8, 0.5)
  np.testing.assert_array_equal(got, boxes_map(boxes[1:], scores[1:], 8, 8, 0.5) + (got > 0))
  assert set(np.unique(got)) == {0, 2, 3} and (got == 2).sum() == 16
  assert (got == 3).sum() == 25 - 4  # 4 of its 25 pixels claimed: kept


@pytest.mark.parametrize("window", [None, 16])
def test_threshold_one_is_the_old_map_bit_for_bit(window):
  h, w, s, r = 24, 21, 5, 12
  for seed in range(3):
    rng = np.random.default_rng(seed)
    masks, boxes, scores = random_scored(rng, r, h, w, s, 9.0)
    scores[3] = scores[4]  # a tie
    valid = rng.uniform(size=r) > 0.15
    args = (masks, boxes, scores, valid)
    old = np.asarray(label_map_fn(h, w, None, window)(*args))
    np.testing.assert_array_equal(label_map_fn(h, w, 1.0, window)(*args), old)
    assert len(np.unique(old)) > 4


def test_window_path_equals_full_path():
  # Boxes of at most 9 px: inside the 16-px window ((16 - 3) / (1 + 2 / 5) = 9.3 px).
  h, w, s, r = 40, 37, 5, 16
  rng = np.random.default_rng(7)
  masks, boxes, scores = random_scored(rng, r, h, w, s, 9.0)
  valid = np.ones(r, bool)
  for overlap in (0.3, 0.6):
    full = np.asarray(label_map_fn(h, w, overlap)(masks, boxes, scores, valid))
    win = np.asarray(label_map_fn(h, w, overlap, 16)(masks, boxes, scores, valid))
    np.testing.assert_array_equal(win, full)


def test_against_numpy_reference_under_jit_and_vmap():
  h, w, s, r = 22, 25, 4, 14
  rng = np.random.default_rng(3)
  masks, boxes, scores = random_scored(rng, r, h, w, s, 12.0)
  valid = np.ones(r, bool)
  valid[5] = False
  probs = np.asarray(jax.jit(lambda m, b: M.paste_masks_soft(m, b, h, w))(masks, boxes))
  # No pixel within float error of the 0.5 cut: the op and the reference cut alike.
  assert np.abs(probs - 0.5).min() > 1e-5
  maps = set()
  for overlap in (0.2, 0.5, 0.8):
    got = np.asarray(label_map_fn(h, w, overlap)(masks, boxes, scores, valid))
    ref = ref_overlap_map(probs, scores, valid, overlap)
    np.testing.assert_array_equal(got, ref)
    maps.add(ref.tobytes())
  assert len(maps) == 3  # the thresholds do drop different detections here
  # vmapped over a batch, as the Predictor renders.
  batched = jax.jit(jax.vmap(lambda m, b, sc, v: M.masks_to_label_map(
      m, b, sc, v, h, w, overlap_threshold=0.5)))
  two = np.asarray(batched(np.stack([masks, masks]), np.stack([boxes, boxes]),
                           np.stack([scores, scores[::-1]]), np.stack([valid, valid])))
  np.testing.assert_array_equal(two[0], ref_overlap_map(probs, scores, valid, 0.5))
  np.testing.assert_array_equal(two[1], ref_overlap_map(probs, scores[::-1], valid, 0.5))
