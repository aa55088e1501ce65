"""COCO instance-segmentation JSON ↔ instance label maps.

Reading: every annotation of an image is one nucleus (the category is not looked at);
its `segmentation` is either a list of polygons `[[x0, y0, x1, y1, ...], ...]` or an RLE
dict `{"size": [h, w], "counts": ...}` with uncompressed (list of ints) or compressed
(COCO string) counts. Writing: one annotation per label of a label map, compressed RLE.

Conventions (those of the COCO format itself):

* RLE: `pa_jax.data.rle` (column-major runs, COCO's compressed string counts).
* Coordinates are continuous: pixel (row r, column c) covers [c, c+1) x [r, r+1). A
  polygon covers the pixels whose *centre* (c + 0.5, r + 0.5) lies inside it, so the
  square [2,2, 6,2, 6,6, 2,6] is exactly the 4x4 pixels 2..5. `bbox` is
  [x, y, width, height] of the covered pixels ([c0, r0, c1 - c0 + 1, r1 - r0 + 1]).

Decisions:

* Overlapping annotations: painted from the largest to the smallest mask (ties keep the
  file order), so a small nucleus overlapping a big one keeps all its pixels and the big
  one loses the shared ones. A nucleus entirely hidden that way disappears. Labels are
  then renumbered 1..N in annotation order.
* `iscrowd: 1` annotations are skipped: a crowd region is a group of objects, not one
  nucleus, and turning it into a single instance would teach a giant false nucleus.
* Annotations whose mask is empty (degenerate polygon) are skipped; a polygon with fewer
  than three points is ignored; an image without annotations has zero nuclei. Skipped
  annotations (crowd ones included) are counted and named in a per-file report
  (`shape_report.ShapeReport`), never dropped silently.
* A self-intersecting polygon is repaired with shapely `make_valid` and its LARGEST part
  (by area) kept: a bow-tie becomes its larger lobe, one connected nucleus rather than one
  label in two pieces. Repairs are counted in the same report.
* A segmentation may exceed the image by at most one pixel (rounding in other tools); it is
  clipped. Further out, or an RLE of another size, is an error naming the JSON file.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from pa_jax import fileio
from pa_jax.data import rle
from pa_jax.data.rle import rle_decode, rle_encode  # noqa: F401  (part of this module's API)
from pa_jax.data.records import IMAGE_SUFFIXES, Record, relabel_sequential
from pa_jax.data.shape_report import ShapeReport
from pa_jax.errors import InputError

__all__ = [
    "rle_decode",
    "rle_encode",
    "polygons_to_mask",
    "repair_polygon",
    "segmentation_check",
    "annotations_to_label_map",
    "read_coco_dataset",
    "label_map_to_coco",
    "write_coco",
]

# How far (pixels) a polygon may stick out of its image before it is an error.
_POLYGON_TOLERANCE = 1.0

def polygon_pixels(poly: Any, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
  """(rows, cols) of the pixels whose centre is inside the closed polygon.

  `poly`: flat COCO [x0, y0, x1, y1, ...] or (N, 2) (x, y) points in COCO pixel
  coordinates (pixel centres at (c + 0.5, r + 0.5)). Parts outside the height x width
  image are clipped; fewer than 3 points give no pixel. Work is proportional to the
  polygon's bounding box, not to the image. The one rasteriser of the project: COCO
  reading and the GeoJSON/ROI importers (`pa_jax.annotate.contours`) share it.
  """
  from skimage.draw import polygon as draw_polygon

  xy = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
  if len(xy) < 3:
    return np.zeros(0, np.intp), np.zeros(0, np.intp)
  return draw_polygon(xy[:, 1] - 0.5, xy[:, 0] - 0.5, shape=(int(height), int(width)))


def _check_polygon(poly: Any) -> np.ndarray | None:
  """Validated flat polygon as float array, or None when it has fewer than 3 points."""
  if not isinstance(poly, (list, tuple, np.ndarray)):
    raise ValueError(f"a polygon must be a list of numbers, got {type(poly).__name__}")
  try:
    arr = np.asarray(poly, dtype=np.float64)
  except (TypeError, ValueError):
    raise ValueError("a polygon must be a flat list of numbers [x0, y0, x1, y1, ...]") from None
  if arr.ndim != 1:
    raise ValueError("a polygon must be a flat list of numbers [x0, y0, x1, y1, ...]")
  if arr.size % 2:
    raise ValueError(f"a polygon has an odd number of coordinates ({arr.size})")
  if not np.all(np.isfinite(arr)):
    raise ValueError("a polygon has non-finite coordinates")
  if arr.size < 6:
    return None
  return arr


def _checked_polygons(seg: Any, h: int, w: int) -> list[np.ndarray]:
  """The polygons of a polygon segmentation (a list of them or one flat list), validated.

  Polygons with fewer than 3 points are dropped (`segmentation_check` reports them);
  coordinates more than `_POLYGON_TOLERANCE` pixels outside the h x w image raise
  ValueError.
  """
  if not isinstance(seg, (list, tuple)):
    raise ValueError(f"segmentation must be polygons or RLE, got {type(seg).__name__}")
  polys = [seg] if seg and isinstance(seg[0], (int, float)) else seg
  t = _POLYGON_TOLERANCE
  out = []
  for poly in polys:
    arr = _check_polygon(poly)
    if arr is None:
      continue
    xs, ys = arr[0::2], arr[1::2]
    if xs.min() < -t or ys.min() < -t or xs.max() > w + t or ys.max() > h + t:
      raise ValueError(
          f"polygon spans x {xs.min():g}..{xs.max():g}, y {ys.min():g}..{ys.max():g}, "
          f"outside the {w}x{h} (WxH) image")
    out.append(arr)
  return out


def polygons_to_mask(polygons: Sequence[Sequence[float]], h: int, w: int) -> np.ndarray:
  """COCO polygons (each `[x0, y0, x1, y1, ...]`) → bool mask (H, W), union of all.

  A pixel is inside when its centre is (see the module docstring); parts outside the
  image are clipped; polygons with fewer than 3 points are ignored; a self-intersecting
  one is repaired (`repair_polygon`).
  """
  mask = np.zeros((h, w), dtype=bool)
  if len(polygons) and isinstance(polygons[0], (int, float, np.number)):
    polygons = [polygons]  # a single flat polygon
  for poly in polygons:
    arr = _check_polygon(poly)
    if arr is None:
      continue
    rings, _ = repair_polygon(arr)
    if rings:
      rr, cc = rings_pixels(rings, h, w)
      mask[rr, cc] = True
  return mask


# ------------------------------------------------------------ annotations → label map


def repair_polygon(xy: Any) -> tuple[list[np.ndarray], str]:
  """A valid (simple) version of one polygon ring, ready to rasterise.

  xy: (N, 2) float (x, y) vertices, or a flat COCO list; the closing vertex is optional.
  Returns (rings, note): `rings` is [exterior, *holes], each (K, 2) float64, or [] when the
  polygon cannot be a nucleus; `note` is '' for a valid polygon (then rings == [xy],
  untouched, so valid files rasterise exactly as before), what was wrong for a repaired
  one ('self-intersecting'), and why for an unusable one ('fewer than 3 distinct points',
  'zero area').

  Repair: shapely `make_valid`, then the LARGEST polygon part (by area) is kept, so a
  bow-tie becomes its larger lobe. A nucleus is one connected region; the union of the
  parts would be one label in several pieces, the error the repair exists to prevent.
  """
  import shapely
  from shapely.geometry import Polygon

  xy = np.asarray(xy, np.float64).reshape(-1, 2)
  if len(np.unique(xy, axis=0)) < 3:
    return [], "fewer than 3 distinct points"
  poly = Polygon(xy)
  if poly.is_valid:
    return ([xy], "") if poly.area > 0 else ([], "zero area")
  reason = shapely.is_valid_reason(poly).split("[")[0].strip().lower()
  note = "self-intersecting" if "self-intersection" in reason else reason
  fixed = shapely.make_valid(poly)
  parts = [g for g in shapely.get_parts(fixed) if g.geom_type == "Polygon" and g.area > 0]
  parts += [p for g in shapely.get_parts(fixed) if g.geom_type == "MultiPolygon"
            for p in g.geoms if p.area > 0]
  if not parts:
    return [], "zero area"
  big = max(parts, key=lambda g: g.area)
  rings = [np.asarray(big.exterior.coords, np.float64)[:-1]]
  rings += [np.asarray(r.coords, np.float64)[:-1] for r in big.interiors]
  return rings, note


def rings_pixels(rings: Sequence[np.ndarray], h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
  """(rows, cols) of the pixels inside `rings[0]` and outside every hole `rings[1:]`."""
  rr, cc = polygon_pixels(rings[0], h, w)
  if len(rings) == 1:
    return rr, cc
  flat = rr.astype(np.int64) * w + cc
  for hole in rings[1:]:
    hr, hc = polygon_pixels(hole, h, w)
    flat = np.setdiff1d(flat, hr.astype(np.int64) * w + hc)
  return flat // w, flat % w


def segmentation_pixels(seg: Any, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
  """(rows, cols) of the pixels of one segmentation, computed in its bounding region only.

  Self-intersecting polygons are repaired (`repair_polygon`). Raises ValueError when the
  segmentation is malformed or outside the h x w image.
  """
  rr, cc, _, _ = segmentation_check(seg, h, w)
  return rr, cc


def segmentation_check(seg: Any, h: int, w: int
                       ) -> tuple[np.ndarray, np.ndarray, str, str]:
  """One segmentation → (rows, cols, unused, repaired).

  unused: why it gives no nucleus ('' when it does): 'empty mask', 'no polygon',
    'fewer than 3 distinct points', 'zero area', 'covers no pixel centre'.
  repaired: what was repaired in its polygons ('' when nothing), e.g. 'self-intersecting'.
  Raises ValueError when the segmentation is malformed or outside the h x w image.
  """
  if isinstance(seg, Mapping):
    rh, rw, counts = rle.rle_size_counts(seg)
    if (rh, rw) != (h, w):
      raise ValueError(f"RLE size {rh}x{rw} differs from the image size {h}x{w} (HxW)")
    pos = rle.counts_to_positions(counts)
    return pos % h, pos // h, "" if pos.size else "empty mask", ""
  rows, cols, unused, repaired = [], [], [], []
  for arr in _checked_polygons(seg, h, w):
    rings, note = repair_polygon(arr)
    if not rings:
      unused.append(note)
      continue
    if note:
      repaired.append(note)
    rr, cc = rings_pixels(rings, h, w)
    rows.append(rr)
    cols.append(cc)
  repaired_note = ", ".join(dict.fromkeys(repaired))
  if not rows:
    why = unused[0] if unused else "fewer than 3 distinct points" if seg else "no polygon"
    return np.zeros(0, np.int64), np.zeros(0, np.int64), why, ""
  if len(rows) == 1:
    rr, cc = rows[0], cols[0]
  else:
    flat = np.unique(np.concatenate(rows).astype(np.int64) * w + np.concatenate(cols))
    rr, cc = flat // w, flat % w
  return rr, cc, "" if rr.size else "covers no pixel centre", repaired_note


def _is_crowd(ann: Mapping[str, Any]) -> bool:
  return bool(ann.get("iscrowd", 0))


def annotations_to_label_map(anns: Sequence[Mapping[str, Any]], h: int, w: int) -> np.ndarray:
  """COCO annotations of one image → int32 (H, W) instance label map (0 = background).

  Each non-crowd annotation is one nucleus. Overlaps: larger masks are painted first so
  smaller nuclei keep their pixels. Labels are 1..N in annotation order (annotations
  with an empty or fully hidden mask get no label). Raises ValueError for a malformed
  segmentation or one outside the image.
  """
  return _paint_annotations(anns, h, w)[0]


def _paint_annotations(anns: Sequence[Mapping[str, Any]], h: int, w: int
                       ) -> tuple[np.ndarray, list[Any]]:
  """`annotations_to_label_map` and the ids of the annotations entirely hidden by others."""
  pixels, ids = [], []
  for ann in anns:
    if _is_crowd(ann):
      continue
    if "segmentation" not in ann:
      raise ValueError("annotation has no 'segmentation'")
    rr, cc = segmentation_pixels(ann["segmentation"], h, w)
    if rr.size:
      pixels.append((rr, cc))
      ids.append(ann.get("id"))
  labels = np.zeros((h, w), dtype=np.int32)
  order = sorted(range(len(pixels)), key=lambda i: -pixels[i][0].size)  # stable
  for i in order:
    rr, cc = pixels[i]
    labels[rr, cc] = i + 1
  present = np.zeros(len(pixels) + 1, bool)
  present[np.unique(labels)] = True
  hidden = [ids[i] for i in range(len(pixels)) if not present[i + 1]]
  return relabel_sequential(labels), hidden


# ------------------------------------------------------------------------- reading


def load_coco_json(json_path: os.PathLike | str) -> dict[str, Any]:
  """A COCO instance JSON as a dict, checked to hold 'images' and 'annotations' lists;
  one-line InputError naming the file otherwise."""
  json_path = Path(json_path)
  data = fileio.read_json(json_path, missing_ok=False, expected="COCO JSON")
  if not isinstance(data, dict):
    raise InputError(json_path, "COCO JSON must be an object with 'images' and 'annotations'")
  for key in ("images", "annotations"):
    if key not in data:
      raise InputError(json_path, f"missing key {key!r} (COCO instance JSON needs 'images' "
                       "and 'annotations')")
    if not isinstance(data[key], list):
      raise InputError(json_path, f"{key!r} must be a list")
  return data


def _is_int(v: Any) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _resolve_image(json_dir: Path, images_dir: Path | None, file_name: str) -> Path | None:
  rel = Path(file_name)
  if images_dir is not None:
    cands = [images_dir / rel, images_dir / rel.name]
  else:
    cands = [json_dir / rel, json_dir / "images" / rel, json_dir / "images" / rel.name]
  if rel.is_absolute():
    cands.insert(0, rel)
  for c in cands:
    if c.is_file():
      return c
  return None


def _coco_label_map(segmentations: tuple[tuple[Any, Any], ...], h: int, w: int,
                    json_path: str, image: str = "") -> np.ndarray:
  """Picklable loader behind `Record.load_labels` (no closure: works across processes).
  Annotations hidden entirely under smaller ones are only known once painted: reported
  here, for "json_path, image FILE"."""
  anns = [{"id": i, "segmentation": s} for i, s in segmentations]
  try:
    labels, hidden = _paint_annotations(anns, h, w)
  except ValueError as e:
    raise InputError(json_path, f"cannot rasterise an annotation: {e}") from None
  if hidden:
    ShapeReport(f"{json_path}, image {image}", total=len(anns), noun="annotations",
                unused=[(f"annotation {i}", "hidden under smaller overlapping annotations")
                        for i in hidden]).emit()
  return labels


def read_coco_dataset(json_path: os.PathLike | str,
                      images_dir: os.PathLike | str | None = None, *,
                      reports: list[ShapeReport] | None = None) -> list[Record]:
  """Lists a COCO instance JSON as Records whose `load_labels` rasterises the annotations.

  Image files are looked up at `images_dir / file_name` (then `images_dir / basename`) when
  `images_dir` is given; otherwise at `file_name` relative to the JSON's folder, then in
  `json_dir/images/`. `Record.label_path` is the JSON file (the annotation source, so shape
  errors at load time name it); `Record.id` is the file stem (prefixed with the image id
  when two stems collide). Optional per-image keys `split`, `group`, `modality` are kept.

  Raises InputError naming the JSON for invalid JSON, missing keys, duplicate image ids, an
  annotation for an unknown image id, a malformed segmentation or one outside its image,
  and a missing image file. An image without annotations has zero nuclei.
  A height/width in the JSON that differs from the image file is reported when the example
  is loaded (`readers.load_example`).

  Annotations that give no nucleus (crowd regions, empty masks, polygons with fewer than 3
  distinct points, zero area or covering no pixel centre) and self-intersecting polygons
  that were repaired (`repair_polygon`: largest part kept) are listed, by annotation id, in
  one `ShapeReport` for the file: appended to `reports` when given, and logged as one
  warning line on `shape_report.INPUT_LOG` unless every annotation was used as is.
  """
  json_path = Path(json_path)
  if not json_path.is_file():
    raise InputError(json_path, "file not found")
  data = load_coco_json(json_path)
  where = str(json_path)
  idir = Path(images_dir) if images_dir is not None else None
  if idir is not None and not idir.is_dir():
    raise InputError(idir, "image folder not found")

  images: dict[Any, dict[str, Any]] = {}
  for n, im in enumerate(data["images"]):
    if not isinstance(im, dict):
      raise InputError(json_path, f"images[{n}] is not an object")
    for key in ("id", "file_name", "height", "width"):
      if key not in im:
        raise InputError(json_path, f"images[{n}] is missing key {key!r}")
    if not _is_int(im["height"]) or not _is_int(im["width"]) or im["height"] <= 0 \
        or im["width"] <= 0:
      raise InputError(json_path, f"image id {im['id']}: height/width must be positive "
                       f"integers, got {im['height']!r}x{im['width']!r}")
    if not isinstance(im["file_name"], str) or not im["file_name"]:
      raise InputError(json_path, f"image id {im['id']}: 'file_name' must be a non-empty string")
    try:
      hash(im["id"])
    except TypeError:
      raise InputError(json_path, f"images[{n}]: 'id' must be a number or string") from None
    if im["id"] in images:
      raise InputError(json_path, f"image id {im['id']} appears twice")
    images[im["id"]] = im
  if not images:
    raise InputError(json_path, "no images listed")

  per_image: dict[Any, list[tuple[Any, Any]]] = {k: [] for k in images}
  report = ShapeReport(where, noun="annotations")
  for n, ann in enumerate(data["annotations"]):
    if not isinstance(ann, dict):
      raise InputError(json_path, f"annotations[{n}] is not an object")
    aid = ann.get("id", f"#{n}")
    for key in ("image_id", "segmentation"):
      if key not in ann:
        raise InputError(json_path, f"annotation {aid} is missing key {key!r}")
    try:
      im = images.get(ann["image_id"])
    except TypeError:
      im = None
    if im is None:
      raise InputError(json_path, f"annotation {aid} refers to unknown image id "
                       f"{ann['image_id']!r}")
    report.total += 1
    if _is_crowd(ann):
      report.unused.append((f"annotation {aid}", "crowd region"))
      continue
    seg = ann["segmentation"]
    try:
      rr, _, unused, repaired = segmentation_check(seg, im["height"], im["width"])
    except ValueError as e:
      raise InputError(json_path, f"annotation {aid} (image id {im['id']}): {e}") from None
    if unused:
      report.unused.append((f"annotation {aid}", unused))
      continue
    if repaired:
      report.repaired.append((f"annotation {aid}", repaired))
    per_image[im["id"]].append((aid, seg))

  stems = [Path(im["file_name"]).stem for im in images.values()]
  records = []
  for (iid, im), stem in zip(images.items(), stems):
    path = _resolve_image(json_path.parent, idir, im["file_name"])
    if path is None:
      looked = idir if idir is not None else json_path.parent
      raise InputError(json_path, f"image {im['file_name']!r} (id {iid}) not found under {looked}")
    if path.suffix.lower() not in IMAGE_SUFFIXES:
      raise InputError(json_path, f"image {im['file_name']!r} (id {iid}) is not a "
                       f"{'/'.join(IMAGE_SUFFIXES)} file")
    rid = stem if stems.count(stem) == 1 else f"{iid}_{stem}"
    loader = functools.partial(_coco_label_map, tuple(per_image[iid]), im["height"],
                               im["width"], where, im["file_name"])
    records.append(Record(id=rid, image_path=path, label_path=json_path,
                          split=str(im.get("split") or "train"), group=str(im.get("group") or ""),
                          modality=str(im.get("modality") or ""), load_labels=loader))
  report.emit(reports)
  return records


# ------------------------------------------------------------------------- writing


def _score_lookup(scores: Any, ids: np.ndarray) -> list[float] | None:
  if scores is None:
    return None
  if isinstance(scores, Mapping):
    missing = [int(k) for k in ids if int(k) not in scores]
    if missing:
      raise ValueError(f"no score for label(s) {missing[:5]}")
    return [float(scores[int(k)]) for k in ids]
  arr = np.asarray(scores, dtype=np.float64).reshape(-1)
  top = int(ids.max()) if ids.size else 0
  if arr.size < top:
    raise ValueError(f"scores has {arr.size} entries but the label map has label {top} "
                     "(scores[k - 1] is the score of label k)")
  return [float(arr[int(k) - 1]) for k in ids]


def label_map_to_coco(labels: np.ndarray, image_id: int, start_ann_id: int,
                      scores: Mapping[int, float] | Sequence[float] | np.ndarray | None = None,
                      category_id: int = 1) -> list[dict[str, Any]]:
  """Instance label map → COCO annotations, one per label in increasing label order.

  Each annotation: `id` (start_ann_id, start_ann_id + 1, ...), `image_id`, `category_id`,
  `segmentation` (compressed RLE of the full image), `area` (pixels), `bbox`
  [x, y, w, h] of the pixels, `iscrowd` 0, and `score` when `scores` is given — a mapping
  label → score, or a sequence where `scores[k - 1]` is the score of label k.
  Work is proportional to the nuclei's bounding boxes, not N x image size.
  """
  from scipy import ndimage

  labels = np.asarray(labels)
  if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"labels must be a 2-D integer array, got {labels.dtype} {labels.shape}")
  if labels.size and labels.min() < 0:
    raise ValueError("labels must be non-negative")
  h, w = labels.shape
  ids = np.unique(labels)
  ids = ids[ids != 0]
  score_list = _score_lookup(scores, ids)
  if not ids.size:
    return []
  seq = relabel_sequential(labels)  # label ids[n] → n + 1 (sparse/huge ids stay cheap)
  objects = ndimage.find_objects(seq)
  anns = []
  for n, k in enumerate(ids):
    sl = objects[n]
    r0, c0 = sl[0].start, sl[1].start
    crop = seq[sl] == n + 1
    # column-major positions: transpose so that nonzero() walks columns then rows
    cc, rr = np.nonzero(crop.T)
    pos = (cc.astype(np.int64) + c0) * h + (rr + r0)
    counts = rle.positions_to_counts(pos, h * w)
    ann = {
        "id": int(start_ann_id) + n,
        "image_id": int(image_id) if _is_int_like(image_id) else image_id,
        "category_id": int(category_id),
        "segmentation": {"size": [int(h), int(w)], "counts": rle.counts_to_string(counts)},
        "area": int(pos.size),
        "bbox": [int(c0), int(r0), int(sl[1].stop - c0), int(sl[0].stop - r0)],
        "iscrowd": 0,
    }
    if score_list is not None:
      ann["score"] = score_list[n]
    anns.append(ann)
  return anns


def _is_int_like(v: Any) -> bool:
  return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def write_coco(path: os.PathLike | str,
               images: Sequence[tuple[Any, str, int, int, np.ndarray, Any]],
               category_name: str = "nucleus") -> dict[str, Any]:
  """Writes a COCO instance JSON (atomically) from label maps; returns the written dict.

  `images`: tuples `(image_id, file_name, height, width, labels, scores_or_None)`, where
  `labels` is an (height, width) label map and scores as in `label_map_to_coco`.
  Annotation ids run 1..M over the whole file; one category (id 1, `category_name`).
  """
  out_images, out_anns = [], []
  next_id = 1
  for entry in images:
    if len(entry) != 6:
      raise ValueError("each image is (id, file_name, height, width, labels, scores)")
    iid, file_name, h, w, labels, scores = entry
    labels = np.asarray(labels)
    if labels.shape != (int(h), int(w)):
      raise ValueError(f"image {iid}: labels are {labels.shape} but height x width is {h}x{w}")
    out_images.append({"id": int(iid) if _is_int_like(iid) else iid,
                       "file_name": str(file_name), "height": int(h), "width": int(w)})
    anns = label_map_to_coco(labels, iid, next_id, scores)
    next_id += len(anns)
    out_anns.extend(anns)
  data = {
      "images": out_images,
      "annotations": out_anns,
      "categories": [{"id": 1, "name": category_name, "supercategory": "cell"}],
  }
  fileio.write_json(path, data)
  return data
