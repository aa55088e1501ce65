"""COCO instance JSON with the nuclei table: one `annotations.json` per output folder.

Built on `pa_jax.data.coco` (RLE, pixel conventions). Every annotation is one label of an
image's label map, compressed RLE (exact), with extra keys that COCO tools ignore:
`nucleus_id` (the label), `state`, `source` and, when known, `score`. Images get ids
1..N in the order they are added; `file_name` is the image's file name (default
`{image_id}.png`).

`read_coco_annotations` gives one image back as (label map, table): labels are the
`nucleus_id`s when present and unique (so a round trip is exact, label values included),
else fresh ones; state 'confirmed' and the default source when absent. Overlaps: larger
masks painted first, as in `pa_jax.data.coco`; self-intersecting polygons repaired as
there. Annotations not used, and repairs, are reported per file and image (`ShapeReport`).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from pa_jax import fileio
from pa_jax.annotate.nuclei import Nucleus, complete_table, paint_instances, parse_state
from pa_jax.data import coco
from pa_jax.data.readers import validate_label_map
from pa_jax.data.shape_report import ShapeReport
from pa_jax.errors import InputError

__all__ = ["COCO_FILENAME", "CocoCollector", "read_coco_annotations", "coco_image_ids"]

COCO_FILENAME = "annotations.json"


class CocoCollector:
  """Accumulates images, then writes one COCO JSON (atomically).

      coco = CocoCollector(out_dir / "annotations.json")
      for ...: coco.add(image_id, labels, nuclei, file_name=...)
      coco.write()
  """

  def __init__(self, path: os.PathLike | str, category_name: str = "nucleus"):
    self.path = Path(path)
    self.category_name = category_name
    self.images: list[dict[str, Any]] = []
    self.annotations: list[dict[str, Any]] = []

  def add(self, image_id: str, labels: np.ndarray,
          nuclei: Mapping[int, Nucleus] | None = None, file_name: str | None = None) -> int:
    """Adds one image's label map (int (H, W)) and table; returns its COCO image id."""
    labels = validate_label_map(labels, "labels")
    if any(im["pa_jax_id"] == str(image_id) for im in self.images):
      raise ValueError(f"image {image_id!r} added twice")
    table = complete_table(labels, nuclei)
    iid = len(self.images) + 1
    h, w = labels.shape
    self.images.append({"id": iid, "file_name": file_name or f"{image_id}.png",
                        "height": int(h), "width": int(w), "pa_jax_id": str(image_id)})
    anns = coco.label_map_to_coco(labels, iid, len(self.annotations) + 1)
    for ann, k in zip(anns, sorted(table)):  # both in increasing label order
      n = table[k]
      ann["nucleus_id"] = k
      ann["state"] = n.state
      ann["source"] = n.source
      if n.score is not None:
        ann["score"] = n.score
    self.annotations.extend(anns)
    return iid

  def to_dict(self) -> dict[str, Any]:
    return {"images": self.images, "annotations": self.annotations,
            "categories": [{"id": 1, "name": self.category_name, "supercategory": "cell"}]}

  def write(self) -> Path:
    fileio.write_json(self.path, self.to_dict())
    return self.path


def _load(path: Path) -> dict[str, Any]:
  """The parsed file, parsed once per version of it: the annotation loop looks up every
  image of a round in the same COCO file (by id, then its annotations)."""
  st = path.stat() if path.is_file() else None
  return _load_cached(str(path.resolve()), st.st_mtime_ns if st else 0, st.st_size if st else 0)


@functools.lru_cache(maxsize=2)
def _load_cached(path: str, mtime_ns: int, size: int) -> dict[str, Any]:
  del mtime_ns, size  # cache key only: an edited file is read again
  return coco.load_coco_json(path)


def _matches(im: Any, image_id: str) -> bool:
  if not isinstance(im, Mapping):
    return False
  if str(im.get("pa_jax_id", "")) == image_id:
    return True
  fn = im.get("file_name")
  return isinstance(fn, str) and Path(fn).stem == image_id


def coco_image_ids(path: os.PathLike | str) -> list[str]:
  """The image ids (`pa_jax_id`, else file stem) listed in a COCO JSON."""
  path = Path(path)
  out = []
  for im in _load(path)["images"]:
    if isinstance(im, Mapping):
      out.append(str(im.get("pa_jax_id") or Path(str(im.get("file_name", ""))).stem))
  return out


def read_coco_annotations(path: os.PathLike | str, image_id: str,
                          shape: Sequence[int] | None = None, default_source: str = "human",
                          *, reports: list[ShapeReport] | None = None
                          ) -> tuple[np.ndarray, dict[int, Nucleus]] | None:
  """One image of a COCO JSON → (int32 (H, W) label map, table); None if not listed.

  The image is found by `pa_jax_id` or by file-name stem. `shape` (H, W), when given,
  must equal the image's height/width in the JSON. Annotations that give no nucleus
  (crowd regions, empty or degenerate masks, ones hidden under smaller overlapping ones)
  and repaired self-intersecting polygons are listed by annotation id in a `ShapeReport`
  for "FILE, image ID": appended to `reports` when given, and logged as one warning line
  on `shape_report.INPUT_LOG` unless every annotation was used as is.
  """
  path = Path(path)
  data = _load(path)
  image_id = str(image_id)
  im = next((im for im in data["images"] if _matches(im, image_id)), None)
  if im is None:
    return None
  try:
    h, w = int(im["height"]), int(im["width"])
  except (KeyError, TypeError, ValueError):
    raise InputError(path, f"image {image_id!r}: needs integer 'height' and 'width'") from None
  if shape is not None and (h, w) != (int(shape[0]), int(shape[1])):
    raise InputError(path, f"image {image_id!r} is {h}x{w} in the JSON but "
                     f"{int(shape[0])}x{int(shape[1])} (HxW) on disk")
  pixels, wanted, metas, names = [], [], [], []
  report = ShapeReport(f"{path}, image {image_id}", noun="annotations")
  for n, ann in enumerate(data["annotations"]):
    if not isinstance(ann, Mapping) or ann.get("image_id") != im.get("id"):
      continue
    what = f"annotation {ann.get('id', f'#{n}')}"
    report.total += 1
    if ann.get("iscrowd"):
      report.unused.append((what, "crowd region"))
      continue
    if "segmentation" not in ann:
      raise InputError(path, f"annotation {ann.get('id', n)} has no 'segmentation'")
    try:
      # pa_jax.data.coco's rasteriser (RLE or polygons, pixel-centre rule, bounds checks,
      # self-intersecting polygons repaired).
      rr, cc, unused, repaired = coco.segmentation_check(ann["segmentation"], h, w)
    except (ValueError, TypeError) as e:
      raise InputError(path, f"annotation {ann.get('id', n)}: {e}") from None
    if unused:
      report.unused.append((what, unused))
      continue
    if repaired:
      report.repaired.append((what, repaired))
    score = ann.get("score")
    try:
      score = None if score is None else float(score)
    except (TypeError, ValueError):
      score = None
    src = ann.get("source")
    pixels.append((rr, cc))
    wanted.append(ann.get("nucleus_id"))
    metas.append((parse_state(ann.get("state")), score,
                  default_source if src is None else str(src)))
    names.append(what)
  labels, ids = paint_instances(pixels, wanted, (h, w))
  report.unused += [(what, "hidden under smaller overlapping annotations")
                    for what, k in zip(names, ids) if k is None]
  report.emit(reports)
  nuclei = {k: Nucleus(k, *meta) for k, meta in zip(ids, metas) if k is not None}
  return labels, dict(sorted(nuclei.items()))
