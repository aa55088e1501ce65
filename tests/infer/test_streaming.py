"""Streaming stitching equals the in-memory stitcher exactly, row bands and nuclei included."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from pa_jax.data import images as image_io
from pa_jax.data.synthetic import synthetic_image, synthetic_labels
from pa_jax.infer import classical, streaming, tiling
from pa_jax.infer.predictor import dilate_labels

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "sample"


class Collector:
  """Sinks that rebuild the label map from the bands and record the nuclei."""

  def __init__(self, height: int, width: int):
    self.labels = np.full((height, width), -1, np.int64)  # -1: never written
    self.image = None
    self.next_row = 0
    self.nuclei: list[streaming.StreamedNucleus] = []

  def band(self, b: streaming.Band) -> None:
    assert b.y0 == self.next_row, "bands must come in order without gaps"
    h = b.labels.shape[0]
    assert h > 0 and b.labels.dtype == np.int32 and b.image.shape[0] == h
    self.labels[b.y0:b.y0 + h] = b.labels
    if self.image is None:
      self.image = np.zeros((self.labels.shape[0],) + b.image.shape[1:], b.image.dtype)
    self.image[b.y0:b.y0 + h] = b.image
    self.next_row += h

  def nucleus(self, n: streaming.StreamedNucleus) -> None:
    self.nuclei.append(n)


def stream(image, segment, **kw) -> tuple[Collector, tiling.TilingStats]:
  col = Collector(*image.shape[:2])

  def read(y0, x0, y1, x1):
    return image[y0:y1, x0:x1].copy()

  stats = streaming.stream_segment(read, image.shape[0], image.shape[1], segment,
                                   on_band=col.band, on_nucleus=col.nucleus, **kw)
  return col, stats


def check_nuclei(col: Collector, labels: np.ndarray, image: np.ndarray, scores=None) -> None:
  """Every nucleus of `labels` streamed once, with its exact mask, box and mean."""
  ids = [n.id for n in col.nuclei]
  assert sorted(ids) == list(range(1, int(labels.max(initial=0)) + 1))
  slices = ndimage.find_objects(labels)
  img = image if image.ndim == 3 else image[..., None]
  for n in col.nuclei:
    sl = slices[n.id - 1]
    assert n.box == (sl[0].start, sl[1].start, sl[0].stop, sl[1].stop)
    truth = labels[sl] == n.id
    assert n.mask.dtype == np.bool_ and np.array_equal(n.mask, truth)
    want = img[sl][truth].astype(np.float64).mean(axis=0)
    np.testing.assert_allclose(n.mean_intensity, want, rtol=1e-12)
    if scores is not None:
      assert n.score == scores[n.id]


def sample_mosaic(rows: int = 3, cols: int = 4) -> np.ndarray:
  """Gray mosaic of the embedded dsb2018 sample images (fluorescence, 256-ish px each)."""
  files = sorted((SAMPLE / "images").glob("*.png"))
  tiles = []
  for f in files:
    im = image_io.read_image(f)
    im = im.mean(axis=-1).astype(np.uint8) if im.ndim == 3 else im
    tiles.append(im[:240, :240])
  grid = [[tiles[(r * cols + c) % len(tiles)] for c in range(cols)] for r in range(rows)]
  return np.block(grid)


def classical_tiles(tiles):
  return [classical.segment_classical(t) for t in tiles]


# ----------------------------------------------------------------------------- equality


@pytest.mark.parametrize("dilate", [False, True])
def test_classical_on_dsb2018_mosaic_equals_in_memory(dilate):
  image = sample_mosaic()
  kw = dict(tile_size=256, overlap=64, batch_size=3)
  ref = tiling.predict_tiled(image, classical_tiles, progress=False, **kw)
  ref = dilate_labels(ref) if dilate else ref
  col, stats = stream(image, classical_tiles, dilate=dilate, **kw)
  assert col.next_row == image.shape[0]
  assert np.array_equal(col.labels, ref)  # label values too, not just the partition
  assert np.array_equal(col.image, image)
  assert stats.kept == int(ref.max()) > 100
  check_nuclei(col, ref, image)


def test_oracle_mosaic_with_seams_and_scores():
  gt, _ = synthetic_labels(0, 700, 900, n_nuclei=1200, radius=(5, 12), touching=0.3)
  rows = [c[0] for c in tiling.tile_cores(700, 900, 200, 48)]
  assert any((gt[y - 1] == gt[y])[gt[y] > 0].any() for y in set(rows) - {0})  # on seams

  def oracle(tiles):
    # Sparse label values and a score per value, to check they follow renumbering.
    out = []
    for t in tiles:
      lab = t.astype(np.int64) * 1000 + 7 * (t > 0)
      out.append((lab, {int(v): float(v % 997) / 997 for v in np.unique(lab) if v}))
    return out

  image = gt.astype(np.uint16)
  ref = tiling.predict_tiled(image, lambda ts: [o for o, _ in oracle(ts)], tile_size=200,
                             overlap=48, batch_size=5, progress=False)
  col, stats = stream(image, oracle, tile_size=200, overlap=48, batch_size=5)
  assert np.array_equal(col.labels, ref)
  assert stats.kept == len(np.unique(gt)) - 1 and stats.cut == 0
  # The nucleus with output id k is ground-truth nucleus g; its score is that of g's value.
  scores = {}
  for k, sl in enumerate(ndimage.find_objects(ref), start=1):
    g = int(np.bincount(gt[sl][ref[sl] == k]).argmax())
    scores[k] = float((g * 1000 + 7) % 997) / 997
  check_nuclei(col, ref, image, scores)


def test_inconsistent_segmenter_conflicts_and_duplicates_match():
  """A segmenter whose masks change from tile to tile (like a CNN seeing another context):
  conflicts and duplicates are resolved exactly as in memory."""
  gt, _ = synthetic_labels(3, 520, 610, n_nuclei=500, radius=(6, 14), touching=0.5)

  def jittery(tiles):
    out = []
    for t in tiles:
      shift = int(t.sum()) % 5 - 2  # depends on the tile, deterministic
      lab = np.roll(t, shift, axis=1)
      if int(t.sum()) % 2:
        lab = ndimage.grey_dilation(lab, size=(3, 3)) * (ndimage.grey_dilation(t, (3, 3)) > 0)
      out.append(lab)
    return out

  image = gt.astype(np.uint16)
  ref, ref_stats = tiling.predict_tiled(image, jittery, tile_size=128, overlap=40,
                                        batch_size=7, progress=False, return_stats=True)
  with pytest.warns(RuntimeWarning):  # the shifted nuclei touch interior edges
    col, stats = stream(image, jittery, tile_size=128, overlap=40, batch_size=7, dilate=True)
  assert ref_stats.duplicates > 0 and ref_stats.conflict_pixels > 0
  assert stats == ref_stats
  assert np.array_equal(col.labels, dilate_labels(ref))
  check_nuclei(col, dilate_labels(ref), image)


# ----------------------------------------------------------------------------- edges


@pytest.mark.parametrize("h,w,tile,overlap,batch", [
    (100, 80, 128, 32, 4),      # smaller than a tile: one tile
    (1, 500, 64, 16, 3),        # one row
    (333, 1, 64, 16, 2),        # one column
    (300, 257, 128, 40, 1),     # sides not on the stride
    (140, 150, 128, 127, 64)])  # overlap = tile - 1 (stride 1: 13 x 23 tiles), batches of 64
def test_region_edges_and_shapes(h, w, tile, overlap, batch):
  image, _ = synthetic_image(7, h, w, n_nuclei=max(1, h * w // 600), touching=0.2)
  kw = dict(tile_size=tile, overlap=overlap, batch_size=batch)
  with np.errstate(all="ignore"):
    ref = tiling.predict_tiled(image, classical_tiles, progress=False, **kw)
    col, _ = stream(image, classical_tiles, dilate=True, **kw)
  assert np.array_equal(col.labels, dilate_labels(ref))
  assert np.array_equal(col.image, image)
  check_nuclei(col, dilate_labels(ref), image)


def test_empty_tiles_and_empty_slide():
  image, _ = synthetic_image(2, 400, 400, n_nuclei=60, touching=0.0, modality="fluorescence")
  image[:, 150:] = 0  # most tiles see nothing
  col, stats = stream(image, classical_tiles, tile_size=128, overlap=32, dilate=True)
  ref = dilate_labels(tiling.predict_tiled(image, classical_tiles, 128, 32, progress=False))
  assert np.array_equal(col.labels, ref) and stats.kept > 0
  assert not ref[:, 160:].any()

  blank = np.zeros((300, 200, 3), np.uint8)
  col, stats = stream(blank, classical_tiles, tile_size=128, overlap=32, dilate=True)
  assert stats.kept == 0 and col.nuclei == [] and not col.labels.any()
  assert col.next_row == 300 and col.image.shape == blank.shape


def test_memory_is_bounded_by_tile_rows(monkeypatch):
  """A tall slide never holds more than a few tile rows."""
  held = []
  real = streaming._Rows.drop_above

  def spy(self, row):
    held.append(self.labels.shape[0])
    real(self, row)

  monkeypatch.setattr(streaming._Rows, "drop_above", spy)
  gt, _ = synthetic_labels(4, 3000, 160, n_nuclei=900, radius=(5, 10))
  col, stats = stream(gt.astype(np.uint16), lambda ts: list(ts), tile_size=128,
                      overlap=32, batch_size=2)
  assert col.next_row == 3000 and stats.kept > 500
  assert max(held) <= 2 * 128 + 32  # ~ two tile rows, not 3000 rows


def test_bad_segmenter_outputs_are_refused():
  image = np.zeros((64, 64), np.uint8)
  with pytest.raises(ValueError, match="label maps for"):
    stream(image, lambda ts: [], tile_size=64, overlap=8)
  with pytest.raises(ValueError, match="shape"):
    stream(image, lambda ts: [np.zeros((3, 3), np.int32)], tile_size=64, overlap=8)
  with pytest.raises(ValueError, match="batch_size"):
    stream(image, classical_tiles, tile_size=64, overlap=8, batch_size=0)
