"""Photometric augmentation: intensity and stain jitter ranges, identities, determinism."""

import numpy as np
import pytest

from pa_jax.data import augment, synthetic


def _grey(seed=0, h=32, w=40):
  g = np.random.default_rng(seed).random((h, w)).astype(np.float32)
  return np.repeat(g[..., None], 3, axis=-1)


def _he(seed=0, size=64):
  """An H&E-like RGB float image in [0, 1] (dark purple nuclei on pink) and its labels."""
  img, lab = synthetic.synthetic_image(seed, size, size, n_nuclei=8, radius=(5, 9),
                                       modality="histology")
  return img.astype(np.float32) / 255.0, lab


def test_is_grey():
  g = _grey()
  assert augment.is_grey(g)
  c = g.copy()
  c[3, 4, 2] += 0.01  # one channel of one pixel differs
  assert not augment.is_grey(c)
  assert not augment.is_grey(_he()[0])


# ------------------------------------------------------------------ intensity


def test_jitter_intensity_stays_in_unit_range_and_is_seeded():
  img = _grey(1)
  for s in range(20):
    out = augment.jitter_intensity(img, np.random.default_rng(s), 0.5)
    assert out.shape == img.shape and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
  a = augment.jitter_intensity(img, np.random.default_rng(7), 0.3)
  b = augment.jitter_intensity(img, np.random.default_rng(7), 0.3)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, augment.jitter_intensity(img, np.random.default_rng(8), 0.3))
  assert not np.allclose(a, img, atol=1e-3)


def test_jitter_intensity_strength_zero_is_identity_and_draws_nothing():
  img = _grey(2)
  rng = np.random.default_rng(0)
  assert augment.jitter_intensity(img, rng, 0.0) is img
  assert rng.random() == np.random.default_rng(0).random()  # rng not consumed


def test_jitter_intensity_is_monotone_per_image():
  """gamma > 0, contrast > 0 and a shared shift: pixel order is kept (ties from clipping)."""
  x = np.linspace(0.0, 1.0, 256, dtype=np.float32).reshape(16, 16)
  img = np.repeat(x[..., None], 3, axis=-1)
  for s in range(10):
    out = augment.jitter_intensity(img, np.random.default_rng(s), 0.4)[..., 0].ravel()
    assert np.all(np.diff(out) >= 0)


def test_jitter_intensity_gamma_and_brightness_ranges_on_a_constant_image():
  """A constant image is its own mean, so contrast drops out: out = 0.5**gamma + brightness
  with gamma in [1/(1+s), 1+s] and brightness in [-s/2, s/2]."""
  s = 0.2
  img = np.full((4, 4, 3), 0.5, np.float32)
  lo, hi = 0.5 ** (1 + s) - s / 2, 0.5 ** (1 / (1 + s)) + s / 2  # 0.3353, 0.6612
  vals = []
  for seed in range(200):
    out = augment.jitter_intensity(img, np.random.default_rng(seed), s)
    assert np.ptp(out) == 0  # still constant
    vals.append(float(out[0, 0, 0]))
  assert lo - 1e-6 <= min(vals) and max(vals) <= hi + 1e-6
  assert min(vals) < 0.40 and max(vals) > 0.60  # the range is used, not a narrow part


def test_jitter_intensity_contrast_and_brightness_ranges_on_a_two_level_image():
  """Pixels 0 and 1 (half each) are fixed by any gamma and have mean 0.5:
  out = 0.5 -/+ contrast/2 + brightness, clipped; contrast in [1-s, 1+s]."""
  s = 0.2
  img = np.zeros((4, 4, 3), np.float32)
  img[:2] = 1.0
  seen = 0
  for seed in range(100):
    out = augment.jitter_intensity(img, np.random.default_rng(seed), s)
    lo, hi = float(out[2, 0, 0]), float(out[0, 0, 0])
    assert 0.0 <= lo <= 0.2 + 1e-6 and 0.8 - 1e-6 <= hi <= 1.0
    if 0.0 < lo and hi < 1.0:  # neither clipped
      seen += 1
      assert 1 - s - 1e-5 <= hi - lo <= 1 + s + 1e-5  # contrast
      assert abs((hi + lo) / 2 - 0.5) <= s / 2 + 1e-5  # brightness
  assert seen > 10


# ------------------------------------------------------------------ stain


def test_jitter_stain_leaves_grey_images_alone_and_strength_zero_is_identity():
  g = _grey(3)
  assert augment.jitter_stain(g, np.random.default_rng(0), 0.2) is g
  he, _ = _he()
  assert augment.jitter_stain(he, np.random.default_rng(0), 0.0) is he


def test_jitter_stain_changes_an_he_image_within_range_and_is_seeded():
  he, lab = _he(1)
  out = augment.jitter_stain(he, np.random.default_rng(0), 0.1)
  assert out.shape == he.shape and out.dtype == np.float32
  assert out.min() >= 0.0 and out.max() <= 1.0
  assert np.abs(out - he).mean() > 1e-3
  np.testing.assert_array_equal(out, augment.jitter_stain(he, np.random.default_rng(0), 0.1))
  # a mild jitter keeps nuclei (haematoxylin) darker than the background
  grey = out.mean(-1)
  assert grey[lab > 0].mean() < grey[lab == 0].mean()


def test_jitter_stain_tiny_strength_is_near_identity():
  """The HED round trip itself must not move colours (skimage's rgb2hed clips negative
  densities to 0, which alone shifted this image by up to 0.07)."""
  he, _ = _he(0)
  out = augment.jitter_stain(he, np.random.default_rng(0), 1e-7)
  np.testing.assert_allclose(out, he, atol=1e-4)


def test_jitter_stain_is_one_affine_map_of_optical_densities():
  """Tellez et al.: per-stain scale alpha in [1-s, 1+s] and shift in HED space, i.e. one
  affine map OD_out = OD_in @ A + c shared by every pixel, A similar to diag(alpha)."""
  s = 0.1
  he, _ = _he(2)
  for seed in range(3):
    out = augment.jitter_stain(he, np.random.default_rng(seed), s).astype(np.float64)
    ok = np.all((out > 1e-5) & (out < 1.0 - 1e-6), axis=-1)  # not clipped
    od_in = -np.log(np.maximum(he[ok], 1e-6)).astype(np.float64)
    od_out = -np.log(out[ok])
    design = np.concatenate([od_in, np.ones((len(od_in), 1))], axis=1)
    w, *_ = np.linalg.lstsq(design, od_out, rcond=None)
    np.testing.assert_allclose(design @ w, od_out, atol=1e-4)
    eig = np.linalg.eigvals(w[:3])
    assert np.all(np.abs(eig.imag) < 1e-6)
    assert np.all((eig.real >= 1 - s - 1e-4) & (eig.real <= 1 + s + 1e-4)), eig


# ------------------------------------------------------------------ log_uniform


def test_log_uniform():
  rng = np.random.default_rng(0)
  assert augment.log_uniform(rng, 1.0, 1.0) == 1.0
  assert augment.log_uniform(rng, 0.7, 0.7) == 0.7
  draws = np.array([augment.log_uniform(rng, 0.5, 2.0) for _ in range(4000)])
  assert draws.min() >= 0.5 and draws.max() <= 2.0
  # log-uniform: log(draw) ~ U(log 0.5, log 2): mean 0, std log(4)/sqrt(12)
  assert abs(np.log(draws).mean()) < 0.03
  assert np.log(draws).std() == pytest.approx(np.log(4) / np.sqrt(12), rel=0.05)
  assert np.mean(draws < 1.0) == pytest.approx(0.5, abs=0.03)
