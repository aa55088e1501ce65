"""Whole-slide images read window by window, never whole.

    with open_slide("slide.ome.tif", level=0, region=(x, y, w, h)) as s:
      s.shape, s.dtype, s.channels, s.downsample, s.pixel_size_um
      pixels = s.read(y0, x0, y1, x1)   # uint8/uint16 [y1 - y0, x1 - x0(, 3)]

TIFF (OME-TIFF, pyramidal or tiled BigTIFF, plain TIFF) goes through tifffile's zarr store
(`series.aszarr(level=...)`): a window decodes only the chunks it covers. An uncompressed
contiguous TIFF is one chunk to tifffile, so it is memory-mapped instead. PNG/JPEG have no
chunks and are decoded whole, as `read_image` does (they are small in practice).

The image is what `pa_jax.data.images.read_image` would return for the same file and
`channel` / `plane`: the picks are worked out by its own code (`_tiff_axes`, `_select`) on
a stand-in array with one pixel per plane, then applied to every window, so stacks and
multi-channel files are refused or picked with the same one-line messages. Pixels must be
8/16-bit (or bool → 0/255): `read_image` stretches float and wider integers by percentiles
of the whole image, which a window cannot know, so those are refused here by name.

Coordinates: `region` is (x, y, w, h) in level-0 pixels; it is mapped to the level read
(outward to whole pixels) and everything the slide returns is relative to it, in pixels of
that level. `offset_level0` and `downsample` map them back: full = offset + p · downsample.

Reads are served from one cached full-width strip of rows: tiles are read in raster order,
so the tiles of one tile row share a strip, and every chunk (a strip of a stripped TIFF is
full width) is decoded about once per tile row. Memory: rows × region width × channels.
"""

from __future__ import annotations

import dataclasses
import math
import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np

from pa_jax.data import images as image_io
from pa_jax.errors import InputError

__all__ = ["Slide", "open_slide", "parse_region", "TIFF_SUFFIXES"]

TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8", ".svs")
# µm per unit of OME's PhysicalSize*Unit and of TIFF's ResolutionUnit.
_OME_UNITS = {"µm": 1.0, "um": 1.0, "micron": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4,
              "m": 1e6, "pm": 1e-6, "Å": 1e-4}
_IMAGEJ_MICRONS = ("micron", "microns", "um", "µm", "\\u00B5m", "μm")
# A "pixel size" above this is a screen DPI default (72 dpi = 353 µm), not a microscope.
_MAX_PLAUSIBLE_UM = 100.0


def parse_region(text: str | None) -> tuple[int, int, int, int] | None:
  """'x,y,w,h' (level-0 pixels) → (x, y, w, h); None for None / ''.

  InputError(where='region') unless four integers with x, y >= 0 and w, h >= 1.
  """
  if text is None or str(text).strip() == "":
    return None
  parts = [p.strip() for p in str(text).split(",")]
  try:
    x, y, w, h = (int(p) for p in parts)
  except ValueError:
    raise InputError("region", f"{text!r} is not x,y,w,h (four integers, level-0 "
                     "pixels)") from None
  if x < 0 or y < 0 or w < 1 or h < 1:
    raise InputError("region", f"{text!r}: x, y must be >= 0 and w, h >= 1")
  return x, y, w, h


@dataclasses.dataclass
class Slide:
  """An image region, read lazily. See the module docstring for the coordinates.

  path: the file. shape: (H, W) of the region in pixels of `level`. dtype: uint8/uint16.
  channels: 1 (read gives [h, w]) or 3 (RGB, [h, w, 3]). axes: the file's axes
  (tifffile letters, e.g. 'YXS'). level / levels: level read, levels in the file.
  level_shape: (H, W) of the whole level. downsample: (y, x) level-0 pixels per pixel of
  this level. offset_level0: (y, x) of the region's origin in level-0 pixels.
  pixel_size_um: (y, x) µm per level-0 pixel, or None when the file does not say.
  """

  path: Path
  shape: tuple[int, int]
  dtype: np.dtype
  channels: int
  axes: str
  level: int
  levels: int
  level_shape: tuple[int, int]
  downsample: tuple[float, float]
  offset_level0: tuple[float, float]
  pixel_size_um: tuple[float, float] | None
  _window: Any = dataclasses.field(repr=False, default=None)  # (y0, x0, y1, x1) → level px
  _origin: tuple[int, int] = (0, 0)  # the region's origin in level pixels
  _closer: Any = dataclasses.field(repr=False, default=None)
  _strip: tuple[int, int, np.ndarray] | None = dataclasses.field(repr=False, default=None)

  @property
  def pixel_size_level_um(self) -> tuple[float, float] | None:
    """(y, x) µm per pixel of the level read."""
    if self.pixel_size_um is None:
      return None
    return (self.pixel_size_um[0] * self.downsample[0],
            self.pixel_size_um[1] * self.downsample[1])

  def read(self, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
    """Pixels of the region's window [y0, y1) x [x0, x1): uint8/uint16 [h, w(, 3)]."""
    H, W = self.shape
    if not (0 <= y0 < y1 <= H and 0 <= x0 < x1 <= W):
      raise ValueError(f"window {(y0, x0, y1, x1)} outside the region {self.shape}")
    if self._strip is None or not (self._strip[0] <= y0 and y1 <= self._strip[1]):
      self._strip = None  # give the old strip back before reading the new one
      oy, ox = self._origin
      self._strip = (y0, y1, self._window(oy + y0, ox, oy + y1, ox + W))
    a, _, rows = self._strip
    return np.ascontiguousarray(rows[y0 - a:y1 - a, x0:x1])

  def close(self) -> None:
    self._strip = None
    if self._closer is not None:
      self._closer()
      self._closer = None

  def __enter__(self) -> "Slide":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def open_slide(path: os.PathLike | str, *, level: int = 0,
               region: tuple[int, int, int, int] | None = None,
               channel: int | None = None, plane: int | None = None) -> Slide:
  """Opens an image for window reads; one-line InputError naming the file when it cannot.

  level: pyramid level (0 = full resolution). region: (x, y, w, h) in level-0 pixels, or
  None for the whole image. channel / plane: as `images.read_image`.
  """
  path = Path(path)
  if not path.exists():
    raise InputError(path, "file not found")
  if isinstance(level, bool) or not isinstance(level, (int, np.integer)) or level < 0:
    raise InputError(path, f"level must be an integer >= 0, got {level!r}")
  if path.suffix.lower() in TIFF_SUFFIXES:
    try:
      return _open_tiff(path, int(level), region, channel, plane)
    except InputError:
      raise
    except Exception as e:  # tifffile / zarr raise many types: the file cannot be read
      raise InputError(path, f"unreadable or truncated image ({_first_line(e)})") from None
  image = image_io.read_image(path, channel=channel, plane=plane)
  _check_level(path, level, 1)
  return _make(path, image.shape[:2], image.shape[:2], image.dtype,
               1 if image.ndim == 2 else image.shape[2], "YX" if image.ndim == 2 else "YXS",
               0, 1, region, None, lambda y0, x0, y1, x1: image[y0:y1, x0:x1], None)


def _first_line(e: BaseException) -> str:
  return str(e).splitlines()[0] if str(e) else type(e).__name__


def _check_level(path: Path, level: int, levels: int) -> None:
  if level >= levels:
    have = f"{levels} levels (0..{levels - 1})" if levels > 1 else "a single level (0)"
    raise InputError(path, f"level {level} is out of range: the file has {have}")


def _open_tiff(path: Path, level: int, region, channel, plane) -> Slide:
  import tifffile
  import zarr

  tif = tifffile.TiffFile(path)
  try:
    series = tif.series[0]
    _check_level(path, level, len(series.levels))
    lvl = series.levels[level]
    axes, shape = lvl.axes, tuple(int(n) for n in lvl.shape)
    picks, colour = _plan(path, axes, shape, series.keyframe, image_io._has_axes_metadata(tif),
                          channel, plane)
    dtype = np.dtype(lvl.dtype)
    if dtype not in (np.uint8, np.uint16, np.bool_):
      raise InputError(path, f"{dtype} pixels cannot be read window by window (they are "
                       "stretched by percentiles of the whole image); convert the slide to "
                       "8 or 16 bits")
    if lvl.dataoffset is not None:
      data = tifffile.memmap(path, series=0, level=level, mode="r")  # one chunk: map it
    else:
      data = zarr.open(series.aszarr(level=level), mode="r")
    y_ax, x_ax = axes.index("Y"), axes.index("X")
    level_hw = (shape[y_ax], shape[x_ax])
    base = series.levels[0].shape
    full_hw = (int(base[series.levels[0].axes.index("Y")]),
               int(base[series.levels[0].axes.index("X")]))

    def window(y0, x0, y1, x1):
      return _apply(data, axes, picks, colour, y0, x0, y1, x1)

    return _make(path, level_hw, full_hw, np.dtype(np.uint8) if dtype == np.bool_ else dtype,
                 3 if colour else 1, axes, level, len(series.levels), region,
                 _pixel_size(tif), window, tif.close)
  except BaseException:
    tif.close()
    raise


def _plan(path: Path, axes: str, shape: tuple[int, ...], keyframe, stated: bool,
          channel, plane) -> tuple[list[np.ndarray], bool]:
  """Which plane/channel indices `read_image` would keep, per output channel.

  Runs images.py's own `_tiff_axes` + `_select` on a stand-in: one pixel per plane, whose
  value is its flat index. Returns (per file axis, the index of each output channel (Y and
  X entries unused)), and whether the output is colour ([h, w, 3]).
  """
  stand_shape = tuple(1 if a in "YX" else n for a, n in zip(axes, shape))
  stand = np.arange(int(np.prod(stand_shape)), dtype=np.int64).reshape(stand_shape)
  dec = image_io._tiff_axes(stand, axes, keyframe, stated)
  full = tuple(shape[i] if a in "YX" else n for i, (a, n) in enumerate(zip(dec.axes,
                                                                            dec.data.shape)))
  dec = dataclasses.replace(dec, shape=full)
  picked = image_io._select(dec, path, channel=channel, plane=plane)
  colour = picked.ndim == 3
  flat = picked.reshape(-1)  # (1,) gray or (3,) colour
  return [np.asarray(i) for i in np.unravel_index(flat, stand_shape)], colour


def _apply(data, axes: str, picks: list[np.ndarray], colour: bool, y0: int, x0: int,
           y1: int, x1: int) -> np.ndarray:
  """Level pixels [y0, y1) x [x0, x1) with the picks applied → [h, w] or [h, w, 3]."""
  index, kept = [], []  # kept: the axes still in the window, besides Y and X
  for a, idx in zip(axes, picks):
    if a == "Y":
      index.append(slice(y0, y1))
    elif a == "X":
      index.append(slice(x0, x1))
    elif np.all(idx == idx[0]):
      index.append(int(idx[0]))
    else:  # one read covering the picked indices (RGB samples), picked below
      index.append(slice(int(idx.min()), int(idx.max()) + 1))
      kept.append((a, idx - idx.min()))
  win = np.asarray(data[tuple(index)])
  names = [a for a, i in zip(axes, index) if not isinstance(i, int)]
  win = np.moveaxis(win, [names.index("Y"), names.index("X")], [0, 1])
  if kept:
    win = win[(slice(None), slice(None)) + tuple(idx for _, idx in kept)]
  if win.dtype == np.bool_:
    win = win.astype(np.uint8) * 255
  return win if colour else win.reshape(win.shape[:2])


def _make(path, level_hw, full_hw, dtype, channels, axes, level, levels, region,
          pixel_size, window, closer) -> Slide:
  """The Slide of `region` (level-0 (x, y, w, h)) of a level of size `level_hw`."""
  dy, dx = full_hw[0] / level_hw[0], full_hw[1] / level_hw[1]
  if region is None:
    y0, x0, y1, x1 = 0, 0, level_hw[0], level_hw[1]
  else:
    x, y, w, h = region
    if x + w > full_hw[1] or y + h > full_hw[0]:
      raise InputError(path, f"region x={x}, y={y}, w={w}, h={h} reaches past the image "
                       f"({full_hw[1]} x {full_hw[0]} pixels at level 0, width x height)")
    y0, x0 = int(math.floor(y / dy)), int(math.floor(x / dx))
    y1 = min(level_hw[0], max(y0 + 1, int(math.ceil((y + h) / dy))))
    x1 = min(level_hw[1], max(x0 + 1, int(math.ceil((x + w) / dx))))
  return Slide(path=path, shape=(y1 - y0, x1 - x0), dtype=np.dtype(dtype), channels=channels,
               axes=axes, level=level, levels=levels, level_shape=tuple(level_hw),
               downsample=(dy, dx), offset_level0=(y0 * dy, x0 * dx),
               pixel_size_um=pixel_size, _window=window, _origin=(y0, x0), _closer=closer)


def _pixel_size(tif) -> tuple[float, float] | None:
  """(y, x) µm per level-0 pixel: OME PhysicalSizeY/X, else unambiguous TIFF resolution
  tags (centimetre or inch units, or ImageJ's 'micron' unit), else None."""
  if tif.is_ome and tif.ome_metadata:
    size = _ome_pixel_size(tif.ome_metadata)
    if size is not None:
      return size
  return _tag_pixel_size(tif)


def _ome_pixel_size(xml: str) -> tuple[float, float] | None:
  try:
    root = ET.fromstring(xml)
  except ET.ParseError:
    return None
  pixels = next((el for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "Pixels"), None)
  if pixels is None:
    return None
  out = []
  for axis in ("Y", "X"):
    value = pixels.get(f"PhysicalSize{axis}")
    unit = _OME_UNITS.get(pixels.get(f"PhysicalSize{axis}Unit", "µm"))
    try:
      v = float(value) * unit if value is not None and unit is not None else None
    except ValueError:
      v = None
    if v is None or not 0 < v < math.inf:
      return None
    out.append(v)
  return out[0], out[1]


def _tag_pixel_size(tif) -> tuple[float, float] | None:
  import tifffile

  page = tif.pages.first
  tags = page.tags
  xr, yr, unit = tags.get("XResolution"), tags.get("YResolution"), tags.get("ResolutionUnit")
  if xr is None or yr is None:
    return None
  ppu = []
  for tag in (yr, xr):
    num, den = tag.value
    ppu.append(num / den if den else 0.0)
  if min(ppu) <= 0:
    return None
  u = unit.value if unit is not None else tifffile.RESUNIT.INCH  # the TIFF default
  if u == tifffile.RESUNIT.CENTIMETER:
    per = 1e4
  elif u == tifffile.RESUNIT.INCH:
    per = 25_400.0
  elif tif.is_imagej and str((tif.imagej_metadata or {}).get("unit", "")) in _IMAGEJ_MICRONS:
    per = 1.0
  else:
    return None  # no unit: the numbers could mean anything
  size = (per / ppu[0], per / ppu[1])
  if max(size) > _MAX_PLAUSIBLE_UM:
    return None
  return size


def is_tiff(path: os.PathLike | str) -> bool:
  return Path(path).suffix.lower() in TIFF_SUFFIXES

