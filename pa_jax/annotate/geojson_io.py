"""QuPath-compatible GeoJSON: one Feature per nucleus, with state, score and provenance.

Written (RFC 7946 FeatureCollection; coordinates in pixels of the FULL-RESOLUTION image,
origin at its top-left corner, y down, pixel (r, c) covering [c, c+1) x [r, r+1) —
QuPath's image coordinates, whatever pyramid level was segmented):

```
{"type": "Feature", "id": "<uuid>",
 "geometry": {"type": "Polygon", "coordinates": [[[x, y], ..., [x0, y0]]]},
 "properties": {
   "objectType": "detection", "name": "proposed-00012",
   "classification": {"name": "proposed", "color": [255, 200, 0]},
   "isLocked": false,
   "measurements": {"score": 0.93, "area_px": 118, "area_um2": 7.55,
                    "mean_intensity_c0": 41.2},
   "metadata": {"source": "pa_jax round 2", "pa_jax_label": "12",
                "pa_jax_object_type": "detection"},
   "pa_jax": {"label": 12, "state": "proposed", "score": 0.93, "source": "pa_jax round 2",
              "contour": "spline", "control_points": [[x, y], ...],
              "object_type": "detection"}}}
```

QuPath conventions (its `PathObjectTypeAdapters`, docs "Exporting annotations"):

* `objectType` follows the review state (`OBJECT_TYPES`): a machine proposal is a
  `detection` (QuPath's type for the many objects an algorithm makes: light, not
  editable, fast by the hundred thousand); a nucleus a person confirmed, drew or rejected
  is an `annotation` (few, hand-made, editable).
* `id` is a UUID, `uuid5(namespace, "{image id}/{label}")` (`feature_id`): the same result
  exported twice gives the same ids (diffable files, reproducible tests), no state is
  needed to stream a slide, and the ids differ between images. QuPath keeps it on import.
* The state is the QuPath classification (`{name, color}`, color `[r, g, b]` ints).
* `measurements` is a flat `{name: number}` map (QuPath's own format since v0.4):
  `score` (when known), `area_px` (the mask's pixel count in full-resolution pixels),
  `area_um2` (when the pixel size is known) and `mean_intensity_c{i}` per image channel
  (when the image is given) — the names of the measurements CSV columns.
* QuPath drops unknown properties (`pa_jax`) on import but keeps `id`, `objectType`,
  `name`, `classification`, `measurements` and (annotations) `metadata`: what the reader
  needs after a QuPath round trip lives there.
* `contour='polygon'`: the geometry is the exact pixel outline (`mask_contour`).
  `contour='spline'`: QuPath has no spline shapes, so the geometry is the spline sampled
  `SPLINE_SAMPLES` times per segment (what QuPath shows is what the mask is) and the
  control points ride along in `properties.pa_jax.control_points`.
* Rings are closed, simple (repaired when the spline crosses itself) and counter-clockwise
  in (x, y) (RFC 7946 right-hand rule). `pa_jax.annotate.qupath_check` checks all of this.

Reading these files (and QuPath's exports) back: `pa_jax.annotate.geojson_read`.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from pa_jax import fileio
from pa_jax.annotate import contours as C
from pa_jax.annotate.measurements import (check_pixel_size, label_areas, label_mean_intensity,
                                          nucleus_measurements)
from pa_jax.annotate.nuclei import (STATE_COLORS, STATES, Nucleus, complete_table)
from pa_jax.data import coco
from pa_jax.data.readers import validate_label_map

__all__ = ["write_geojson", "geojson_features", "nucleus_feature",
           "feature_id", "object_type", "OBJECT_TYPES", "NAME_PATTERN"]

# ROI / feature names written by pa_jax: "{state}-{label:05d}".
NAME_PATTERN = re.compile(r"^\s*(%s)[-_ ]0*(\d+)\s*$" % "|".join(STATES), re.IGNORECASE)
# QuPath object type per review state: only unreviewed machine output is a detection.
OBJECT_TYPES = {"proposed": "detection", "confirmed": "annotation", "rejected": "annotation"}
_UUID_NAMESPACE = uuid.UUID("5d0b8f7e-3c1a-4f5e-9a47-6a1f0b2c9d11")
_DECIMALS = 4


def object_type(state: str) -> str:
  """QuPath `objectType` of a nucleus in review state `state`."""
  return OBJECT_TYPES[state]


def feature_id(image_id: str, label: int) -> str:
  """The Feature's UUID: uuid5 of "{image_id}/{label}" (reproducible, see the module doc)."""
  return str(uuid.uuid5(_UUID_NAMESPACE, f"{image_id}/{int(label)}"))


def _ring(points: np.ndarray) -> list[list[float]]:
  """Closed ring, counter-clockwise in (x, y), coordinates rounded."""
  pts = np.round(np.asarray(points, np.float64), _DECIMALS)
  if C._signed_area(pts) < 0:
    pts = pts[::-1]
  pts = np.concatenate([pts, pts[:1]], axis=0)
  return pts.tolist()


def _valid_ring(points: np.ndarray) -> np.ndarray:
  """A simple (non self-crossing) version of the polygon: itself, or the exterior of the
  largest part of its repair (`coco.repair_polygon`, the rule the readers apply)."""
  rings, _ = coco.repair_polygon(points)
  return rings[0] if rings else points


def nucleus_feature(outline: np.ndarray, nucleus: Nucleus, *, contours: str = "polygon",
                    image_id: str = "", measurements: Mapping[str, float] | None = None,
                    image_size: Sequence[int] | None = None) -> dict[str, Any] | None:
  """One nucleus as a GeoJSON Feature (module docstring); None when it has no outline.

  The one feature builder of pa_jax: `geojson_features` (a label map in memory) and
  `stream_export.GeoJSONStreamWriter` (a slide, nucleus by nucleus) both call it.

  outline: float64 [N, 2] (x, y) in full-resolution pixel-edge coordinates, implicitly
    closed: the polygon (`contours='polygon'`) or the spline's control points ('spline').
  nucleus: its label, state, score and source.
  measurements: `measurements.nucleus_measurements(...)`; {score} when None.
  image_size: full-resolution (height, width); when given the geometry is clipped to the
    image (a spline through border pixels overshoots it by a fraction of a pixel, and
    QuPath's coordinates are those of the image).
  """
  pts = np.asarray(outline, np.float64).reshape(-1, 2)
  if len(pts) < 3:
    return None
  k, state = int(nucleus.id), nucleus.state
  geom_pts = C.spline_polygon(pts) if contours == "spline" else pts
  if image_size is not None:
    geom_pts = np.clip(geom_pts, 0.0, [float(image_size[1]), float(image_size[0])])
  geom_pts = _valid_ring(geom_pts)
  otype = object_type(state)
  info: dict[str, Any] = {"label": k, "state": state, "score": nucleus.score,
                          "source": nucleus.source, "contour": contours}
  if contours == "spline":
    info["control_points"] = np.round(pts, _DECIMALS).tolist()
  info["object_type"] = otype
  if measurements is None:
    measurements = nucleus_measurements(score=nucleus.score)
  props: dict[str, Any] = {
      "objectType": otype,
      "name": f"{state}-{k:05d}",
      "classification": {"name": state, "color": [int(c) for c in STATE_COLORS[state]]},
      "isLocked": False,
      "measurements": dict(measurements),
      "metadata": {"source": nucleus.source, "pa_jax_label": str(k),
                   "pa_jax_object_type": otype},
      "pa_jax": info,
  }
  return {"type": "Feature", "id": feature_id(image_id, k),
          "geometry": {"type": "Polygon", "coordinates": [_ring(geom_pts)]},
          "properties": props}


def geojson_features(labels: np.ndarray, nuclei: Mapping[int, Nucleus] | None = None, *,
                     contours: str = "polygon", image_id: str | None = None,
                     outlines: Mapping[int, np.ndarray] | None = None,
                     image: np.ndarray | None = None,
                     pixel_size_um: float | Sequence[float] | None = None
                     ) -> list[dict[str, Any]]:
  """The Features of one image (see the module docstring), in label order.

  labels: int [H, W] label map (full resolution). `outlines`: precomputed
  `label_map_contours(labels, contours)` (to share the spline fit between exporters);
  computed when None. image: [H, W] or [H, W, C] pixels, for `mean_intensity_c{i}`.
  pixel_size_um: µm per pixel (one number, or (y, x)), for `area_um2`.
  """
  C.check_contour_mode(contours)
  labels = validate_label_map(labels, "labels")
  table = complete_table(labels, nuclei)
  if outlines is None:
    outlines = C.label_map_contours(labels, contours)
  areas = label_areas(labels)
  means = label_mean_intensity(labels, image) if image is not None else {}
  features = []
  for k, n in table.items():
    meas = nucleus_measurements(score=n.score, area_px=areas.get(k),
                                mean_intensity=means.get(k), pixel_size_um=pixel_size_um)
    f = nucleus_feature(outlines.get(k, np.zeros((0, 2))), n, contours=contours,
                        image_id=image_id or "", measurements=meas, image_size=labels.shape)
    if f is not None:
      features.append(f)
  return features


def collection_header(image_id: str, **extra: Any) -> dict[str, Any]:
  """The FeatureCollection's foreign member `pa_jax` (ignored by other readers)."""
  return {"image": image_id, **{k: v for k, v in extra.items() if v is not None}}


def write_geojson(path: os.PathLike | str, labels: np.ndarray,
                  nuclei: Mapping[int, Nucleus] | None = None, *, contours: str = "polygon",
                  image_id: str | None = None,
                  outlines: Mapping[int, np.ndarray] | None = None,
                  image: np.ndarray | None = None,
                  pixel_size_um: float | Sequence[float] | None = None) -> Path:
  """Writes one image's nuclei as a GeoJSON FeatureCollection (atomically).

  labels: int (H, W) label map; nuclei: table (missing labels → confirmed); contours:
  'polygon' | 'spline'; image / pixel_size_um: as in `geojson_features`. The collection
  carries a foreign member `pa_jax` with the image id, size and pixel size. The image id
  (default: the file's stem) also seeds the feature UUIDs.
  """
  labels = validate_label_map(labels, "labels")
  path = Path(path)
  image_id = image_id if image_id is not None else path.stem
  ps = check_pixel_size(pixel_size_um)
  feats = geojson_features(labels, nuclei, contours=contours, image_id=image_id,
                           outlines=outlines, image=image, pixel_size_um=ps)
  data = {"type": "FeatureCollection",
          "pa_jax": collection_header(image_id, height=int(labels.shape[0]),
                                      width=int(labels.shape[1]),
                                      pixel_size_um=None if ps is None else list(ps)),
          "features": feats}
  fileio.write_text(path, json.dumps(data, separators=(",", ":")) + "\n")
  return path
