"""Label-map export/import with the nuclei table in a JSON sidecar.

`{stem}.png` (16-bit) or `{stem}.tif` (16/32-bit) holds the instance label map (0 =
background); `{stem}.nuclei.json` beside it holds the per-nucleus state, score and source
(`pa_jax.annotate.nuclei`), since a label map has no room for them. Without a sidecar (a
label map a person painted) every nucleus is 'confirmed' with the default source; a
sidecar entry whose label is no longer in the map is ignored, a label without an entry
gets the defaults.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from pa_jax import fileio
from pa_jax.annotate.nuclei import Nucleus, complete_table, table_from_json, table_to_json
from pa_jax.data.readers import read_label_map, validate_label_map
from pa_jax.errors import InputError

__all__ = ["sidecar_path", "write_label_map", "read_label_map_annotations"]


def sidecar_path(label_path: os.PathLike | str) -> Path:
  """`a/b.png` → `a/b.nuclei.json`."""
  p = Path(label_path)
  return p.with_name(p.stem + ".nuclei.json")


def write_label_map(path: os.PathLike | str, labels: np.ndarray,
                    nuclei: Mapping[int, Nucleus] | None = None, *,
                    image_id: str | None = None) -> list[Path]:
  """Writes the label map (`.png` 16-bit, `.tif` 16/32-bit) and, when `nuclei` is given,
  its `.nuclei.json` sidecar; both atomically. Returns the paths written."""
  path = Path(path)
  labels = validate_label_map(labels, "labels")
  fileio.write_label_map(path, labels)
  written = [path]
  if nuclei is not None:
    table = complete_table(labels, nuclei)
    side = sidecar_path(path)
    fileio.write_json(side, {"image": image_id if image_id is not None else path.stem,
                             "height": int(labels.shape[0]), "width": int(labels.shape[1]),
                             "nuclei": table_to_json(table)})
    written.append(side)
  return written


def read_label_map_annotations(path: os.PathLike | str,
                               shape: Sequence[int] | None = None,
                               default_source: str = "human"
                               ) -> tuple[np.ndarray, dict[int, Nucleus]]:
  """Reads a label map (+ its sidecar when present) → (int32 (H, W), nuclei table).

  `shape`: the image's (H, W); a label map of another size is an InputError.
  """
  path = Path(path)
  labels = read_label_map(path, shape)
  side = sidecar_path(path)
  table: dict[int, Nucleus] = {}
  if side.is_file():
    try:
      data: Any = json.loads(side.read_text(encoding="utf-8"))
      items = data["nuclei"] if isinstance(data, dict) else data
      table = table_from_json(items)
    except OSError as e:
      raise InputError(side, f"cannot read ({e.strerror or e})") from None
    except json.JSONDecodeError as e:
      raise InputError(side, f"invalid JSON at line {e.lineno} column {e.colno} ({e.msg})") \
          from None
    except (KeyError, TypeError, ValueError) as e:
      raise InputError(side, f"not a nuclei table (a list of {{id, state, score, source}}): "
                       f"{e}") from None
  return labels, complete_table(labels, table, default_source)
