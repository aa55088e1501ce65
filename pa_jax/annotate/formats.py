"""All annotation formats behind one switch: export an image's nuclei, find and read edits.

`--format label,coco,geojson,roi,csv` (any subset) maps to `export_all`, which writes, for
image `image_id` in `output_dir`:

  label    `{image_id}.png` (16-bit; `.tif` when more than 65,535 nuclei) and
           `{image_id}.nuclei.json` (the state/score/source table)
  coco     one `annotations.json` per folder, through a `CocoCollector` (call `.write()`
           after the last image)
  geojson  `{image_id}.geojson` (QuPath)
  roi      `{image_id}_rois.zip` (ImageJ/Fiji RoiSet)
  csv      `{image_id}.csv` (per-nucleus measurements)

`contours='spline'` makes GeoJSON and ROI exports carry spline control points (fitted
once and shared); label map, COCO and CSV always describe the label map itself.

`read_annotations(path_or_dir, image_id, shape)` picks up a user's edits in whichever
format they were saved (see its docstring).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from pa_jax import fileio
from pa_jax.annotate import contours as C
from pa_jax.annotate.coco_io import COCO_FILENAME, CocoCollector, read_coco_annotations
from pa_jax.annotate.geojson_io import write_geojson
from pa_jax.annotate.geojson_read import read_geojson
from pa_jax.annotate.label_io import read_label_map_annotations, write_label_map
from pa_jax.annotate.measurements import write_measurements_csv
from pa_jax.annotate.nuclei import Nucleus
from pa_jax.annotate.roi_io import read_roi_zip, write_roi_zip
from pa_jax.data.readers import validate_label_map
from pa_jax.errors import InputError

__all__ = ["FORMATS", "parse_formats", "output_paths", "export_all", "find_annotations",
           "read_annotations", "CocoCollector"]

FORMATS = ("label", "coco", "geojson", "roi", "csv")

_LABEL_SUFFIXES = (".png", ".tif", ".tiff")
# Files modified within this many seconds of each other belong to the same export.
SAME_EXPORT_SECONDS = 2.0
_LABEL_STEM_SUFFIXES = ("", "_labels", "_label", "_mask", "_masks", "_instances")


def parse_formats(text: str | Iterable[str], where: str = "--format") -> tuple[str, ...]:
  """'label,geojson' (or a list) → ('label', 'geojson') in FORMATS order; 'all' = FORMATS.

  Unknown or empty → InputError naming `where`.
  """
  items = text.split(",") if isinstance(text, str) else list(text)
  items = [s.strip().lower() for s in items if s and s.strip()]
  if items == ["all"]:
    return FORMATS
  bad = [s for s in items if s not in FORMATS]
  if bad or not items:
    what = f"unknown format {bad[0]!r}" if bad else "no format given"
    raise InputError(where, f"{what}; choose any of {','.join(FORMATS)}")
  return tuple(f for f in FORMATS if f in items)


def output_paths(output_dir: os.PathLike | str, image_id: str) -> dict[str, Path]:
  """Where each format of `image_id` goes in `output_dir` (label: the `.png` name)."""
  d = Path(output_dir)
  return {"label": d / f"{image_id}.png", "coco": d / COCO_FILENAME,
          "geojson": d / f"{image_id}.geojson", "roi": d / f"{image_id}_rois.zip",
          "csv": d / f"{image_id}.csv"}


def export_all(output_dir: os.PathLike | str, image_id: str, labels: np.ndarray,
               nuclei: Mapping[int, Nucleus] | None, formats: Sequence[str],
               contours: str = "polygon", coco: CocoCollector | None = None,
               file_name: str | None = None, image: np.ndarray | None = None,
               pixel_size_um: float | Sequence[float] | None = None) -> list[Path]:
  """Writes `image_id`'s nuclei in every format of `formats`; returns the files written.

  labels: int (H, W) label map; nuclei: its table (labels without an entry are
  'confirmed'); contours: 'polygon' | 'spline' (GeoJSON and ROI only). 'coco' needs a
  `coco` collector (the image is added to it, written by its `.write()`); `file_name` is
  the image's file name recorded in COCO. `image` ([H, W(, C)] pixels) and
  `pixel_size_um` add mean intensities and µm² areas to the GeoJSON measurements and the
  CSV. Every file is written atomically.
  """
  formats = parse_formats(formats)
  C.check_contour_mode(contours)
  labels = validate_label_map(labels, "labels")
  if "coco" in formats and coco is None:
    raise ValueError("format 'coco' needs a CocoCollector (one annotations.json per folder)")
  paths = output_paths(output_dir, image_id)
  written: list[Path] = []
  outlines = None
  if "geojson" in formats or "roi" in formats:
    outlines = C.label_map_contours(labels, contours)
  if "label" in formats:
    written += write_label_map(fileio.label_map_path(paths["label"], labels), labels, nuclei,
                               image_id=image_id)
  if "coco" in formats:
    coco.add(image_id, labels, nuclei, file_name=file_name)
  if "geojson" in formats:
    written.append(write_geojson(paths["geojson"], labels, nuclei, contours=contours,
                                 image_id=image_id, outlines=outlines, image=image,
                                 pixel_size_um=pixel_size_um))
  if "roi" in formats:
    written.append(write_roi_zip(paths["roi"], labels, nuclei, contours=contours,
                                 image_id=image_id, outlines=outlines))
  if "csv" in formats:
    written.append(write_measurements_csv(paths["csv"], labels, nuclei, image_id=image_id,
                                          image=image, pixel_size_um=pixel_size_um))
  return written


def _candidates(folder: Path, image_id: str) -> list[tuple[str, Path]]:
  out: list[tuple[str, Path]] = []
  for stem_suffix in _LABEL_STEM_SUFFIXES:
    for s in _LABEL_SUFFIXES:
      out.append(("label", folder / f"{image_id}{stem_suffix}{s}"))
  out.append(("geojson", folder / f"{image_id}.geojson"))
  for name in (f"{image_id}_rois.zip", f"{image_id}_RoiSet.zip", f"RoiSet_{image_id}.zip",
               f"{image_id}.zip", f"{image_id}.roi"):
    out.append(("roi", folder / name))
  out.append(("coco", folder / COCO_FILENAME))
  return out


def _kind_of(path: Path) -> str:
  s = path.suffix.lower()
  if s in _LABEL_SUFFIXES:
    return "label"
  if s == ".geojson":
    return "geojson"
  if s in (".zip", ".roi"):
    return "roi"
  if s == ".json":  # COCO has 'images'; anything else is taken for GeoJSON
    try:
      with open(path, "rb") as f:
        head = f.read(1 << 20)
    except OSError as e:
      raise InputError(path, f"cannot read ({e.strerror or e})") from None
    return "coco" if b'"images"' in head else "geojson"
  raise InputError(path, "unknown annotation format (expected .png/.tif label map, "
                   ".geojson, ROI .zip/.roi or COCO .json)")


def find_annotations(path_or_dir: os.PathLike | str, image_id: str) -> tuple[str, Path] | None:
  """(format, file) holding `image_id`'s annotations in a folder, or None.

  Looked for in the folder: `{id}.png|.tif|.tiff` (also `{id}_labels.*`, `_label`,
  `_mask`, `_masks`, `_instances`), `{id}.geojson`, `{id}_rois.zip`, `{id}_RoiSet.zip`,
  `RoiSet_{id}.zip`, `{id}.zip`, `{id}.roi`, and `annotations.json` (COCO) when it lists
  the image. When several exist, the most recently modified one wins (the file the user
  edited last); files written within `SAME_EXPORT_SECONDS` of it count as written
  together (one export) and the first in the order above wins, so an untouched export
  reads back its exact label map. A file path is returned as it is (a `.json` is COCO
  when it has "images", else GeoJSON).
  """
  p = Path(path_or_dir)
  if p.is_file():
    return _kind_of(p), p
  if not p.is_dir():
    raise InputError(p, "annotation folder or file not found")
  found = []
  for order, (kind, f) in enumerate(_candidates(p, image_id)):
    if not f.is_file():
      continue
    if kind == "coco":
      from pa_jax.annotate.coco_io import coco_image_ids

      if str(image_id) not in coco_image_ids(f):
        continue
    found.append((f.stat().st_mtime, order, kind, f))
  if not found:
    return None
  newest = max(t for t, *_ in found)
  _, kind, f = min((order, kind, f) for t, order, kind, f in found
                   if t >= newest - SAME_EXPORT_SECONDS)
  return kind, f


def read_annotations(path_or_dir: os.PathLike | str, image_id: str, shape: Sequence[int],
                     default_source: str = "human"
                     ) -> tuple[np.ndarray, dict[int, Nucleus]] | None:
  """Reads `image_id`'s annotations from a file or a folder (`find_annotations`).

  Returns (int32 (H, W) label map, nuclei table keyed by label) or None when the folder
  has nothing for this image. shape: the image's (H, W) (GeoJSON/ROI are rasterised at
  it; a label map or COCO entry of another size is an InputError). Entries without a
  state are 'confirmed', without a source `default_source`.
  """
  hit = find_annotations(path_or_dir, image_id)
  if hit is None:
    return None
  kind, f = hit
  if kind == "label":
    return read_label_map_annotations(f, shape, default_source)
  if kind == "geojson":
    return read_geojson(f, shape, default_source)
  if kind == "roi":
    return read_roi_zip(f, shape, default_source)
  out = read_coco_annotations(f, image_id, shape, default_source)
  if out is None:
    raise InputError(f, f"no image {image_id!r} in this COCO file")
  return out
