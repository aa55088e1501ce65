"""Tests of pa_jax.ops.masks against numpy loops."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pa_jax.ops import masks as M


def ref_sample(img, y, x):
  """torchvision RoIAlign bilinear sample of a 2-D map."""
  h, w = img.shape
  if y < -1.0 or y > h or x < -1.0 or x > w:
    return 0.0
  y, x = max(y, 0.0), max(x, 0.0)
  y0, x0 = int(y), int(x)
  y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
  if y0 >= h - 1:
    y0, y = h - 1, float(h - 1)
  if x0 >= w - 1:
    x0, x = w - 1, float(w - 1)
  ly, lx = y - y0, x - x0
  return ((1 - ly) * (1 - lx) * img[y0, x0] + (1 - ly) * lx * img[y0, x1]
          + ly * (1 - lx) * img[y1, x0] + ly * lx * img[y1, x1])


def ref_mask_targets(label_map, ids, boxes, size, ratio):
  out = np.zeros((len(ids), size, size))
  for r, (i, b) in enumerate(zip(ids, np.asarray(boxes, np.float64))):
    if i <= 0:
      continue
    binary = (label_map == i).astype(np.float64)
    x0, y0 = b[0] - 0.5, b[1] - 0.5
    bw, bh = (b[2] - b[0]) / size, (b[3] - b[1]) / size
    for p in range(size):
      for q in range(size):
        acc = 0.0
        for iy in range(ratio):
          for ix in range(ratio):
            acc += ref_sample(binary, y0 + (p + (iy + 0.5) / ratio) * bh,
                              x0 + (q + (ix + 0.5) / ratio) * bw)
        out[r, p, q] = acc / ratio**2
  return out


def random_label_map(rng, h, w, n):
  lm = np.zeros((h, w), np.int32)
  for i in range(1, n + 1):
    y, x = rng.integers(0, h - 3), rng.integers(0, w - 3)
    lm[y:y + rng.integers(2, 8), x:x + rng.integers(2, 8)] = i
  return lm


def test_mask_targets_against_reference():
  rng = np.random.default_rng(0)
  lm = random_label_map(rng, 24, 20, 6)
  ids = np.array([1, 2, 3, 0, 5, 6, 4, 99], np.int32)  # 0 = padding, 99 = absent
  xy = rng.uniform(-2, 16, (8, 2))
  boxes = np.concatenate([xy, xy + rng.uniform(0, 9, (8, 2))], 1).astype(np.float32)
  boxes[2, 2:] = boxes[2, :2]  # zero-area RoI
  fn = jax.jit(lambda l, i, b: M.mask_targets(l, i, b, size=6, binarize=False))
  soft = np.asarray(fn(lm, ids, boxes))
  ref = ref_mask_targets(lm, ids, boxes, 6, 2)
  np.testing.assert_allclose(soft, ref, atol=1e-5)
  hard = np.asarray(jax.jit(lambda l, i, b: M.mask_targets(l, i, b, size=6))(lm, ids, boxes))
  assert hard.dtype == np.float32 and set(np.unique(hard)) <= {0.0, 1.0}
  clear = np.abs(ref - 0.5) > 1e-5
  np.testing.assert_array_equal(hard[clear], (ref >= 0.5)[clear])
  assert not hard[3].any() and not hard[7].any()
  # A box exactly on one instance that fills it gives an all-ones target.
  lm2 = np.zeros((10, 10), np.int32)
  lm2[2:6, 3:9] = 7
  one = jax.jit(M.mask_targets, static_argnums=(3,))(lm2, jnp.array([7]),
                                                      jnp.array([[3., 2., 9., 6.]]), 4)
  np.testing.assert_array_equal(one, np.ones((1, 4, 4)))


def ref_paste(mask, box, h, w):
  s = mask.shape[0]
  out = np.zeros((h, w))
  x0, y0, x1, y1 = np.asarray(box, np.float64)
  if x1 <= x0 or y1 <= y0:
    return out
  for y in range(h):
    v = (y + 0.5 - y0) / (y1 - y0) * s - 0.5
    for x in range(w):
      u = (x + 0.5 - x0) / (x1 - x0) * s - 0.5
      fy, fx = int(np.floor(v)), int(np.floor(u))
      acc = 0.0
      for cy, wy in ((fy, 1 - (v - fy)), (fy + 1, v - fy)):
        for cx, wx in ((fx, 1 - (u - fx)), (fx + 1, u - fx)):
          if 0 <= cy < s and 0 <= cx < s:
            acc += wy * wx * mask[cy, cx]
      out[y, x] = acc
  return out


def random_detections(rng, r, h, w, s, max_side=9.0):
  masks = rng.uniform(size=(r, s, s)).astype(np.float32)
  xy = rng.uniform(-3, [w - 2, h - 2], (r, 2))
  boxes = np.concatenate([xy, xy + rng.uniform(1, max_side, (r, 2))], 1).astype(np.float32)
  boxes[0, 2] = boxes[0, 0]  # zero width
  return masks, boxes


def test_paste_against_reference():
  rng = np.random.default_rng(1)
  h, w, s = 14, 17, 5
  masks, boxes = random_detections(rng, 6, h, w, s)
  soft = np.asarray(jax.jit(lambda m, b: M.paste_masks_soft(m, b, h, w))(masks, boxes))
  ref = np.stack([ref_paste(m, b, h, w) for m, b in zip(masks, boxes)])
  np.testing.assert_allclose(soft, ref, atol=1e-5)
  hard = np.asarray(jax.jit(lambda m, b: M.paste_masks(m, b, h, w, 0.5))(masks, boxes))
  assert hard.dtype == bool and hard.shape == (6, h, w) and not hard[0].any()
  clear = np.abs(ref - 0.5) > 1e-5
  np.testing.assert_array_equal(hard[clear], (ref >= 0.5)[clear])


def test_paste_hand_case():
  # A full-ones mask on an integer box covers exactly the box's pixels.
  got = jax.jit(M.paste_masks, static_argnums=(2, 3))(jnp.ones((1, 4, 4)),
                                                      jnp.array([[2., 1., 6., 3.]]), 5, 8)
  want = np.zeros((5, 8), bool)
  want[1:3, 2:6] = True
  np.testing.assert_array_equal(got[0], want)


def ref_label_map(masks, boxes, scores, valid, h, w, thr):
  order = sorted([i for i in range(len(scores)) if valid[i]], key=lambda i: (-scores[i], i))
  lm = np.zeros((h, w), np.int64)
  probs = {}
  for k in reversed(range(len(order))):
    i = order[k]
    probs[i] = ref_paste(masks[i], boxes[i], h, w)
    lm[probs[i] >= thr] = k + 1
  return lm, order, probs


@pytest.mark.parametrize("window", [None, 16])
def test_label_map_against_reference(window):
  rng = np.random.default_rng(2)
  h, w, s, r = 20, 23, 4, 9
  masks, boxes = random_detections(rng, r, h, w, s)
  scores = rng.uniform(size=r).astype(np.float32)
  scores[3] = scores[4]  # a tie: lower index wins
  valid = np.ones(r, bool)
  valid[5] = False
  fn = jax.jit(lambda m, b, sc, v: M.masks_to_label_map(m, b, sc, v, h, w, 0.5, window))
  got = np.asarray(fn(masks, boxes, scores, valid))
  assert got.dtype == np.int32 and got.shape == (h, w)
  ref, order, probs = ref_label_map(masks, boxes, scores, valid, h, w, 0.5)
  # Ignore pixels where some detection's probability is within float error of the cut.
  unsure = np.zeros((h, w), bool)
  for p in probs.values():
    unsure |= np.abs(p - 0.5) < 1e-5
  np.testing.assert_array_equal(got[~unsure], ref[~unsure])
  assert (ref > 0).sum() > 20 and set(np.unique(ref)) != {0, 1}


def test_label_map_empty_and_vmap():
  h, w = 6, 7
  masks = np.ones((3, 4, 4), np.float32)
  boxes = np.array([[0, 0, 3, 3], [1, 1, 5, 5], [2, 2, 6, 6]], np.float32)
  fn = jax.jit(jax.vmap(lambda m, b, sc, v: M.masks_to_label_map(m, b, sc, v, h, w)))
  valid = np.stack([np.zeros(3, bool), np.ones(3, bool)])
  scores = np.stack([np.ones(3), np.array([0.1, 0.9, 0.5])]).astype(np.float32)
  got = np.asarray(fn(np.stack([masks, masks]), np.stack([boxes, boxes]), scores, valid))
  np.testing.assert_array_equal(got[0], 0)  # no valid detection
  # Highest score (index 1, label 1) wins its overlaps; index 2 -> label 2, index 0 -> 3.
  want = np.zeros((h, w), np.int32)
  want[0:3, 0:3] = 3
  want[2:6, 2:6] = 2
  want[1:5, 1:5] = 1
  np.testing.assert_array_equal(got[1], want)
  empty = M.masks_to_label_map(jnp.zeros((0, 4, 4)), jnp.zeros((0, 4)), jnp.zeros((0,)),
                               jnp.zeros((0,), bool), h, w)
  np.testing.assert_array_equal(empty, np.zeros((h, w)))


def _roi_profile(lo, hi, b0, b1, size, ratio):
  """1-D RoIAlign (aligned, `ratio` samples per bin) of the indicator of pixels [lo, hi)
  over the RoI [b0, b1], far from the image edges: the linear interpolation of the step."""
  out = np.zeros(size)
  for j in range(size):
    for s in range(ratio):
      u = b0 + (j + (s + 0.5) / ratio) * (b1 - b0) / size - 0.5  # in pixel-centre coords
      i0 = int(np.floor(u))
      t = u - i0
      out[j] += ((1 - t) * (lo <= i0 < hi) + t * (lo <= i0 + 1 < hi)) / ratio
  return out


def test_mask_targets_in_scaled_boxes():
  """The mask frame of model.roi.mask_box_scale: targets of the box scaled about its
  centre, jitted as the loss computes them, equal the targets of the hand-scaled box."""
  from pa_jax.ops.boxes import scale_boxes

  lm = np.zeros((48, 48), np.int32)
  lm[10:20, 20:30] = 3  # a 10 x 10 nucleus: x in [20, 30), y in [10, 20)
  lm[30:38, 5:17] = 8  # 12 x 8
  ids = np.array([3, 8, 3], np.int32)
  boxes = np.array([[20, 10, 30, 20], [5, 30, 17, 38], [18, 9, 31, 22]], np.float32)
  hand = np.array([[19, 9, 31, 21], [3.8, 29.2, 18.2, 38.8], [16.7, 7.7, 32.3, 23.3]],
                  np.float32)  # x1.2 about the centres (25, 15), (11, 34), (24.5, 15.5)
  fn = jax.jit(lambda l, i, b: M.mask_targets(l, i, scale_boxes(b, 1.2)))
  got = np.asarray(fn(lm, ids, boxes))
  np.testing.assert_array_equal(got, np.asarray(M.mask_targets(lm, ids, jnp.asarray(hand))))
  soft = np.asarray(jax.jit(lambda l, i, b: M.mask_targets(l, i, scale_boxes(b, 1.2),
                                                           binarize=False))(lm, ids, boxes))
  np.testing.assert_allclose(soft, ref_mask_targets(lm, ids, hand, 28, 2), atol=1e-5)
  # Hand case: the tight box of a square nucleus, scaled 1.2, is the frame [19, 31]; the
  # square is separable, so the target is outer(fy, fx) >= 0.5 of 1-D RoIAlign profiles.
  f = _roi_profile(20, 30, 19.0, 31.0, 28, 2)
  np.testing.assert_array_equal(got[0], np.outer(f, f) >= 0.5)
  # rows/cols 2..25 of 28 inside: the nucleus fills the middle 10/12 of the frame;
  # the corner bins of that block, at 0.57 per axis, fall under 0.5.
  assert np.all(got[0][:2] == 0) and np.all(got[0][26:] == 0)
  assert np.all(got[0][3:25, 2:26] == 1) and got[0][2, 2] == 0
  # at scale 1 the same nucleus fills the whole frame, but its corner bins still miss
  tight = np.asarray(M.mask_targets(lm, ids[:1], jnp.asarray(boxes[:1])))[0]
  f1 = _roi_profile(20, 30, 20.0, 30.0, 28, 2)
  np.testing.assert_array_equal(tight, np.outer(f1, f1) >= 0.5)
  assert tight[0, 0] == 0 and tight[0, 5] == 1 and tight.sum() == 28 * 28 - 4
