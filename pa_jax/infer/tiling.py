"""Prediction at any image size: overlapping tiles, stitched into one label map.

Any segmenter that maps a batch of tile images to a batch of instance label maps can be
tiled (`Predictor`, the classical floor, a third-party model):

    labels = predict_tiled(image, segment_tiles, tile_size=512, overlap=64)

Layout (`tile_grid`, `tile_cores`): along each axis of length n, tiles of `tile_size` start
every `tile_size - overlap` pixels; the last tile is shifted inward so that it ends on the
image edge and keeps the full size (it then overlaps its neighbour by more than
`overlap`). An axis no longer than `tile_size` is one tile of length n, so an image no
larger than a tile is a single tile: exactly the plain prediction. Tiles are visited in
raster order (rows of tiles top to bottom, left to right within a row).

Cores: the overlap between two neighbouring tiles is cut at its middle. A tile's core is the
tile minus half the overlap on every side that borders another tile (sides on the image edge
are kept whole). The cores partition the image: every pixel is in exactly one core, and a
core is at least `overlap // 2` pixels from its tile's interior edges.

Stitching rule (see docs/tiling.md for the proof):
1. Every predicted nucleus of a tile gets an ownership point, the centre of its bounding box
   `((y0 + y1 - 1) // 2, (x0 + x1 - 1) // 2)` (inclusive box, global pixel coordinates).
   It depends on the nucleus' mask only, so the same nucleus seen whole by two tiles gets the
   same point in both.
2. A nucleus is kept iff its ownership point lies in its tile's core, and it is then pasted
   whole (its full mask from that tile, which may reach into the overlap). The cores
   partition the image, so a nucleus seen whole in several tiles is kept exactly once.
3. A piece of a nucleus cut by a tile's interior edge has its ownership point within half a
   nucleus of that edge, i.e. outside the core when `overlap` exceeds the nucleus' size, so
   it is dropped there; the nucleus is whole in the neighbour tile that owns it.
   Requirement: `overlap >= D + 2 r + 2`, D the largest nucleus' bounding-box side in
   pixels and r the segmenter's context radius (how far from a pixel the input can change
   that pixel's output; 0 for a pointwise threshold, large for a CNN). When a *kept* nucleus
   touches its tile's interior edge the requirement was violated (it may be cut): it is
   still pasted (a part beats nothing), counted in `TilingStats.cut` and a warning is issued.
4. Conflicts (only with segmenters whose masks differ between tiles, e.g. a CNN seeing
   different context): pixels already pasted are never overwritten (earlier tile in raster
   order wins). A kept nucleus of which more than half the pixels are already taken is the
   same nucleus predicted again by a neighbour with a slightly different box: it is dropped as
   a duplicate (`TilingStats.duplicates`); otherwise it gets its free pixels
   (`TilingStats.conflict_pixels` counts the rest).
Output labels are 1..N in paste order.

Memory: tiles are cut, segmented and pasted one batch at a time, so besides the caller's
input image (which may be a `np.memmap`: only one tile is read at a time) and the int32 (H, W)
output (pass `out=` a memmap to keep that on disk too), the working set is one batch:
`batch_size` tiles (`tile_size² · C` input values) and their label maps
(`batch_size · tile_size²` ints), plus per-nucleus temporaries no larger than one tile.
It does not grow with the image.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
from scipy import ndimage

__all__ = ["TilingStats", "Pasted", "tile_grid", "tile_cores", "paste_tile", "as_tile_labels",
           "predict_tiled", "predict_tiled_many"]

log = logging.getLogger(__name__)

Box = tuple[int, int, int, int]  # (y0, x0, y1, x1), half-open, absolute pixels
SegmentTiles = Callable[[list[np.ndarray]], Sequence[np.ndarray]]

# A kept nucleus with more than this fraction of its pixels already pasted is a duplicate.
DUPLICATE_FRACTION = 0.5


@dataclasses.dataclass
class TilingStats:
  """Counts of one stitched image.

  Attributes:
    tiles: tiles segmented.
    kept: nuclei pasted into the output (= the number of labels).
    outside_core: tile nuclei dropped because their ownership point is in another core
      (duplicates of a neighbour's nucleus and pieces cut by the tile edge).
    cut: kept nuclei that touch their tile's interior edge — the overlap was too small
      for them (should be 0; a warning is issued otherwise).
    duplicates: kept nuclei dropped because more than half of their pixels were already
      pasted by an earlier tile.
    conflict_pixels: pixels of pasted nuclei already taken by an earlier tile.
  """

  tiles: int = 0
  kept: int = 0
  outside_core: int = 0
  cut: int = 0
  duplicates: int = 0
  conflict_pixels: int = 0


def check_layout(tile_size: int, overlap: int) -> None:
  if int(tile_size) != tile_size or tile_size < 1:
    raise ValueError(f"tile_size must be a positive int, got {tile_size!r}")
  if int(overlap) != overlap or not 0 <= overlap < tile_size:
    raise ValueError(f"overlap must be an int in [0, tile_size={tile_size}), got {overlap!r}")


def _axis(n: int, tile: int, overlap: int) -> tuple[list[int], list[int], list[int]]:
  """Tile starts, tile length and core boundaries along one axis of length n.

  Returns (starts, [length], cuts) with cuts[i]..cuts[i+1] the core of tile i.
  """
  if n < 1:
    raise ValueError(f"image sides must be >= 1, got {n}")
  if n <= tile:
    return [0], [n], [0, n]
  stride = tile - overlap
  starts = list(range(0, n - tile, stride)) + [n - tile]
  cuts = [0]
  for a, b in zip(starts[:-1], starts[1:]):
    cuts.append(b + (a + tile - b) // 2)  # middle of the overlap [b, a + tile)
  cuts.append(n)
  return starts, [tile], cuts


def tile_grid(height: int, width: int, tile_size: int = 512, overlap: int = 64) -> list[Box]:
  """Tiles `(y0, x0, y1, x1)` (half-open) covering an image, in raster order.

  Every tile is `tile_size` x `tile_size` (a side no longer than `tile_size` is one tile of
  that side's length); neighbours overlap by at least `overlap` pixels.
  """
  check_layout(tile_size, overlap)
  ys, (th,), _ = _axis(int(height), tile_size, overlap)
  xs, (tw,), _ = _axis(int(width), tile_size, overlap)
  return [(y, x, y + th, x + tw) for y in ys for x in xs]


def tile_cores(height: int, width: int, tile_size: int = 512, overlap: int = 64) -> list[Box]:
  """The core `(y0, x0, y1, x1)` of each tile of `tile_grid` (same order).

  Cores partition the image; a core is its tile minus half the overlap on every side that
  borders another tile.
  """
  check_layout(tile_size, overlap)
  _, _, cy = _axis(int(height), tile_size, overlap)
  _, _, cx = _axis(int(width), tile_size, overlap)
  return [(cy[i], cx[j], cy[i + 1], cx[j + 1])
          for i in range(len(cy) - 1) for j in range(len(cx) - 1)]


def as_tile_labels(result, shape: tuple[int, int], index: int
                   ) -> tuple[np.ndarray, np.ndarray | None]:
  """A segmenter's label map for tile `index`, checked, as int32 [h, w] with small values.

  Returns (labels, values): `values[k]` is the segmenter's own value of label k when sparse
  values (e.g. global ids) had to be renumbered so that `find_objects` stays small, else
  None (labels kept as given). Raises ValueError for a wrong shape, dtype or sign.
  """
  lab = np.asarray(result)
  if lab.shape != shape:
    raise ValueError(f"segment_tiles returned a label map of shape {lab.shape} for tile "
                     f"{index} of shape {shape}")
  if lab.dtype == np.bool_ or not np.issubdtype(lab.dtype, np.integer):
    raise ValueError(f"segment_tiles must return integer label maps, got {lab.dtype}")
  if lab.size and int(lab.min()) < 0:
    raise ValueError("segment_tiles returned negative labels")
  values = None
  if lab.size and int(lab.max()) > max(lab.size, 1):
    values, inv = np.unique(lab, return_inverse=True)
    if int(values[0]) != 0:
      values = np.concatenate([[0], values])
      inv = inv + 1
    lab = inv.reshape(shape)
  return lab.astype(np.int32, copy=False), values


@dataclasses.dataclass(frozen=True)
class Pasted:
  """One nucleus pasted by `paste_tile`.

  id: its output label. local: its label in the tile's (checked) label map.
  box: (y0, x0, y1, x1) half-open, global pixels, of the pixels it was given.
  """

  id: int
  local: int
  box: Box


def paste_tile(out: np.ndarray, origin: tuple[int, int], lab: np.ndarray, tile: Box,
               core: Box, image_hw: tuple[int, int], next_id: int,
               stats: TilingStats) -> list[Pasted]:
  """Applies the stitching rule (module docstring, rules 1-4) to one tile's nuclei.

  The one implementation of the rule, shared by the in-memory stitcher and the streaming
  one (pa_jax/infer/streaming.py), so both give the same labels.

  Args:
    out: int32 [h, w] window of the output, pixel (0, 0) at global `origin` (y, x); it
      must contain the tile. Written in place: kept nuclei get their free pixels.
    lab: int32 [th, tw] label map of the tile (`as_tile_labels`), 0 = background.
    tile, core: the tile and its core, global (y0, x0, y1, x1).
    image_hw: (H, W) of the stitched image (tile sides on its edge are not interior).
    next_id: output label of the first nucleus pasted; the next ones count up.
    stats: updated in place (tiles, kept, outside_core, cut, duplicates, conflict_pixels).

  Returns:
    The pasted nuclei in paste order (ids next_id, next_id + 1, ...).
  """
  y0, x0, y1, x1 = tile
  cy0, cx0, cy1, cx1 = core
  th, tw = y1 - y0, x1 - x0
  oy, ox = y0 - origin[0], x0 - origin[1]  # the tile's corner in `out`
  # Interior edges: tile sides that are not on the image edge.
  top, left, bottom, right = y0 > 0, x0 > 0, y1 < image_hw[0], x1 < image_hw[1]
  stats.tiles += 1
  pasted = []
  for k, sl in enumerate(ndimage.find_objects(lab), start=1):
    if sl is None:
      continue
    ly0, ly1, lx0, lx1 = sl[0].start, sl[0].stop, sl[1].start, sl[1].stop
    py, px = y0 + (ly0 + ly1 - 1) // 2, x0 + (lx0 + lx1 - 1) // 2
    if not (cy0 <= py < cy1 and cx0 <= px < cx1):
      stats.outside_core += 1
      continue
    mask = lab[sl] == k
    region = out[oy + ly0:oy + ly1, ox + lx0:ox + lx1]
    free = mask & (region == 0)
    area, n_free = int(mask.sum()), int(free.sum())
    if area - n_free > DUPLICATE_FRACTION * area:
      stats.duplicates += 1
      continue
    region[free] = next_id
    rows, cols = np.nonzero(free.any(axis=1))[0], np.nonzero(free.any(axis=0))[0]
    box = (y0 + ly0 + int(rows[0]), x0 + lx0 + int(cols[0]),
           y0 + ly0 + int(rows[-1]) + 1, x0 + lx0 + int(cols[-1]) + 1)
    pasted.append(Pasted(next_id, k, box))
    next_id += 1
    stats.kept += 1
    stats.conflict_pixels += area - n_free
    if ((top and ly0 == 0) or (left and lx0 == 0) or (bottom and ly1 == th)
        or (right and lx1 == tw)):
      stats.cut += 1
  return pasted


def warn_if_cut(stats: TilingStats, overlap: int) -> None:
  """Logs and warns (RuntimeWarning) when kept nuclei touched an interior tile edge."""
  if stats.cut:
    msg = (f"tiling: {stats.cut} kept nuclei touch their tile's interior edge, so "
           f"overlap={overlap} is smaller than the largest nucleus (plus the "
           f"segmenter's context) and they may be cut at a seam; increase overlap")
    log.warning(msg)
    warnings.warn(msg, RuntimeWarning, stacklevel=3)


def check_batch_size(batch_size: int) -> None:
  if int(batch_size) != batch_size or batch_size < 1:
    raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")


class _Image:
  """Stitching state of one image."""

  def __init__(self, image: np.ndarray, tile_size: int, overlap: int,
               out: np.ndarray | None = None):
    image = np.asarray(image) if not isinstance(image, np.ndarray) else image
    if image.ndim not in (2, 3):
      raise ValueError(f"expected an (H, W) or (H, W, C) image, got shape {image.shape}")
    self.image = image
    self.height, self.width = int(image.shape[0]), int(image.shape[1])
    self.tile_size, self.overlap = tile_size, overlap
    self.tiles = tile_grid(self.height, self.width, tile_size, overlap)
    self.cores = tile_cores(self.height, self.width, tile_size, overlap)
    if out is None:
      out = np.zeros((self.height, self.width), np.int32)
    else:
      if out.shape != (self.height, self.width) or out.dtype != np.int32:
        raise ValueError(f"out must be int32 {(self.height, self.width)}, got "
                         f"{out.dtype} {out.shape}")
      out[...] = 0
    self.out = out
    self.stats = TilingStats()
    self.remaining = len(self.tiles)
    self.next_id = 1

  def tile(self, i: int) -> np.ndarray:
    y0, x0, y1, x1 = self.tiles[i]
    return np.ascontiguousarray(self.image[y0:y1, x0:x1])

  def paste(self, i: int, result) -> None:
    lab, _ = as_tile_labels(result, _box_shape(self.tiles[i]), i)
    self.remaining -= 1
    pasted = paste_tile(self.out, (0, 0), lab, self.tiles[i], self.cores[i],
                        (self.height, self.width), self.next_id, self.stats)
    self.next_id += len(pasted)

  def finish(self) -> None:
    warn_if_cut(self.stats, self.overlap)


def _box_shape(box: Box) -> tuple[int, int]:
  return box[2] - box[0], box[3] - box[1]


def predict_tiled_many(images: Iterable[np.ndarray], segment_tiles: SegmentTiles,
                       tile_size: int = 512, overlap: int = 64, batch_size: int = 4,
                       progress: bool = True, return_stats: bool = False) -> Iterator:
  """Tiled prediction of several images; tiles are batched across image boundaries.

  Yields, in input order, each image's int32 (H, W) label map (or `(labels, TilingStats)`
  when `return_stats`) as soon as its last tile is pasted. Images are read lazily, so only
  the images whose tiles are in the current batch are held. Arguments as `predict_tiled`.
  """
  check_layout(tile_size, overlap)
  check_batch_size(batch_size)
  from tqdm import tqdm

  total = None
  if isinstance(images, Sequence):
    total = sum(len(tile_grid(im.shape[0], im.shape[1], tile_size, overlap))
                for im in images)
  bar = tqdm(total=total, desc="tiles", unit="tile", disable=not progress)
  pending: list[_Image] = []  # started images not yet yielded, in order
  batch: list[tuple[_Image, int]] = []

  def run_batch() -> None:
    results = segment_tiles([st.tile(i) for st, i in batch])
    results = list(results)
    if len(results) != len(batch):
      raise ValueError(f"segment_tiles returned {len(results)} label maps for "
                       f"{len(batch)} tiles")
    for (st, i), res in zip(batch, results):
      st.paste(i, res)
    bar.update(len(batch))
    batch.clear()

  def ready():
    while pending and pending[0].remaining == 0:
      st = pending.pop(0)
      st.finish()
      yield (st.out, st.stats) if return_stats else st.out

  try:
    for image in images:
      st = _Image(image, tile_size, overlap)
      pending.append(st)
      for i in range(len(st.tiles)):
        batch.append((st, i))
        if len(batch) == batch_size:
          run_batch()
          yield from ready()
    if batch:
      run_batch()
    yield from ready()
  finally:
    bar.close()


def predict_tiled(image: np.ndarray, segment_tiles: SegmentTiles, tile_size: int = 512,
                  overlap: int = 64, batch_size: int = 4, progress: bool = True,
                  return_stats: bool = False, out: np.ndarray | None = None):
  """Segments an image of any size tile by tile and stitches the nuclei.

  Args:
    image: (H, W) or (H, W, C) array (any dtype; a `np.memmap` is read one tile at a time).
    segment_tiles: list of tile images (each (h, w) or (h, w, C), same dtype as `image`,
      h, w <= tile_size) → sequence of integer label maps of the same (h, w), 0 =
      background. Called with at most `batch_size` tiles at a time.
    tile_size: tile side in pixels.
    overlap: minimum overlap of neighbouring tiles; must exceed the largest nucleus'
      bounding-box side plus twice the segmenter's context (module docstring).
    batch_size: tiles per `segment_tiles` call.
    progress: show a tqdm progress bar over tiles.
    return_stats: also return the `TilingStats`.
    out: optional int32 (H, W) array (e.g. a `np.memmap`) to write the labels into.

  Returns:
    int32 (H, W) label map, nuclei 1..N in paste order; `(labels, TilingStats)` when
    `return_stats`.
  """
  check_layout(tile_size, overlap)
  check_batch_size(batch_size)
  from tqdm import tqdm

  st = _Image(image, tile_size, overlap, out)
  n = len(st.tiles)
  with tqdm(total=n, desc="tiles", unit="tile", disable=not progress) as bar:
    for b0 in range(0, n, batch_size):
      idx = list(range(b0, min(n, b0 + batch_size)))
      results = list(segment_tiles([st.tile(i) for i in idx]))
      if len(results) != len(idx):
        raise ValueError(f"segment_tiles returned {len(results)} label maps for "
                         f"{len(idx)} tiles")
      for i, res in zip(idx, results):
        st.paste(i, res)
      del results
      bar.update(len(idx))
  st.finish()
  return (st.out, st.stats) if return_stats else st.out
