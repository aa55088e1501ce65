"""ImageJ/Fiji ROI zip (RoiSet) export/import through `roifile`.

Written: one `.roi` entry per nucleus, a polygon ROI (`ROI_TYPE.POLYGON`) with sub-pixel
float coordinates in pixel-edge coordinates (ImageJ's: pixel (r, c) covers
[c, c+1) x [r, r+1)), named `"{state}-{label:05d}"` (entry `"{name}.roi"`), its stroke
colour the state's colour, and ImageJ ROI properties (`Roi.getProperty`):
`label`, `state`, `score` (when known), `source`, `contour`.

* `contours='polygon'`: the vertices are the exact pixel outline (`mask_contour`).
* `contours='spline'`: the vertices are the spline's control points and the ROI has the
  `SPLINE_FIT` option, so Fiji shows them as editable spline anchors. Fiji re-fits its
  own closed spline through the anchors (`ij.measure.SplineFitter`), which is close to
  but not exactly pa_jax's (`spline_polygon`); pa_jax rasterises a spline-flagged ROI
  through its own spline, so a pa_jax round trip is stable.

Read (any ImageJ area ROI, so a user may add nuclei with any tool): polygon, freehand,
traced, ellipse and rotated-rectangle ROIs (their outline from `ImagejRoi.coordinates()`,
through `spline_polygon` when `SPLINE_FIT` is set), rectangles (integer or sub-pixel
bounds), ovals (pixels whose centre is inside the inscribed ellipse) and composite (shape)
ROIs (even-odd rule over their sub-paths). A self-intersecting polygon/freehand outline is
repaired (shapely `make_valid`, largest part kept, as for COCO and GeoJSON). Lines,
points, angles and text are not used, nor are ROIs entirely outside the image (parts
outside are clipped), empty or degenerate: each is named, with the repairs, in one warning
line per file (`ShapeReport`). State from the
`state` property, then a `"{state}-{label}"` name, else 'confirmed'; the label from the
`label` property or the name when unique, else a fresh one. Overlaps: larger first.
A single `.roi` file is read too.
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from pa_jax import fileio
from pa_jax.annotate import contours as C
from pa_jax.annotate.geojson_io import NAME_PATTERN
from pa_jax.annotate.nuclei import (STATE_COLORS, Nucleus, complete_table, paint_instances,
                                    parse_state)
from pa_jax.data import coco
from pa_jax.data.readers import validate_label_map
from pa_jax.data.shape_report import ShapeReport
from pa_jax.errors import InputError

__all__ = ["nucleus_roi", "write_roi_zip", "read_roi_zip", "roi_pixels"]


def _one_line(text: Any) -> str:
  return " ".join(str(text).split())


def nucleus_roi(points: np.ndarray, nucleus: Nucleus, spline: bool) -> Any:
  """A `roifile.ImagejRoi` polygon through `points` (K, 2) (x, y) for one nucleus."""
  import roifile

  name = f"{nucleus.state}-{nucleus.id:05d}"
  roi = roifile.ImagejRoi.frompoints(np.asarray(points, np.float32), name=name)
  roi.roitype = roifile.ROI_TYPE.POLYGON
  roi.options = roifile.ROI_OPTIONS.SUB_PIXEL_RESOLUTION
  if spline:
    roi.options |= roifile.ROI_OPTIONS.SPLINE_FIT
  r, g, b = STATE_COLORS[nucleus.state]
  roi.stroke_color = bytes([255, r, g, b])  # ARGB (big-endian file)
  props: dict[str, Any] = {"label": nucleus.id, "state": nucleus.state,
                           "source": _one_line(nucleus.source),
                           "contour": "spline" if spline else "polygon"}
  if nucleus.score is not None:
    props["score"] = repr(float(nucleus.score))
  roi.properties = props
  return roi


def write_roi_zip(path: os.PathLike | str, labels: np.ndarray,
                  nuclei: Mapping[int, Nucleus] | None = None, *, contours: str = "polygon",
                  image_id: str | None = None,
                  outlines: Mapping[int, np.ndarray] | None = None) -> Path:
  """Writes one image's nuclei as an ImageJ ROI zip (atomically: built in memory, then
  `fileio.write_bytes`). `outlines`: precomputed `label_map_contours(labels, contours)`.
  `image_id` is unused (the zip has no image-level metadata); kept for a common signature.
  """
  del image_id
  C.check_contour_mode(contours)
  labels = validate_label_map(labels, "labels")
  table = complete_table(labels, nuclei)
  if outlines is None:
    outlines = C.label_map_contours(labels, contours)
  buf = io.BytesIO()
  with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
    for k, n in table.items():
      pts = np.asarray(outlines.get(k, np.zeros((0, 2))), np.float64)
      if len(pts) < 3:
        continue
      roi = nucleus_roi(pts, n, contours == "spline")
      zf.writestr(f"{roi.name}.roi", roi.tobytes())
  path = Path(path)
  fileio.write_bytes(path, buf.getvalue())
  return path


# --------------------------------------------------------------------------- reading


def _area_pixels(polys: Sequence[np.ndarray], h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
  """Pixels inside an odd number of the polygons (even-odd rule)."""
  flat = np.zeros(0, np.int64)
  for p in polys:
    rr, cc = C.polygon_pixels(p, h, w)
    flat = np.setxor1d(flat, rr.astype(np.int64) * w + cc)
  return flat // w, flat % w


def _oval_pixels(x0: float, y0: float, x1: float, y1: float, h: int, w: int
                 ) -> tuple[np.ndarray, np.ndarray]:
  """Pixels whose centre is inside the ellipse inscribed in [x0, x1] x [y0, y1]."""
  rx, ry = (x1 - x0) / 2.0, (y1 - y0) / 2.0
  if rx <= 0 or ry <= 0:
    return np.zeros(0, np.intp), np.zeros(0, np.intp)
  cx, cy = x0 + rx, y0 + ry
  r0, r1 = max(int(np.floor(y0)), 0), min(int(np.ceil(y1)), h)
  c0, c1 = max(int(np.floor(x0)), 0), min(int(np.ceil(x1)), w)
  if r0 >= r1 or c0 >= c1:
    return np.zeros(0, np.intp), np.zeros(0, np.intp)
  rr, cc = np.mgrid[r0:r1, c0:c1]
  inside = ((cc + 0.5 - cx) / rx) ** 2 + ((rr + 0.5 - cy) / ry) ** 2 <= 1.0
  return rr[inside], cc[inside]


def roi_pixels(roi: Any, h: int, w: int) -> tuple[np.ndarray, np.ndarray] | None:
  """(rows, cols) of an ImageJ area ROI clipped to h x w; None for non-area ROIs."""
  got = _roi_area(roi, h, w)
  return None if got is None else got[:2]


def _roi_kind(roi: Any) -> str:
  """The ROI's type as ImageJ names it ('LINE', 'POINT', ...), for reports."""
  import roifile

  if roi.subtype in (roifile.ROI_SUBTYPE.TEXT, roifile.ROI_SUBTYPE.ARROW,
                     roifile.ROI_SUBTYPE.IMAGE):
    return f"{roi.subtype.name.lower()} ROI"
  try:
    return f"{roifile.ROI_TYPE(roi.roitype).name.lower()} ROI"
  except ValueError:
    return f"ROI type {int(roi.roitype)}"


def _roi_area(roi: Any, h: int, w: int
              ) -> tuple[np.ndarray, np.ndarray, str, str] | None:
  """(rows, cols, unused, repaired) of an ImageJ area ROI clipped to h x w; None for
  non-area ROIs (lines, points, text). `unused`: why it gives no pixel ('' when it does);
  `repaired`: what was repaired in a polygon ROI ('' when nothing), see
  `coco.repair_polygon` (a self-intersecting outline keeps its largest part)."""
  import roifile

  T = roifile.ROI_TYPE
  empty = np.zeros(0, np.intp)
  if roi.subtype in (roifile.ROI_SUBTYPE.TEXT, roifile.ROI_SUBTYPE.ARROW,
                     roifile.ROI_SUBTYPE.IMAGE):
    return None
  if roi.composite:
    # Composite (shape) ROIs are even-odd by definition: holes are meant, nothing to repair.
    rr, cc = _area_pixels([np.asarray(p, np.float64) for p in roi.coordinates(multi=True)],
                          h, w)
    return rr, cc, _no_pixel(rr, h, w, roi), ""
  if roi.roitype in (T.RECT, T.OVAL):
    if roi.subpixelrect:
      x0, y0 = float(roi.xd), float(roi.yd)
      x1, y1 = x0 + float(roi.widthd), y0 + float(roi.heightd)
    else:
      x0, y0, x1, y1 = float(roi.left), float(roi.top), float(roi.right), float(roi.bottom)
    if roi.roitype == T.OVAL:
      rr, cc = _oval_pixels(x0, y0, x1, y1, h, w)
    else:
      rr, cc = C.polygon_pixels(np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]]), h, w)
    if x1 <= x0 or y1 <= y0:
      return empty, empty, "zero area", ""
    return rr, cc, _no_pixel(rr, h, w, roi), ""
  if roi.roitype in (T.POLYGON, T.FREEHAND, T.TRACED):
    pts = np.asarray(roi.coordinates(), np.float64).reshape(-1, 2)
    if roi.options & roifile.ROI_OPTIONS.SPLINE_FIT:
      pts = C.spline_polygon(pts)
    rings, note = coco.repair_polygon(pts)
    if not rings:
      return empty, empty, note, ""
    rr, cc = coco.rings_pixels(rings, h, w)
    return rr, cc, _no_pixel(rr, h, w, roi), note if rr.size else ""
  return None  # line, polyline, freeline, angle, point, unknown


def _no_pixel(rr: np.ndarray, h: int, w: int, roi: Any) -> str:
  """'' when the ROI has pixels, else 'outside the image' or 'covers no pixel centre'."""
  if rr.size:
    return ""
  outside = (roi.right <= 0 or roi.bottom <= 0 or roi.left >= w or roi.top >= h)
  return "outside the image" if outside else "covers no pixel centre"


def _read_rois(path: Path) -> list[tuple[str, Any]]:
  """[(entry name, ImagejRoi)] of a .zip (entries ending in .roi) or a single .roi file."""
  import roifile

  try:
    if path.suffix.lower() == ".roi":
      return [(path.stem, roifile.ImagejRoi.frombytes(path.read_bytes()))]
    out = []
    with zipfile.ZipFile(path) as zf:
      for info in zf.infolist():
        if info.is_dir() or not info.filename.lower().endswith(".roi"):
          continue
        data = zf.read(info)
        try:
          roi = roifile.ImagejRoi.frombytes(data)
        except Exception as e:  # roifile raises ValueError/struct.error/... on bad bytes
          raise InputError(path, f"entry {info.filename!r} is not an ImageJ ROI "
                           f"({_one_line(e) or type(e).__name__})") from None
        out.append((Path(info.filename).stem, roi))
    return out
  except InputError:
    raise
  except FileNotFoundError:
    raise InputError(path, "file not found") from None
  except OSError as e:
    raise InputError(path, f"cannot read ({e.strerror or e})") from None
  except zipfile.BadZipFile as e:
    raise InputError(path, f"not a valid ROI zip ({_one_line(e)})") from None
  except Exception as e:
    raise InputError(path, f"not a valid ImageJ ROI file ({_one_line(e) or type(e).__name__})") \
        from None


def _roi_meta(roi: Any, entry: str, default_source: str
              ) -> tuple[int | None, str, float | None, str]:
  try:
    props = roi.properties
  except Exception:  # undecodable props: ignore them
    props = {}
  m = NAME_PATTERN.match(roi.name or "") or NAME_PATTERN.match(entry)
  state = parse_state(props.get("state"), default="") or (m.group(1).lower() if m else "")
  label = props.get("label")
  if not (isinstance(label, int) and not isinstance(label, bool)):
    label = int(m.group(2)) if m else None
  score = props.get("score")
  try:
    score = None if score in (None, "") else float(score)
  except (TypeError, ValueError):
    score = None
  source = props.get("source")
  source = default_source if source is None else str(source)
  return label, state or "confirmed", score, source


def read_roi_zip(path: os.PathLike | str, shape: Sequence[int],
                 default_source: str = "human", *,
                 reports: list[ShapeReport] | None = None
                 ) -> tuple[np.ndarray, dict[int, Nucleus]]:
  """Reads an ImageJ ROI zip (or one .roi) → (int32 (H, W) label map, nuclei table).

  shape: the image's (H, W). A file that is not a zip of ImageJ ROIs raises a one-line
  InputError naming it. ROIs that give no nucleus (lines, points, text, empty or
  degenerate shapes, outside the image, hidden under smaller overlapping ROIs) and
  repaired self-intersecting polygons are listed by entry name in a `ShapeReport`:
  appended to `reports` when given, and logged as one warning line on
  `shape_report.INPUT_LOG` unless every ROI was used as is.
  """
  path = Path(path)
  h, w = int(shape[0]), int(shape[1])
  pixels, wanted, metas, names = [], [], [], []
  rois = _read_rois(path)
  report = ShapeReport(str(path), total=len(rois), noun="ROIs")
  for entry, roi in rois:
    what = f"ROI {entry!r}"
    try:
      got = _roi_area(roi, h, w)
    except Exception as e:
      raise InputError(path, f"ROI {entry!r}: cannot rasterise "
                       f"({_one_line(e) or type(e).__name__})") from None
    if got is None:
      report.unused.append((what, _roi_kind(roi)))
      continue
    rr, cc, unused, repaired = got
    if unused:
      report.unused.append((what, unused))
      continue
    if repaired:
      report.repaired.append((what, repaired))
    label, state, score, source = _roi_meta(roi, entry, default_source)
    pixels.append((rr, cc))
    wanted.append(label)
    metas.append((state, score, source))
    names.append(what)
  labels, ids = paint_instances(pixels, wanted, (h, w))
  report.unused += [(what, "hidden under smaller overlapping ROIs")
                    for what, k in zip(names, ids) if k is None]
  report.emit(reports)
  nuclei = {k: Nucleus(k, *meta) for k, meta in zip(ids, metas) if k is not None}
  return labels, dict(sorted(nuclei.items()))
