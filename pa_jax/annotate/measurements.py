"""Per-nucleus measurements as CSV (one row per label of the label map).

Columns: `image` (when given), `id` (label), `state`, `score` (empty when unknown),
`source`, `area` (pixels), `centroid_x`, `centroid_y` (pixel-edge coordinates, as
ImageJ and QuPath report them: a single pixel (r, c) has its centroid at (c + 0.5,
r + 0.5)), `bbox_x`, `bbox_y`, `bbox_width`, `bbox_height` (of the pixels, COCO style),
`perimeter` (scikit-image's 4-connected boundary estimate, pixels) and `eccentricity` (of
the ellipse with the same second moments; 0 = circle).

Optional columns, after those: `area_um2` (area in µm², when the pixel size is known) and
`mean_intensity_c0`, `mean_intensity_c1`, ... (mean image value over the nucleus, per
channel, when the image is given). The same names are the QuPath measurements of the
GeoJSON (`nucleus_measurements`). A slide segmented at a pyramid level reports every
length and area in full-resolution pixels (`mask_row`: x = offset_x + col * downsample).

The CSV has no outlines, so its importer (`read_measurements_csv`) gives back the nuclei
table only (state, score, source per id).
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from pa_jax import fileio
from pa_jax.annotate.nuclei import Nucleus, complete_table, parse_state
from pa_jax.data.readers import validate_label_map
from pa_jax.errors import InputError

__all__ = ["COLUMNS", "measurements_table", "write_measurements_csv", "read_measurements_csv",
           "check_pixel_size", "nucleus_measurements", "label_areas", "label_mean_intensity",
           "mask_row", "csv_columns", "csv_cell"]

COLUMNS = ("id", "state", "score", "source", "area", "centroid_x", "centroid_y", "bbox_x",
           "bbox_y", "bbox_width", "bbox_height", "perimeter", "eccentricity")


def check_pixel_size(value: float | Sequence[float] | None, where: str = "pixel_size_um"
                     ) -> tuple[float, float] | None:
  """(y, x) µm per pixel from one number or a (y, x) pair; None stays None.

  Anything not a positive finite number (or pair of them) is an InputError naming `where`.
  """
  if value is None:
    return None
  vals = [value, value] if isinstance(value, (int, float, np.number)) else list(value)
  try:
    out = tuple(float(v) for v in vals)
  except (TypeError, ValueError):
    out = ()
  if len(out) != 2 or not all(math.isfinite(v) and v > 0 for v in out) \
      or any(isinstance(v, bool) for v in vals):
    raise InputError(where, f"pixel size must be a positive number of µm (or a (y, x) pair), "
                     f"got {value!r}")
  return out  # type: ignore[return-value]


def nucleus_measurements(*, score: float | None = None, area_px: float | None = None,
                         mean_intensity: Sequence[float] | None = None,
                         pixel_size_um: float | Sequence[float] | None = None
                         ) -> dict[str, float]:
  """QuPath measurements of one nucleus: {name: finite number}, unknown values left out.

  area_px: full-resolution pixels; `area_um2` = area_px * pixel_y * pixel_x when the
  pixel size is known. Names match the CSV columns.
  """
  out: dict[str, float] = {}
  if score is not None and math.isfinite(float(score)):
    out["score"] = float(score)
  if area_px is not None:
    out["area_px"] = _number(area_px)
    ps = check_pixel_size(pixel_size_um)
    if ps is not None:
      out["area_um2"] = round(float(area_px) * ps[0] * ps[1], 6)
  for i, v in enumerate(mean_intensity or ()):
    if math.isfinite(float(v)):
      out[f"mean_intensity_c{i}"] = round(float(v), 6)
  return out


def _number(v: float) -> int | float:
  """An int when `v` is integral (pixel counts at level 0), else a float rounded to 1e-6."""
  f = float(v)
  return int(f) if f.is_integer() else round(f, 6)


def label_areas(labels: np.ndarray) -> dict[int, int]:
  """{label: pixel count} of every nonzero label of an int [H, W] map."""
  ids, counts = np.unique(np.asarray(labels), return_counts=True)
  return {int(k): int(c) for k, c in zip(ids, counts) if k != 0}


def _channels(image: np.ndarray, shape: Sequence[int]) -> np.ndarray:
  """float64 [H, W, C] view of an [H, W] or [H, W, C] image of the label map's shape."""
  img = np.asarray(image)
  if img.ndim == 2:
    img = img[..., None]
  if img.ndim != 3 or img.shape[:2] != tuple(shape):
    raise InputError("image", f"image is {'x'.join(map(str, np.asarray(image).shape))} but "
                     f"its label map is {shape[0]}x{shape[1]}")
  return img


def label_mean_intensity(labels: np.ndarray, image: np.ndarray
                         ) -> dict[int, tuple[float, ...]]:
  """{label: (mean of channel 0, channel 1, ...)} over each nucleus' pixels."""
  from scipy import ndimage

  labels = np.asarray(labels)
  img = _channels(image, labels.shape)
  ids = np.unique(labels)
  ids = ids[ids != 0]
  if not ids.size:
    return {}
  per_c = [np.atleast_1d(ndimage.mean(img[..., c].astype(np.float64), labels, ids))
           for c in range(img.shape[2])]
  return {int(k): tuple(float(m[i]) for m in per_c) for i, k in enumerate(ids)}


def csv_columns(image_id: bool = False, pixel_size: bool = False, channels: int = 0
                ) -> tuple[str, ...]:
  """The CSV header: `image` (when per-image ids are written), COLUMNS, the optional ones."""
  return ((("image",) if image_id else ()) + COLUMNS + (("area_um2",) if pixel_size else ())
          + tuple(f"mean_intensity_c{i}" for i in range(channels)))


def csv_cell(v: Any) -> Any:
  """How a value is written to the CSV (`fileio.write_csv`'s rule: floats to 6 digits)."""
  if isinstance(v, (float, np.floating)):
    return f"{float(v):.6g}"
  return v


def mask_row(mask: np.ndarray, nucleus: Nucleus, *, origin: tuple[int, int] = (0, 0),
             downsample: float = 1.0, offset: tuple[float, float] = (0.0, 0.0),
             pixel_size_um: float | Sequence[float] | None = None,
             mean_intensity: Sequence[float] | None = None) -> dict[str, Any]:
  """The CSV row of one nucleus given as a mask (the slide path: no label map in memory).

  mask: bool [h, w], the nucleus in its box; origin: (row, col) of mask[0, 0] in the
  pixels of the level read; downsample: that level's factor; offset: (y, x) of the
  level's pixel (0, 0) in full-resolution pixels. Lengths and areas are converted to
  full-resolution pixels: x = offset_x + col * downsample, area * downsample².
  Same numbers as `measurements_table` on a label map holding the same nucleus.
  """
  from skimage.measure import regionprops

  m = np.asarray(mask, bool)
  d = float(downsample)
  oy, ox = float(offset[0]) + origin[0] * d, float(offset[1]) + origin[1] * d
  rp = regionprops(m.astype(np.uint8))[0]
  r0, c0, r1, c1 = rp.bbox
  area = float(rp.area) * d * d
  n = nucleus
  row: dict[str, Any] = {
      "id": int(n.id), "state": n.state, "score": "" if n.score is None else repr(n.score),
      "source": n.source, "area": _number(area),
      "centroid_x": ox + (float(rp.centroid[1]) + 0.5) * d,
      "centroid_y": oy + (float(rp.centroid[0]) + 0.5) * d,
      "bbox_x": _number(ox + c0 * d), "bbox_y": _number(oy + r0 * d),
      "bbox_width": _number((c1 - c0) * d), "bbox_height": _number((r1 - r0) * d),
      "perimeter": float(rp.perimeter) * d, "eccentricity": float(rp.eccentricity),
  }
  row.update(_extra_columns(area, pixel_size_um, mean_intensity))
  return row


def _extra_columns(area_px: float, pixel_size_um, mean_intensity) -> dict[str, Any]:
  meas = nucleus_measurements(area_px=area_px, mean_intensity=mean_intensity,
                              pixel_size_um=pixel_size_um)
  meas.pop("area_px")
  return meas


def measurements_table(labels: np.ndarray, nuclei: Mapping[int, Nucleus] | None = None,
                       image_id: str | None = None, *, image: np.ndarray | None = None,
                       pixel_size_um: float | Sequence[float] | None = None
                       ) -> list[dict[str, Any]]:
  """Rows (dicts with `csv_columns(...)`: `image` first when image_id is given), by label.

  image: [H, W] or [H, W, C] pixels for `mean_intensity_c{i}`; pixel_size_um: µm per
  pixel (one number or (y, x)) for `area_um2`.
  """
  from skimage.measure import regionprops_table

  labels = validate_label_map(labels, "labels")
  table = complete_table(labels, nuclei)
  if not table:
    return []
  means = label_mean_intensity(labels, image) if image is not None else {}
  props = regionprops_table(labels, properties=("label", "area", "centroid", "bbox",
                                                "perimeter", "eccentricity"))
  rows = []
  for i, k in enumerate(props["label"]):
    n = table[int(k)]
    row: dict[str, Any] = {} if image_id is None else {"image": image_id}
    r0, c0, r1, c1 = (int(props[f"bbox-{j}"][i]) for j in range(4))
    area = int(props["area"][i])
    row.update({
        "id": int(k), "state": n.state, "score": "" if n.score is None else repr(n.score),  # exact
        "source": n.source, "area": area,
        "centroid_x": float(props["centroid-1"][i]) + 0.5,
        "centroid_y": float(props["centroid-0"][i]) + 0.5,
        "bbox_x": c0, "bbox_y": r0, "bbox_width": c1 - c0, "bbox_height": r1 - r0,
        "perimeter": float(props["perimeter"][i]),
        "eccentricity": float(props["eccentricity"][i]),
    })
    row.update(_extra_columns(area, pixel_size_um, means.get(int(k))))
    rows.append(row)
  return rows


def write_measurements_csv(path: os.PathLike | str, labels: np.ndarray,
                           nuclei: Mapping[int, Nucleus] | None = None, *,
                           image_id: str | None = None, image: np.ndarray | None = None,
                           pixel_size_um: float | Sequence[float] | None = None) -> Path:
  """Writes `measurements_table` as CSV (atomically); a header only when no nucleus."""
  ps = check_pixel_size(pixel_size_um)
  channels = 0 if image is None else (1 if np.ndim(image) == 2 else int(np.shape(image)[-1]))
  rows = measurements_table(labels, nuclei, image_id, image=image, pixel_size_um=ps)
  fields = csv_columns(image_id is not None, ps is not None, channels)
  fileio.write_csv(path, rows, fieldnames=fields)
  return Path(path)


def read_measurements_csv(path: os.PathLike | str,
                          default_source: str = "human") -> dict[int, Nucleus]:
  """The nuclei table of a measurements CSV (needs column `id`; state/score/source
  optional; unknown state → 'confirmed')."""
  path = Path(path)
  try:
    with open(path, newline="", encoding="utf-8") as f:
      rows = list(csv.DictReader(f))
      fields = rows[0].keys() if rows else []
  except OSError as e:
    raise InputError(path, f"cannot read ({e.strerror or e})") from None
  except (csv.Error, UnicodeDecodeError) as e:
    raise InputError(path, f"not a valid CSV ({e})") from None
  if rows and "id" not in fields:
    raise InputError(path, "missing column 'id'")
  out = {}
  for i, r in enumerate(rows):
    try:
      k = int(r["id"])
      score = r.get("score")
      score = float(score) if score not in (None, "") else None
    except (TypeError, ValueError):
      raise InputError(path, f"row {i + 2}: 'id' must be an integer and 'score' a number") \
          from None
    src = r.get("source")
    out[k] = Nucleus(k, parse_state(r.get("state")), score,
                     default_source if src is None else src)
  return out
