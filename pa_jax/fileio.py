"""Crash-safe writers.

Everything pa_jax writes goes through `atomic_write`: the bytes land in a temporary file in
the destination folder and are moved over the final name with `os.replace`, which is atomic
on POSIX. A run killed mid-write, a full disk or a bad input therefore never leaves a
half-written PNG/CSV/JSON where a good one used to be.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from pa_jax.errors import InputError


@contextlib.contextmanager
def atomic_write(path: os.PathLike | str, mode: str = "wb") -> Iterator[Any]:
  """Opens a temp file beside `path`; on success renames it onto `path`.

  Raises InputError (one line) when the folder cannot be created or written, e.g. a
  read-only work dir or a full disk, instead of a traceback.
  """
  path = Path(path)
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    # mkstemp creates 0600 files; give outputs the usual permissions (0666 minus umask).
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)
  except OSError as e:
    raise InputError(path.parent, f"cannot write here ({e.strerror or e})") from None
  try:
    with os.fdopen(fd, mode) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except OSError as e:
    _remove_quietly(tmp)
    raise InputError(path, f"write failed ({e.strerror or e})") from None
  except BaseException:
    _remove_quietly(tmp)
    raise


def _remove_quietly(p: str) -> None:
  with contextlib.suppress(OSError):
    os.unlink(p)


def write_bytes(path: os.PathLike | str, data: bytes) -> None:
  with atomic_write(path, "wb") as f:
    f.write(data)


def write_text(path: os.PathLike | str, text: str) -> None:
  write_bytes(path, text.encode("utf-8"))


def read_json(path: os.PathLike | str, *, missing_ok: bool = True,
              expected: str = "JSON") -> Any:
  """The JSON document at `path`. A missing file is None when `missing_ok` (run.json of a
  fresh workdir), else an error; an unreadable, non-UTF-8 or malformed file is a one-line
  `InputError` naming it, what was `expected` there (e.g. 'COCO JSON') and, for bad JSON,
  the line and column."""
  try:
    with open(path, "rb") as f:
      return json.loads(f.read().decode("utf-8"))
  except FileNotFoundError as e:
    if missing_ok:
      return None
    raise InputError(path, f"cannot read {expected} ({e.strerror or e})") from None
  except OSError as e:
    raise InputError(path, f"cannot read {expected} ({e.strerror or e})") from None
  except UnicodeDecodeError:
    raise InputError(path, f"cannot read {expected}: not a UTF-8 text file") from None
  except json.JSONDecodeError as e:
    raise InputError(path, f"cannot read {expected}: invalid JSON at line {e.lineno} column "
                     f"{e.colno} ({e.msg})") from None


def write_json(path: os.PathLike | str, obj: Any) -> None:
  write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
  if isinstance(o, np.generic):
    return o.item()
  if isinstance(o, np.ndarray):
    return o.tolist()
  if isinstance(o, Path):
    return str(o)
  raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_csv(path: os.PathLike | str, rows: Sequence[Mapping[str, Any]],
              fieldnames: Sequence[str] | None = None) -> None:
  """Writes dict rows as CSV (header from `fieldnames` or the first row's keys)."""
  if fieldnames is None:
    fieldnames = list(rows[0].keys()) if rows else []
  buf = io.StringIO()
  w = csv.DictWriter(buf, fieldnames=list(fieldnames), lineterminator="\n")
  w.writeheader()
  for r in rows:
    w.writerow({k: _csv_cell(r.get(k, "")) for k in fieldnames})
  write_text(path, buf.getvalue())


def _csv_cell(v: Any) -> Any:
  if isinstance(v, (float, np.floating)):
    return f"{float(v):.6g}"
  return v


def encode_png(array: np.ndarray) -> bytes:
  """PNG bytes of a uint8/uint16 (H,W) or uint8 (H,W,3|4) array (lossless)."""
  from PIL import Image  # pillow is a dependency of scikit-image and matplotlib

  array = np.ascontiguousarray(array)
  if array.dtype == np.uint16 and array.ndim == 2:
    img = Image.fromarray(array)  # 16-bit grayscale PNG
  elif array.dtype == np.uint8:
    img = Image.fromarray(array)
  else:
    raise ValueError(f"cannot encode {array.dtype} {array.shape} as PNG")
  buf = io.BytesIO()
  img.save(buf, format="PNG")
  return buf.getvalue()


def write_png(path: os.PathLike | str, array: np.ndarray) -> None:
  write_bytes(path, encode_png(array))


def write_label_map(path: os.PathLike | str, labels: np.ndarray) -> None:
  """Writes an instance label map losslessly.

  `.png`: 16-bit PNG (uint16; more than 65,535 nuclei is an error, use `.tif`).
  `.tif`/`.tiff`: uint16 when it fits, else uint32, zlib-compressed TIFF.
  """
  path = Path(path)
  labels = np.asarray(labels)
  if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"label map must be a 2-D integer array, got {labels.dtype} {labels.shape}")
  top = int(labels.max(initial=0))
  if int(labels.min(initial=0)) < 0:
    raise ValueError("label map has negative labels")
  suffix = path.suffix.lower()
  if suffix == ".png":
    if top > np.iinfo(np.uint16).max:
      raise InputError(path, f"{top} labels do not fit a 16-bit PNG; write .tif instead")
    write_png(path, labels.astype(np.uint16))
  elif suffix in (".tif", ".tiff"):
    import tifffile

    dtype = np.uint16 if top <= np.iinfo(np.uint16).max else np.uint32
    buf = io.BytesIO()
    tifffile.imwrite(buf, labels.astype(dtype), compression="zlib")
    write_bytes(path, buf.getvalue())
  else:
    raise InputError(path, "label maps are written as .png or .tif")


def label_map_path(path: os.PathLike | str, labels: np.ndarray) -> Path:
  """`path` itself, or with `.tif` when `labels` exceed a 16-bit PNG (more than 65,535 ids).

  Writers that default to PNG (what most viewers open) call this so a slide with more
  nuclei, or a label counter that grew past 65,535, is written, not refused.
  """
  path = Path(path)
  if path.suffix.lower() == ".png" and int(np.asarray(labels).max(initial=0)) > np.iinfo(np.uint16).max:
    return path.with_suffix(".tif")
  return path
