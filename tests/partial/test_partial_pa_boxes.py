"""Tests of pa_jax.partial.pa_boxes."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from pa_jax.partial import pa_boxes as P

ANCHOR = np.array([8.0, 8.0], np.float32)
UNIT = (1.0, 1.0, 1.0, 1.0)  # the hand cases below are written in unit-weight deltas
RELEASE = (10.0, 10.0, 5.0, 5.0)


@functools.partial(jax.jit, static_argnames=("threshold", "max_boxes", "backend",
                                             "connectivity", "weights"))
def pa_boxes(logits, deltas, image_hw, threshold=0.95, max_boxes=16, backend="device",
             connectivity=8, weights=UNIT):
  return P.pa_boxes(logits, deltas, ANCHOR, 4, image_hw, threshold, max_boxes, backend,
                    connectivity=connectivity, weights=weights)


def two_blobs():
  logits = np.full((16, 16), -5.0, np.float32)
  deltas = np.zeros((16, 16, 4), np.float32)
  logits[2:4, 2:5] = 5.0          # blob A, peak at cell (3, 3)
  logits[3, 3] = 8.0
  deltas[3, 3] = [0.5, -0.25, np.log(2.0), 0.0]
  deltas[2, 2] = [3.0, 3.0, 1.0, 1.0]  # a non-peak cell: must not be used
  logits[10:13, 10] = 4.0         # blob B, peak at cell (11, 10)
  logits[11, 10] = 6.0
  logits[6, 12] = 2.0             # sigmoid 0.88 < 0.95: not a seed
  return logits, deltas


@pytest.mark.parametrize("backend", ["device", "host"])
def test_two_blobs_hand_case(backend):
  logits, deltas = two_blobs()
  boxes, scores, valid = pa_boxes(logits, deltas, np.array([64, 64]), backend=backend)
  assert boxes.shape == (16, 4) and scores.shape == (16,) and valid.shape == (16,)
  np.testing.assert_array_equal(valid, [True, True] + [False] * 14)
  # A: anchor centred on cell (3, 3) = (14, 14), 8x8 -> centre (14 + .5*8, 14 - .25*8) = (18, 12),
  # size (16, 8). B: anchor of cell (11, 10) = centre (42, 46), deltas 0.
  np.testing.assert_allclose(boxes[0], [10, 8, 26, 16], atol=1e-5)
  np.testing.assert_allclose(boxes[1], [38, 42, 46, 50], atol=1e-5)
  np.testing.assert_allclose(scores[:2], jax.nn.sigmoid(jnp.array([8.0, 6.0])), rtol=1e-6)
  assert np.all(np.asarray(boxes)[2:] == 0) and np.all(np.asarray(scores)[2:] == 0)


def test_clipping_padding_and_ties():
  logits = np.full((16, 16), -5.0, np.float32)
  deltas = np.zeros((16, 16, 4), np.float32)
  logits[0, 0:2] = 7.0               # tie inside one component -> smaller flat index (0, 0)
  deltas[0, 0] = [-0.25, -0.25, np.log(2.0), 0.0]
  deltas[0, 1] = [5.0, 5.0, 0.0, 0.0]
  logits[14, 14] = 9.0               # cell centre (58, 58) lies outside the 40x48 image
  logits[8, 8] = 6.0                 # decodes entirely left of the image -> empty -> invalid
  deltas[8, 8] = [-10.0, 0.0, 0.0, 0.0]
  boxes, scores, valid = pa_boxes(logits, deltas, np.array([40, 48]))
  assert int(np.sum(valid)) == 1
  # Anchor of cell (0, 0): centre (2, 2), 8x8 -> centre (0, 0), size 16x8 -> (-8, -4, 8, 4),
  # clipped to (0, 0, 8, 4).
  np.testing.assert_allclose(boxes[0], [0, 0, 8, 4], atol=1e-5)
  np.testing.assert_allclose(scores[0], jax.nn.sigmoid(7.0), rtol=1e-6)
  assert not bool(valid[1]) and np.all(np.asarray(boxes[1]) == 0)


@pytest.mark.parametrize("backend", ["device", "host"])
def test_release_coder_weights_decode_the_same_box(backend):
  """Deltas encoded with weights (10, 10, 5, 5) are the unit deltas times the weights; the
  default coder of `pa_boxes` is the release's, so it gives blob A's hand-checked box."""
  logits, deltas = two_blobs()
  scaled = deltas * np.asarray(RELEASE, np.float32)
  boxes, _, valid = pa_boxes(logits, scaled, np.array([64, 64]), backend=backend,
                             weights=RELEASE)
  np.testing.assert_allclose(boxes[0], [10, 8, 26, 16], atol=1e-5)
  fn = jax.jit(lambda l, d: P.pa_boxes(l, d, ANCHOR, 4, jnp.array([64, 64]), max_boxes=16,
                                       backend=backend))
  np.testing.assert_allclose(fn(logits, scaled)[0], boxes, atol=1e-6)
  # Read with unit weights, the same deltas give another box: the weights are used.
  wrong = pa_boxes(logits, scaled, np.array([64, 64]), backend=backend)[0]
  assert not np.allclose(np.asarray(wrong[0]), [10, 8, 26, 16], atol=1.0)


@pytest.mark.parametrize("backend", ["device", "host"])
def test_connectivity_splits_diagonal_blobs(backend):
  """Two seeds touching only at a corner: two PA boxes with 4-connectivity (scipy's default,
  the `pa_boxes` default), one with 8."""
  logits = np.full((16, 16), -5.0, np.float32)
  logits[4, 4], logits[5, 5] = 8.0, 7.0
  deltas = np.zeros((16, 16, 4), np.float32)
  four = pa_boxes(logits, deltas, np.array([64, 64]), backend=backend, connectivity=4)
  eight = pa_boxes(logits, deltas, np.array([64, 64]), backend=backend, connectivity=8)
  assert int(np.sum(four[2])) == ndimage.label(jax.nn.sigmoid(logits) > 0.95)[1] == 2
  assert int(np.sum(eight[2])) == 1
  default = jax.jit(lambda l, d: P.pa_boxes(l, d, ANCHOR, 4, jnp.array([64, 64]), max_boxes=16,
                                            backend=backend))(logits, deltas)
  np.testing.assert_array_equal(default[2], four[2])
  # Cell (5, 5): anchor centred at (22, 22), 8x8.
  np.testing.assert_allclose(four[0][1], [18, 18, 26, 26], atol=1e-5)


@pytest.mark.parametrize("connectivity", [4, 8])
def test_backends_identical_on_random_maps(connectivity):
  rng = np.random.default_rng(0)
  b, h, w = 4, 32, 32
  logits = np.stack([ndimage.gaussian_filter(rng.normal(0, 1, (h, w)), 1.0) * 12 + 1
                     for _ in range(b)]).astype(np.float32)
  deltas = rng.normal(0, 0.3, (b, h, w, 4)).astype(np.float32)
  image_hw = np.array([[128, 128], [100, 120], [128, 90], [64, 64]], np.int32)
  out = {}
  for backend in ("device", "host"):
    fn = jax.jit(jax.vmap(lambda l, d, s: P.pa_boxes(l, d, ANCHOR, 4, s, 0.95, 64, backend,
                                                     connectivity=connectivity)))
    out[backend] = [np.asarray(x) for x in fn(logits, deltas, image_hw)]
  for a, c in zip(out["device"], out["host"]):
    np.testing.assert_array_equal(a, c)
  boxes, scores, valid = out["device"]
  assert valid.sum() > 8  # the random maps do have several components
  # Reference count: components of the thresholded map inside the image (scipy), capped at K.
  for i in range(b):
    fg = jax.nn.sigmoid(logits[i]) > 0.95
    cy = (np.arange(h) + 0.5) * 4
    fg &= (cy[:, None] < image_hw[i, 0]) & (cy[None, :] < image_hw[i, 1])
    n = ndimage.label(fg, ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2))[1]
    assert valid[i].sum() == min(n, 64)
    assert np.all(np.diff(scores[i][valid[i]]) <= 0)            # sorted by score
    bx = boxes[i][valid[i]]
    assert np.all(bx[:, [0, 2]] <= image_hw[i, 1]) and np.all(bx[:, [1, 3]] <= image_hw[i, 0])
    assert np.all(bx >= 0)


def test_no_gradient():
  logits, deltas = two_blobs()

  def f(l, d):
    boxes, scores, _ = P.pa_boxes(l, d, ANCHOR, 4, jnp.array([64, 64]), max_boxes=4)
    return jnp.sum(boxes) + jnp.sum(scores)

  gl, gd = jax.jit(jax.grad(f, argnums=(0, 1)))(logits, deltas)
  assert np.all(np.asarray(gl) == 0) and np.all(np.asarray(gd) == 0)


def test_max_boxes_keeps_highest_scores():
  logits = np.full((16, 16), -5.0, np.float32)
  peaks = np.linspace(3.5, 9.0, 16).astype(np.float32)
  np.random.default_rng(0).shuffle(peaks)
  # 16 isolated single cells (every other row/column) with distinct logits.
  for n, (i, j) in enumerate([(i, j) for i in range(0, 16, 4) for j in range(0, 16, 4)]):
    logits[i + 1, j + 1] = peaks[n]
  boxes, scores, valid = pa_boxes(logits, np.zeros((16, 16, 4), np.float32),
                                  np.array([64, 64]), max_boxes=5)
  assert boxes.shape == (5, 4) and bool(np.all(valid))
  expected = np.sort(np.asarray(jax.nn.sigmoid(peaks)))[::-1][:5]
  np.testing.assert_allclose(scores, expected, rtol=1e-6)


def test_small_map_pads_to_max_boxes():
  logits = np.full((2, 2), 9.0, np.float32)
  fn = jax.jit(P.pa_boxes, static_argnames=("stride", "threshold", "max_boxes", "backend"))
  boxes, scores, valid = fn(logits, np.zeros((2, 2, 4), np.float32), ANCHOR, stride=4,
                            image_hw=np.array([8, 8]), max_boxes=6)
  assert boxes.shape == (6, 4) and valid.tolist() == [True] + [False] * 5
