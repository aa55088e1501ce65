"""What became of the shapes of a person's annotation file: used, repaired or not used.

A person's input is never dropped or reinterpreted silently: every reader of annotation
shapes (GeoJSON, COCO, ImageJ ROI zips) fills a `ShapeReport` per file and emits it as
one warning line, naming the file and each shape that was repaired or not used.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from typing import Sequence

# One line per annotation file whose shapes were not all used as given (`ShapeReport`).
# Its own stderr handler, "warning: ..." with no logger name, so the CLI shows one plain
# line per file without configuring logging; a GUI replaces the handlers of this logger
# (or passes `reports=[]` to the readers and shows the objects itself).
INPUT_LOG = logging.getLogger("pa_jax.inputs")


class _StderrLine(logging.Handler):
  """Prints "warning: <message>" to the *current* sys.stderr (pytest's capture included)."""

  def emit(self, record: logging.LogRecord) -> None:
    try:
      print(f"warning: {record.getMessage()}", file=sys.stderr, flush=True)
    except Exception:  # a closed stderr must not break reading
      self.handleError(record)


if not INPUT_LOG.handlers:
  INPUT_LOG.addHandler(_StderrLine())
  INPUT_LOG.setLevel(logging.WARNING)
  INPUT_LOG.propagate = False

_LISTED = 8  # items named per part of a report line; the rest are counted
_emitted: set[str] = set()  # lines already shown in this process (a file read every round)


@dataclasses.dataclass
class ShapeReport:
  """What became of the shapes of one annotation file (or one image of a COCO file).

  where: the file (", image ID" for a COCO file read per image).
  total: number of shapes in it (features, annotations, ROIs).
  noun: what a shape is called in the file: 'features', 'annotations', 'ROIs'.
  unused: (shape name, reason) of every shape that is not a nucleus of the label map,
    e.g. ('feature 3', 'Point'), ('annotation 17', 'crowd region').
  repaired: (shape name, what was wrong) of every shape used after a repair, e.g.
    ('feature 12', 'self-intersecting').
  """

  where: str
  total: int = 0
  noun: str = "features"
  unused: list[tuple[str, str]] = dataclasses.field(default_factory=list)
  repaired: list[tuple[str, str]] = dataclasses.field(default_factory=list)

  @property
  def clean(self) -> bool:
    return not self.unused and not self.repaired

  def line(self) -> str:
    """One line: "a.geojson: 2 of 40 features not used (feature 3: Point, feature 7:
    LineString); 1 polygon repaired (feature 12: self-intersecting)"."""
    parts = []
    if self.unused:
      parts.append(f"{len(self.unused)} of {self.total} {self.noun} not used "
                   f"({_listing(self.unused)})")
    if self.repaired:
      n = len(self.repaired)
      parts.append(f"{n} polygon{'s' if n != 1 else ''} repaired ({_listing(self.repaired)})")
    return f"{self.where}: " + ("; ".join(parts) if parts else f"all {self.total} {self.noun} used")

  def emit(self, reports: list[ShapeReport] | None = None) -> ShapeReport:
    """Appends itself to `reports` (when a list) and, unless clean, logs its line once per
    process on `INPUT_LOG`. Returns itself."""
    if reports is not None:
      reports.append(self)
    if not self.clean:
      line = self.line()
      if line not in _emitted:
        _emitted.add(line)
        INPUT_LOG.warning(line)
    return self


def _listing(items: Sequence[tuple[str, str]]) -> str:
  shown = ", ".join(f"{name}: {why}" for name, why in items[:_LISTED])
  rest = len(items) - _LISTED
  return shown + (f", and {rest} more" if rest > 0 else "")
