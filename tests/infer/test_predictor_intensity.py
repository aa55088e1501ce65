"""Prediction sends images to the device in their own integer dtype (issue 12 item 4).

A stand-in model returns, beside empty detections, the image its program saw after the
device's stretch (`_jitted_predict`'s `scale_intensities`), so each test reads exactly what
the network would get and what crossed to the device, independently of any network's
numerics.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pa_jax.data import diameter, intensity
from pa_jax.infer import predictor as P
from pa_jax.infer import slide_predict, slide_zoom


class _Seen(NamedTuple):
  masks: jax.Array
  mask_boxes: jax.Array
  scores: jax.Array
  valid: jax.Array
  seen: jax.Array  # float32 [B, Hc, Wc, 3]: the image `MaskRCNN.predict` would get


class _EyeModel:
  """`model.apply(variables, image, image_size, method=...)` → no detections + the image."""

  def apply(self, variables, image, image_size, method=None):
    b = image.shape[0]
    return _Seen(jnp.zeros((b, 1, 4, 4)), jnp.zeros((b, 1, 4)), jnp.zeros((b, 1)),
                 jnp.zeros((b, 1), bool), image)


@pytest.fixture
def sent(monkeypatch):
  """Records every call of the predictor's device program: (pixels as sent, image_size,
  intensity, the image the model saw)."""
  calls = []
  real = P._jitted_predict

  def recording(*args, **kwargs):
    run = real(*args, **kwargs)

    def wrapped(variables, pixels, image_size, rng):
      labels, det = run(variables, pixels, image_size, rng)
      calls.append((np.asarray(pixels), np.asarray(image_size), np.asarray(rng),
                    np.asarray(det.seen)))
      return labels, det
    return wrapped

  monkeypatch.setattr(P, "_jitted_predict", recording)
  return calls


def _image(dtype, shape, seed=0):
  rng = np.random.default_rng(seed)
  top = np.iinfo(dtype).max if np.issubdtype(dtype, np.integer) else 1.0
  # Most pixels dim, a few bright: the percentile stretch clips both ends.
  img = rng.gamma(2.0, top / 12, shape).clip(0, top)
  return img.astype(dtype)


def test_pad_batch_refuses_what_it_would_silently_get_wrong():
  u8, f = np.ones((4, 4, 3), np.uint8), np.ones((4, 4, 3), np.float32)
  with pytest.raises(ValueError, match="share a dtype"):
    P.pad_batch([u8, f], 2, (32, 32), np.zeros((2, 3), np.float32))  # f would be cast
  with pytest.raises(ValueError, match="intensity range"):
    P.pad_batch([u8], 1, (32, 32))  # would be clipped to [0, 1]: a near-binary image


def test_pad_batch_hand_case():
  a = np.full((2, 3, 3), 7, np.uint16)
  rng = np.array([[1, 2, 3], [9, 10, 11]], np.float32)
  pixels, sizes, ranges = P.pad_batch([a, a + 1], 3, (4, 5), rng)
  assert pixels.dtype == np.uint16 and pixels.shape == (3, 4, 5, 3)
  assert (pixels[0, :2, :3] == 7).all() and (pixels[1, :2, :3] == 8).all()
  assert pixels[:, 2:].sum() == 0 and pixels[:, :, 3:].sum() == 0 and pixels[2].sum() == 0
  np.testing.assert_array_equal(sizes, [[2, 3]] * 3)
  np.testing.assert_array_equal(ranges, [rng] * 3)
  f = np.full((2, 3, 3), 0.5, np.float32)  # pixels already in [0, 1]: the identity range
  pixels, _, ranges = P.pad_batch([f], 1, (2, 3))
  assert pixels.dtype == np.float32
  np.testing.assert_array_equal(ranges[0], [[0, 0, 0], [1, 1, 1]])


@pytest.mark.parametrize("dtype,shape,mode", [
    (np.uint8, (40, 50), "percentile"), (np.uint16, (40, 50, 3), "percentile"),
    (np.uint8, (37, 21, 3), "dtype"), (np.uint16, (64, 64), "dtype")])
def test_integer_images_cross_as_integers_and_are_stretched_on_the_device(sent, dtype,
                                                                          shape, mode):
  img = _image(dtype, shape)
  P.Predictor(_EyeModel(), {}, normalize=mode, canvas_octaves=2, tile_size=128)(img)
  (pixels, sizes, rng, seen), = sent
  h, w = shape[:2]
  canvas = P.bucket_canvas(h, w, P.bucket_sides(128, 2))
  assert pixels.dtype == dtype and pixels.shape == (1,) + canvas + (3,)
  assert pixels.nbytes == canvas[0] * canvas[1] * 3 * np.dtype(dtype).itemsize
  np.testing.assert_array_equal(sizes[0], [h, w])
  grey_or_rgb = intensity.intensity_range(img, mode)
  np.testing.assert_array_equal(rng[0], np.broadcast_to(grey_or_rgb, (2, 3)))
  want = intensity.normalize_image(img, mode)  # the host's normalisation, float32
  np.testing.assert_allclose(seen[0, :h, :w], want, atol=1e-6)
  if mode == "percentile":
    assert want.min() == 0.0 and want.max() == 1.0  # the stretch clipped both ends
  assert not seen[0, h:].any() and not seen[0, :, w:].any()  # the padding stays 0


def test_other_dtypes_are_normalised_on_the_host(sent):
  img = _image(np.float32, (30, 30)) * 1000.0  # e.g. a float array from napari
  P.Predictor(_EyeModel(), {})(img)
  (pixels, _, rng, seen), = sent
  assert pixels.dtype == np.float32
  np.testing.assert_array_equal(rng[0], intensity.IDENTITY_RANGE)
  np.testing.assert_array_equal(seen[0, :30, :30], intensity.normalize_image(img))


def test_tiles_of_a_large_image_share_its_range(sent):
  """An image larger than the tile goes in integer tiles, each stretched by the WHOLE
  image's range, so tiles agree across seams (a tile's own percentiles would not)."""
  img = _image(np.uint16, (150, 100))
  img[:40] //= 8  # a dim band: its tiles' own percentiles would differ from the image's
  P.Predictor(_EyeModel(), {}, tile_size=64, overlap=16, batch_size=2)(img)
  rng = np.repeat(intensity.intensity_range(img), 3, axis=1)
  assert len(sent) > 2
  for pixels, sizes, ranges, seen in sent:
    assert pixels.dtype == np.uint16
    for k in range(len(pixels)):
      np.testing.assert_array_equal(ranges[k], rng)
      h, w = sizes[k]
      np.testing.assert_allclose(seen[k, :h, :w], intensity.stretch(pixels[k, :h, :w], rng),
                                 atol=1e-6)
  # The dim band's tile, stretched by its own range, would not be what was seen.
  first = sent[0]
  own = intensity.normalize_image(first[0][0, :64, :64, 0])
  assert np.abs(first[3][0, :64, :64] - own).max() > 0.1


def test_a_zoomed_integer_image_is_within_half_a_grey_level_of_the_zoomed_float(sent):
  """A model trained with `data.diameter` zooms the raw pixels (`diameter.zoom_pixels`):
  clipped to the range, interpolated, rounded back to uint8."""
  img = _image(np.uint8, (48, 40))
  p = P.Predictor(_EyeModel(), {}, target_diameter=20.0, diameter=10.0, dilate=False)
  labels = p(img)
  assert labels.shape == img.shape and p.last_zoom == 2.0
  (pixels, sizes, rng, seen), = sent
  assert pixels.dtype == np.uint8 and tuple(sizes[0]) == (96, 80)
  want = diameter.zoom_image(intensity.normalize_image(img), 2.0)
  half_level = 0.5 / float(rng[0, 1, 0] - rng[0, 0, 0])
  err = np.abs(seen[0, :96, :80] - want)
  assert err.max() <= half_level + 1e-6
  assert err.max() > 0  # rounding to uint8 did happen (the bound is not vacuous)


def test_slide_tiles_cross_as_integers_with_the_slide_range(sent):
  """`model_tiles`: a streamed slide's uint8 tiles with the range of the whole slide."""

  class Slide:
    def __init__(self, image):
      self.image, self.shape, self.dtype, self.channels = image, image.shape[:2], image.dtype, 1

    def read(self, y0, x0, y1, x1):
      return self.image[y0:y1, x0:x1]

  img = _image(np.uint8, (256, 256))
  sl = Slide(img)
  rng = slide_predict.slide_intensity(sl, "percentile")
  assert rng.shape == (2, 1)
  np.testing.assert_allclose(slide_predict.slide_intensity(sl, "dtype"), [[0.0], [255.0]])
  # The sample of a 256² slide is the slide itself: the slide's range is the image's.
  np.testing.assert_allclose(rng, intensity.intensity_range(img))
  p = P.Predictor(_EyeModel(), {}, tile_size=64)
  run = slide_zoom.model_tiles(p, rng, 1.0)
  tiles = [img[0:64, 0:64], img[100:164, 36:100], img[192:256, 192:256]]
  out = run(tiles)
  assert [lab.shape for lab, _ in out] == [(64, 64)] * 3
  want = intensity.stretch(img[..., None], rng)[..., 0]
  seen = np.concatenate([s for *_, s in sent])
  sent_px = np.concatenate([px for px, *_ in sent])
  assert sent_px.dtype == np.uint8
  for t, (y, x) in enumerate([(0, 0), (100, 36), (192, 192)]):
    np.testing.assert_allclose(seen[t, :64, :64, 1], want[y:y + 64, x:x + 64], atol=1e-6)


def test_zoomed_rgb_slide_tiles_carry_the_slide_range_and_come_back_at_tile_size(sent):
  """`model_tiles` with zoom 1.5 on an RGB slide: each tile is zoomed as integers
  (`zoom_pixels`), crosses as uint8 with the slide's 3-channel range, and its label map
  comes back at the tile's own size."""
  img = _image(np.uint8, (96, 96, 3))
  rng = intensity.intensity_range(img)  # [2, 3], as slide_intensity gives an RGB slide
  p = P.Predictor(_EyeModel(), {}, tile_size=256)
  out = slide_zoom.model_tiles(p, rng, 1.5)([img[:64, :64], img[32:96, 40:96]])
  assert [lab.shape for lab, _ in out] == [(64, 64), (64, 56)]
  sizes = [tuple(s[0]) for _, s, _, _ in sent]
  assert sorted(sizes) == [(96, 84), (96, 96)]
  for pixels, size, ranges, seen in sent:
    assert pixels.dtype == np.uint8
    np.testing.assert_array_equal(ranges[0], rng)
    h, w = size[0]
    src = img[:64, :64] if (h, w) == (96, 96) else img[32:96, 40:96]
    want = diameter.zoom_pixels(src, 1.5, rng)
    np.testing.assert_array_equal(pixels[0, :h, :w], want)
    np.testing.assert_allclose(seen[0, :h, :w], intensity.stretch(want, rng), atol=1e-6)


def test_mixed_dtypes_in_one_training_batch_are_each_stretched_by_their_own_range():
  """`training_pixels` gives every example a range (float images: the identity), so a
  batch of a uint8, a uint16 and a float image stacks (as float32) and each row is
  stretched correctly on the device. Before, a float image's example had no range: a
  batch holding one either failed to stack or lost its integer rows' ranges."""
  from pa_jax.data import pipeline
  from pa_jax.ops.intensity import scale_intensities

  lab = np.zeros((32, 32), np.int32)
  lab[4:10, 4:10] = 1
  images = [_image(np.uint8, (32, 32), 1), _image(np.uint16, (32, 32, 3), 2),
            _image(np.float32, (32, 32), 3) * 50.0]
  exs = []
  for i, img in enumerate(images):
    px, rng = pipeline.training_pixels(img, "percentile", keep_integers=True)
    exs.append(pipeline.TrainExample(str(i), px, lab, lab, intensity=rng))
  items = [pipeline.canvas_example(ex, 32, 4, np.random.default_rng(0), False, False)
           for ex in exs]
  batch = pipeline.stack_batch(items)
  assert batch.intensity.shape == (3, 2, 3)
  seen = np.asarray(scale_intensities(jnp.asarray(batch.image), jnp.asarray(batch.intensity)))
  for k, img in enumerate(images):
    np.testing.assert_allclose(seen[k], intensity.normalize_image(img), atol=1e-6)
