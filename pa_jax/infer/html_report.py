"""`report.html`: a static page per prediction run, readable without a server or network.

Everything is inside the one file: figures are inline base64 PNGs (`data:` URIs), the
style is an inline `<style>`, there is no script and no external link, so the page opens
from a file manager, a mail attachment or an air-gapped machine.

* `write_slide_report(path, summary, ...)`: one slide (`slide_figures.SlideSummary`):
  counts, thumbnail overlays by state and by score, density heat map, histograms.
* `PredictReport`: a folder run of `run.py predict`, fed image by image from predict's loop
  (the label map, nuclei and pixels it already holds): one row per image (counts, mean
  area, mean score and, for a model, the nucleus diameter and zoom it was segmented at),
  the histograms over all images and the overlays of the first
  `MAX_THUMBNAILS` images. `write_predict_report(out, records)` builds the same page for an
  output folder written earlier, re-reading it.
"""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from scipy import ndimage

from pa_jax import fileio
from pa_jax.infer import slide_figures as SF

__all__ = ["render_page", "write_slide_report", "PredictReport", "write_predict_report",
           "summary_from_labels", "MAX_THUMBNAILS"]

MAX_THUMBNAILS = 24  # overlays kept for a folder run: the page stays a few MB
_THUMB = 384  # long side of a folder run's per-image thumbnails

_STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:right}th{background:#f3f3f3}td:first-child{text-align:left}
img{max-width:100%;height:auto;border:1px solid #ddd;margin:4px 0}
.grid{display:flex;flex-wrap:wrap;gap:12px}.grid figure{margin:0;max-width:48%}
figcaption{font-size:85%;color:#555}.note{color:#666;font-size:90%}"""


def _img(png: bytes, alt: str) -> str:
  data = base64.b64encode(png).decode("ascii")
  return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _fmt(v: Any) -> str:
  if v is None:
    return "–"
  if isinstance(v, float):
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.3g}"  # 1520 px, not 1.52e+03
  return html.escape(str(v))


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
  head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
  body = "".join("<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in r) + "</tr>" for r in rows)
  return f"<table><tr>{head}</tr>{body}</table>"


def render_page(title: str, sections: Sequence[tuple[str, str]],
                meta: Mapping[str, Any] | None = None) -> str:
  """A complete HTML page: `sections` are (heading, HTML body) pairs; `meta` a key/value
  table at the top (the run, the model, the pixel size...)."""
  parts = [f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
           f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
           f"<h1>{html.escape(title)}</h1>"]
  if meta:
    parts.append(_table(["", ""], meta.items()).replace("<tr><th></th><th></th></tr>", ""))
  for heading, body in sections:
    parts.append(f"<h2>{html.escape(heading)}</h2>{body}")
  parts.append("</body></html>\n")
  return "".join(parts)


def _counts_row(name: str, stats: SF.NucleusStats, unit_area: float = 1.0) -> list[Any]:
  c = stats.counts
  area = stats.mean_area()
  return [name, stats.total, c["proposed"], c["confirmed"], c["rejected"],
          None if area is None else area * unit_area, stats.mean_score()]


def _area_header(pixel_size_um) -> tuple[str, float]:
  ps = SF.check_pixel_size(pixel_size_um)
  return ("mean area (µm²)", ps[0] * ps[1]) if ps is not None else ("mean area (px)", 1.0)


_COUNT_HEADER = ["", "nuclei", "proposed", "confirmed", "rejected"]


def write_slide_report(path: os.PathLike | str, summary: SF.SlideSummary, *,
                       title: str = "pa_jax slide report",
                       meta: Mapping[str, Any] | None = None) -> Path:
  """Writes one slide's report.html (atomically); returns its path."""
  area_h, unit = _area_header(summary.pixel_size_um)
  counts = _table(_COUNT_HEADER + [area_h, "mean score"],
                  [_counts_row("slide", summary.stats, unit)])
  figs = ('<div class=grid>'
          f'<figure>{_img(SF.overlay_png(summary, "state"), "nuclei by state")}'
          '<figcaption>nuclei coloured by review state</figcaption></figure>'
          f'<figure>{_img(SF.overlay_png(summary, "score"), "nuclei by score")}'
          '<figcaption>nuclei coloured by detection score</figcaption></figure>'
          f'<figure>{_img(SF.density_png(summary), "density")}'
          '<figcaption>nucleus density (centroids per cell)</figcaption></figure></div>')
  hists = _img(SF.histograms_png(summary.stats, summary.pixel_size_um), "histograms")
  page = render_page(title, [("Counts", counts), ("Slide", figs), ("Measurements", hists)],
                     meta)
  fileio.write_text(path, page)
  return Path(path)


def summary_from_labels(labels: np.ndarray, nuclei: Mapping[int, Any] | None,
                        image: np.ndarray | None, *, thumb_size: int = _THUMB,
                        pixel_size_um=None) -> SF.SlideSummary:
  """A `SlideSummary` of one in-memory image: its label map [H, W], nuclei table
  ({label: Nucleus}, missing → confirmed) and pixels [H, W(, C)] (None: no thumbnail)."""
  from pa_jax.annotate.measurements import label_mean_intensity
  from pa_jax.annotate.stream_export import NucleusRecord

  labels = np.asarray(labels)
  s = SF.SlideSummary(labels.shape, thumb_size=thumb_size, pixel_size_um=pixel_size_um,
                      intensity_range=_intensity_range(image))
  if image is not None:
    s.add_thumbnail_tile(0, 0, image)
  means = label_mean_intensity(labels, image) if image is not None else {}
  nuclei = nuclei or {}
  ids = np.unique(labels)
  ids = ids[ids > 0]
  # find_objects on the 1..N relabelling: its list is as long as the largest value
  for k, sl in zip(map(int, ids), ndimage.find_objects(np.searchsorted(
      np.concatenate([[0], ids]), labels).astype(np.int32))):
    n = nuclei.get(k)
    s.add(NucleusRecord(k, (sl[0].start, sl[1].start, sl[0].stop, sl[1].stop),
                        labels[sl] == k, None if n is None else n.score,
                        "confirmed" if n is None else n.state, "", means.get(k, ())))
  return s


def _intensity_range(image: np.ndarray | None) -> tuple[float, float]:
  """Histogram range of mean intensities: the dtype's range (8-bit 0-256, 16-bit 0-65536),
  0-1 for float images."""
  if image is None or not np.issubdtype(np.asarray(image).dtype, np.integer):
    return (0.0, 1.0) if image is not None else (0.0, 256.0)
  return (0.0, float(np.iinfo(np.asarray(image).dtype).max) + 1)


class PredictReport:
  """`report.html` of a folder run, built image by image while predict has each image and
  its nuclei in memory (nothing is decoded or rasterised again).

  add(image_id, stats, summary=None, scale=None): one image's `NucleusStats` (and, for its
  overlay, its `SlideSummary`; `scale`: {"diameter_px", "diameter_source", "zoom"} of a
  model's pass, shown as three more columns); write(out, skipped): the page (module
  docstring).
  """

  SCALE_HEADER = ("diameter (px)", "diameter from", "zoom")
  SCALE_KEYS = ("diameter_px", "diameter_source", "zoom")

  def __init__(self):
    self.total: SF.NucleusStats | None = None
    self.rows: list[list[Any]] = []
    self.scales: list[Mapping[str, Any] | None] = []  # one per row
    self.figures: list[str] = []
    self._ranges: set[tuple] = set()

  def add_labels(self, image_id: str, labels: np.ndarray, nuclei: Mapping[int, Any] | None,
                 image: np.ndarray, scale: Mapping[str, Any] | None = None) -> None:
    summary = summary_from_labels(labels, nuclei, image)
    self.add(image_id, summary.stats, summary, scale)

  def add(self, image_id: str, stats: SF.NucleusStats, summary=None,
          scale: Mapping[str, Any] | None = None) -> None:
    edges = tuple(stats.intensity_edges[[0, -1]])
    self._ranges.add(edges)
    if self.total is None:
      self.total = SF.NucleusStats(edges)
    if len(self._ranges) == 1:  # images of one bit depth share the intensity bins
      self.total.merge(stats)
    self.rows.append(_counts_row(image_id, stats))
    self.scales.append(scale)
    if summary is not None and len(self.figures) < MAX_THUMBNAILS:
      self.figures.append(f'<figure>{_img(SF.overlay_png(summary, "state", image_id), image_id)}'
                          f'<figcaption>{html.escape(image_id)}</figcaption></figure>')

  def write(self, out: os.PathLike | str, skipped: Sequence[tuple[str, str]] = (),
            title: str = "pa_jax prediction report", meta: Mapping[str, Any] | None = None
            ) -> Path:
    total = self.total or SF.NucleusStats()
    header = _COUNT_HEADER + ["mean area (px)", "mean score"]
    rows = [_counts_row("all images", total)] + self.rows
    if any(s is not None for s in self.scales):  # a model's run: the size it segmented at
      header += list(self.SCALE_HEADER)
      rows = [rows[0] + [None] * 3] + [
          r + [(s or {}).get(k) for k in self.SCALE_KEYS] for r, s in zip(self.rows, self.scales)]
    sections = [("Counts", _table(header, rows))]
    if total.total:
      sections.append(("Measurements (all images)", _img(SF.histograms_png(total), "histograms")))
    if self.figures:
      more = len(self.rows) - len(self.figures)
      note = f"<p class=note>the first {len(self.figures)} images; {more} more not shown</p>" \
          if more > 0 else ""
      sections.append(("Nuclei by review state",
                       f"<div class=grid>{''.join(self.figures)}</div>" + note))
    if skipped:
      sections.append(("Skipped images", _table(["file", "reason"], skipped)))
    path = Path(out) / "report.html"
    fileio.write_text(path, render_page(title, sections, meta))
    return path


def write_predict_report(out: os.PathLike | str, records: Sequence[Any], *,
                         skipped: Sequence[tuple[str, str]] = (), channel: int | None = None,
                         plane: int | None = None, title: str = "pa_jax prediction report",
                         meta: Mapping[str, Any] | None = None) -> Path:
  """`out/report.html` for an output folder written earlier (predict itself feeds a
  `PredictReport` as it goes): re-reads each image and the nuclei in `out`; a folder with
  only CSV measurements gets counts and scores without overlays.

  records: the run's `readers.Record`s; skipped: (file, reason) of the images it skipped
  (left out here, listed at the end); channel / plane: as passed to predict.
  """
  from pa_jax.annotate import formats as fmt
  from pa_jax.annotate.measurements import read_measurements_csv
  from pa_jax.data import readers

  out = Path(out)
  skipped_files = {str(f) for f, _ in skipped}
  report = PredictReport()
  for rec in records:
    if str(rec.image_path) in skipped_files:
      continue
    image = readers.read_image(rec.image_path, channel=channel, plane=plane)
    found = fmt.read_annotations(out, rec.id, image.shape[:2])
    if found is not None:
      report.add_labels(rec.id, found[0], found[1], image)
      continue
    stats = SF.NucleusStats()  # only measurements were written: states and scores
    csv_path = fmt.output_paths(out, rec.id)["csv"]
    for n in (read_measurements_csv(csv_path) if csv_path.is_file() else {}).values():
      stats.add(n.state, None, n.score)
    report.add(rec.id, stats)
  return report.write(out, skipped, title, meta)
