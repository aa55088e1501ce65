"""Tiled prediction: layout, exact stitching, seams, shapes, batching."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from pa_jax.data.synthetic import synthetic_image, synthetic_labels
from pa_jax.evaluation.metrics import image_metrics
from pa_jax.infer import classical
from pa_jax.infer.tiling import (TilingStats, predict_tiled, predict_tiled_many, tile_cores,
                                 tile_grid)

BIG = 2048


# ----------------------------------------------------------------------------- helpers


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
  """True iff two label maps are equal up to a renaming of the labels."""
  if a.shape != b.shape or not np.array_equal(a > 0, b > 0):
    return False
  fg = a > 0
  pairs = np.unique(a[fg].astype(np.int64) * (int(b.max()) + 1) + b[fg])
  return pairs.size == np.unique(a[fg]).size == np.unique(b[fg]).size


def relabel_shuffled(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Random new label values (sparse, non-consecutive) for the nuclei of a map."""
  ids = np.unique(labels)
  ids = ids[ids != 0]
  lut = np.zeros(int(labels.max(initial=0)) + 1, np.int64)
  lut[ids] = rng.permutation(len(ids)) * 3 + 7
  return lut[labels]


def oracle(tiles):
  """The 'image' is the ground-truth label map: return its crop, labels shuffled."""
  rng = np.random.default_rng(int(sum(int(t.sum()) for t in tiles)) % 2**32)
  return [relabel_shuffled(t, rng) for t in tiles]


SMOOTH = 1.0  # Gaussian sigma of the local segmenter; context radius r = 4 sigma = 4 px
CONTEXT = 4


def local_segment(image: np.ndarray, threshold: float = 0.3) -> np.ndarray:
  """Deterministic, translation-equivariant segmenter with context radius CONTEXT.

  Channel mean → Gaussian blur (truncated at 4 sigma) → fixed threshold → 4-connected
  components. Its output at a pixel depends on the input within CONTEXT pixels, and a
  component farther than CONTEXT from a tile's interior edge is the same in the tile and in
  the whole image.
  """
  img = np.asarray(image, np.float32)
  if img.ndim == 3:
    img = img.mean(axis=-1)
  img = ndimage.gaussian_filter(img / 255.0, SMOOTH, truncate=4.0, mode="reflect")
  labels, _ = ndimage.label(img > threshold)
  return labels.astype(np.int32)


def local_segment_tiles(tiles):
  return [local_segment(t) for t in tiles]


def max_bbox_side(labels: np.ndarray) -> int:
  return max(max(s[0].stop - s[0].start, s[1].stop - s[1].start)
             for s in ndimage.find_objects(labels) if s is not None)


def seam_lines(height, width, tile_size, overlap):
  """Core boundaries: rows y (between y-1 and y) and columns x (between x-1 and x)."""
  cores = tile_cores(height, width, tile_size, overlap)
  rows = sorted({c[0] for c in cores} - {0})
  cols = sorted({c[1] for c in cores} - {0})
  return rows, cols


def split_at_seam(tiled, untiled, rows, cols) -> bool:
  """True iff two different tiled labels, adjacent across a seam line (row y: between y-1
  and y; column x likewise), both lie entirely inside one and the same untiled nucleus."""
  fg = tiled > 0
  t_lab, u_lab = tiled[fg], untiled[fg]
  order = np.argsort(t_lab, kind="stable")
  t_sorted, u_sorted = t_lab[order], u_lab[order]
  starts = np.flatnonzero(np.r_[True, t_sorted[1:] != t_sorted[:-1]])
  owner = {}  # tiled label -> the single untiled label containing it, or -1
  for s, e in zip(starts, np.r_[starts[1:], t_sorted.size]):
    u = u_sorted[s:e]
    owner[int(t_sorted[s])] = int(u[0]) if (u[0] > 0 and (u == u[0]).all()) else -1
  pairs = [np.stack([tiled[y - 1], tiled[y]], 1) for y in rows]
  pairs += [np.stack([tiled[:, x - 1], tiled[:, x]], 1) for x in cols]
  if not pairs:
    return False
  pairs = np.concatenate(pairs)
  pairs = pairs[(pairs[:, 0] > 0) & (pairs[:, 1] > 0) & (pairs[:, 0] != pairs[:, 1])]
  return any(owner[int(a)] == owner[int(b)] != -1 for a, b in np.unique(pairs, axis=0))


def test_split_at_seam_detects_a_split():
  untiled = np.zeros((20, 20), np.int32)
  untiled[5:15, 5:15] = 1
  untiled[5:15, 16:19] = 2
  tiled = untiled.copy()
  assert not split_at_seam(tiled, untiled, [10], [])
  tiled[10:15, 5:15] = 3  # nucleus 1 in two pieces across row seam 10
  assert split_at_seam(tiled, untiled, [10], [])
  assert not split_at_seam(tiled, untiled, [], [12])


@pytest.fixture(scope="module")
def mosaic():
  """2048 x 2048 ground truth: ~6,000 seeded ellipses (radius 5–12) anywhere on the canvas."""
  labels, _ = synthetic_labels(0, BIG, BIG, n_nuclei=6000, radius=(5, 12), touching=0.3)
  return labels


@pytest.fixture(scope="module")
def big_image():
  """2048 x 2048 fluorescence image and its untiled local segmentation."""
  image, gt = synthetic_image(1, BIG, BIG, n_nuclei=2500, radius=(5, 12), touching=0.0,
                              modality="fluorescence", dtype=np.uint8)
  return image, gt, local_segment(image)


# ----------------------------------------------------------------------------- layout


@pytest.mark.parametrize("h,w,tile,overlap", [
    (2048, 2048, 512, 64), (1000, 700, 256, 48), (513, 512, 512, 64), (300, 1100, 256, 48),
    (100, 80, 512, 64), (97, 131, 32, 7), (64, 64, 16, 0)])
def test_grid_covers_and_cores_partition(h, w, tile, overlap):
  tiles = tile_grid(h, w, tile, overlap)
  cores = tile_cores(h, w, tile, overlap)
  assert len(tiles) == len(cores)
  cover = np.zeros((h, w), np.int32)
  owner = np.zeros((h, w), np.int32)
  for (y0, x0, y1, x1), (cy0, cx0, cy1, cx1) in zip(tiles, cores):
    assert (y1 - y0, x1 - x0) == (min(tile, h), min(tile, w))  # full-size tiles
    assert 0 <= y0 and 0 <= x0 and y1 <= h and x1 <= w
    assert y0 <= cy0 < cy1 <= y1 and x0 <= cx0 < cx1 <= x1  # core inside its tile
    # The core keeps image edges and is >= overlap // 2 from every interior edge.
    for t, c, edge in ((y0, cy0, 0), (x0, cx0, 0)):
      assert c == edge if t == edge else c - t >= overlap // 2
    for t, c, edge in ((y1, cy1, h), (x1, cx1, w)):
      assert c == edge if t == edge else t - c >= overlap // 2
    cover[y0:y1, x0:x1] += 1
    owner[cy0:cy1, cx0:cx1] += 1
  assert cover.min() >= 1
  assert (owner == 1).all()  # every pixel in exactly one core
  # Neighbouring tiles overlap by at least `overlap`.
  ys = sorted({t[0] for t in tiles})
  xs = sorted({t[1] for t in tiles})
  for starts, side in ((ys, min(tile, h)), (xs, min(tile, w))):
    for a, b in zip(starts[:-1], starts[1:]):
      assert a + side - b >= overlap


def test_grid_small_image_is_one_tile_and_rejects_bad_layouts():
  assert tile_grid(200, 300, 512, 64) == [(0, 0, 200, 300)]
  assert tile_cores(200, 300, 512, 64) == [(0, 0, 200, 300)]
  with pytest.raises(ValueError):
    tile_grid(100, 100, 64, 64)
  with pytest.raises(ValueError):
    tile_grid(100, 100, 64, -1)
  with pytest.raises(ValueError):
    tile_grid(0, 100, 64, 8)


# ----------------------------------------------------------------------------- stitching


def test_oracle_mosaic_is_stitched_exactly(mosaic):
  gt = mosaic
  tile, overlap = 512, 64
  assert max_bbox_side(gt) + 2 <= overlap  # the documented requirement (r = 0)
  # The test is meaningful: many nuclei straddle a seam and are cut by some tile.
  rows, cols = seam_lines(BIG, BIG, tile, overlap)
  straddling = set()
  for y in rows:
    a, b = gt[y - 1], gt[y]
    straddling |= set(a[(a == b) & (a > 0)].tolist())
  for x in cols:
    a, b = gt[:, x - 1], gt[:, x]
    straddling |= set(a[(a == b) & (a > 0)].tolist())
  assert len(straddling) > 200

  calls = []

  def segment(tiles):
    calls.append([t.shape for t in tiles])
    return oracle(tiles)

  out, stats = predict_tiled(gt, segment, tile_size=tile, overlap=overlap, batch_size=3,
                             progress=False, return_stats=True)
  assert out.dtype == np.int32 and out.shape == gt.shape
  n_gt = int(np.count_nonzero(np.unique(gt)))
  assert stats.kept == n_gt == int(out.max())  # no duplicates, no missing nuclei, 1..N
  assert (stats.cut, stats.duplicates, stats.conflict_pixels) == (0, 0, 0)
  assert stats.outside_core > 0 and stats.tiles == len(tile_grid(BIG, BIG, tile, overlap))
  assert same_partition(gt, out)  # every nucleus whole, none cut at a seam
  assert all(len(c) <= 3 for c in calls)
  assert all(s == (tile, tile) for c in calls for s in c)


def test_too_small_overlap_is_counted_and_warned(mosaic):
  gt = mosaic[:768, :768]
  with pytest.warns(RuntimeWarning, match="overlap"):
    out, stats = predict_tiled(gt, oracle, tile_size=128, overlap=8, progress=False,
                               return_stats=True)
  assert stats.cut > 0
  assert not same_partition(gt, out)


def test_local_segmenter_tiled_equals_untiled(big_image):
  image, _, untiled = big_image
  # Touching nuclei merge into clumps under a threshold segmenter (up to 84 px here), so
  # the overlap must exceed the largest clump + 2 * CONTEXT + 2.
  tile, overlap = 512, 96
  assert max_bbox_side(untiled) + 2 * CONTEXT + 2 <= overlap  # the documented requirement
  tiled, stats = predict_tiled(image, local_segment_tiles, tile_size=tile, overlap=overlap,
                               batch_size=4, progress=False, return_stats=True)
  assert stats.cut == 0 and stats.duplicates == 0

  # Away from the image border (the spec's comparison): instances whose pixels are all
  # farther than `overlap` from the border are identical up to relabelling.
  def interior(labels):
    bad = np.unique(np.concatenate([labels[:overlap].ravel(), labels[-overlap:].ravel(),
                                    labels[:, :overlap].ravel(),
                                    labels[:, -overlap:].ravel()]))
    return np.where(np.isin(labels, bad), 0, labels)

  assert same_partition(interior(untiled), interior(tiled))
  # For this segmenter the tiles share the image's own borders, so everything is equal.
  assert same_partition(untiled, tiled)

  # No nucleus straddles a seam as two pieces.
  rows, cols = seam_lines(BIG, BIG, tile, overlap)
  assert not split_at_seam(tiled, untiled, rows, cols)
  # ... and the seams are crossed by many nuclei (the check is not vacuous).
  crossing = sum(int(np.count_nonzero(np.unique(tiled[y - 1][tiled[y - 1] == tiled[y]])))
                 for y in rows)
  assert crossing > 50


def test_classical_segmenter_tiles_close_to_untiled():
  # Otsu is per tile, so not exact; on a homogeneous image it stays close.
  image, gt = synthetic_image(3, 640, 640, n_nuclei=300, touching=0.0)
  untiled = classical.segment_classical(image)
  tiled = predict_tiled(image, lambda ts: [classical.segment_classical(t) for t in ts],
                        tile_size=256, overlap=64, progress=False)
  m = image_metrics(untiled, tiled)
  assert m["f1"] > 0.97, m


def test_conflicts_first_pasted_wins_and_duplicates_dropped():
  # Two tiles along x: tile 0 = [0, 64) with core [0, 56), tile 1 = [48, 112), core [56, 112).
  assert tile_grid(64, 112, 64, 16) == [(0, 0, 64, 64), (0, 48, 64, 112)]
  assert tile_cores(64, 112, 64, 16) == [(0, 0, 64, 56), (0, 56, 64, 112)]
  t0 = np.zeros((64, 64), np.int32)
  t0[20:30, 50:60] = 1  # A: box centre x = 54 -> core 0
  t0[40:50, 50:60] = 2  # C: centre x = 54 -> core 0
  t1 = np.zeros((64, 64), np.int32)
  t1[20:30, 52 - 48:62 - 48] = 5  # A again, 2 px to the right: centre 56 -> core 1; 80 % taken
  t1[40:50, 58 - 48:68 - 48] = 9  # B: centre 62 -> core 1; overlaps C on 2 columns (20 px)
  maps = iter([t0, t1])
  out, stats = predict_tiled(np.zeros((64, 112), np.uint8), lambda ts: [next(maps) for _ in ts],
                             tile_size=64, overlap=16, batch_size=1, progress=False,
                             return_stats=True)
  assert (stats.kept, stats.duplicates, stats.conflict_pixels) == (3, 1, 20)
  assert (out[20:30, 50:60] == 1).all() and (out == 1).sum() == 100  # A pasted once
  assert (out[40:50, 50:60] == 2).all()  # C keeps its pixels (pasted first)
  assert (out == 3).sum() == 80 and (out[40:50, 60:68] == 3).all()  # B gets the free ones


# ----------------------------------------------------------------------------- shapes


def test_image_smaller_than_tile_is_the_plain_prediction():
  image, _ = synthetic_image(4, 200, 150, n_nuclei=15)
  calls = []

  def segment(tiles):
    calls.append([t.shape for t in tiles])
    return [local_segment(t) for t in tiles]

  out = predict_tiled(image, segment, tile_size=512, overlap=64, progress=False)
  assert calls == [[(200, 150)]]
  plain = local_segment(image)
  assert out.dtype == np.int32 and same_partition(plain, out)
  assert set(np.unique(out)) == set(range(int(out.max()) + 1))


@pytest.mark.parametrize("channels", [None, 1, 3])
def test_non_square_and_channels(channels):
  image, _ = synthetic_image(5, 300, 1100, n_nuclei=200, touching=0.0)
  if channels is not None:
    image = np.repeat(image[..., None], channels, axis=-1)
  seen = []

  def segment(tiles):
    seen.extend(t.shape for t in tiles)
    return [local_segment(t) for t in tiles]

  out = predict_tiled(image, segment, tile_size=256, overlap=48, batch_size=5,
                      progress=False)
  assert out.shape == (300, 1100) and out.dtype == np.int32
  expect = (256, 256) if channels is None else (256, 256, channels)
  assert set(seen) == {expect}
  assert same_partition(local_segment(image), out)


def test_empty_prediction_and_bad_segmenter_outputs():
  image = np.zeros((300, 300), np.uint8)
  out = predict_tiled(image, lambda ts: [np.zeros(t.shape, np.int32) for t in ts],
                      tile_size=128, overlap=16, progress=False)
  assert out.shape == (300, 300) and not out.any()
  with pytest.raises(ValueError, match="shape"):
    predict_tiled(image, lambda ts: [np.zeros((5, 5), np.int32) for t in ts],
                  tile_size=128, overlap=16, progress=False)
  with pytest.raises(ValueError, match="label maps"):
    predict_tiled(image, lambda ts: [np.zeros(ts[0].shape, np.int32)],
                  tile_size=128, overlap=16, batch_size=2, progress=False)
  with pytest.raises(ValueError, match="integer"):
    predict_tiled(image, lambda ts: [np.zeros(t.shape, np.float32) for t in ts],
                  tile_size=128, overlap=16, progress=False)


def test_out_array_and_progress_bar(capsys):
  image, _ = synthetic_image(6, 400, 400, n_nuclei=60, touching=0.0)
  out = np.full((400, 400), -1, np.int32)
  res = predict_tiled(image, local_segment_tiles, tile_size=160, overlap=48, out=out,
                      progress=True)
  assert res is out and same_partition(local_segment(image), out)
  assert "tiles" in capsys.readouterr().err


# ----------------------------------------------------------------------------- batching


def test_batches_are_at_most_batch_size():
  image, _ = synthetic_image(7, 700, 900, n_nuclei=120, touching=0.0)
  sizes = []

  def segment(tiles):
    sizes.append(len(tiles))
    return [local_segment(t) for t in tiles]

  n_tiles = len(tile_grid(700, 900, 256, 48))
  out = predict_tiled(image, segment, tile_size=256, overlap=48, batch_size=4,
                      progress=False)
  assert max(sizes) <= 4 and sum(sizes) == n_tiles
  assert sizes == [4] * (n_tiles // 4) + ([n_tiles % 4] if n_tiles % 4 else [])
  assert same_partition(local_segment(image), out)


def test_many_images_batch_across_images():
  images = [synthetic_image(10 + i, h, w, n_nuclei=40, touching=0.0)[0]
            for i, (h, w) in enumerate([(100, 120), (300, 260), (90, 90)])]
  sizes = []

  def segment(tiles):
    sizes.append(len(tiles))
    return [local_segment(t) for t in tiles]

  results = list(predict_tiled_many(iter(images), segment, tile_size=128, overlap=32,
                                    batch_size=3, progress=False, return_stats=True))
  n_tiles = sum(len(tile_grid(im.shape[0], im.shape[1], 128, 32)) for im in images)
  assert max(sizes) <= 3 and sum(sizes) == n_tiles
  assert len(sizes) == -(-n_tiles // 3)  # batches span image boundaries
  for im, (labels, stats) in zip(images, results):
    assert isinstance(stats, TilingStats) and stats.cut == 0
    assert same_partition(local_segment(im), labels)
