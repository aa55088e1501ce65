"""Whole-slide prediction with bounded memory: tiles read, segmented and stitched in raster
order, finished rows and nuclei handed to sinks as soon as no later tile can change them.

    stats = stream_segment(read, height, width, segment_tiles, on_band=writer.write,
                           on_nucleus=geojson.add, tile_size=512, overlap=96, dilate=True)

The tile grid, the cores and the stitching rule are those of `pa_jax.infer.tiling` (the same
`paste_tile`), and tiles are pasted in the same order with the same ids, so the streamed
label image equals `tiling.predict_tiled` on the whole image exactly, label values included
(tests/infer/test_streaming.py). docs/tiling.md, "Streaming", has the argument.

Why rows can be flushed: tiles are visited in raster order and a tile pastes only inside
itself, so once every tile starting above row F is pasted, no later tile (they all start
at >= F) can touch a row < F: those rows are final. With `dilate` (the 3x3 post-process of
`predictor.dilate_labels`) an output row also needs the label rows beside it, so output
rows < F - 1 are final. A nucleus is final once every row of its (dilated) box is.

Memory: the held rows run from the oldest unfinished nucleus (or the next row to flush) to
the bottom of the last tile read: about two tile rows of int32 labels and input pixels,
plus one batch of tiles, whatever the slide's height. Width is not bounded: a band is a
full-width strip (a 100,000 px wide slide holds ~ 2 · 512 · 100,000 · (4 + C) bytes).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np

from pa_jax.infer import tiling
from pa_jax.infer.predictor import dilate_labels

__all__ = ["Band", "StreamedNucleus", "stream_segment"]

Box = tiling.Box
# (y0, x0, y1, x1) of the region → pixels [y1 - y0, x1 - x0(, C)] (uint8/uint16).
ReadWindow = Callable[[int, int, int, int], np.ndarray]


@dataclasses.dataclass(frozen=True)
class Band:
  """Finished rows of the output, handed out top to bottom without gaps.

  y0: first row (pixels of the region read). labels: int32 [h, W], final (dilated when
  asked). image: the input pixels of the same rows, [h, W] or [h, W, C], reader's dtype.
  """

  y0: int
  labels: np.ndarray
  image: np.ndarray


@dataclasses.dataclass(frozen=True)
class StreamedNucleus:
  """One finished nucleus.

  id: its label in the output (>= 1, unique over the slide). box: (y0, x0, y1, x1)
  half-open, pixels of the region read. mask: bool [y1 - y0, x1 - x0]. score: the
  segmenter's score, None when it gives none. mean_intensity: float per input channel (one
  for a gray image) over the mask.
  """

  id: int
  box: Box
  mask: np.ndarray
  score: float | None
  mean_intensity: tuple[float, ...]


class _Rows:
  """Rows [top, top + n) of the stitched labels (int32) and input pixels, full width."""

  def __init__(self, width: int):
    self.width, self.top = width, 0
    self.labels = np.zeros((0, width), np.int32)
    self.image: np.ndarray | None = None

  @property
  def bottom(self) -> int:
    return self.top + self.labels.shape[0]

  def ensure(self, bottom: int, pixels: np.ndarray) -> None:
    """Grows the rows to `bottom` (new rows zero), image rows shaped like `pixels`."""
    if self.image is None:
      self.image = np.zeros((0, self.width) + pixels.shape[2:], pixels.dtype)
    extra = bottom - self.bottom
    if extra > 0:
      self.labels = np.concatenate([self.labels, np.zeros((extra, self.width), np.int32)])
      self.image = np.concatenate(
          [self.image, np.zeros((extra,) + self.image.shape[1:], self.image.dtype)])

  def drop_above(self, row: int) -> None:
    """Forgets rows < `row` (copies, so the memory is given back)."""
    n = row - self.top
    if n > 0:
      self.labels = self.labels[n:].copy()
      self.image = self.image[n:].copy()
      self.top = row

  def crop(self, y0: int, x0: int, y1: int, x1: int) -> tuple[np.ndarray, np.ndarray]:
    """(labels, image) of the global window; its rows must be held."""
    assert self.top <= y0 and y1 <= self.bottom, (self.top, y0, y1, self.bottom)
    return (self.labels[y0 - self.top:y1 - self.top, x0:x1],
            self.image[y0 - self.top:y1 - self.top, x0:x1])


def _split_result(result) -> tuple[np.ndarray, dict | None]:
  """A segmenter result: a label map, or (label map, {label value: score})."""
  if isinstance(result, tuple):
    labels, scores = result
    return labels, scores
  return result, None


def _score(scores: dict | None, values: np.ndarray | None, local: int) -> float | None:
  if not scores:
    return None
  value = int(values[local]) if values is not None else local
  s = scores.get(value)
  return None if s is None else float(s)


class _Stream:
  """State of one streamed region (see `stream_segment`)."""

  def __init__(self, height: int, width: int, tile_size: int, overlap: int, dilate: bool,
               on_band, on_nucleus):
    self.hw = (height, width)
    self.tiles = tiling.tile_grid(height, width, tile_size, overlap)
    self.cores = tiling.tile_cores(height, width, tile_size, overlap)
    self.rows = _Rows(width)
    self.halo = 1 if dilate else 0  # rows beside a row that its dilated value reads
    self.on_band, self.on_nucleus = on_band, on_nucleus
    self.stats = tiling.TilingStats()
    self.next_id = 1
    self.out_next = 0  # first output row not yet handed out
    self.pending: list[tuple[tiling.Pasted, float | None]] = []

  def paste(self, i: int, pixels: np.ndarray, result) -> None:
    tile = self.tiles[i]
    self.rows.ensure(tile[2], pixels)
    labels, scores = _split_result(result)
    lab, values = tiling.as_tile_labels(labels, (tile[2] - tile[0], tile[3] - tile[1]), i)
    _, img = self.rows.crop(*tile)
    img[...] = pixels
    pasted = tiling.paste_tile(self.rows.labels, (self.rows.top, 0), lab, tile,
                               self.cores[i], self.hw, self.next_id, self.stats)
    self.next_id += len(pasted)
    self.pending.extend((p, _score(scores, values, p.local)) for p in pasted)

  def _dilated(self, y0: int, x0: int, y1: int, x1: int) -> tuple[np.ndarray, np.ndarray]:
    """Final (dilated when asked) labels and the pixels of a window whose label rows and
    their halo are final and held. Dilating a crop grown by the halo equals dilating the
    whole map inside the crop: the 3x3 window never leaves it there."""
    h = self.halo
    H, W = self.hw
    gy0, gx0, gy1, gx1 = max(y0 - h, 0), max(x0 - h, 0), min(y1 + h, H), min(x1 + h, W)
    labels, image = self.rows.crop(gy0, gx0, gy1, gx1)
    if h:
      labels = dilate_labels(labels)
    inner = (slice(y0 - gy0, y1 - gy0), slice(x0 - gx0, x1 - gx0))
    return labels[inner], image[inner]

  def flush(self, final: int) -> None:
    """Hands out what label rows < `final` decide (all when `final` is the height)."""
    H, W = self.hw
    h = self.halo
    done = final >= H
    out_end = H if done else max(final - h, 0)
    if out_end > self.out_next:
      labels, image = self._dilated(self.out_next, 0, out_end, W)
      if self.on_band is not None:
        self.on_band(Band(self.out_next, np.ascontiguousarray(labels),
                          np.ascontiguousarray(image)))
      self.out_next = out_end
    keep = []
    for p, score in self.pending:
      y0, x0, y1, x1 = p.box
      # The nucleus' output pixels lie in its box grown by the halo.
      oy0, ox0, oy1, ox1 = max(y0 - h, 0), max(x0 - h, 0), min(y1 + h, H), min(x1 + h, W)
      if oy1 > out_end:
        keep.append((p, score))
        continue
      labels, image = self._dilated(oy0, ox0, oy1, ox1)
      self._emit(p.id, (oy0, ox0, oy1, ox1), labels == p.id, image, score)
    self.pending = keep
    # Rows still needed: the halo above the next output row, and the unfinished nuclei's
    # boxes with twice the halo (their output box plus its dilation context).
    need = [self.out_next - h] + [p.box[0] - 2 * h for p, _ in keep]
    self.rows.drop_above(max(0, min(need)))

  def _emit(self, nid: int, box: Box, mask: np.ndarray, image: np.ndarray,
            score: float | None) -> None:
    # Shrink the box to the mask: the halo adds a ring only where the nucleus grew.
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    mask, image = mask[r0:r1, c0:c1], image[r0:r1, c0:c1]
    values = image[mask].astype(np.float64)
    mean = tuple(float(v) for v in np.atleast_1d(values.mean(axis=0)))
    if self.on_nucleus is not None:
      self.on_nucleus(StreamedNucleus(nid, (box[0] + r0, box[1] + c0, box[0] + r1,
                                            box[1] + c1), mask, score, mean))


def stream_segment(read: ReadWindow, height: int, width: int,
                   segment_tiles: Callable[[list[np.ndarray]], Sequence], *,
                   tile_size: int = 512, overlap: int = 96, batch_size: int = 4,
                   dilate: bool = False, on_band: Callable[[Band], None] | None = None,
                   on_nucleus: Callable[[StreamedNucleus], None] | None = None,
                   on_progress: Callable[[int, int], None] | None = None,
                   ) -> tiling.TilingStats:
  """Segments a (height x width) region tile by tile, streaming the stitched result.

  Args:
    read: (y0, x0, y1, x1) → the region's pixels there, [h, w] or [h, w, C] (uint8/uint16),
      called once per tile in raster order.
    height, width: size of the region in pixels.
    segment_tiles: list of tiles (as `read` returns them) → for each, an integer label map
      of the tile's (h, w), 0 = background, or (label map, {label value: score}). Called
      with at most `batch_size` tiles.
    tile_size, overlap: the grid of `tiling.tile_grid`; overlap as in docs/tiling.md.
    dilate: grow every nucleus of the stitched map by one pixel (3x3), as
      `predictor.dilate_labels` does on a whole map.
    on_band: receives every output row once, top to bottom, in `Band`s.
    on_nucleus: receives every nucleus once, when its rows are final (not in id order).
    on_progress: called with (tiles done, tiles in all) after each batch.

  Returns:
    TilingStats of the region (`kept` = number of nuclei = the largest id).
  """
  tiling.check_layout(tile_size, overlap)
  tiling.check_batch_size(batch_size)
  st = _Stream(int(height), int(width), tile_size, overlap, dilate, on_band, on_nucleus)
  n = len(st.tiles)
  for b0 in range(0, n, batch_size):
    idx = range(b0, min(n, b0 + batch_size))
    pixels = [np.asarray(read(*st.tiles[i])) for i in idx]
    for i, px in zip(idx, pixels):
      want = (st.tiles[i][2] - st.tiles[i][0], st.tiles[i][3] - st.tiles[i][1])
      if px.shape[:2] != want:
        raise ValueError(f"read returned {px.shape} for the tile {st.tiles[i]}")
    results = list(segment_tiles(pixels))
    if len(results) != len(pixels):
      raise ValueError(f"segment_tiles returned {len(results)} label maps for "
                       f"{len(pixels)} tiles")
    for i, px, res in zip(idx, pixels, results):
      st.paste(i, px, res)
    del pixels, results
    st.flush(st.tiles[idx[-1] + 1][0] if idx[-1] + 1 < n else st.hw[0])
    if on_progress is not None:
      on_progress(idx[-1] + 1, n)
  tiling.warn_if_cut(st.stats, overlap)
  return st.stats
