"""Integer images to the device: `ops.intensity.scale_intensities` against the host's
`intensity.normalize_image`, and training batches that carry uint8/uint16 pixels."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pa_jax.data import intensity, pipeline
from pa_jax.ops.intensity import scale_intensities


def _image(dtype, shape, seed=0):
  rng = np.random.default_rng(seed)
  top = np.iinfo(dtype).max
  # Signal in a small part of the range plus a few hot pixels: the percentile stretch's case.
  img = rng.integers(top // 50, top // 10, shape).astype(dtype)
  img.flat[rng.choice(img.size, 5, replace=False)] = top
  return img


@pytest.mark.parametrize("dtype,shape,mode", [
    (np.uint8, (40, 56), "percentile"), (np.uint16, (40, 56), "percentile"),
    (np.uint8, (33, 20, 3), "percentile"), (np.uint16, (33, 20, 3), "dtype"),
    (np.uint8, (16, 16), "dtype")])
def test_device_stretch_equals_the_host_normalisation(dtype, shape, mode):
  img = _image(dtype, shape)
  raw, rng = intensity.integer_image(img, mode)
  assert raw.dtype == dtype and raw.shape == shape[:2] + (3,) and rng.shape == (2, 3)
  got = jax.jit(scale_intensities)(raw[None], rng[None])[0]
  want = intensity.normalize_image(img, mode)
  np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=1e-6)
  assert got.dtype == jnp.float32


def test_constant_image_and_padding():
  flat = np.full((8, 8), 7, np.uint8)  # hi == lo: the 1e-6 floor, as on the host
  raw, rng = intensity.integer_image(flat)
  np.testing.assert_array_equal(np.asarray(scale_intensities(raw[None], rng[None]))[0],
                                intensity.normalize_image(flat))
  # On a canvas, pixels beyond image_size are 0 whatever the range maps 0 to.
  canvas = np.zeros((2, 12, 12, 3), np.uint8)
  canvas[:, :8, :8] = raw
  rng2 = np.stack([rng, np.array([[-10.0] * 3, [10.0] * 3], np.float32)])
  out = np.asarray(scale_intensities(canvas, rng2, np.array([[8, 8], [5, 12]], np.int32)))
  assert (out[0, 8:] == 0).all() and (out[0, :, 8:] == 0).all()
  assert (out[1, 5:] == 0).all() and (out[1, :5] > 0).all()  # (0 + 10) / 20 = 0.5 inside


def test_non_integer_images_stay_on_the_host():
  assert intensity.integer_image(np.zeros((4, 4), np.float32)) is None


def _examples(keep_integers, dtype=np.uint8, zoom=1.0):
  out = []
  for seed in range(3):
    img = _image(dtype, (90, 70), seed)
    lab = np.zeros((90, 70), np.int32)
    lab[10 + seed:30, 20:35] = 1
    lab[50:70, 40 + seed:60] = 2
    raw = intensity.integer_image(img) if keep_integers else None
    if raw is not None:
      out.append(pipeline.TrainExample(f"e{seed}", raw[0], lab, lab.copy(), zoom=zoom,
                                       intensity=raw[1]))
    else:
      out.append(pipeline.TrainExample(f"e{seed}", intensity.normalize_image(img), lab,
                                       lab.copy(), zoom=zoom))
  return out


@pytest.mark.parametrize("dtype,zoom", [(np.uint8, 1.0), (np.uint16, 1.0), (np.uint8, 1.5)])
def test_integer_batches_are_the_float_batches_after_the_device_stretch(dtype, zoom):
  kw = dict(global_batch=4, canvas=64, max_instances=8, seed=3)
  ints = pipeline.BatchSource(_examples(True, dtype, zoom), **kw).batch(5)
  floats = pipeline.BatchSource(_examples(False, dtype, zoom), **kw).batch(5)
  assert ints.image.dtype == dtype and ints.intensity.shape == (4, 2, 3)
  assert floats.intensity is None and floats.image.dtype == np.float32
  for name in ("labels", "boxes", "valid", "image_size"):
    np.testing.assert_array_equal(getattr(ints, name), getattr(floats, name))
  got = np.asarray(jax.jit(lambda b: b.pixels())(ints))
  if zoom == 1.0:
    np.testing.assert_allclose(got, floats.image, rtol=0, atol=1e-6)
  else:  # the zoomed crop is rounded to whole grey levels: at most half of one
    lo, hi = ints.intensity[:, 0], ints.intensity[:, 1]
    tol = float((0.5 / (hi - lo)).max()) + 1e-6
    assert np.abs(got - floats.image).max() <= tol


def test_photometric_jitter_takes_float_pixels():
  aug = pipeline.Augmentation(intensity=0.2)
  src = pipeline.BatchSource(_examples(True), global_batch=2, canvas=64, max_instances=8,
                             augmentation=aug)
  b = src.batch(0)
  assert b.image.dtype == np.float32 and b.intensity is None
  assert 0.0 <= b.image.min() and b.image.max() <= 1.0
