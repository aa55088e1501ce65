"""Checks a GeoJSON file against the rules QuPath's importer relies on.

The rules, from QuPath's GeoJSON serialisation (`qupath.lib.io.PathObjectTypeAdapters`,
v0.4+) and its documentation ("Exporting annotations": coordinates are pixels of the
full-resolution image, origin at its top-left corner), plus RFC 7946:

* the document is a `FeatureCollection` whose `features` is a list of `Feature`s;
* `id`, when present, is a UUID string (QuPath keeps it as the object's id) and ids are
  unique;
* `geometry` is a `Polygon` or `MultiPolygon` whose rings are closed (first position ==
  last), have at least 4 positions of finite numbers, and form a valid polygon of nonzero
  area (shapely `is_valid`: no self-crossing);
* coordinates lie inside the full-resolution image [0, width] x [0, height] when its size
  is given (a region written at level coordinates would fall outside, or all in one
  corner);
* `properties.objectType` is one of QuPath's types (`annotation`, `detection`, `cell`,
  `tile`, `tmaCore`);
* `classification`, when present, is `{"name": str, "color": [r, g, b]}` with ints 0-255;
* `measurements`, when present, is a `{name: finite number}` object (QuPath reads it as
  a map of doubles; a null or a string there breaks the import);
* `metadata`, when present, maps strings to strings; `isLocked` is a bool; `name` a str.

With `pa_jax=True` the pa_jax conventions are checked too: the objectType follows the
review state (proposed → detection, confirmed / rejected → annotation).

`check_geojson(path_or_document)` returns the problems found, one line each, naming the
feature; an empty list means the file passes.
"""

from __future__ import annotations

import math
import os
import uuid
from pathlib import Path
from typing import Any, Mapping, Sequence

from pa_jax import fileio

__all__ = ["QUPATH_OBJECT_TYPES", "check_geojson", "check_feature"]

QUPATH_OBJECT_TYPES = ("annotation", "detection", "cell", "tile", "tmaCore")


def _is_number(v: Any) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _ring_problems(ring: Any, size: Sequence[int] | None) -> list[str]:
  if not isinstance(ring, list) or len(ring) < 4:
    return ["a ring needs at least 4 positions"]
  if not all(isinstance(p, list) and len(p) >= 2 and all(_is_number(v) for v in p[:2])
             for p in ring):
    return ["a position is not a pair of finite numbers"]
  out = []
  if ring[0][:2] != ring[-1][:2]:
    out.append("ring is not closed (first position != last)")
  if size is not None:
    h, w = size
    xs, ys = [p[0] for p in ring], [p[1] for p in ring]
    if min(xs) < 0 or min(ys) < 0 or max(xs) > w or max(ys) > h:
      out.append(f"coordinates outside the full-resolution image {w}x{h} (x in "
                 f"[{min(xs):g}, {max(xs):g}], y in [{min(ys):g}, {max(ys):g}])")
  return out


def _geometry_problems(geom: Any, size: Sequence[int] | None) -> list[str]:
  import shapely.geometry

  if not isinstance(geom, Mapping):
    return ["geometry is missing or not an object"]
  t = geom.get("type")
  coords = geom.get("coordinates")
  if t == "Polygon":
    polys = [coords]
  elif t == "MultiPolygon":
    polys = coords if isinstance(coords, list) else [None]
  else:
    return [f"geometry type {t!r} is not Polygon or MultiPolygon"]
  out = []
  for poly in polys:
    if not isinstance(poly, list) or not poly:
      return ["a polygon must be a non-empty list of rings"]
    for ring in poly:
      out += _ring_problems(ring, size)
  if out:
    return out
  shape = shapely.geometry.shape(geom)
  if not shape.is_valid:
    import shapely.validation

    out.append(f"invalid polygon ({shapely.validation.explain_validity(shape)})")
  elif shape.area <= 0:
    out.append("polygon has zero area")
  return out


def _properties_problems(props: Any, pa_jax: bool) -> list[str]:
  if not isinstance(props, Mapping):
    return ["properties is missing or not an object"]
  out = []
  otype = props.get("objectType")
  if otype not in QUPATH_OBJECT_TYPES:
    out.append(f"objectType {otype!r} is not one of {', '.join(QUPATH_OBJECT_TYPES)}")
  cls = props.get("classification")
  if cls is not None:
    color = cls.get("color") if isinstance(cls, Mapping) else None
    if not (isinstance(cls, Mapping) and isinstance(cls.get("name"), str)):
      out.append("classification must be an object with a string 'name'")
    elif not (isinstance(color, list) and len(color) == 3 and all(
        isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in color)):
      out.append(f"classification color must be [r, g, b] ints 0-255, got {color!r}")
  meas = props.get("measurements")
  if meas is not None:
    if not isinstance(meas, Mapping):
      out.append("measurements must be an object {name: number}")
    else:
      bad = [k for k, v in meas.items() if not _is_number(v)]
      if bad:
        out.append(f"measurements not finite numbers: {', '.join(map(str, bad))}")
  meta = props.get("metadata")
  if meta is not None and not (isinstance(meta, Mapping) and all(
      isinstance(k, str) and isinstance(v, str) for k, v in meta.items())):
    out.append("metadata must map strings to strings")
  if "isLocked" in props and not isinstance(props["isLocked"], bool):
    out.append("isLocked must be true or false")
  if "name" in props and not isinstance(props["name"], str):
    out.append("name must be a string")
  if pa_jax:
    from pa_jax.annotate.geojson_io import OBJECT_TYPES

    state = cls.get("name") if isinstance(cls, Mapping) else None
    if state not in OBJECT_TYPES:
      out.append(f"classification {state!r} is not a review state")
    elif otype != OBJECT_TYPES[state]:
      out.append(f"a {state} nucleus must be a {OBJECT_TYPES[state]}, not a {otype}")
  return out


def check_feature(feature: Any, size: Sequence[int] | None = None,
                  pa_jax: bool = False) -> list[str]:
  """Problems of one Feature (see the module docstring); [] when it is fine."""
  if not isinstance(feature, Mapping) or feature.get("type") != "Feature":
    return ["not a GeoJSON Feature"]
  out = []
  fid = feature.get("id")
  if fid is not None:
    try:
      uuid.UUID(str(fid))
      if not isinstance(fid, str):
        raise ValueError
    except ValueError:
      out.append(f"id {fid!r} is not a UUID string")
  out += _geometry_problems(feature.get("geometry"), size)
  out += _properties_problems(feature.get("properties"), pa_jax)
  return out


def check_geojson(doc: os.PathLike | str | Mapping[str, Any], *,
                  image_size: Sequence[int] | None = None, pa_jax: bool = False,
                  max_problems: int = 50) -> list[str]:
  """Problems of a GeoJSON file or parsed document, one line each ('feature 3: ...').

  image_size: (height, width) of the full-resolution image, to check that coordinates
  lie on it. pa_jax: also check pa_jax's state → objectType rule. At most
  `max_problems` lines (the count of the rest is the last line).
  """
  if isinstance(doc, (str, os.PathLike)):
    doc = fileio.read_json(Path(doc), missing_ok=False, expected="GeoJSON")
  if not isinstance(doc, Mapping) or doc.get("type") != "FeatureCollection":
    return ["not a GeoJSON FeatureCollection"]
  feats = doc.get("features")
  if not isinstance(feats, list):
    return ["FeatureCollection 'features' is not a list"]
  out, seen = [], set()
  for i, f in enumerate(feats):
    out += [f"feature {i}: {p}" for p in check_feature(f, image_size, pa_jax)]
    fid = f.get("id") if isinstance(f, Mapping) else None
    if isinstance(fid, str):
      if fid in seen:
        out.append(f"feature {i}: id {fid} is used twice")
      seen.add(fid)
  if len(out) > max_problems:
    out = out[:max_problems] + [f"... and {len(out) - max_problems} more"]
  return out
