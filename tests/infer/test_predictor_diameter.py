"""Predictor size normalisation (`target_diameter`): the zoom from a given diameter or one
estimated from a first pass, and the label map brought back to the input's size.

No trained model here: `Predictor._segment` (one pass of the network) is replaced by a
deterministic stand-in that labels the bright blobs of the (zoomed) image, so the zoom
logic around it is checked exactly.
"""

import math

import numpy as np
import pytest
from scipy import ndimage

from pa_jax.data import diameter as D
from pa_jax.data.intensity import device_image, intensity_range, stretch
from pa_jax.data.pipeline import normalize_image
from pa_jax.infer import predictor as P


def _disks(shape=(100, 120), d=15.0, centres=None, seed=0):
  """uint8 image of bright disks (values 180..250, distinct) on 20, and its labels."""
  if centres is None:
    centres = [(20, 20), (20, 60), (20, 100), (70, 25), (75, 65), (72, 100)]
  yy, xx = np.mgrid[:shape[0], :shape[1]]
  lab = np.zeros(shape, np.int32)
  img = np.full(shape, 20, np.uint8)
  levels = np.linspace(180, 250, len(centres)).astype(np.uint8)
  for k, ((cy, cx), v) in enumerate(zip(centres, levels), start=1):
    m = (yy - cy) ** 2 + (xx - cx) ** 2 <= (d / 2) ** 2
    lab[m], img[m] = k, v
  return img, lab


def _stub(monkeypatch, min_diameter=0.0):
  """Replaces `_segment` with: threshold at 0.5, label 4-connected blobs (those of at
  least `min_diameter` px: a model sees nuclei only near its training size), score =
  mean intensity of the blob. Returns the list of shapes it was called on."""
  calls = []

  def segment(self, img, intensity=None):
    calls.append(img.shape[:2])
    img = img if intensity is None else stretch(img, intensity)  # as the device would
    lab, n = ndimage.label(img[..., 0] > 0.5)
    if n:
      d = D.equivalent_diameters(lab)
      lab = np.where(np.isin(lab, np.nonzero(d >= min_diameter)[0] + 1), lab, 0)
      lab = P.relabel_sequential(lab)
    ids = np.unique(lab)[1:]
    means = ndimage.mean(img[..., 0], lab, ids) if len(ids) else []
    return lab.astype(np.int32), {int(i): float(m) for i, m in zip(ids, means)}

  monkeypatch.setattr(P.Predictor, "_segment", segment)
  return calls


def _predictor(**kw):
  kw.setdefault("dilate", False)
  return P.Predictor(None, None, **kw)


def _matches(out, truth, min_iou=0.85):
  """Every true nucleus has exactly one predicted label with IoU >= min_iou."""
  assert out.shape == truth.shape
  for k in np.unique(truth)[1:]:
    t = truth == k
    ids, counts = np.unique(out[t], return_counts=True)
    j = ids[np.argmax(counts)]
    assert j > 0
    p = out == j
    assert (t & p).sum() / (t | p).sum() >= min_iou, (k, (t & p).sum() / (t | p).sum())


def _same_partition(a, b):
  """Equal up to the label values: 0 <-> 0 and a bijection between the nuclei."""
  if a.shape != b.shape or not np.array_equal(a == 0, b == 0):
    return False
  pairs = np.unique(np.stack([a.ravel(), b.ravel()], 1), axis=0)
  return len(np.unique(pairs[:, 0])) == len(pairs) == len(np.unique(pairs[:, 1]))


def test_given_diameter_sets_the_zoom_and_returns_the_input_shape(monkeypatch):
  calls = _stub(monkeypatch)
  img, truth = _disks(d=15)
  p = _predictor(target_diameter=30.0, diameter=15.0)
  labels, table = p.predict_scored(img)
  assert calls == [(200, 240)]  # one pass, at zoom 30 / 15 = 2
  assert (p.last_diameter, p.last_diameter_source, p.last_zoom) == (15.0, "given", 2.0)
  assert labels.shape == img.shape and labels.dtype == np.int32
  assert labels.max() == 6 and set(np.unique(labels)) == set(range(7))
  _matches(labels, truth)
  # each nucleus keeps its own score through the zoom and the relabelling
  x = normalize_image(img)[..., 0]
  assert sorted(table) == list(range(1, 7))
  # (the zoomed blobs' blurred rims lower every score by 0.02-0.04: the order identifies them)
  ks = sorted(table)
  means = [x[labels == k].mean() for k in ks]
  assert np.argsort([table[k] for k in ks]).tolist() == np.argsort(means).tolist()
  np.testing.assert_allclose([table[k] for k in ks], means, atol=0.05)
  # zoom factors are clamped: a 1 px diameter would be 30x, it is 4x
  calls.clear()
  _predictor(target_diameter=30.0, diameter=1.0).predict_scored(img)
  assert calls == [(400, 480)]


def test_without_target_diameter_there_is_no_zoom(monkeypatch):
  calls = _stub(monkeypatch)
  img, truth = _disks(d=15)
  for p in (_predictor(), _predictor(diameter=40.0)):
    labels = p(img)
    assert calls.pop() == img.shape and not calls
    np.testing.assert_array_equal(labels > 0, truth > 0)
    assert (p.last_diameter, p.last_diameter_source, p.last_zoom) == (None, None, 1.0)


def test_estimate_zoom_measures_the_nuclei_of_a_first_pass(monkeypatch):
  calls = _stub(monkeypatch)
  img, truth = _disks(d=15)
  p = _predictor(target_diameter=30.0)
  zoom, d_in, done, done_zoom = p.estimate_zoom(normalize_image(img))
  # the first pass at zoom 1 finds the disks themselves: their median diameter, exactly
  assert d_in == pytest.approx(D.median_diameter(truth), rel=1e-12)
  assert d_in == pytest.approx(15.0, abs=0.3)
  assert zoom == pytest.approx(30.0 / d_in, rel=1e-12) and zoom == pytest.approx(2.0, abs=0.05)
  assert done is None and done_zoom is None  # 2x is far from the pass's 1x: predict again at 2x
  assert calls == [(100, 120)]
  calls.clear()
  labels, table = p.predict_scored(img)
  assert calls == [(100, 120), tuple(round(s * zoom) for s in (100, 120))]
  assert p.last_diameter == pytest.approx(d_in)
  assert p.last_diameter_source == "estimated" and p.last_zoom == zoom
  assert labels.shape == img.shape and labels.max() == 6 and len(table) == 6
  _matches(labels, truth)


def test_estimate_within_ten_percent_reuses_the_first_pass(monkeypatch):
  calls = _stub(monkeypatch)
  img, truth = _disks(d=15)
  d = D.median_diameter(truth)
  p = _predictor(target_diameter=1.05 * d)
  zoom, _, done, done_zoom = p.estimate_zoom(normalize_image(img))
  assert zoom == pytest.approx(1.05) and done is not None and done_zoom == 1.0
  assert _same_partition(done[0], truth)
  calls.clear()
  labels, _ = p.predict_scored(img)
  assert calls == [(100, 120)]  # the estimate's pass is the result
  assert p.last_zoom == 1.0  # the zoom that pass ran at, not the estimate's 1.05
  assert _same_partition(labels, truth)


def test_small_nuclei_are_found_at_zoom_two(monkeypatch):
  """A model that only sees nuclei >= 8 px misses 5 px ones at zoom 1, finds them at 2;
  their diameter is measured back in the input's pixels."""
  calls = _stub(monkeypatch, min_diameter=8.0)
  centres = [(10 + 20 * i, 10 + 20 * j) for i in range(3) for j in range(3)]
  img, truth = _disks((64, 64), d=5.5, centres=centres)
  p = _predictor(target_diameter=16.0)
  labels, _ = p.predict_scored(img)
  assert calls[:2] == [(64, 64), (128, 128)]
  d_true = D.median_diameter(truth)
  assert p.last_diameter == pytest.approx(d_true, abs=0.6)  # nearest resize back: ~1 px
  zoom = D.zoom_factor(p.last_diameter, 16.0)
  assert calls[2:] == [(round(64 * zoom),) * 2] and zoom == pytest.approx(16 / d_true, rel=0.12)
  assert labels.shape == (64, 64) and labels.max() == 9
  _matches(labels, truth, min_iou=0.6)


def test_no_nuclei_at_any_zoom_falls_back_to_native_scale(monkeypatch):
  calls = _stub(monkeypatch)
  img = np.full((40, 50), 20, np.uint8)
  p = _predictor(target_diameter=30.0)
  zoom, d_in, native, native_zoom = p.estimate_zoom(normalize_image(img))
  assert (zoom, d_in, native_zoom) == (1.0, None, 1.0)
  assert native[0].shape == (40, 50) and not native[0].any() and native[1] == {}  # the zoom-1 pass
  assert calls == [(40, 50), (80, 100), (20, 25)]
  calls.clear()
  labels, table = p.predict_scored(img)
  assert labels.shape == (40, 50) and not labels.any() and table == {}
  assert (p.last_diameter, p.last_diameter_source, p.last_zoom) == (None, "estimated", 1.0)
  assert calls == [(40, 50), (80, 100), (20, 25)]  # no fourth pass at zoom 1


def test_a_nucleus_lost_when_zooming_back_is_dropped_from_the_table(monkeypatch):
  """Zoomed labels are brought back by nearest sampling: a blob under one zoomed pixel can
  fall between the samples. Labels stay 1..N and the scores follow their nuclei."""
  img, _ = _disks(d=15)

  def segment(self, x, intensity=None):
    lab, n = ndimage.label(stretch(x, intensity)[..., 0] > 0.5)
    lab = lab.astype(np.int32)
    lab[lab > 0] += 1
    lab[0, 0] = 1  # a one-pixel blob at an even position: zoom 2 samples odd ones
    return lab, {1: 0.99, **{k: 0.5 + k / 100 for k in range(2, n + 2)}}

  monkeypatch.setattr(P.Predictor, "_segment", segment)
  labels, table = _predictor(target_diameter=30.0, diameter=15.0).predict_scored(img)
  assert labels[0, 0] == 0 and labels.max() == 6
  assert table == {k: pytest.approx(0.5 + (k + 1) / 100) for k in range(1, 7)}


def test_dilation_runs_at_the_zoomed_scale(monkeypatch):
  """One pixel of dilation where the model saw its nuclei (30 px), i.e. half a pixel at
  native scale for 15 px nuclei: equal to dilating the zoomed map, then zooming back."""
  _stub(monkeypatch)
  img, _ = _disks(d=15)
  p = _predictor(target_diameter=30.0, diameter=15.0, dilate=True)
  dilated = p(img)
  pixels, rng = device_image(img)  # the predictor's own route: integers zoomed, then stretched
  zoomed, _ = p._segment(D.zoom_pixels(pixels, 2.0, rng), rng)
  expected = P.relabel_sequential(D.resize_labels(P.dilate_labels(zoomed), img.shape[:2]))
  np.testing.assert_array_equal(dilated, expected)
  plain = _predictor(target_diameter=30.0, diameter=15.0)(img)
  grown = np.count_nonzero(dilated) - np.count_nonzero(plain)
  assert 0 < grown < np.count_nonzero(P.dilate_labels(plain)) - np.count_nonzero(plain)


def test_predictor_for_reads_the_run_and_predict_config():
  import sys
  from pathlib import Path

  root = str(Path(__file__).resolve().parents[2])
  if root not in sys.path:
    sys.path.insert(0, root)
  from configs import base

  cfg = base.get_config()
  cfg.data.diameter, cfg.predict.diameter = 30.0, 12.5
  cfg.predict.mask_overlap = 0.4
  p = P.predictor_for(cfg, None, None)
  assert (p.target_diameter, p.diameter, p.mask_overlap) == (30.0, 12.5, 0.4)
  cfg.predict.mask_overlap = 1.0  # off: the plain overwrite program
  assert P.predictor_for(cfg, None, None).mask_overlap is None
  old = base.get_config()  # a run stored before the fields existed
  del old.data["diameter"], old.predict["diameter"], old.predict["mask_overlap"]
  p = P.predictor_for(old, None, None)
  assert (p.target_diameter, p.diameter, p.mask_overlap) == (0.0, 0.0, None)  # as before
  assert math.isclose(D.zoom_factor(12.5, 30.0), 2.4)


class _Slide:
  """The two members `slide_zoom` reads of a streamed slide: shape and read(y0, x0, y1, x1)."""

  def __init__(self, image):
    self.image, self.shape, self.reads = image, image.shape[:2], []

  def read(self, y0, x0, y1, x1):
    self.reads.append((y0, x0, y1, x1))
    return self.image[y0:y1, x0:x1]


def test_a_slide_takes_its_zoom_as_an_image_does(monkeypatch):
  """`slide_zoom` goes through `Predictor.choose_zoom`: an estimate within 10 % of a trial
  zoom takes that zoom (as `predict_scored` would for the same pixels), a given diameter
  reads nothing, no target diameter means zoom 1."""
  from pa_jax.infer.slide_zoom import slide_zoom

  calls = _stub(monkeypatch)
  img, truth = _disks(d=15)
  d = D.median_diameter(truth)
  rng = intensity_range(img)  # the slide's range (here the whole image's)
  p = _predictor(target_diameter=1.05 * d)
  sl = _Slide(img)
  assert slide_zoom(p, sl, rng) == 1.0 and sl.reads == [(0, 0, 100, 120)]
  assert (p.last_diameter_source, p.last_zoom) == ("estimated", 1.0)
  assert p.last_diameter == pytest.approx(d)
  p.predict_scored(img)
  assert p.last_zoom == 1.0  # the same choice for the image itself
  p = _predictor(target_diameter=2.0 * d)  # far from the zoom-1 pass that measured it
  assert slide_zoom(p, _Slide(img), rng) == pytest.approx(2.0, rel=1e-9)
  calls.clear()
  p, sl = _predictor(target_diameter=30.0, diameter=20.0), _Slide(img)
  assert slide_zoom(p, sl, rng) == 1.5 and sl.reads == [] and calls == []
  assert (p.last_diameter, p.last_diameter_source, p.last_zoom) == (20.0, "given", 1.5)
  p, sl = _predictor(), _Slide(img)
  assert slide_zoom(p, sl, rng) == 1.0 and sl.reads == []
  assert (p.last_diameter, p.last_diameter_source, p.last_zoom) == (None, None, 1.0)
