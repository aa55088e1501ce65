"""Tests of pa_jax.ops.nms against a greedy numpy loop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pa_jax.ops.nms import batched_nms, grouped_nms, nms


def iou_one(p, q):
  iw = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
  ih = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
  inter = iw * ih
  union = (p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - inter
  return inter / union if union > 0 else 0.0


def ref_nms(boxes, scores, valid, thr, k, groups=None):
  cand = [i for i in range(len(boxes)) if valid[i]]
  cand.sort(key=lambda i: (-scores[i], i))
  kept = []
  for i in cand:
    if all(iou_one(boxes[i], boxes[j]) <= thr or (groups is not None and groups[i] != groups[j])
           for j in kept):
      kept.append(i)
  return kept[:k]


def random_case(rng, n, zero_frac=0.1):
  xy = rng.uniform(0, 60, (n, 2))
  wh = rng.uniform(2, 20, (n, 2))
  wh[rng.uniform(size=n) < zero_frac] = 0.0
  boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
  scores = rng.uniform(size=n).astype(np.float32)
  scores[:4] = scores[4]  # some ties
  return boxes, scores


def check(result, ref, k):
  idx, ok = np.asarray(result[0]), np.asarray(result[1])
  assert idx.shape == (k,) and ok.shape == (k,) and idx.dtype == np.int32
  np.testing.assert_array_equal(ok, np.arange(k) < len(ref))
  np.testing.assert_array_equal(idx[ok], ref)
  assert np.all(idx[~ok] == 0)


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


def test_batched_and_grouped():
  rng = np.random.default_rng(3)
  boxes, scores, valid, groups = [], [], [], []
  for _ in range(3):
    b, s = random_case(rng, 50)
    boxes.append(b)
    scores.append(s)
    valid.append(rng.uniform(size=50) < 0.9)
    groups.append(rng.integers(0, 3, 50))
  boxes, scores, valid, groups = map(np.stack, (boxes, scores, valid, groups))
  idx, ok = jax.jit(batched_nms, static_argnums=(4,))(boxes, scores, valid, 0.4, 20)
  assert idx.shape == (3, 20)
  for b in range(3):
    check((idx[b], ok[b]), ref_nms(boxes[b], scores[b], valid[b], 0.4, 20), 20)
  gfn = jax.jit(grouped_nms, static_argnums=(5,))
  for b in range(3):
    result = gfn(boxes[b] - 30.0, scores[b], valid[b], groups[b], 0.4, 40)
    check(result, ref_nms(boxes[b], scores[b], valid[b], 0.4, 40, groups[b]), 40)


def test_empty_inputs():
  idx, ok = nms(jnp.zeros((0, 4)), jnp.zeros((0,)), jnp.zeros((0,), bool), 0.5, 5)
  assert idx.shape == (5,) and not np.any(ok)
  idx, ok = grouped_nms(jnp.zeros((4, 4)), jnp.zeros((4,)), jnp.zeros((4,), bool),
                        jnp.zeros((4,), jnp.int32), 0.5, 3)
  assert not np.any(ok)
