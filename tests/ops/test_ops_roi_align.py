"""Tests of pa_jax.ops.roi_align against a loop transcription of torchvision's algorithm."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pa_jax.ops import roi_align as RA


def ref_bilinear(f, y, x):
  h, w = f.shape[:2]
  if y < -1.0 or y > h or x < -1.0 or x > w:
    return np.zeros(f.shape[2:])
  y, x = max(y, 0.0), max(x, 0.0)
  y0, x0 = int(y), int(x)
  if y0 >= h - 1:
    y0 = y1 = h - 1
    y = float(y0)
  else:
    y1 = y0 + 1
  if x0 >= w - 1:
    x0 = x1 = w - 1
    x = float(x0)
  else:
    x1 = x0 + 1
  ly, lx = y - y0, x - x0
  hy, hx = 1 - ly, 1 - lx
  return hy * hx * f[y0, x0] + hy * lx * f[y0, x1] + ly * hx * f[y1, x0] + ly * lx * f[y1, x1]


def ref_roi_align(f, boxes, out, scale, ratio, aligned):
  f = np.asarray(f, np.float64)
  out_h, out_w = (out, out) if np.isscalar(out) else out
  res = np.zeros((len(boxes), out_h, out_w, f.shape[2]))
  off = 0.5 if aligned else 0.0
  for r, b in enumerate(np.asarray(boxes, np.float64)):
    x0, y0 = b[0] * scale - off, b[1] * scale - off
    rw, rh = b[2] * scale - off - x0, b[3] * scale - off - y0
    if not aligned:
      rw, rh = max(rw, 1.0), max(rh, 1.0)
    bh, bw = rh / out_h, rw / out_w
    for p in range(out_h):
      for q in range(out_w):
        acc = 0.0
        for iy in range(ratio):
          y = y0 + p * bh + (iy + 0.5) * bh / ratio
          for ix in range(ratio):
            x = x0 + q * bw + (ix + 0.5) * bw / ratio
            acc = acc + ref_bilinear(f, y, x)
        res[r, p, q] = acc / (ratio * ratio)
  return res


def random_rois(rng, n, h, w, scale):
  """Boxes in image pixels, some partly/fully outside the map, some zero-area."""
  hi = np.array([w, h]) / scale
  xy = rng.uniform(-0.3, 1.1, (n, 2)) * hi
  wh = rng.uniform(0, 0.6, (n, 2)) * hi
  wh[::5] = 0.0
  return np.concatenate([xy, xy + wh], 1).astype(np.float32)


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("ratio", [1, 2])
def test_against_reference(aligned, ratio):
  rng = np.random.default_rng(ratio + 2 * aligned)
  h, w, c, scale, out = 9, 12, 3, 0.25, 4
  feats = rng.normal(size=(h, w, c)).astype(np.float32)
  boxes = random_rois(rng, 12, h, w, scale)
  fn = jax.jit(lambda f, b: RA.roi_align(f, b, out, scale, ratio, aligned))
  got = np.asarray(fn(feats, boxes))
  assert got.shape == (12, out, out, c) and got.dtype == np.float32
  np.testing.assert_allclose(got, ref_roi_align(feats, boxes, out, scale, ratio, aligned),
                             atol=1e-5)


def test_hand_cases():
  # A map equal to x (cell centre) + 0.5 in pixels: aligned RoIAlign of a box well inside
  # returns the x-centre of each bin exactly (bilinear is exact on linear functions).
  h, w = 8, 8
  xs = np.tile(np.arange(w, dtype=np.float32) + 0.5, (h, 1))[..., None]
  boxes = np.array([[2, 2, 6, 6]], np.float32)
  got = np.asarray(jax.jit(lambda f, b: RA.roi_align(f, b, 2, 1.0, 2, True))(xs, boxes))
  np.testing.assert_allclose(got[0, :, :, 0], [[3, 5], [3, 5]], atol=1e-6)
  # Constant map, box sticking out on both sides. Sample x: bin 0 at -1.5 (< -1: counts 0)
  # and 0.5; bin 1 at 2.5 and 4.5 (> W = 4: counts 0). Fully outside boxes pool 0.
  const = np.ones((4, 4, 1), np.float32)
  boxes = np.array([[-2, 0, 6, 4], [-9, -9, -3, -3]], np.float32)
  got = np.asarray(jax.jit(lambda f, b: RA.roi_align(f, b, (1, 2), 1.0, 2))(const, boxes))
  np.testing.assert_allclose(got[:, 0, :, 0], [[0.5, 0.5], [0.0, 0.0]])


def test_batched_rectangular_bfloat16():
  rng = np.random.default_rng(5)
  feats = rng.normal(size=(2, 6, 7, 2)).astype(np.float32)
  boxes = np.stack([random_rois(rng, 5, 6, 7, 0.5) for _ in range(2)])
  got = jax.jit(lambda f, b: RA.batched_roi_align(f, b, (3, 2), 0.5))(feats, boxes)
  assert got.shape == (2, 5, 3, 2, 2)
  for i in range(2):
    ref = ref_roi_align(feats[i], boxes[i], (3, 2), 0.5, 2, True)
    np.testing.assert_allclose(got[i], ref, atol=1e-5)
  low = jax.eval_shape(lambda f, b: RA.roi_align(f, b, 3, 0.5),
                       jax.ShapeDtypeStruct((6, 7, 2), jnp.bfloat16), boxes[0])
  assert low.dtype == jnp.bfloat16 and low.shape == (5, 3, 3, 2)


def test_gradient_is_finite():
  feats = jnp.ones((5, 5, 2))
  boxes = jnp.array([[0, 0, 0, 0], [1, 1, 3, 4]], jnp.float32)
  g = jax.jit(jax.grad(lambda f: RA.roi_align(f, boxes, 2, 1.0).sum()))(feats)
  assert np.all(np.isfinite(np.asarray(g))) and float(g.sum()) == pytest.approx(16.0, rel=1e-5)


def ref_level(box, lo, hi):
  area = max(box[2] - box[0], 0) * max(box[3] - box[1], 0)
  k = math.floor(4 + math.log2(math.sqrt(area) / 224 + 1e-8))
  return min(max(k, lo), hi)


def test_multilevel():
  rng = np.random.default_rng(7)
  levels = (2, 3, 4, 5)
  size = 128
  feats = [rng.normal(size=(size >> k, size >> k, 3)).astype(np.float32) for k in levels]
  sides = np.array([0, 3, 50, 111, 113, 224, 300, 500, 1000], np.float32)
  boxes = np.stack([np.full_like(sides, 5), np.full_like(sides, 7), 5 + sides, 7 + sides / 2],
                   1)
  boxes[:, 3] = 7 + sides  # square boxes of the given side
  boxes = np.concatenate([boxes, random_rois(rng, 6, size, size, 1.0)])
  lv = np.asarray(jax.jit(RA.assign_levels, static_argnums=(1, 2))(boxes, 2, 5))
  np.testing.assert_array_equal(lv, [ref_level(b, 2, 5) for b in boxes.astype(np.float64)])
  np.testing.assert_array_equal(lv[:9], [2, 2, 2, 2, 3, 4, 4, 5, 5])
  fn = jax.jit(lambda f, b: RA.multilevel_roi_align(f, b, 3, levels))
  got = np.asarray(fn(feats, boxes))
  for r, k in enumerate(lv):
    ref = ref_roi_align(feats[k - 2], boxes[r:r + 1], 3, 2.0 ** -k, 2, True)
    np.testing.assert_allclose(got[r], ref[0], atol=1e-5, rtol=1e-4)
  batched = jax.jit(lambda f, b: RA.batched_multilevel_roi_align(f, b, 3, levels))(
      [np.stack([f, f]) for f in feats], np.stack([boxes, boxes]))
  np.testing.assert_allclose(batched[1], got, atol=1e-5)


def _autodiff_multilevel(feats, boxes, size, levels):
  """Plain-autodiff RoIAlign (gathers from the public tap list): the gradient reference."""
  c = feats[0].shape[-1]
  sizes = [f.shape[:2] for f in feats]
  offsets = np.cumsum([0] + [h * w for h, w in sizes])[:-1]
  flat = jnp.concatenate([f.reshape(-1, c) for f in feats])
  lv = RA.assign_levels(boxes, levels[0], levels[-1]) - levels[0]
  taps = RA.roi_align_taps(boxes, size, jnp.asarray([2.0 ** -k for k in levels])[lv],
                           jnp.asarray([h for h, _ in sizes])[lv],
                           jnp.asarray([w for _, w in sizes])[lv], 2, True,
                           base_offsets=jnp.asarray(offsets, jnp.int32)[lv])
  return sum(flat[i] * w[..., None] for i, w in taps)


def test_gradient_equals_autodiff_and_has_no_scatter(monkeypatch):
  # The custom backward's dense form (two contractions per level, the default off the CPU)
  # equals autodiff through the gathers, boxes on every level, partly outside, zero-area;
  # and it scatters nothing.
  monkeypatch.setattr(RA, "BACKWARD", "dense")
  rng = np.random.default_rng(11)
  levels = (2, 3, 4, 5)
  size = 96
  feats = [jnp.asarray(rng.normal(size=(size >> k, size >> k, 3)), jnp.float32)
           for k in levels]
  sides = np.array([0, 3, 50, 111, 113, 224, 300], np.float32)
  boxes = np.stack([np.full_like(sides, 5), np.full_like(sides, 7), 5 + sides, 7 + sides], 1)
  boxes = jnp.asarray(np.concatenate([boxes, random_rois(rng, 9, size, size, 1.0)]))
  cot = jnp.asarray(rng.normal(size=(len(boxes), 7, 7, 3)), jnp.float32)
  ours = lambda f: jnp.sum(RA.multilevel_roi_align(f, boxes, 7, levels) * cot)  # noqa: E731
  ref = lambda f: jnp.sum(_autodiff_multilevel(f, boxes, 7, levels) * cot)  # noqa: E731
  got, want = jax.jit(jax.grad(ours))(feats), jax.jit(jax.grad(ref))(feats)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, atol=1e-5)
  bwd = str(jax.make_jaxpr(jax.grad(ours))(feats))
  assert "scatter" not in bwd
  # One level, bfloat16 maps: the gradient keeps the maps' dtype.
  f16 = feats[0].astype(jnp.bfloat16)
  g16 = jax.grad(lambda f: RA.roi_align(f, boxes, 3, 0.25).astype(jnp.float32).sum())(f16)
  assert g16.dtype == jnp.bfloat16 and g16.shape == f16.shape
  # One level: the gradient of the sum is each cell's total tap weight, per channel.
  one = jax.grad(lambda f: RA.roi_align(f, boxes, 3, 0.25).sum())(feats[0])
  index, weight = RA.stacked_taps(boxes, 3, 0.25, 24, 24)
  want = np.bincount(np.asarray(index).ravel(), np.asarray(weight).ravel(), 24 * 24)
  np.testing.assert_allclose(one, np.repeat(want.reshape(24, 24, 1), 3, -1), atol=1e-5)


@pytest.mark.parametrize("mode", ["dense", "scatter"])
def test_both_backward_forms_equal_autodiff(monkeypatch, mode):
  # The two forms of the custom backward give autodiff's gradient, boxes on every level,
  # partly outside, zero-area; bfloat16 maps keep their dtype.
  monkeypatch.setattr(RA, "BACKWARD", mode)
  rng = np.random.default_rng(12)
  levels = (2, 3, 4, 5)
  feats = [jnp.asarray(rng.normal(size=(64 >> k, 64 >> k, 4)), jnp.float32) for k in levels]
  sides = np.array([0, 3, 50, 111, 113, 224], np.float32)
  boxes = np.stack([np.full_like(sides, -3), np.full_like(sides, 7), sides - 3, 7 + sides], 1)
  boxes = jnp.asarray(np.concatenate([boxes, random_rois(rng, 20, 64, 64, 1.0)]))
  cot = jnp.asarray(rng.normal(size=(len(boxes), 5, 5, 4)), jnp.float32)
  ours = lambda f: jnp.sum(RA.multilevel_roi_align(f, boxes, 5, levels) * cot)  # noqa: E731
  ref = lambda f: jnp.sum(_autodiff_multilevel(f, boxes, 5, levels) * cot)  # noqa: E731
  for g, w in zip(jax.jit(jax.grad(ours))(feats), jax.jit(jax.grad(ref))(feats)):
    np.testing.assert_allclose(g, w, atol=1e-5)
  assert ("scatter" in str(jax.make_jaxpr(jax.grad(ours))(feats))) == (mode == "scatter")
  f16 = [f.astype(jnp.bfloat16) for f in feats]
  g16 = jax.grad(lambda f: RA.multilevel_roi_align(f, boxes, 5, levels).astype(
      jnp.float32).sum())(f16)
  assert all(g.dtype == jnp.bfloat16 for g in g16)


def test_auto_backward_scatters_on_the_cpu_only(monkeypatch):
  assert RA._use_scatter() == (jax.default_backend() == "cpu")
  monkeypatch.setattr(RA, "BACKWARD", "dense")
  assert not RA._use_scatter()
  monkeypatch.setattr(RA, "BACKWARD", "scatter")
  assert RA._use_scatter()
  monkeypatch.setattr(RA, "BACKWARD", "sparse")
  with pytest.raises(ValueError, match="BACKWARD"):
    RA._use_scatter()


def test_stacked_taps_match_the_list():
  rng = np.random.default_rng(3)
  boxes = random_rois(rng, 7, 9, 12, 0.5)
  index, weight = RA.stacked_taps(boxes, (3, 4), 0.5, 9, 12, 2, True, base_offsets=5)
  taps = RA.roi_align_taps(boxes, (3, 4), 0.5, 9, 12, 2, True, base_offsets=5)
  assert index.shape == weight.shape == (7, 3, 4, 16) and len(taps) == 16
  for k, (i, w) in enumerate(taps):
    np.testing.assert_array_equal(index[..., k], i)
    np.testing.assert_array_equal(weight[..., k], w)
  # Each bin's weights sum to the fraction of its sample points inside the map (<= 1).
  assert float(weight.sum(-1).max()) <= 1.0 + 1e-6
