"""Tests of pa_jax.ops.matching against a loop reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pa_jax.ops.matching import Assignment, match


def ref_match(iou, gt_valid, high, low, low_quality):
  n, m = iou.shape
  idx = np.zeros(m, np.int64)
  lab = np.zeros(m, np.int64)
  valid_rows = [g for g in range(n) if gt_valid[g]]
  if not valid_rows:
    return idx, lab
  for j in range(m):
    best, best_g = -np.inf, 0
    for g in valid_rows:
      if iou[g, j] > best:
        best, best_g = iou[g, j], g
    idx[j] = best_g
    lab[j] = 1 if best >= high else (-1 if best >= low else 0)
  if low_quality:
    for g in valid_rows:
      top = iou[g].max()
      if top > 0:
        for j in range(m):
          if iou[g, j] == top:
            lab[j] = 1
  return idx, lab


@pytest.mark.parametrize("low_quality", [False, True])
@pytest.mark.parametrize("thresholds", [(0.7, 0.3), (0.5, 0.5)])
def test_against_reference(low_quality, thresholds):
  rng = np.random.default_rng(0)
  high, low = thresholds
  fn = jax.jit(lambda i, v: match(i, v, high, low, low_quality))
  for trial in range(6):
    n, m = 7, 40
    iou = rng.uniform(0, 1, (n, m)).astype(np.float32) ** 2
    iou[:, rng.uniform(size=m) < 0.3] = 0.0
    iou[2, 5] = iou[2, 9] = 0.99  # ties for one gt
    gt_valid = rng.uniform(size=n) < 0.7
    if trial == 0:
      gt_valid[:] = False
    if trial == 1:
      iou[3] = 0.0  # a valid gt that touches nothing
      gt_valid[3] = True
    idx, lab = fn(iou, gt_valid)
    ref_idx, ref_lab = ref_match(iou, gt_valid, high, low, low_quality)
    assert idx.dtype == jnp.int32 and lab.dtype == jnp.int32
    np.testing.assert_array_equal(lab, ref_lab)
    pos = ref_lab == 1
    np.testing.assert_array_equal(np.asarray(idx)[pos], ref_idx[pos])
    assert np.all(gt_valid[np.asarray(idx)[pos]])


def test_no_ground_truth_all_negative():
  iou = np.full((3, 5), 0.9, np.float32)  # padding rows with garbage IoU
  idx, lab = match(iou, np.zeros(3, bool), 0.7, 0.3, True)
  np.testing.assert_array_equal(lab, np.zeros(5))
  idx, lab = match(np.zeros((0, 5), np.float32), np.zeros(0, bool), 0.7, 0.3, True)
  np.testing.assert_array_equal(lab, np.zeros(5))


def test_hand_low_quality():
  iou = np.array([[0.4, 0.6, 0.6, 0.1], [0.0, 0.2, 0.8, 0.25]], np.float32)
  _, lab = match(iou, np.ones(2, bool), 0.7, 0.3, False)
  np.testing.assert_array_equal(lab, [-1, -1, 1, 0])
  idx, lab = match(iou, np.ones(2, bool), 0.7, 0.3, True)
  # gt 0's best (0.6, tied at 1 and 2) become positive; column 2 stays matched to gt 1.
  np.testing.assert_array_equal(lab, [-1, 1, 1, 0])
  np.testing.assert_array_equal(idx, [0, 0, 1, 1])
  assert Assignment.IGNORE == -1 and Assignment.NEGATIVE == 0 and Assignment.POSITIVE == 1


def test_vmap():
  iou = jnp.asarray(np.random.default_rng(1).uniform(size=(2, 4, 9)).astype(np.float32))
  valid = jnp.array([[True] * 4, [False] * 4])
  idx, lab = jax.vmap(lambda i, v: match(i, v, 0.7, 0.3, True))(iou, valid)
  assert idx.shape == (2, 9) and np.all(np.asarray(lab[1]) == 0)


def test_ties_between_ground_truths_pick_the_first_valid_one():
  # Like np.argmax over the valid rows: equal IoU with gt 1 and gt 3 -> gt 1; a padded row
  # with a higher value never wins; a column touching nothing gets the first valid gt.
  iou = np.zeros((4, 3), np.float32)
  iou[:, 0] = [0.9, 0.6, 0.2, 0.6]
  iou[:, 1] = [0.0, 0.1, 0.8, 0.8]
  valid = np.array([False, True, True, True])
  matched, _ = jax.jit(lambda i, v: match(i, v, 0.7, 0.3, False))(iou, valid)
  assert np.asarray(matched).tolist() == [1, 2, 1]
