"""Tests of pa_jax.ops.boxes against plain numpy loops."""

import math

import jax
import jax.numpy as jnp
import numpy as np

from pa_jax.ops import boxes as B


def random_boxes(rng, n, size=50.0, zero_frac=0.2):
  """Random (x0, y0, x1, y1) boxes, some of them zero-width / zero-height / zero-area."""
  xy = rng.uniform(0, size, (n, 2))
  wh = rng.uniform(0, size / 2, (n, 2))
  wh[rng.uniform(size=(n, 2)) < zero_frac] = 0.0
  return np.concatenate([xy, xy + wh], axis=1).astype(np.float32)


def ref_iou(a, b):
  out = np.zeros((len(a), len(b)), np.float64)
  for i, p in enumerate(a):
    for j, q in enumerate(b):
      iw = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
      ih = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
      inter = iw * ih
      union = (p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - inter
      out[i, j] = inter / union if union > 0 else 0.0
  return out


def test_iou_hand_computed():
  a = jnp.array([[0, 0, 10, 10]], jnp.float32)
  b = jnp.array([[5, 5, 15, 15], [0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 5]], jnp.float32)
  np.testing.assert_allclose(B.pairwise_iou(a, b), [[25 / 175, 1.0, 0.0, 0.5]], rtol=1e-6)
  np.testing.assert_allclose(B.box_area(b), [100, 100, 100, 50])


def test_iou_random_and_degenerate():
  rng = np.random.default_rng(0)
  a, b = random_boxes(rng, 17), random_boxes(rng, 23)
  b[:3] = 0.0  # padding: all-zero boxes
  b[3] = a[0] * 0 + np.array([5, 5, 5, 5])  # a point
  got = np.asarray(jax.jit(B.pairwise_iou)(a, b))
  assert np.all(np.isfinite(got))
  np.testing.assert_allclose(got, ref_iou(a, b), atol=1e-6)
  zero = np.zeros((4, 4), np.float32)
  np.testing.assert_array_equal(B.pairwise_iou(zero, zero), np.zeros((4, 4)))
  # Gradients through padding are finite too.
  g = jax.jit(jax.grad(lambda x: B.pairwise_iou(x, jnp.asarray(zero)).sum()))(jnp.asarray(a))
  assert np.all(np.isfinite(np.asarray(g)))


def test_iou_empty_shapes():
  assert B.pairwise_iou(jnp.zeros((0, 4)), jnp.zeros((3, 4))).shape == (0, 3)


def test_area_centers_inverted():
  boxes = np.array([[2, 3, 6, 11], [5, 5, 1, 1]], np.float32)
  np.testing.assert_allclose(B.box_area(boxes), [32, 0])
  np.testing.assert_allclose(B.box_centers(boxes), [[4, 7], [3, 3]])


def ref_encode(box, anchor, w):
  aw, ah = anchor[2] - anchor[0], anchor[3] - anchor[1]
  bw, bh = box[2] - box[0], box[3] - box[1]
  acx, acy = anchor[0] + aw / 2, anchor[1] + ah / 2
  bcx, bcy = box[0] + bw / 2, box[1] + bh / 2
  return [w[0] * (bcx - acx) / aw, w[1] * (bcy - acy) / ah,
          w[2] * math.log(bw / aw), w[3] * math.log(bh / ah)]


def ref_decode(d, anchor, w, clamp):
  aw, ah = anchor[2] - anchor[0], anchor[3] - anchor[1]
  acx, acy = anchor[0] + aw / 2, anchor[1] + ah / 2
  dx, dy = d[0] / w[0], d[1] / w[1]
  dw, dh = min(d[2] / w[2], clamp), min(d[3] / w[3], clamp)
  cx, cy = dx * aw + acx, dy * ah + acy
  pw, ph = math.exp(dw) * aw, math.exp(dh) * ah
  return [cx - pw / 2, cy - ph / 2, cx + pw / 2, cy + ph / 2]


def test_encode_decode_against_reference():
  rng = np.random.default_rng(1)
  anchors = random_boxes(rng, 50, zero_frac=0.0) + np.array([0, 0, 1, 1], np.float32)
  boxes = random_boxes(rng, 50, zero_frac=0.0) + np.array([0, 0, 1, 1], np.float32)
  w = (10.0, 10.0, 5.0, 5.0)
  deltas = np.asarray(jax.jit(lambda b, a: B.encode_boxes(b, a, w))(boxes, anchors))
  ref = np.array([ref_encode(b, a, w) for b, a in zip(boxes.astype(np.float64), anchors)])
  np.testing.assert_allclose(deltas, ref, rtol=1e-4, atol=1e-4)
  back = np.asarray(B.decode_deltas(deltas, anchors, w))
  np.testing.assert_allclose(back, boxes, atol=2e-3)
  # Large deltas: the scale clamp kicks in exactly as in the reference.
  big = rng.normal(0, 30, (50, 4)).astype(np.float32)
  got = np.asarray(jax.jit(lambda d, a: B.decode_deltas(d, a, w))(big, anchors))
  ref = np.array([ref_decode(d, a, w, math.log(1000 / 16)) for d, a in
                  zip(big.astype(np.float64), anchors)])
  assert np.all(np.isfinite(got))
  np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-2)


def test_encode_degenerate_is_finite():
  boxes = jnp.zeros((3, 4))
  anchors = jnp.array([[0, 0, 0, 0], [0, 0, 4, 4], [1, 1, 1, 9]], jnp.float32)
  assert np.all(np.isfinite(np.asarray(B.encode_boxes(boxes, anchors, (10, 10, 5, 5)))))


def test_clip_and_vmap():
  boxes = np.array([[[-5, -1, 20, 40], [3, 4, 5, 6]]], np.float32)
  got = B.clip_boxes(boxes, 30, 10)
  np.testing.assert_allclose(got, [[[0, 0, 10, 30], [3, 4, 5, 6]]])
  # Traced, per-image sizes under vmap.
  got = jax.jit(jax.vmap(B.clip_boxes))(np.repeat(boxes, 2, 0), jnp.array([30, 5]),
                                         jnp.array([10, 4]))
  np.testing.assert_allclose(got[1], [[0, 0, 4, 5], [3, 4, 4, 5]])
  # The pairwise IoU lifts over a batch too.
  a = jnp.asarray(random_boxes(np.random.default_rng(2), 6)).reshape(2, 3, 4)
  iou = jax.vmap(B.pairwise_iou)(a, a)
  assert iou.shape == (2, 3, 3)


def test_scale_boxes_hand_computed():
  boxes = np.array([[0, 0, 10, 20], [4, 6, 6, 8], [3, 3, 3, 3]], np.float32)
  # about the centres (5, 10), (5, 7), (3, 3): half-sizes x1.2 = (6, 12), (1.2, 1.2), 0
  np.testing.assert_allclose(B.scale_boxes(jnp.asarray(boxes), 1.2),
                             [[-1, -2, 11, 22], [3.8, 5.8, 6.2, 8.2], [3, 3, 3, 3]], atol=1e-6)
  np.testing.assert_allclose(B.scale_boxes(jnp.asarray(boxes), 0.5),
                             [[2.5, 5, 7.5, 15], [4.5, 6.5, 5.5, 7.5], [3, 3, 3, 3]], atol=1e-6)
  assert B.scale_boxes(boxes, 1.0) is boxes  # no op at 1
  # any leading shape, traced, dtype kept; centres and aspect kept, sides x scale
  rng = np.random.default_rng(3)
  b = random_boxes(rng, 12).reshape(2, 6, 4)
  got = np.asarray(jax.jit(lambda x: B.scale_boxes(x, 1.3))(b))
  assert got.shape == b.shape and got.dtype == np.float32
  np.testing.assert_allclose(got[..., :2] + got[..., 2:], b[..., :2] + b[..., 2:], atol=1e-4)
  np.testing.assert_allclose(got[..., 2:] - got[..., :2], 1.3 * (b[..., 2:] - b[..., :2]),
                             atol=1e-4)
