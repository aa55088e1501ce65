"""Tests of pa_jax.partial.ignore."""

import jax
import numpy as np

from pa_jax.ops.boxes import pairwise_iou
from pa_jax.ops.matching import Assignment, match
from pa_jax.partial import ignore as I

ignore_near_pa_boxes = jax.jit(I.ignore_near_pa_boxes, static_argnames=("iou_threshold",))


def grid_anchors(size=16.0, step=8.0, extent=96.0):
  c = np.arange(0.0, extent, step) + step / 2
  cx, cy = np.meshgrid(c, c)
  cx, cy = cx.reshape(-1), cy.reshape(-1)
  return np.stack([cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2], -1).astype(
      np.float32)


def test_unannotated_nucleus_becomes_ignore_not_negative():
  anchors = grid_anchors()
  annotated = np.array([[8, 8, 24, 24]], np.float32)      # the one annotated nucleus
  unannotated = np.array([[56, 56, 72, 72]], np.float32)  # a real nucleus nobody labelled
  _, assignment = match(pairwise_iou(annotated, anchors), np.array([True]), 0.7, 0.3, True)
  on_unann = np.asarray(pairwise_iou(anchors, unannotated))[:, 0] >= 0.3
  assert np.all(np.asarray(assignment)[on_unann] == Assignment.NEGATIVE)  # the problem
  pa = np.array([[55, 57, 71, 73], [8, 8, 24, 24], [0, 0, 0, 0]], np.float32)  # last: padding
  pa_valid = np.array([True, True, False])
  new = np.asarray(ignore_near_pa_boxes(assignment, anchors, pa, pa_valid, iou_threshold=0.3))
  old = np.asarray(assignment)
  near = np.any((np.asarray(pairwise_iou(anchors, pa[:2])) >= 0.3), axis=1)
  assert np.all(new[on_unann & (old == 0)] == Assignment.IGNORE)
  np.testing.assert_array_equal(new[old == Assignment.POSITIVE], Assignment.POSITIVE)
  np.testing.assert_array_equal(new[old == Assignment.IGNORE], Assignment.IGNORE)
  np.testing.assert_array_equal(new, np.where((old == 0) & near, -1, old))
  assert np.sum(new == 0) > 0 and new.dtype == np.int32  # far background stays negative


def test_no_valid_pa_box_changes_nothing():
  anchors = grid_anchors()
  assignment = np.random.default_rng(0).choice([-1, 0, 1], anchors.shape[0]).astype(np.int32)
  pa = anchors[:5]
  new = ignore_near_pa_boxes(assignment, anchors, pa, np.zeros(5, bool), iou_threshold=0.3)
  np.testing.assert_array_equal(new, assignment)
  # iou_threshold 0 must not silence negatives that do not touch any PA box.
  new0 = np.asarray(ignore_near_pa_boxes(assignment, anchors, pa[:1], np.ones(1, bool),
                                         iou_threshold=0.0))
  far = np.asarray(pairwise_iou(anchors, pa[:1]))[:, 0] == 0
  np.testing.assert_array_equal(new0[far], assignment[far])


def test_many_pa_boxes_blocked_path_and_vmap():
  rng = np.random.default_rng(1)
  anchors = grid_anchors()
  xy = rng.uniform(0, 90, (2, 200, 2))
  wh = rng.uniform(4, 20, (2, 200, 2))
  pa = np.concatenate([xy, xy + wh], -1).astype(np.float32)
  pa_valid = rng.random((2, 200)) < 0.5
  assignment = rng.choice([-1, 0, 1], (2, anchors.shape[0])).astype(np.int32)
  fn = jax.jit(jax.vmap(lambda a, p, v: I.ignore_near_pa_boxes(a, anchors, p, v, 0.5)))
  new = np.asarray(fn(assignment, pa, pa_valid))
  for b in range(2):
    iou = np.asarray(pairwise_iou(anchors, pa[b]))
    near = np.any((iou >= 0.5) & pa_valid[b][None], axis=1)
    np.testing.assert_array_equal(new[b], np.where((assignment[b] == 0) & near, -1,
                                                   assignment[b]))


def test_pa_coverage():
  full = np.zeros((64, 64), np.int32)
  full[2:12, 2:12] = 1      # annotated
  full[20:30, 20:30] = 2    # unannotated, found by a PA box
  full[40:50, 40:60] = 3    # unannotated, missed
  annotated = np.where(full == 1, 1, 0).astype(np.int32)
  pa = np.array([[21, 20, 30, 31], [40, 40, 45, 50], [0, 0, 64, 64]], np.float32)
  valid = np.array([True, True, False])
  out = I.pa_coverage(pa, valid, full, annotated)
  assert out == {"num_pa_boxes": 2, "num_unannotated": 2, "num_covered": 1, "coverage": 0.5}
  batched = I.pa_coverage(np.stack([pa, pa]), np.stack([valid, valid]), np.stack([full, full]),
                          np.stack([annotated, full]))
  assert batched["num_pa_boxes"] == 4 and batched["num_unannotated"] == 2
  assert batched["num_covered"] == 1
  assert np.isnan(I.pa_coverage(pa, valid, annotated, annotated)["coverage"])


def test_pa_hits_device_count_what_the_host_counts_on_training_batches():
  """The jitted coverage that training logs counts what the host reference counts, with the
  unannotated boxes the data pipeline derives (random nuclei, random PA boxes near them)."""
  from pa_jax.data.pipeline import TrainExample, canvas_example

  rng = np.random.default_rng(3)

  def coverage(pa, valid, boxes, boxes_valid):
    """(covered, total) per image, counted from the hits as partial/training.py does."""
    hit = jax.vmap(I.pa_hits_device)(pa, valid, boxes) & boxes_valid
    return hit.sum(axis=1), boxes_valid.sum(axis=1)

  fn = jax.jit(coverage)
  for trial in range(6):
    full = np.zeros((96, 96), np.int32)
    n = int(rng.integers(0, 12))
    for k in range(1, n + 1):  # later nuclei may overwrite (touch, split) earlier ones
      y, x = rng.integers(0, 86, 2)
      h, w = rng.integers(3, 14, 2)
      full[y:y + h, x:x + w] = k
    ids = np.unique(full[full > 0])
    kept = ids[rng.random(ids.size) < 0.3]
    annotated = np.where(np.isin(full, kept), full, 0)
    ex = TrainExample("t", np.zeros((96, 96, 3), np.float32), annotated, full)
    item = canvas_example(ex, 96, 32, rng, flip_h=False, flip_v=False)
    # PA boxes: jittered copies of some true boxes (hits and near misses) and random ones.
    truth = item["unannotated_boxes"][item["unannotated_valid"]]
    jitter = truth + rng.normal(0, 1.2, truth.shape).astype(np.float32)
    rand_xy = rng.uniform(0, 80, (5, 2))
    rand = np.concatenate([rand_xy, rand_xy + rng.uniform(2, 16, (5, 2))], -1)
    pa = np.zeros((24, 4), np.float32)
    cand = np.concatenate([jitter, rand]).astype(np.float32)[:24]
    pa[:len(cand)] = cand
    valid = np.zeros(24, bool)
    valid[:len(cand)] = rng.random(len(cand)) < 0.8
    host = I.pa_coverage(pa, valid, full, annotated)
    covered, total = fn(pa[None], valid[None], item["unannotated_boxes"][None],
                        item["unannotated_valid"][None])
    assert int(total[0]) == host["num_unannotated"], trial
    assert int(covered[0]) == host["num_covered"], trial
  # no PA slot at all (max_pa_boxes 0): nothing covered, the nuclei still counted
  c0, t0 = coverage(np.zeros((1, 0, 4), np.float32), np.zeros((1, 0), bool),
                    item["unannotated_boxes"][None], item["unannotated_valid"][None])
  c0, t0 = c0[0], t0[0]
  assert float(c0) == 0 and float(t0) == host["num_unannotated"]


def test_off_the_edge_by_hand():
  # A 40 (h) x 60 (w) crop; boxes are (x0, y0, x1, y1) pixel edges.
  boxes = np.array([[10, 10, 20, 20],   # inside
                    [0, 10, 5, 20],     # touches the left edge
                    [10, 0, 20, 4],     # the top
                    [50, 10, 60, 20],   # the right (x1 = width)
                    [10, 30, 20, 40],   # the bottom (y1 = height)
                    [1, 1, 59, 39],     # one pixel in from every edge
                    [55, 35, 55, 35]],  # zero-area, inside
                   np.float32)
  got = jax.jit(I.off_the_edge)(boxes, np.array([40, 60], np.int32))
  np.testing.assert_array_equal(got, [True, False, False, False, False, True, True])
  assert I.off_the_edge(np.zeros((0, 4), np.float32), np.array([8, 8])).shape == (0,)
