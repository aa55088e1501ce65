"""Size normalisation: equivalent diameters, zoom factors, image zoom and label resize."""

import math

import numpy as np
import pytest
from skimage.transform import resize

from pa_jax.data import diameter as D


def _disk(shape, cy, cx, r):
  yy, xx = np.mgrid[:shape[0], :shape[1]]
  return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


# ------------------------------------------------------------------ diameters


def test_equivalent_diameter_of_hand_drawn_square_and_disk():
  lab = np.zeros((60, 60), np.int32)
  lab[2:12, 3:13] = 5  # square of side 10: area 100
  disk = _disk(lab.shape, 35, 35, 10)
  lab[disk] = 17
  d = D.equivalent_diameters(lab)
  assert d.dtype == np.float64 and d.shape == (2,)
  # ordered by label id (5, then 17), whatever the ids are
  assert d[0] == pytest.approx(2 * math.sqrt(100 / math.pi), rel=1e-12)  # 11.2838
  assert d[1] == pytest.approx(2 * math.sqrt(disk.sum() / math.pi), rel=1e-12)
  assert d[1] == pytest.approx(20.0, abs=0.3)  # a digital disk of radius 10 is ~20 across


def test_median_diameter_and_empty_map():
  lab = np.zeros((40, 40), np.int32)
  lab[0:4, 0:4] = 1    # 16 px
  lab[10:16, 10:16] = 2  # 36 px
  lab[20:30, 20:30] = 9  # 100 px
  assert D.median_diameter(lab) == pytest.approx(2 * math.sqrt(36 / math.pi), rel=1e-12)
  lab[30:31, 0:1] = 4  # fourth nucleus, 1 px: median of areas' diameters (1, 16, 36, 100)
  ref = np.median(2 * np.sqrt(np.array([1, 16, 36, 100]) / np.pi))
  assert D.median_diameter(lab) == pytest.approx(ref, rel=1e-12)
  assert D.median_diameter(np.zeros((8, 8), np.int32)) is None
  assert D.equivalent_diameters(np.zeros((8, 8), np.int32)).shape == (0,)


# ------------------------------------------------------------------ zoom factor


def test_zoom_factor_values_and_clamps():
  assert D.zoom_factor(15.0, 30.0) == pytest.approx(2.0)
  assert D.zoom_factor(40.0, 30.0) == pytest.approx(0.75)
  assert D.zoom_factor(1.0, 30.0) == D.MAX_ZOOM == 4.0  # 30x clamped
  assert D.zoom_factor(500.0, 30.0) == D.MIN_ZOOM == 0.25  # 0.06x clamped
  for unknown in (None, 0.0, -5.0):
    assert D.zoom_factor(unknown, 30.0) == 1.0
  assert D.zoom_factor(15.0, 0.0) == 1.0
  assert isinstance(D.zoom_factor(15.0, 30.0), float)


# ------------------------------------------------------------------ zoom_image


@pytest.mark.parametrize("zoom,shape", [(2.0, (20, 28)), (0.5, (5, 7)), (3.0, (30, 42)),
                                        (1.5, (15, 21))])
def test_zoom_image_float_matches_skimage_resize(zoom, shape):
  """Independent reference: skimage's bilinear resize (pixel-centre grid, edge mode,
  no anti-aliasing) onto the same output size."""
  img = np.random.default_rng(0).random((10, 14)).astype(np.float32)
  out = D.zoom_image(img, zoom)
  assert out.shape == shape and out.dtype == np.float32
  ref = resize(img, shape, order=1, mode="edge", anti_aliasing=False, preserve_range=True)
  np.testing.assert_allclose(out, ref, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("rgb", [False, True])
def test_zoom_image_shape_and_dtype(dtype, rgb):
  rng = np.random.default_rng(1)
  shape = (12, 18, 3) if rgb else (12, 18)
  if dtype == np.float32:
    img = rng.random(shape).astype(np.float32)
  else:
    img = rng.integers(0, np.iinfo(dtype).max, shape, endpoint=True).astype(dtype)
  for zoom, hw in ((2.0, (24, 36)), (0.5, (6, 9)), (1 / 3, (4, 6))):
    out = D.zoom_image(img, zoom)
    assert out.dtype == img.dtype
    assert out.shape == hw + shape[2:]
    # channels are zoomed independently, as the grey image of each channel
    ref = resize(img.astype(np.float64), hw + shape[2:], order=1, mode="edge",
                 anti_aliasing=False, preserve_range=True)
    if dtype != np.float32:
      info = np.iinfo(dtype)
      ref = np.clip(np.rint(ref), info.min, info.max)
      # float32 arithmetic inside: a value exactly at .5 may round either way
      assert np.abs(out.astype(np.float64) - ref).max() <= 1
      assert out.min() >= img.min() and out.max() <= img.max()  # bilinear: no overshoot
    else:
      np.testing.assert_allclose(out, ref, atol=1e-5)
    if rgb:
      np.testing.assert_array_equal(out[..., 1], D.zoom_image(img[..., 1], zoom))
  assert D.zoom_image(img, 1.0) is img  # no copy at zoom 1


def test_zoom_image_keeps_a_constant_image_and_never_goes_below_one_pixel():
  img = np.full((7, 9), 200, np.uint8)
  np.testing.assert_array_equal(D.zoom_image(img, 2.5), np.full((18, 22), 200, np.uint8))
  assert D.zoom_image(img, 0.01).shape == (1, 1)


# ------------------------------------------------------------------ resize_labels


def test_resize_labels_keeps_only_the_original_ids():
  lab = np.zeros((30, 40), np.int32)
  for k, (y, x, r) in enumerate([(8, 8, 5), (20, 25, 7), (10, 30, 4)], start=3):
    lab[_disk(lab.shape, y, x, r)] = 7 * k
  lab[29, 0] = 99
  for shape in ((45, 60), (13, 17), (30, 40), (61, 79)):
    out = D.resize_labels(lab, shape)
    assert out.shape == shape and out.dtype == lab.dtype
    assert set(np.unique(out)) <= set(np.unique(lab))  # no mixed or invented ids
  # an upscaled map keeps every nucleus, and the areas grow by the area factor
  up = D.resize_labels(lab, (60, 80))
  assert set(np.unique(up)) == set(np.unique(lab))
  for k in np.unique(lab)[1:]:
    assert (up == k).sum() == 4 * (lab == k).sum()


@pytest.mark.parametrize("factor", [2, 3])
def test_resize_labels_round_trips_an_integer_zoom_exactly(factor):
  rng = np.random.default_rng(factor)
  lab = rng.integers(0, 6, (11, 13)).astype(np.int32)
  h, w = lab.shape
  up = D.resize_labels(lab, (h * factor, w * factor))
  # nearest-neighbour up by an integer: every pixel becomes a factor x factor block
  np.testing.assert_array_equal(up, np.kron(lab, np.ones((factor, factor), np.int32)))
  np.testing.assert_array_equal(D.resize_labels(up, (h, w)), lab)


def test_resize_labels_same_shape_is_identity():
  lab = np.arange(12, dtype=np.int32).reshape(3, 4)
  assert D.resize_labels(lab, (3, 4)) is lab
