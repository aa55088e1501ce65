"""Per-nucleus annotation state: who drew it, how sure the model is, what the user decided.

A `Nucleus` describes one label of an instance label map; a `NucleusTable` is the plain
`dict[int, Nucleus]` of one image keyed by label id (JSON: `table_to_json` /
`table_from_json`). Every exporter writes these fields and every importer reads them back
(`pa_jax.annotate.formats`).

States:
  confirmed  drawn or accepted by a person (the default for anything without a state,
             e.g. a human's own label map or a ROI added in Fiji);
  proposed   suggested by a model or the classical method, not yet reviewed;
  rejected   reviewed and judged not a nucleus (kept so that it is not proposed again).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

__all__ = [
    "STATES",
    "STATE_COLORS",
    "Nucleus",
    "NucleusTable",
    "make_table",
    "complete_table",
    "table_to_json",
    "table_from_json",
    "parse_state",
    "paint_instances",
]

STATES = ("confirmed", "proposed", "rejected")
# Display colours (RGB 0-255) used in GeoJSON classifications and ROI stroke colours.
STATE_COLORS: dict[str, tuple[int, int, int]] = {
    "confirmed": (0, 200, 0),
    "proposed": (255, 200, 0),
    "rejected": (220, 0, 0),
}


def parse_state(value: Any, default: str = "confirmed") -> str:
  """A known state from free text ('Proposed ' → 'proposed'); anything else → default."""
  if isinstance(value, str):
    v = value.strip().lower()
    if v in STATES:
      return v
  return default


@dataclasses.dataclass
class Nucleus:
  """One nucleus of an image.

  id: its label in the image's label map (> 0).
  state: 'confirmed' | 'proposed' | 'rejected'.
  score: model confidence in [0, 1], or None (human annotations).
  source: provenance, e.g. 'human', 'pa_jax round 2', 'classical'.
  """

  id: int
  state: str = "confirmed"
  score: float | None = None
  source: str = ""

  def __post_init__(self):
    self.id = int(self.id)
    if self.state not in STATES:
      raise ValueError(f"nucleus {self.id}: state must be one of {STATES}, got {self.state!r}")
    if self.score is not None:
      self.score = float(self.score)
      if not math.isfinite(self.score):
        self.score = None
    self.source = "" if self.source is None else str(self.source)

  def to_json(self) -> dict[str, Any]:
    return {"id": self.id, "state": self.state, "score": self.score, "source": self.source}

  @classmethod
  def from_json(cls, d: Mapping[str, Any]) -> "Nucleus":
    return cls(id=int(d["id"]), state=parse_state(d.get("state")), score=d.get("score"),
               source=d.get("source") or "")


NucleusTable = dict  # dict[int, Nucleus]: one image's nuclei keyed by label id.


def _label_ids(labels: np.ndarray) -> list[int]:
  ids = np.unique(np.asarray(labels))
  return [int(k) for k in ids if k > 0]


def pixels_by_label(labels: np.ndarray) -> dict[int, np.ndarray]:
  """{label: increasing flat pixel indices} of every nonzero label of a 2-D map.

  One stable sort of the map instead of one full-image comparison per nucleus: the
  per-nucleus edits of the annotation loop stay O(H·W·log) on a slide with thousands of
  nuclei rather than O(N·H·W).
  """
  flat = np.asarray(labels).ravel()
  order = np.argsort(flat, kind="stable")
  values, starts = np.unique(flat[order], return_index=True)
  ends = np.append(starts[1:], flat.size)
  return {int(k): order[a:b] for k, a, b in zip(values, starts, ends) if k != 0}


def make_table(labels: np.ndarray, state: str = "confirmed", source: str = "",
               scores: Mapping[int, float] | Sequence[float] | np.ndarray | None = None
               ) -> dict[int, Nucleus]:
  """A table with one entry per label of `labels`, all with the same state and source.

  `scores`: a mapping label → score, or a sequence where scores[k - 1] is label k's.
  """
  out = {}
  for k in _label_ids(labels):
    if scores is None:
      s = None
    elif isinstance(scores, Mapping):
      s = scores.get(k)
    else:
      s = scores[k - 1] if k - 1 < len(scores) else None
    out[k] = Nucleus(k, state, s, source)
  return out


def complete_table(labels: np.ndarray, nuclei: Mapping[int, Nucleus] | None,
                   default_source: str = "") -> dict[int, Nucleus]:
  """The entries of `nuclei` for the labels present, defaults (confirmed) for the others."""
  nuclei = nuclei or {}
  return {k: nuclei[k] if k in nuclei else Nucleus(k, "confirmed", None, default_source)
          for k in _label_ids(labels)}


def table_to_json(nuclei: Mapping[int, Nucleus]) -> list[dict[str, Any]]:
  """JSON-ready list of the nuclei in increasing id order."""
  return [nuclei[k].to_json() for k in sorted(nuclei)]


def table_from_json(items: Iterable[Mapping[str, Any]]) -> dict[int, Nucleus]:
  """Inverse of `table_to_json`. Raises ValueError/KeyError/TypeError when malformed."""
  out = {}
  for d in items:
    n = Nucleus.from_json(d)
    out[n.id] = n
  return out


def paint_instances(pixels: Sequence[tuple[np.ndarray, np.ndarray]],
                    wanted_ids: Sequence[int | None], shape: tuple[int, int]
                    ) -> tuple[np.ndarray, list[int | None]]:
  """Paints nuclei given as (rows, cols) into an int32 label map; returns it and their ids.

  Overlaps are resolved as in `pa_jax.data.coco`: larger nuclei are painted first, so a
  small nucleus keeps all its pixels. Nucleus i gets `wanted_ids[i]` when that is a
  positive int not taken by an earlier nucleus (in input order); the others get fresh ids
  above every wanted one. The returned ids list holds None for nuclei that are empty or
  entirely hidden by others (they are not in the map).
  """
  h, w = int(shape[0]), int(shape[1])
  ids: list[int | None] = []
  taken: set[int] = set()
  for k in wanted_ids:
    ok = isinstance(k, (int, np.integer)) and not isinstance(k, bool) and 0 < int(k) < 2**31 - 1
    if ok and int(k) not in taken:
      taken.add(int(k))
      ids.append(int(k))
    else:
      ids.append(None)
  nxt = max(taken, default=0) + 1
  for i, k in enumerate(ids):
    if k is None:
      ids[i] = nxt
      nxt += 1
  labels = np.zeros((h, w), np.int32)
  order = sorted(range(len(pixels)), key=lambda i: -len(pixels[i][0]))  # stable
  for i in order:
    rr, cc = pixels[i]
    labels[rr, cc] = ids[i]
  present = set(np.unique(labels).tolist())
  return labels, [k if k in present else None for k in ids]
