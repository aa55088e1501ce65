"""npe2 reader: pa_jax label maps with their review states -> napari Labels layers.

What `run.py predict --format label` and `run.py annotate` write: `{id}.png` (16-bit) or
`{id}.tif` label maps with a `{id}.nuclei.json` sidecar holding each nucleus' state,
score and source (`pa_jax.annotate.label_io`). Accepted paths:

  - a label map with a sidecar beside it, or the sidecar itself;
  - a folder holding sidecars (a `predict` output, an annotation project's `current/`):
    one layer per label map.

Anything else gets no reader (None), so plain images keep opening with napari's own
reader. Each layer is coloured by review state (`colors.STATE_COLORS`: confirmed green,
proposed yellow, rejected red) and carries the table as `features` (state, score,
source), shown in the status bar under the cursor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from pa_jax.annotate.label_io import read_label_map_annotations, sidecar_path
from pa_jax.errors import InputError
from pa_jax.napari import colors

SIDECAR = ".nuclei.json"
LABEL_SUFFIXES = (".png", ".tif", ".tiff")


def _label_map_of(sidecar: Path) -> Path | None:
  """The label map a sidecar describes: `a/b.nuclei.json` -> `a/b.png` (or .tif/.tiff)."""
  stem = sidecar.name[:-len(SIDECAR)]
  for s in LABEL_SUFFIXES:
    p = sidecar.with_name(stem + s)
    if p.is_file():
      return p
  return None


def label_maps(path: str | Path) -> list[Path]:
  """The label maps with review states at `path` (see the module docstring); [] if none."""
  p = Path(path)
  if p.is_dir():
    found = (_label_map_of(s) for s in sorted(p.glob("*" + SIDECAR)))
    return [f for f in found if f is not None]
  if p.name.endswith(SIDECAR):
    f = _label_map_of(p)
    return [f] if f is not None else []
  if p.suffix.lower() in LABEL_SUFFIXES and sidecar_path(p).is_file():
    return [p]
  return []


def get_reader(path: str | list[str]) -> Callable | None:
  """npe2 `napari_get_reader`: `read_layers` when `path` holds pa_jax label maps, else None."""
  paths = [path] if isinstance(path, (str, Path)) else list(path)
  if not paths or not all(label_maps(p) for p in paths):
    return None
  return read_layers


def layer_data(label_path: Path) -> tuple:
  """(labels int32 [H, W], Labels kwargs, "labels") of one label map and its sidecar."""
  labels, nuclei = read_label_map_annotations(label_path, None, default_source="")
  name = label_path.name.split(".")[0]
  meta = {"pa_jax_path": str(label_path),
          "pa_jax_states": {k: n.state for k, n in nuclei.items()}}
  kwargs = {"name": name, "colormap": colors.state_colormap(colors.table_colors(nuclei)),
            "features": colors.features(nuclei), "metadata": meta, "opacity": 0.6}
  return labels, kwargs, "labels"


def read_layers(path: str | list[str]) -> list[tuple]:
  """npe2 reader function: one Labels layer tuple per label map at `path`."""
  paths = [path] if isinstance(path, (str, Path)) else list(path)
  found = [f for p in paths for f in label_maps(p)]
  if not found:
    raise InputError(paths[0], "no pa_jax label map with a .nuclei.json sidecar here")
  return [layer_data(f) for f in found]
