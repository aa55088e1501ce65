"""Reading images, instance label maps and dataset folders, with one-line errors.

Three on-disk layouts are understood (see README "Data"):

* **dataset folder** — `images/`, `labels/` and `index.csv` with columns
  `id, split, group, modality, height, width, channels, nuclei` (the layout of
  `../shared/datasets/*` and of what `run.py partial` writes);
* **plain folder** — any folder of images (PNG, TIFF, JPEG; 8/16-bit, float, wider
  integers; gray/RGB/RGBA; one plane or channel of a TIFF stack, see `read_image`),
  optionally with a `labels/` sub-folder or a separate label folder whose files share the
  image's stem (`a.png` ↔ `labels/a.png`, `a.tif`, `a_labels.png`, `a_mask.tif`);
* **COCO instance JSON** (`pa_jax.data.coco`), polygons or RLE, rasterised to label maps.

Conventions (DESIGN.md): images come back as uint8/uint16 `(H, W)` or `(H, W, 3)` arrays
(alpha dropped); label maps as int32 `(H, W)`, 0 = background, every other value one
nucleus. Nothing here touches JAX: readers run on the host, inside input pipelines.

A person's input is never reinterpreted silently: TIFF stacks and multi-channel images
are recognised from their metadata and refused unless a plane / channel is picked
(`pa_jax.data.images.read_image`); annotation shapes that are not used, or were repaired,
are reported per file (`pa_jax.data.shape_report.ShapeReport`, one warning line each).
"""

from __future__ import annotations

import csv
import dataclasses
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from pa_jax.data import coco
# read_image is part of this module's API (readers.read_image); decoding lives in images.py.
from pa_jax.data.images import read_array, read_image  # noqa: F401
# Record, IMAGE_SUFFIXES and relabel_sequential are part of this module's API too.
from pa_jax.data.records import IMAGE_SUFFIXES, Record, relabel_sequential  # noqa: F401
from pa_jax.errors import InputError

# Stem endings that mark a label map next to its image ("_cp_masks": Cellpose output).
LABEL_STEM_SUFFIXES = ("_labels", "_label", "_mask", "_masks", "_instances", "_cp_masks")
INDEX_COLUMNS = ("id", "split", "group", "modality", "height", "width", "channels", "nuclei")


@dataclasses.dataclass
class Example:
  """A loaded image with its (optional) instance label map.

  image: uint8/uint16 (H, W) or (H, W, 3).
  labels: int32 (H, W) instance label map (0 = background) or None.
  """

  id: str
  image: np.ndarray
  labels: np.ndarray | None
  record: Record



# ------------------------------------------------------------------------ label maps


def validate_label_map(labels: np.ndarray, where: os.PathLike | str,
                       image_shape: Sequence[int] | None = None) -> np.ndarray:
  """Checks an instance label map and returns it as int32 (H, W).

  Raises InputError for: colour (RGB) label maps, float values, negative labels, more
  than 2**31-1 labels, and a height/width that differs from `image_shape`.
  An all-zero map (an image with no nucleus) is valid.
  """
  labels = np.asarray(labels)
  if labels.ndim == 3 and labels.shape[-1] in (3, 4):
    ch = labels[..., :3]
    if np.all(ch == ch[..., :1]):
      labels = ch[..., 0]  # a gray map saved as RGB
    else:
      raise InputError(where, "label map is a colour image; expected one integer per pixel")
  if labels.ndim != 2:
    raise InputError(where, f"label map must be 2-D, got shape {labels.shape}")
  if np.issubdtype(labels.dtype, np.floating):
    raise InputError(where, f"label map has float values ({labels.dtype}); labels must be "
                     "integers (0 = background, 1..N = nuclei)")
  if labels.dtype == np.bool_:
    labels = labels.astype(np.int32)
  if not np.issubdtype(labels.dtype, np.integer):
    raise InputError(where, f"label map has unsupported type {labels.dtype}")
  if labels.size and labels.min() < 0:
    raise InputError(where, f"label map has negative labels (min {labels.min()})")
  if labels.size and int(labels.max()) > np.iinfo(np.int32).max:
    raise InputError(where, "label map has labels above 2**31-1")
  if image_shape is not None and tuple(labels.shape) != tuple(image_shape[:2]):
    raise InputError(where, f"label map is {labels.shape[0]}x{labels.shape[1]} but its "
                     f"image is {image_shape[0]}x{image_shape[1]} (HxW)")
  return labels.astype(np.int32, copy=False)


def read_label_map(path: os.PathLike | str,
                   image_shape: Sequence[int] | None = None) -> np.ndarray:
  """Reads and validates an instance label map file → int32 (H, W)."""
  path = Path(path)
  return validate_label_map(read_array(path, palette_indices=True), path, image_shape)


# ------------------------------------------------------------------------- datasets


def read_index(index_csv: os.PathLike | str) -> list[dict[str, str]]:
  """Reads `index.csv`; requires an `id` column, the others are optional."""
  index_csv = Path(index_csv)
  try:
    with open(index_csv, newline="") as f:
      rows = list(csv.DictReader(f))
  except OSError as e:
    raise InputError(index_csv, f"cannot read ({e.strerror or e})") from None
  except (csv.Error, UnicodeDecodeError) as e:
    raise InputError(index_csv, f"not a valid CSV ({e})") from None
  if not rows:
    raise InputError(index_csv, "index has no rows")
  if "id" not in rows[0]:
    raise InputError(index_csv, f"missing column 'id' (columns: {', '.join(rows[0])})")
  ids = [r["id"] for r in rows]
  if len(set(ids)) != len(ids):
    dup = next(i for i in ids if ids.count(i) > 1)
    raise InputError(index_csv, f"id {dup!r} appears twice")
  return rows


def find_file(folder: Path, stem: str, suffixes: Iterable[str] = IMAGE_SUFFIXES) -> Path | None:
  """`folder/stem<suffix>` for the first image suffix (either case) that exists, else None."""
  for s in suffixes:
    for cand in (folder / f"{stem}{s}", folder / f"{stem}{s.upper()}"):
      if cand.is_file():
        return cand
  return None


def read_dataset_folder(root: os.PathLike | str, split: str | None = None,
                        group: str | None = None) -> list[Record]:
  """Lists a dataset folder (`images/`, `labels/`, `index.csv`), optionally filtered.

  `split` / `group` keep only rows whose column equals the value (comma-separated values
  allowed, e.g. `group="dh360"`). A row whose image is missing is an error; a missing
  label file too (a dataset folder is annotated by definition: an image with no nuclei
  has an all-zero map).
  """
  root = Path(root)
  if not root.is_dir():
    raise InputError(root, "dataset folder not found")
  index = root / "index.csv"
  if not index.is_file():
    raise InputError(root, "no index.csv (a dataset folder has images/, labels/, index.csv)")
  rows = read_index(index)
  keep_split = set(split.split(",")) if split else None
  keep_group = set(group.split(",")) if group else None
  records = []
  for r in rows:
    if keep_split and (r.get("split") or "train") not in keep_split:
      continue
    if keep_group and (r.get("group") or "") not in keep_group:
      continue
    img = find_file(root / "images", r["id"])
    if img is None:
      raise InputError(root / "images" / f"{r['id']}.png", "image listed in index.csv is missing")
    lab = find_file(root / "labels", r["id"])
    if lab is None:
      raise InputError(root / "labels" / f"{r['id']}.png", "label map listed in index.csv is missing")
    records.append(Record(id=r["id"], image_path=img, label_path=lab,
                          split=r.get("split") or "train", group=r.get("group") or "",
                          modality=r.get("modality") or ""))
  if not records:
    what = ", ".join(f"{k}={v}" for k, v in (("split", split), ("group", group)) if v)
    raise InputError(index, f"no images{' with ' + what if what else ''}")
  return records


def _is_label_stem(stem: str) -> bool:
  return any(stem.lower().endswith(s) for s in LABEL_STEM_SUFFIXES)


def list_images(folder: os.PathLike | str) -> list[Path]:
  """Image files directly in `folder`, sorted, skipping hidden files and label maps."""
  folder = Path(folder)
  if not folder.is_dir():
    raise InputError(folder, "folder not found")
  files = sorted(p for p in folder.iterdir()
                 if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                 and not p.name.startswith(".") and not _is_label_stem(p.stem))
  return files


def read_image_folder(images: os.PathLike | str, labels: os.PathLike | str | None = None,
                      require_labels: bool = False) -> list[Record]:
  """Lists a plain folder of images (or one image file), pairing label maps by stem.

  Label maps are looked up, in order, in `labels` (if given), in `images/labels/`, and
  beside the image as `{stem}_labels.*` / `_label` / `_mask` / `_masks` / `_instances`.
  With `require_labels`, an image without a label map is an error naming it.
  """
  images = Path(images)
  if images.is_file():
    files, base = [images], images.parent
  else:
    files, base = list_images(images), images
    if not files:
      raise InputError(images, f"no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
  label_dirs = [Path(labels)] if labels is not None else []
  if labels is not None and not Path(labels).is_dir():
    raise InputError(labels, "label folder not found")
  label_dirs.append(base / "labels")
  records = []
  for f in files:
    lab = None
    for d in label_dirs:
      if d.is_dir():
        lab = find_file(d, f.stem)
        if lab is not None:
          break
    if lab is None:
      for s in LABEL_STEM_SUFFIXES:
        lab = find_file(base, f.stem + s)
        if lab is not None:
          break
    if lab is None and require_labels:
      raise InputError(f, "no label map found for this image")
    records.append(Record(id=f.stem, image_path=f, label_path=lab))
  ids = [r.id for r in records]
  if len(set(ids)) != len(ids):
    dup = next(i for i in ids if ids.count(i) > 1)
    raise InputError(images, f"two images share the stem {dup!r}")
  return records


def open_dataset(path: os.PathLike | str, split: str | None = None, group: str | None = None,
                 labels: os.PathLike | str | None = None,
                 require_labels: bool = False) -> list[Record]:
  """Lists any supported source: dataset folder, COCO JSON, plain folder or one image."""
  path = Path(path)
  if path.is_dir() and (path / "index.csv").is_file():
    return read_dataset_folder(path, split=split, group=group)
  if path.suffix.lower() == ".json":
    return coco.read_coco_dataset(path)
  if not path.exists():
    raise InputError(path, "not found")
  if path.is_dir() and (path / "images").is_dir():
    if labels is None and (path / "labels").is_dir():
      labels = path / "labels"
    return read_image_folder(path / "images", labels,
                             require_labels=require_labels)
  return read_image_folder(path, labels, require_labels=require_labels)


def load_example(record: Record, *, channel: int | None = None,
                 plane: int | None = None) -> Example:
  """Reads the image and (if any) its label map, checking that their shapes agree.
  `channel` / `plane`: as in `read_image` (one channel / plane of a multi-channel image
  or a stack)."""
  image = read_image(record.image_path, channel=channel, plane=plane)
  labels = None
  if record.load_labels is not None:
    labels = validate_label_map(record.load_labels(), record.label_path or record.image_path,
                                image.shape)
  elif record.label_path is not None:
    labels = read_label_map(record.label_path, image.shape)
  return Example(id=record.id, image=image, labels=labels, record=record)


def count_instances(labels: np.ndarray) -> int:
  """Number of distinct non-zero labels."""
  u = np.unique(np.asarray(labels))
  return int(np.count_nonzero(u))
