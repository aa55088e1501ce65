"""Reading GeoJSON nuclei (QuPath exports, pa_jax files) into an instance label map.

Read: a FeatureCollection, a single Feature, a bare array of Features (QuPath's other
export style) or a bare Polygon/MultiPolygon geometry. Polygon and MultiPolygon
geometries become nuclei (holes removed; the parts of a MultiPolygon are one nucleus);
for a QuPath *cell* the `nucleusGeometry` property is used when present. A
self-intersecting ring is repaired (shapely `make_valid`, LARGEST part kept: a bow-tie
becomes its larger lobe). Points, lines, null and degenerate geometries (fewer than 3
distinct points, zero area), shapes entirely outside the image or covering no pixel
centre, and shapes entirely hidden under smaller overlapping ones are not used; parts
outside the image are clipped. Nothing is dropped silently: every feature not used, and
every repair, is listed by feature index in one warning line per file (`ShapeReport`).
State: classification name, then `pa_jax.state`, then a `"{state}-{label}"` name, else
'confirmed'. A `proposed` nucleus that is now an `annotation` although pa_jax wrote it as
a detection (QuPath's "convert detections to annotations", the way to edit a detection's
outline) is read as `confirmed`: a person took it over. Files of older pa_jax versions,
which wrote every nucleus as an annotation (a `pa_jax` block or `pa_jax_label` metadata
without an object type), keep their proposals proposed. The label is kept from
`pa_jax.label` (or the name / metadata) when unique, otherwise a fresh one is given.
Overlaps: larger nuclei are painted first, as for COCO.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from pa_jax import fileio
from pa_jax.annotate.geojson_io import NAME_PATTERN
from pa_jax.annotate.nuclei import Nucleus, paint_instances, parse_state
from pa_jax.data import coco
from pa_jax.data.shape_report import ShapeReport
from pa_jax.errors import InputError

__all__ = ["read_geojson"]


def _rings(coords: Any, what: str) -> list[np.ndarray]:
  """Validated rings of a Polygon's `coordinates` → list of (N, 2) arrays."""
  if not isinstance(coords, list):
    raise ValueError(f"{what}: Polygon coordinates must be a list of rings")
  rings = []
  for ring in coords:
    if not isinstance(ring, list) or not all(
        isinstance(p, list) and len(p) >= 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in p[:2])
        for p in ring):
      raise ValueError(f"{what}: a ring must be a list of [x, y] number pairs")
    arr = np.asarray([p[:2] for p in ring], np.float64).reshape(-1, 2)
    if not np.all(np.isfinite(arr)):
      raise ValueError(f"{what}: non-finite coordinates")
    rings.append(arr)
  return rings


def _polygons(geom: Any, what: str) -> list[list[np.ndarray]]:
  """[[exterior, hole, ...], ...] of a geometry; [] for non-area geometries."""
  if geom is None:
    return []
  if not isinstance(geom, Mapping) or "type" not in geom:
    raise ValueError(f"{what}: 'geometry' must be an object with a 'type'")
  t = geom["type"]
  if t == "Polygon":
    return [_rings(geom.get("coordinates"), what)]
  if t == "MultiPolygon":
    polys = geom.get("coordinates")
    if not isinstance(polys, list):
      raise ValueError(f"{what}: MultiPolygon coordinates must be a list of polygons")
    return [_rings(p, what) for p in polys]
  if t == "GeometryCollection":
    geoms = geom.get("geometries")
    if not isinstance(geoms, list):
      raise ValueError(f"{what}: GeometryCollection needs a 'geometries' list")
    return [p for g in geoms for p in _polygons(g, what)]
  return []  # Point, LineString, ...: not a nucleus outline


def _geometry_pixels(polys: list[list[np.ndarray]], h: int, w: int
                     ) -> tuple[np.ndarray, np.ndarray, str, str]:
  """Pixels of a geometry's polygons (union; holes removed) → (rows, cols, unused, repaired).

  Each exterior ring is repaired when self-intersecting (`coco.repair_polygon`, largest
  part kept); `repaired` says what was wrong ('' when nothing). `unused` says why the
  geometry gives no pixel ('' when it does): 'empty polygon', 'fewer than 3 distinct
  points', 'zero area', 'outside the image', 'covers no pixel centre'.
  """
  flat = np.zeros(0, np.int64)
  unusable, repaired, used = [], [], []
  for rings in polys:
    if not rings:
      unusable.append("empty polygon")
      continue
    fixed, note = coco.repair_polygon(rings[0])
    if not fixed:
      unusable.append(note)
      continue
    if note:
      repaired.append(note)
    rr, cc = coco.rings_pixels(list(fixed) + list(rings[1:]), h, w)
    used.append(fixed[0])
    flat = np.union1d(flat, rr.astype(np.int64) * w + cc)
  repaired_note = ", ".join(dict.fromkeys(repaired))
  if not used:
    return flat, flat, (unusable[0] if unusable else "empty polygon"), ""
  if not flat.size:
    pts = np.concatenate(used)
    outside = (pts[:, 0].max() <= 0 or pts[:, 1].max() <= 0 or pts[:, 0].min() >= w
               or pts[:, 1].min() >= h)
    return flat, flat, "outside the image" if outside else "covers no pixel centre", ""
  return flat // w, flat % w, "", repaired_note


def _not_area(geom: Any) -> str:
  """Why a geometry with no polygon is not a nucleus: its type ('Point', 'LineString',
  ...), 'no geometry' for null."""
  if geom is None:
    return "no geometry"
  t = str(geom.get("type"))
  return f"{t} without polygons" if t == "GeometryCollection" else t


def _score(props: Mapping[str, Any], info: Mapping[str, Any]) -> float | None:
  meas = props.get("measurements")
  val = None
  if isinstance(meas, Mapping):
    val = meas.get("score")
  elif isinstance(meas, list):  # older QuPath: [{"name": ..., "value": ...}]
    for m in meas:
      if isinstance(m, Mapping) and str(m.get("name", "")).lower() == "score":
        val = m.get("value")
  if val is None:
    val = info.get("score")
  try:
    val = None if val is None else float(val)
  except (TypeError, ValueError):
    return None
  return val if val is not None and math.isfinite(val) else None


def _written_as(info: Mapping[str, Any], meta: Mapping[str, Any]) -> str | None:
  """The objectType pa_jax wrote a feature with, from what survives QuPath (metadata) or
  not (`pa_jax`); 'annotation' for files of older versions (every nucleus an annotation);
  None for a feature pa_jax did not write or whose record QuPath dropped."""
  written = info.get("object_type", meta.get("pa_jax_object_type"))
  if written is None and (info or "pa_jax_label" in meta):
    return "annotation"
  return written if isinstance(written, str) else None


def _feature_meta(props: Mapping[str, Any], default_source: str
                  ) -> tuple[int | None, str, float | None, str]:
  info = props.get("pa_jax")
  info = info if isinstance(info, Mapping) else {}
  meta = props.get("metadata")
  meta = meta if isinstance(meta, Mapping) else {}
  name = props.get("name")
  m = NAME_PATTERN.match(name) if isinstance(name, str) else None
  cls = props.get("classification")
  cls_name = cls.get("name") if isinstance(cls, Mapping) else cls
  state = parse_state(cls_name, default="")
  if not state:
    state = parse_state(info.get("state"), default="")
  if not state and m:
    state = m.group(1).lower()
  state = state or "confirmed"
  if state == "proposed" and props.get("objectType") == "annotation" \
      and _written_as(info, meta) != "annotation":
    state = "confirmed"  # a detection a person turned into an annotation: taken over
  label = info.get("label")
  if not (isinstance(label, int) and not isinstance(label, bool)):
    label = None
    if m:
      label = int(m.group(2))
    elif isinstance(meta.get("pa_jax_label"), str) and meta["pa_jax_label"].isdigit():
      label = int(meta["pa_jax_label"])
  source = info.get("source", meta.get("source"))
  source = default_source if source is None else str(source)
  return label, state, _score(props, info), source


def _feature_list(data: Any) -> list[Any]:
  if isinstance(data, list):
    return data
  if isinstance(data, Mapping):
    t = data.get("type")
    if t == "FeatureCollection":
      feats = data.get("features")
      if not isinstance(feats, list):
        raise ValueError("FeatureCollection 'features' must be a list")
      return feats
    if t == "Feature":
      return [data]
    if t in ("Polygon", "MultiPolygon", "GeometryCollection"):
      return [{"type": "Feature", "geometry": data, "properties": {}}]
  raise ValueError("expected a GeoJSON FeatureCollection, Feature or array of Features")


def read_geojson(path: os.PathLike | str, shape: Sequence[int],
                 default_source: str = "human", *,
                 reports: list[ShapeReport] | None = None
                 ) -> tuple[np.ndarray, dict[int, Nucleus]]:
  """Reads a GeoJSON file → (int32 (H, W) label map, nuclei table keyed by label).

  shape: the image's (H, W). Malformed content raises a one-line InputError naming the
  file (and the feature index). Features that give no nucleus (points, lines, null or
  degenerate geometries, shapes outside the image or hidden under smaller overlapping
  ones) and repaired self-intersecting polygons are listed by feature index (0-based) in
  a `ShapeReport`: appended to `reports` when given, and logged as one warning line on
  `shape_report.INPUT_LOG` unless every feature was used as is.
  """
  path = Path(path)
  h, w = int(shape[0]), int(shape[1])
  data = fileio.read_json(path, missing_ok=False, expected="GeoJSON")
  try:
    feats = _feature_list(data)
  except ValueError as e:
    raise InputError(path, str(e)) from None
  pixels, wanted, metas, names = [], [], [], []
  report = ShapeReport(str(path), total=len(feats), noun="features")
  for i, f in enumerate(feats):
    what = f"feature {i}"
    if not isinstance(f, Mapping):
      raise InputError(path, f"{what} is not an object")
    props = f.get("properties")
    props = props if isinstance(props, Mapping) else {}
    if "geometry" not in f:
      raise InputError(path, f"{what} has no 'geometry'")
    geom = f["geometry"]
    if isinstance(props.get("nucleusGeometry"), Mapping):  # QuPath cell: use its nucleus
      geom = props["nucleusGeometry"]
    try:
      polys = _polygons(geom, what)
    except ValueError as e:
      raise InputError(path, str(e)) from None
    if not polys:
      report.unused.append((what, _not_area(geom)))
      continue
    rr, cc, unused, repaired = _geometry_pixels(polys, h, w)
    if unused:
      report.unused.append((what, unused))
      continue
    if repaired:
      report.repaired.append((what, repaired))
    label, state, score, source = _feature_meta(props, default_source)
    pixels.append((rr, cc))
    wanted.append(label)
    metas.append((state, score, source))
    names.append(what)
  labels, ids = paint_instances(pixels, wanted, (h, w))
  hidden = [(what, "hidden under smaller overlapping features")
            for what, k in zip(names, ids) if k is None]
  report.unused = sorted(report.unused + hidden, key=lambda u: int(u[0].split()[-1]))
  report.emit(reports)
  nuclei = {k: Nucleus(k, *meta) for k, meta in zip(ids, metas) if k is not None}
  return labels, dict(sorted(nuclei.items()))
