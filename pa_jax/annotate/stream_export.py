"""Streaming GeoJSON and CSV writers for whole slides: one nucleus in, one feature out.

The slide pipeline finds nuclei band by band and never holds the slide's label map; it
hands each finished nucleus to these writers as a `NucleusRecord` (its mask in its box,
in the pixels of the pyramid level read). The writers keep nothing per nucleus:

* `GeoJSONStreamWriter` writes the FeatureCollection's head at open, each feature as it
  comes (built by `geojson_io.nucleus_feature`, the builder of the in-memory exporter, so
  both give the same features) and the closing `]}` at `close()`.
* `CSVStreamWriter` writes the measurements CSV row by row (`measurements.mask_row`, the
  same columns and numbers as `measurements.write_measurements_csv`). Its header waits for
  the first nucleus, which tells how many channels `mean_intensity` has.

Coordinates: `offset` = (y, x) of the region's origin in full-resolution (level 0)
pixels, `downsample` = the level's factor; a point at (row, col) of the level read is
written at x = offset_x + col * downsample, y = offset_y + row * downsample, as QuPath
expects whatever level was segmented.

Crash safety: each file is written to a hidden temporary beside `path` and renamed onto
`path` only by `close()`, so an interrupted run never leaves a complete-looking but
truncated file (the caller also stages the whole output folder, pa_jax/outputs.py).
Leaving the `with` block on an exception drops the temporary. Memory: O(1) in the number
of nuclei.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pa_jax import fileio
from pa_jax.annotate import contours as C
from pa_jax.annotate.geojson_io import collection_header, nucleus_feature
from pa_jax.annotate.measurements import (check_pixel_size, csv_cell, csv_columns, mask_row,
                                          nucleus_measurements)
from pa_jax.annotate.nuclei import STATES, Nucleus

__all__ = ["NucleusRecord", "GeoJSONStreamWriter", "CSVStreamWriter", "record_outline"]


@dataclasses.dataclass(frozen=True)
class NucleusRecord:
  """One finished nucleus of a slide.

  id: global label >= 1 (unique in the slide).
  box: (y0, x0, y1, x1) half-open, in pixels of the level read (before `offset`).
  mask: bool [y1 - y0, x1 - x0], the nucleus inside its box.
  score: detection confidence in [0, 1], or None.
  state: review state, 'proposed' for machine output (`nuclei.STATES`).
  source: provenance, e.g. 'pa_jax dh25 step 3000' or 'classical'.
  mean_intensity: mean image value over the mask, one per channel (may be empty).
  """

  id: int
  box: tuple[int, int, int, int]
  mask: np.ndarray
  score: float | None
  state: str
  source: str
  mean_intensity: tuple[float, ...] = ()

  def check(self) -> None:
    """Raises ValueError when the record is inconsistent (a caller's bug, not user input)."""
    y0, x0, y1, x1 = self.box
    if int(self.id) < 1:
      raise ValueError(f"nucleus id must be >= 1, got {self.id}")
    if self.state not in STATES:
      raise ValueError(f"nucleus {self.id}: state must be one of {STATES}, got {self.state!r}")
    if np.shape(self.mask) != (y1 - y0, x1 - x0):
      raise ValueError(f"nucleus {self.id}: mask {np.shape(self.mask)} does not fit box "
                       f"{self.box}")

  def nucleus(self) -> Nucleus:
    return Nucleus(int(self.id), self.state, self.score, self.source)


def _to_full(points: np.ndarray, origin: tuple[int, int], downsample: float,
             offset: tuple[float, float]) -> np.ndarray:
  """(x, y) points of a box-local outline → full-resolution pixel-edge coordinates."""
  pts = np.asarray(points, np.float64).reshape(-1, 2)
  y0, x0 = origin
  return np.stack([offset[1] + (pts[:, 0] + x0) * downsample,
                   offset[0] + (pts[:, 1] + y0) * downsample], axis=1)


def record_outline(rec: NucleusRecord, contours: str = "polygon", *,
                   downsample: float = 1.0, offset: tuple[float, float] = (0.0, 0.0)
                   ) -> np.ndarray:
  """float64 [N, 2] (x, y) full-resolution outline of a record: the exact pixel outline
  ('polygon') or the spline's control points ('spline'), as `label_map_contours` gives
  for a label map (largest piece, holes filled). Empty mask → [0, 2]."""
  mask = np.asarray(rec.mask, bool)
  pts = C.mask_contour(mask) if contours == "polygon" else C.fit_spline_contour(mask)
  return _to_full(pts, (rec.box[0], rec.box[1]), downsample, offset)


class _StreamFile:
  """An atomically written file open for appending bytes; shared by both writers."""

  def __init__(self, path: os.PathLike | str, downsample: float,
               offset: Sequence[float], pixel_size_um: float | Sequence[float] | None,
               contours: str):
    self.path = Path(path)
    self.downsample = float(downsample)
    if not np.isfinite(self.downsample) or self.downsample <= 0:
      raise ValueError(f"downsample must be a positive number, got {downsample!r}")
    self.offset = (float(offset[0]), float(offset[1]))
    self.pixel_size_um = check_pixel_size(pixel_size_um)
    self.contours = C.check_contour_mode(contours)
    self.count = 0
    self._cm = fileio.atomic_write(self.path, "wb")
    self._f = self._cm.__enter__()
    self._closed = False

  def _write(self, text: str) -> None:
    if self._closed:
      raise ValueError(f"{self.path}: writer is closed")
    self._f.write(text.encode("utf-8"))

  def _finish(self, tail: str) -> None:
    if self._closed:
      return
    self._write(tail)
    self._closed = True
    self._cm.__exit__(None, None, None)  # fsync + rename onto `path`

  def abort(self, exc: BaseException | None = None) -> None:
    """Drops the temporary file; `path` is not created (nor an older one replaced)."""
    if self._closed:
      return
    self._closed = True
    err = exc if exc is not None else RuntimeError("aborted")
    try:
      self._cm.__exit__(type(err), err, err.__traceback__)  # removes the temporary
    except BaseException:  # the cm re-raises `err`; our caller is already handling it
      pass

  def close(self) -> None:
    raise NotImplementedError

  def __enter__(self):
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    if exc_type is None:
      self.close()
    else:
      self.abort(exc)


class GeoJSONStreamWriter(_StreamFile):
  """GeoJSON FeatureCollection written feature by feature (see the module docstring).

  path: the `.geojson` to write; downsample, offset: level → full-resolution mapping;
  pixel_size_um: µm per full-resolution pixel (number or (y, x)) for `area_um2`;
  contours: 'polygon' | 'spline'; image_id: seeds the feature UUIDs (default: the file's
  stem, as `write_geojson`); image_size: the slide's full-resolution (height, width):
  outlines are clipped to it (as `write_geojson` clips to the label map) and it is
  recorded in the header; extra: more members of the collection's `pa_jax` header.
  """

  def __init__(self, path: os.PathLike | str, *, downsample: float = 1.0,
               offset: Sequence[float] = (0, 0),
               pixel_size_um: float | Sequence[float] | None = None,
               contours: str = "polygon", image_id: str | None = None,
               image_size: Sequence[int] | None = None, **extra: Any):
    super().__init__(path, downsample, offset, pixel_size_um, contours)
    self.image_id = image_id if image_id is not None else self.path.stem
    self.image_size = None if image_size is None else (int(image_size[0]), int(image_size[1]))
    ps = None if self.pixel_size_um is None else list(self.pixel_size_um)
    size = {} if self.image_size is None else {"height": self.image_size[0],
                                               "width": self.image_size[1]}
    try:
      head = {"type": "FeatureCollection",
              "pa_jax": collection_header(self.image_id, **size, pixel_size_um=ps, **extra)}
      text = json.dumps(head, separators=(",", ":"), default=fileio._json_default)
    except TypeError as e:
      self.abort(e)
      raise
    self._write(text[:-1] + ',"features":[')  # the collection stays open until close()

  def add(self, rec: NucleusRecord) -> bool:
    """Appends the record's feature; False when its mask gives no outline (empty)."""
    rec.check()
    d = self.downsample
    meas = nucleus_measurements(score=rec.score,
                                area_px=float(np.count_nonzero(rec.mask)) * d * d,
                                mean_intensity=rec.mean_intensity or None,
                                pixel_size_um=self.pixel_size_um)
    outline = record_outline(rec, self.contours, downsample=d, offset=self.offset)
    feat = nucleus_feature(outline, rec.nucleus(), contours=self.contours,
                           image_id=self.image_id, measurements=meas,
                           image_size=self.image_size)
    if feat is None:
      return False
    self._write(("," if self.count else "") + json.dumps(feat, separators=(",", ":")))
    self.count += 1
    return True

  def close(self) -> None:
    """Closes the collection (valid JSON from now on) and moves the file into place."""
    self._finish("]}\n")


class CSVStreamWriter(_StreamFile):
  """Measurements CSV written row by row (columns: `measurements.csv_columns`).

  Same constructor as `GeoJSONStreamWriter`; `image_id`, when given, is written in an
  `image` first column (as `write_measurements_csv(..., image_id=...)`).
  """

  def __init__(self, path: os.PathLike | str, *, downsample: float = 1.0,
               offset: Sequence[float] = (0, 0),
               pixel_size_um: float | Sequence[float] | None = None,
               contours: str = "polygon", image_id: str | None = None):
    super().__init__(path, downsample, offset, pixel_size_um, contours)
    self.image_id = image_id
    self.fields: tuple[str, ...] | None = None

  def _header(self, channels: int) -> None:
    self.fields = csv_columns(self.image_id is not None, self.pixel_size_um is not None,
                              channels)
    self._channels = channels
    self._write(",".join(self.fields) + "\n")

  def add(self, rec: NucleusRecord) -> bool:
    """Appends the record's row; False when its mask is empty (no row)."""
    rec.check()
    if not np.any(rec.mask):
      return False
    if self.fields is None:
      self._header(len(rec.mean_intensity))
    elif len(rec.mean_intensity) != self._channels:
      raise ValueError(f"nucleus {rec.id}: {len(rec.mean_intensity)} intensity channels, "
                       f"earlier nuclei had {self._channels}")
    row = mask_row(rec.mask, rec.nucleus(), origin=(rec.box[0], rec.box[1]),
                   downsample=self.downsample, offset=self.offset,
                   pixel_size_um=self.pixel_size_um,
                   mean_intensity=rec.mean_intensity or None)
    if self.image_id is not None:
      row["image"] = self.image_id
    buf = io.StringIO()
    csv.DictWriter(buf, fieldnames=list(self.fields), lineterminator="\n").writerow(
        {k: csv_cell(row.get(k, "")) for k in self.fields})
    self._write(buf.getvalue())
    self.count += 1
    return True

  def close(self) -> None:
    """Writes the header if no nucleus came, and moves the file into place."""
    if self.fields is None and not self._closed:
      self._header(0)
    self._finish("")
