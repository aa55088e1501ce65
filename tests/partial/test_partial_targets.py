"""Tests of pa_jax.partial.targets: centerness targets, sampling, anchors, losses."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pa_jax.ops.boxes import encode_boxes
from pa_jax.partial import targets as T
from pa_jax.partial.targets import centerness_anchors, median_nucleus_size

# Jitted once per shape: eager op-by-op dispatch is what makes JAX tests slow on CPU.
centerness_targets = jax.jit(T.centerness_targets, static_argnames=("out_hw", "stride",
                                                                    "center_scale"))
sample_pixels = jax.jit(T.sample_pixels, static_argnames=("num_samples", "positive_fraction"))
centerness_losses = jax.jit(T.centerness_losses, static_argnames=("stride", "beta", "weights"))


def square_labels(shape, rects):
  """Label map with rectangle k (y0, y1, x0, x1 pixel ranges, end exclusive) = value k + 1."""
  lab = np.zeros(shape, np.int32)
  boxes = []
  for k, (y0, y1, x0, x1) in enumerate(rects):
    lab[y0:y1, x0:x1] = k + 1
    boxes.append([x0, y0, x1, y1])
  return lab, np.array(boxes, np.float32).reshape(-1, 4)


def reference_targets(labels, boxes, valid, out_hw, stride=4, scale=0.3):
  """Brute-force numpy version of the documented rule, cell by cell."""
  h, w = out_hw
  H, W = labels.shape
  target = -np.ones((h, w), np.int32)
  box_t = np.zeros((h, w, 4), np.float32)
  best = np.full((h, w), np.inf)
  for i in range(h):
    for j in range(w):
      y, x = stride * i + stride // 2, stride * j + stride // 2
      if y < H and x < W and labels[y, x] > 0 and valid[labels[y, x] - 1]:
        target[i, j] = 0
  for k, (x0, y0, x1, y1) in enumerate(boxes):
    if not valid[k]:
      continue
    cx, cy, bw, bh = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0
    area = bw * bh
    for i in range(h):
      for j in range(w):
        ccx, ccy = (j + 0.5) * stride, (i + 0.5) * stride
        in_x = abs(ccx - cx) <= scale * bw / 2 or j == int(np.floor(cx / stride))
        in_y = abs(ccy - cy) <= scale * bh / 2 or i == int(np.floor(cy / stride))
        if in_x and in_y:
          target[i, j] = 1
          if area < best[i, j]:
            best[i, j] = area
            box_t[i, j] = (x0, y0, x1, y1)
  return target, box_t


def test_hand_case_20x20_nucleus_and_unannotated_region():
  # Annotated 20x20 nucleus: rows 20..39, cols 8..27 -> box (8, 20, 28, 40), centre (18, 30).
  # Centre box 18 ± 3, 30 ± 3 -> cell centres (j + .5) * 4 in [15, 21] x [27, 33]: only j = 4,
  # i = 7 (centre (18, 30)), which is also the cell holding the box centre.
  # Mask cells: sample pixel 4 i + 2 in [20, 39] -> i in 5..9; 4 j + 2 in [8, 27] -> j in 2..6.
  lab, boxes = square_labels((64, 64), [(20, 40, 8, 28)])
  # An unannotated nucleus at rows 44..60, cols 40..60 exists in the image but not in `lab`.
  target, box_t = centerness_targets(jnp.asarray(lab), jnp.asarray(boxes), jnp.array([True]),
                                     out_hw=(16, 16))
  target, box_t = np.asarray(target), np.asarray(box_t)
  expected = -np.ones((16, 16), np.int32)
  expected[5:10, 2:7] = 0
  expected[7, 4] = 1
  np.testing.assert_array_equal(target, expected)
  np.testing.assert_array_equal(box_t[7, 4], [8, 20, 28, 40])
  assert np.all(box_t[target != 1] == 0)
  assert np.all(target[11:15, 10:15] == -1)  # the unannotated nucleus is ignored, not negative


def test_large_nucleus_has_block_of_positives():
  # 40x40 box (0, 0, 40, 40): centre 20 ± 6 -> cell centres in [14, 26] -> cells 3..6.
  lab, boxes = square_labels((64, 64), [(0, 40, 0, 40)])
  target, _ = centerness_targets(lab, boxes, np.array([True]), out_hw=(16, 16))
  pos = np.argwhere(np.asarray(target) == 1)
  assert pos.min(0).tolist() == [3, 3] and pos.max(0).tolist() == [6, 6] and len(pos) == 16


def test_tiny_nucleus_gets_one_positive_cell():
  lab, boxes = square_labels((64, 64), [(50, 51, 50, 51)])  # one pixel at (50, 50)
  target, box_t = centerness_targets(lab, boxes, np.array([True]), out_hw=(16, 16))
  target = np.asarray(target)
  assert np.sum(target == 1) == 1 and target[12, 12] == 1
  np.testing.assert_array_equal(np.asarray(box_t)[12, 12], [50, 50, 51, 51])


def test_overlap_takes_smallest_box_and_padding_is_ignored():
  # Big nucleus and a small one inside its centre region: the shared cell regresses the small.
  lab, boxes = square_labels((64, 64), [(0, 48, 0, 48), (20, 28, 20, 28)])
  pad_box = np.array([[0, 0, 64, 64]], np.float32)  # padding slot with a garbage box
  boxes = np.concatenate([boxes, pad_box])
  valid = np.array([True, True, False])
  target, box_t = centerness_targets(lab, boxes, valid, out_hw=(16, 16))
  ref_t, ref_b = reference_targets(lab, boxes, valid, (16, 16))
  np.testing.assert_array_equal(target, ref_t)
  np.testing.assert_array_equal(box_t, ref_b)
  np.testing.assert_array_equal(np.asarray(box_t)[6, 6], [20, 20, 28, 28])


def test_random_against_reference_and_vmap():
  rng = np.random.default_rng(0)
  labs, all_boxes, valids = [], [], []
  for _ in range(3):
    rects = []
    for _ in range(6):
      y0, x0 = rng.integers(0, 56, 2)
      hh, ww = rng.integers(1, 20, 2)
      rects.append((y0, min(y0 + hh, 62), x0, min(x0 + ww, 58)))
    lab, boxes = square_labels((62, 58), rects)  # canvas not a multiple of the stride
    # Boxes from the label map after overlaps (later rectangles paint over earlier ones).
    valid = np.array([np.any(lab == k + 1) for k in range(6)]) & (rng.random(6) < 0.8)
    for k in range(6):
      if np.any(lab == k + 1):
        ys, xs = np.nonzero(lab == k + 1)
        boxes[k] = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    labs.append(lab), all_boxes.append(boxes), valids.append(valid)
  fn = jax.jit(jax.vmap(lambda l, b, v: T.centerness_targets(l, b, v, (16, 15))))
  target, box_t = fn(np.stack(labs), np.stack(all_boxes), np.stack(valids))
  for b in range(3):
    ref_t, ref_b = reference_targets(labs[b], all_boxes[b], valids[b], (16, 15))
    np.testing.assert_array_equal(target[b], ref_t)
    np.testing.assert_allclose(box_t[b], ref_b)


def test_no_instances():
  target, box_t = centerness_targets(np.zeros((16, 16), np.int32), np.zeros((0, 4), np.float32),
                                     np.zeros((0,), bool), out_hw=(4, 4))
  assert np.all(np.asarray(target) == -1) and box_t.shape == (4, 4, 4)


@pytest.mark.parametrize("n_pos,n_neg", [(500, 500), (10, 500), (500, 20), (3, 5), (0, 0)])
def test_sample_pixels_counts(n_pos, n_neg):
  rng = np.random.default_rng(n_pos * 7 + n_neg)
  b, h, w = 2, 32, 32
  flat = -np.ones(b * h * w, np.int32)
  perm = rng.permutation(b * h * w)
  flat[perm[:n_pos]] = 1
  flat[perm[n_pos:n_pos + n_neg]] = 0
  target = flat.reshape(b, h, w)
  fn = lambda k, t: sample_pixels(k, t, num_samples=128, positive_fraction=0.5)
  for seed in range(3):
    s = np.asarray(fn(jax.random.key(seed), target))
    assert s.shape == (b, h, w) and s.dtype == bool
    assert not np.any(s & (target == -1))
    num_pos = int(np.sum(s & (target == 1)))
    assert num_pos == min(n_pos, 64)  # at most half positive
    assert int(s.sum()) == num_pos + min(n_neg, 128 - num_pos)
    if n_pos + n_neg >= 128 and n_neg >= 64:
      assert s.sum() == 128
  a = sample_pixels(jax.random.key(0), target)
  np.testing.assert_array_equal(a, sample_pixels(jax.random.key(0), target))


def test_centerness_anchors():
  a = np.asarray(centerness_anchors((2, 3), 4, jnp.array([10.0, 6.0])))
  assert a.shape == (6, 4) and a.dtype == np.float32
  np.testing.assert_allclose(a[0], [2 - 5, 2 - 3, 2 + 5, 2 + 3])
  np.testing.assert_allclose(a[5], [10 - 5, 6 - 3, 10 + 5, 6 + 3])  # cell (1, 2)


def test_median_nucleus_size():
  a, _ = square_labels((30, 30), [(0, 4, 0, 10), (10, 16, 10, 12)])   # w 10, 2; h 4, 6
  b = np.zeros((20, 20), np.uint16)
  b[5:8, 5:9] = 7                                                     # w 4, h 3 (id gap)
  assert median_nucleus_size([a, b]) == (4.0, 4.0)
  with pytest.raises(ValueError):
    median_nucleus_size([np.zeros((5, 5), np.int32)])


def np_losses(logits, deltas, target, box_t, sampled, anchor_wh, stride, beta,
              weights=(1.0, 1.0, 1.0, 1.0)):
  b, h, w = logits.shape
  n = max(sampled.sum(), 1)
  z = (target == 1).astype(np.float64)
  p = 1 / (1 + np.exp(-logits.astype(np.float64)))
  bce = -(z * np.log(p) + (1 - z) * np.log(1 - p))
  l_c = np.sum(bce[sampled]) / n
  jj, ii = np.meshgrid(np.arange(w), np.arange(h))
  acx, acy = (jj + 0.5) * stride, (ii + 0.5) * stride
  aw, ah = anchor_wh
  total = 0.0
  for bi, i, j in zip(*np.nonzero(sampled & (target == 1))):
    x0, y0, x1, y1 = box_t[bi, i, j]
    t = np.array([((x0 + x1) / 2 - acx[i, j]) / aw, ((y0 + y1) / 2 - acy[i, j]) / ah,
                  np.log((x1 - x0) / aw), np.log((y1 - y0) / ah)]) * np.asarray(weights)
    d = np.abs(deltas[bi, i, j] - t)
    total += np.sum(np.where(d < beta, 0.5 * d * d / beta, d - 0.5 * beta))
  return l_c, total / n


@pytest.mark.parametrize("beta,weights", [(1.0 / 9.0, (1.0, 1.0, 1.0, 1.0)),
                                          (1.0, (1.0, 1.0, 1.0, 1.0)),
                                          (1.0 / 9.0, (10.0, 10.0, 5.0, 5.0))])
def test_centerness_losses_match_numpy(beta, weights):
  rng = np.random.default_rng(1)
  b, h, w = 2, 8, 8
  target = rng.choice([-1, 0, 1], size=(b, h, w)).astype(np.int32)
  cxy = rng.uniform(5, 25, (b, h, w, 2))
  wh = rng.uniform(3, 15, (b, h, w, 2))
  box_t = np.concatenate([cxy - wh / 2, cxy + wh / 2], -1).astype(np.float32)
  box_t[target != 1] = 0
  logits = rng.normal(0, 3, (b, h, w)).astype(np.float32)
  deltas = rng.normal(0, 0.5, (b, h, w, 4)).astype(np.float32)
  sampled = np.asarray(sample_pixels(jax.random.key(0), target, num_samples=40))
  anchor_wh = np.array([9.0, 7.0], np.float32)
  fn = jax.jit(lambda *a: T.centerness_losses(*a, anchor_wh=anchor_wh, stride=4, beta=beta,
                                              weights=weights))
  l_c, l_b, stats = fn(logits, deltas, target, box_t, sampled)
  r_c, r_b = np_losses(logits, deltas, target, box_t, sampled, anchor_wh, 4, beta, weights)
  np.testing.assert_allclose(l_c, r_c, rtol=1e-5)
  np.testing.assert_allclose(l_b, r_b, rtol=1e-5)
  assert stats["num_sampled"] == sampled.sum() == 40
  assert stats["num_sampled_positive"] == np.sum(sampled & (target == 1))
  # Gradients are finite and only reach sampled cells.
  g_logits, g_deltas = jax.grad(lambda l, d: sum(fn(l, d, target, box_t, sampled)[:2]),
                                argnums=(0, 1))(logits, deltas)
  assert np.all(np.isfinite(g_logits)) and np.all(np.isfinite(g_deltas))
  assert np.all(np.asarray(g_logits)[~sampled] == 0)
  assert np.all(np.asarray(g_deltas)[~(sampled & (target == 1))] == 0)


def test_centerness_losses_nothing_sampled():
  z = np.zeros((1, 4, 4), np.float32)
  l_c, l_b, stats = centerness_losses(z, np.zeros((1, 4, 4, 4), np.float32),
                                      -np.ones((1, 4, 4), np.int32),
                                      np.zeros((1, 4, 4, 4), np.float32),
                                      np.zeros((1, 4, 4), bool), np.array([8.0, 8.0]), stride=4)
  assert float(l_c) == 0.0 and float(l_b) == 0.0 and float(stats["num_sampled"]) == 0


def test_targets_feed_the_loss_end_to_end():
  lab, boxes = square_labels((64, 64), [(20, 40, 8, 28), (0, 12, 40, 52)])
  target, box_t = centerness_targets(lab, boxes, np.array([True, True]), out_hw=(16, 16))
  target, box_t = target[None], box_t[None]
  sampled = sample_pixels(jax.random.key(0), target)
  anchor_wh = jnp.array([16.0, 16.0])
  anchors = centerness_anchors((16, 16), 4, anchor_wh).reshape(1, 16, 16, 4)
  # The loss's default coder is the release's (10, 10, 5, 5): deltas encoded so are perfect,
  # unit-weight ones are not.
  perfect = encode_boxes(box_t, anchors, (10.0, 10.0, 5.0, 5.0))
  _, l_b, _ = centerness_losses(jnp.zeros((1, 16, 16)), perfect, target, box_t, sampled,
                                anchor_wh, stride=4)
  assert float(l_b) < 1e-6
  _, l_unit, _ = centerness_losses(jnp.zeros((1, 16, 16)), encode_boxes(box_t, anchors), target,
                                   box_t, sampled, anchor_wh, stride=4)
  assert float(l_unit) > 1e-3
