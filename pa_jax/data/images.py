"""Decoding one image file into the pixel array the models read, with one-line errors.

`read_image` returns uint8/uint16 `(H, W)` or `(H, W, 3)` (alpha dropped). A person's
image is read as what it is, never guessed from its shape: TIFF stacks and multi-channel
images are recognised from their metadata (tifffile's `series` axes, the photometric tag,
OME / ImageJ metadata) and refused, naming the axes, unless a `plane` / `channel` is
picked; float images and integers wider than 16 bits are stretched to uint16 between
percentiles (`stretch_to_uint16`), and refused by name when they hold NaN or Inf.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from pa_jax.errors import InputError

# How an image's axes (tifffile's letters, one per dimension) are read:
#  Y, X: the image plane;
#  S: samples of a pixel: colour when the file says RGB (photometric), else channels;
#  C: channels (fluorescence stains): one is picked with `channel`;
#  Q, I: unknown / "a sequence of pages" (no metadata): plane or channel, we cannot tell;
#  every other letter (Z, T, and tifffile's rarer ones): planes of a stack, picked with
#  `plane`.
_CHANNEL_AXES = "CS"
_UNKNOWN_AXES = "QI"
# Percentiles of the stretch that turns float / >16-bit images into uint16.
FLOAT_PERCENTILES = (0.1, 99.9)


@dataclasses.dataclass(frozen=True)
class _Decoded:
  """A decoded image before plane/channel selection.

  data: any dtype, one dimension per letter of `axes` (length-1 dimensions included).
  axes: tifffile's axis letters (e.g. 'ZYX', 'YXS', 'QYX').
  colour: the 'S' axis holds colour samples (RGB), alpha / extra samples already dropped.
  """

  data: np.ndarray
  axes: str
  colour: bool = False
  # The file's shape when `data` is a stand-in with one pixel per plane (a slide read
  # lazily, pa_jax/data/slide.py, works its picks out on it): messages quote this one.
  shape: tuple[int, ...] | None = None


def read_image(path: os.PathLike | str, *, channel: int | None = None,
               plane: int | None = None) -> np.ndarray:
  """Reads an image as uint8/uint16 `(H, W)` or `(H, W, 3)`.

  Stacks and multi-channel TIFFs are recognised from the file's metadata (tifffile's
  series axes, from OME-XML, ImageJ or tifffile's own description, and the TIFF
  photometric tag), never from the array's shape:

  * RGB(A) (PNG/JPEG colour, TIFF with photometric RGB) stays RGB, alpha dropped;
    `channel` (0..2), when given, keeps one colour as a gray image.
  * A z-stack or time series (Z, T, ... axes) needs `plane`; a multi-channel image
    (C axis, or non-colour samples) needs `channel`. Without them: InputError naming the
    file, its axes and shape and the parameter to pass.
  * Several images without metadata (tifffile axis 'Q'/'I', e.g. 3 gray pages, or a
    16-bit TIFF stored as 3 separate colour planes, which is what tifffile writes for any
    (3, H, W) array unless told otherwise) are ambiguous — planes or channels? — and are
    refused unless `plane` or `channel` picks one (either does).
  * `plane` / `channel` on an image without such an axis accept only 0 (its one plane).

  Pixel values: bool → 0/255 uint8; integers that fit in 0..65535 are kept exactly;
  float images must be finite (NaN/Inf → InputError with their count) and are, like
  integers outside 0..65535 (int32, negative int16, ...), stretched to uint16 between
  their `FLOAT_PERCENTILES` (0.1 and 99.9) percentiles (one stretch for all colours, so
  the colour balance is kept; a constant image becomes all zeros).

  Truncated and unreadable files raise `InputError` naming the file.
  """
  path = Path(path)
  dec = _decode_image(path)
  arr = _select(dec, path, channel=channel, plane=plane)
  if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] != 3):
    raise InputError(path, f"expected a 2-D gray or RGB(A) image, got shape {arr.shape}")
  if arr.shape[0] == 0 or arr.shape[1] == 0:
    raise InputError(path, f"image is empty (shape {arr.shape})")
  return np.ascontiguousarray(_to_uint(arr, path))


def _shape_text(shape: Sequence[int]) -> str:
  return "x".join(str(int(n)) for n in shape)


def _decode_image(path: Path) -> _Decoded:
  """The image's pixels with their axes: TIFFs through tifffile's series (metadata-aware),
  the rest through Pillow (gray 'YX' or colour 'YXS')."""
  if path.suffix.lower() not in (".tif", ".tiff"):
    arr = read_array(path)
    if arr.ndim == 3 and arr.shape[-1] in (2, 4):  # gray+alpha / RGBA: drop alpha
      arr = arr[..., :-1]
    if arr.ndim == 3:  # Pillow's colour modes: RGB (gray + alpha is now one sample)
      return _Decoded(arr, "YXS", colour=arr.shape[-1] == 3)
    return _Decoded(arr, "YX")
  _check_file(path)
  try:
    import tifffile

    with tifffile.TiffFile(path) as tif:
      series = tif.series[0]
      data = np.asarray(series.asarray())
      return _tiff_axes(data, series.axes, series.keyframe, _has_axes_metadata(tif))
  except InputError:
    raise
  except Exception as e:  # tifffile raises many types; all mean "cannot read this file"
    raise InputError(path, f"unreadable or truncated image ({_first_line(e)})") from None


def _has_axes_metadata(tif) -> bool:
  """Whether the file states its axes (OME, ImageJ, or tifffile's 'axes' description)."""
  if tif.is_ome or tif.is_imagej:
    return True
  meta = tif.shaped_metadata
  return bool(meta) and isinstance(meta[0], dict) and "axes" in meta[0]


def _tiff_axes(data: np.ndarray, axes: str, page, stated: bool) -> _Decoded:
  """Names the samples axis 'S' of a TIFF: colour (RGB), gray + alpha, or channels.

  Colour needs photometric RGB (or YCbCr, decoded to RGB) with 3 colour samples beside any
  alpha/extra samples. One exception, because tifffile writes every (3, H, W) array that
  way unless told otherwise: colour planes stored separately with more than 8 bits and no
  stated axes are renamed 'Q' (unknown): 16-bit colour photographs are rare, 16-bit
  3-slice stacks saved with defaults are not.
  """
  import tifffile

  if "S" not in axes:
    return _Decoded(data, axes)
  s = axes.index("S")
  extras = len(page.extrasamples or ())
  base = data.shape[s] - extras
  photometric = page.photometric
  P = tifffile.PHOTOMETRIC
  if base == 3 and photometric in (P.RGB, P.YCBCR):
    data = np.take(data, range(3), axis=s)
    separate = page.planarconfig == tifffile.PLANARCONFIG.SEPARATE
    if separate and data.dtype.itemsize > 1 and not stated:
      return _Decoded(data, axes.replace("S", "Q"))
    return _Decoded(data, axes, colour=True)
  if base == 1 and extras and photometric in (P.MINISBLACK, P.MINISWHITE):
    return _Decoded(np.take(data, [0], axis=s), axes)  # gray + alpha: drop the alpha
  return _Decoded(data, axes)  # several samples that are not colour: channels


def _select(dec: _Decoded, path: Path, *, channel: int | None,
            plane: int | None) -> np.ndarray:
  """Picks `plane` / `channel` out of a decoded image → (H, W) or (H, W, 3).

  Refuses (one-line InputError naming the file, its axes and shape) an image that would
  still have several planes or channels after the picks, and an index outside its axis.
  """
  shape = dec.shape or dec.data.shape
  described = f"axes {dec.axes}, shape {_shape_text(shape)}"
  if "Y" not in dec.axes or "X" not in dec.axes:
    raise InputError(path, f"no image plane in this file ({described})")
  keep = [i for i, a in enumerate(dec.axes) if a in "YX" or dec.data.shape[i] > 1]
  data = dec.data.reshape([dec.data.shape[i] for i in keep])  # length-1 axes say nothing
  axes = "".join(dec.axes[i] for i in keep)
  colour = dec.colour and "S" in axes
  channels = [a for a in axes if a in _CHANNEL_AXES and not (a == "S" and colour)]
  unknown = [a for a in axes if a in _UNKNOWN_AXES]
  planes = [a for a in axes if a not in "YX" + _CHANNEL_AXES + _UNKNOWN_AXES]
  if len(unknown) == 1 and not channels and not planes:
    yx = (shape[dec.axes.index("Y")], shape[dec.axes.index("X")])
    data, axes = _pick_unknown(data, axes, unknown[0], path, described, channel, plane, yx)
    return _finish(data, axes, colour, None, path)
  planes += unknown
  if len(planes) > 1:
    sizes = ", ".join(f"{a}={data.shape[axes.index(a)]}" for a in planes)
    raise InputError(path, f"image has several stack axes ({sizes}; {described}); only one "
                     "can be picked with plane: save one stack (e.g. in Fiji) first")
  if len(channels) > 1:
    raise InputError(path, f"image has channels and samples ({described}); save one "
                     "channel first")
  if planes:
    kind = {"Z": "z-stack", "T": "time series"}.get(planes[0], f"stack along axis {planes[0]}")
    data, axes = _pick(data, axes, planes[0], plane, "plane",
                       path, f"image is a {kind} of {{n}} planes ({described})")
  elif plane is not None:
    _check_index(plane, 1, "plane", path)  # a single plane: only 0 is valid
  if channels:
    data, axes = _pick(data, axes, channels[0], channel, "channel", path,
                       f"image has {{n}} channels ({described})")
    channel = None
  return _finish(data, axes, colour, channel, path)


def _pick(data: np.ndarray, axes: str, axis: str, index: int | None, name: str,
          path: Path, what: str) -> tuple[np.ndarray, str]:
  """(data, axes) at `index` along `axis`; InputError "{what}; pick one with `name` 0..n-1"
  (`what` formatted with n) when `index` is None."""
  n = data.shape[axes.index(axis)]
  if index is None:
    raise InputError(path, f"{what.format(n=n)}; pick one with `{name}` 0..{n - 1}")
  return _take(data, axes, axis, index, name, path, n), axes.replace(axis, "")


def _pick_unknown(data: np.ndarray, axes: str, axis: str, path: Path, described: str,
                  channel: int | None, plane: int | None,
                  yx: tuple[int, int]) -> tuple[np.ndarray, str]:
  """Several images and no metadata saying whether they are planes or channels: refuse a
  guess, accept either index."""
  n = data.shape[axes.index(axis)]
  if plane is None and channel is None:
    raise InputError(path, f"{n} images of {_shape_text(yx)} pixels "
                     f"({described}) and no metadata saying whether they are planes or "
                     f"colour channels; pick one with `channel` 0..{n - 1} (or `plane`), or "
                     "save the file as an RGB, OME or ImageJ TIFF")
  if plane is not None and channel is not None:
    raise InputError(path, f"{n} images ({described}): pass plane or channel, not both")
  name, index = ("plane", plane) if plane is not None else ("channel", channel)
  return _take(data, axes, axis, index, name, path, n), axes.replace(axis, "")


def _check_index(index: int, n: int, name: str, path: Path) -> int:
  """`index` as an int when it is in 0..n-1; else InputError naming the file and range."""
  if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
    raise InputError(path, f"{name} must be an integer, got {index!r}")
  if not 0 <= index < n:
    what = f"{n} {name}s (0..{n - 1})" if n > 1 else f"a single {name} (0)"
    raise InputError(path, f"`{name}` {index} is out of range: the image has {what}")
  return int(index)


def _take(data: np.ndarray, axes: str, axis: str, index: int, name: str, path: Path,
          n: int) -> np.ndarray:
  """`data` at `index` along `axis` (that axis removed); InputError when out of 0..n-1."""
  return np.take(data, _check_index(index, n, name, path), axis=axes.index(axis))


def _finish(data: np.ndarray, axes: str, colour: bool, channel: int | None,
            path: Path) -> np.ndarray:
  """(Y, X[, S]) in any order → (H, W) or (H, W, 3); `channel` picks one colour."""
  order = [axes.index("Y"), axes.index("X")] + [i for i, a in enumerate(axes) if a not in "YX"]
  data = np.transpose(data, order)
  if data.ndim == 3 and colour:
    if channel is not None:
      return _take(data, "YXS", "S", channel, "channel", path, data.shape[-1])
    return data
  if channel is not None:
    _check_index(channel, 1, "channel", path)  # a single channel: only 0 is valid
  return data


def _to_uint(arr: np.ndarray, path: Path) -> np.ndarray:
  """Pixel values as uint8/uint16 (see `read_image`)."""
  if arr.dtype == np.bool_:
    return arr.astype(np.uint8) * 255
  if arr.dtype in (np.uint8, np.uint16):
    return arr
  if np.issubdtype(arr.dtype, np.integer):
    if arr.size and arr.min() >= 0 and arr.max() <= 65535:
      return arr.astype(np.uint16)
    return stretch_to_uint16(arr)
  if np.issubdtype(arr.dtype, np.floating):
    bad = ~np.isfinite(arr)
    if bad.any():
      n = int(bad.any(axis=-1).sum()) if arr.ndim == 3 else int(bad.sum())
      raise InputError(path, f"float image has {n} NaN/Inf pixels")
    return stretch_to_uint16(arr)
  raise InputError(path, f"unsupported pixel type {arr.dtype} (use 8/16-bit integers or "
                   "float)")


def stretch_to_uint16(arr: np.ndarray) -> np.ndarray:
  """Finite float / wide-integer pixels → uint16 by a `FLOAT_PERCENTILES` stretch.

  One (lo, hi) pair over all pixels and colours: lo → 0, hi → 65535, clipped, rounded.
  A constant image (hi == lo) becomes all zeros. arr: any real dtype, any shape.
  """
  a = np.asarray(arr, np.float64)
  lo, hi = np.percentile(a, FLOAT_PERCENTILES)
  if not hi > lo:
    return np.zeros(a.shape, np.uint16)
  return np.round(np.clip((a - lo) / (hi - lo), 0.0, 1.0) * 65535.0).astype(np.uint16)


def _first_line(e: BaseException) -> str:
  return str(e).splitlines()[0] if str(e) else type(e).__name__


def _check_file(path: Path) -> None:
  if not path.exists():
    raise InputError(path, "file not found")
  if not path.is_file():
    raise InputError(path, "not a file")


def read_array(path: Path, palette_indices: bool = False) -> np.ndarray:
  """Decodes PNG/JPEG (Pillow) or TIFF (tifffile) into a numpy array, strictly.

  `palette_indices`: return a palette ('P') PNG's indices instead of its colours (label
  maps are often stored that way; for images the colours are what is meant).
  """
  _check_file(path)
  suffix = path.suffix.lower()
  try:
    if suffix in (".tif", ".tiff"):
      import tifffile

      return np.asarray(tifffile.imread(path))
    from PIL import Image, ImageFile

    # Pillow silently pads truncated files when this flag is set; make sure it is not.
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    with Image.open(path) as im:
      im.load()
      if im.mode == "P" and palette_indices:
        return np.array(im)
      if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
      elif im.mode in ("I;16B", "I;16L", "I;16N"):
        im = im.convert("I;16")
      elif im.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        im = im.convert("RGB")  # their 3rd/4th band is not an alpha channel
      arr = np.array(im)
      if im.mode == "I" and arr.size and arr.min() >= 0 and arr.max() <= 65535:
        arr = arr.astype(np.uint16)  # some 16-bit PNGs decode as int32 mode 'I'
      return arr
  except InputError:
    raise
  except Exception as e:  # PIL/tifffile raise many types; all mean "cannot read this file"
    raise InputError(path, f"unreadable or truncated image ({_first_line(e)})") from None
