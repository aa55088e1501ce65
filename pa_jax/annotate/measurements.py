"""Per-nucleus measurements as CSV (one row per label of the label map).

Columns: `image` (when given), `id` (label), `state`, `score` (empty when unknown),
`source`, `area` (pixels), `centroid_x`, `centroid_y` (pixel-edge coordinates, as
ImageJ and QuPath report them: a single pixel (r, c) has its centroid at (c + 0.5,
r + 0.5)), `bbox_x`, `bbox_y`, `bbox_width`, `bbox_height` (of the pixels, COCO style),
`perimeter` (scikit-image's 4-connected boundary estimate, pixels) and `eccentricity` (of
the ellipse with the same second moments; 0 = circle).

The CSV has no outlines, so its importer (`read_measurements_csv`) gives back the nuclei
table only (state, score, source per id).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from pa_jax import fileio
from pa_jax.annotate.nuclei import Nucleus, complete_table, parse_state
from pa_jax.data.readers import validate_label_map
from pa_jax.errors import InputError

__all__ = ["COLUMNS", "measurements_table", "write_measurements_csv", "read_measurements_csv"]

COLUMNS = ("id", "state", "score", "source", "area", "centroid_x", "centroid_y", "bbox_x",
           "bbox_y", "bbox_width", "bbox_height", "perimeter", "eccentricity")


def measurements_table(labels: np.ndarray, nuclei: Mapping[int, Nucleus] | None = None,
                       image_id: str | None = None) -> list[dict[str, Any]]:
  """Rows (dicts with `COLUMNS`, plus `image` first when image_id is given), by label."""
  from skimage.measure import regionprops_table

  labels = validate_label_map(labels, "labels")
  table = complete_table(labels, nuclei)
  if not table:
    return []
  props = regionprops_table(labels, properties=("label", "area", "centroid", "bbox",
                                                "perimeter", "eccentricity"))
  rows = []
  for i, k in enumerate(props["label"]):
    n = table[int(k)]
    row: dict[str, Any] = {} if image_id is None else {"image": image_id}
    r0, c0, r1, c1 = (int(props[f"bbox-{j}"][i]) for j in range(4))
    row.update({
        "id": int(k), "state": n.state, "score": "" if n.score is None else repr(n.score),  # exact
        "source": n.source, "area": int(props["area"][i]),
        "centroid_x": float(props["centroid-1"][i]) + 0.5,
        "centroid_y": float(props["centroid-0"][i]) + 0.5,
        "bbox_x": c0, "bbox_y": r0, "bbox_width": c1 - c0, "bbox_height": r1 - r0,
        "perimeter": float(props["perimeter"][i]),
        "eccentricity": float(props["eccentricity"][i]),
    })
    rows.append(row)
  return rows


def write_measurements_csv(path: os.PathLike | str, labels: np.ndarray,
                           nuclei: Mapping[int, Nucleus] | None = None, *,
                           image_id: str | None = None) -> Path:
  """Writes `measurements_table` as CSV (atomically); a header only when no nucleus."""
  rows = measurements_table(labels, nuclei, image_id)
  fields = (("image",) if image_id is not None else ()) + COLUMNS
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
