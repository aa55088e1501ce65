"""Partial views of a fully annotated dataset (the paper's DH25 and DH25crop).

* `keep_instances(labels, f, rng)` — DH25-style: keep a random fraction `f` of the nuclei
  of one image, erase the others to 0. The erased nuclei become *unannotated*, not
  background: the training code must never treat them as negatives (that is the point of
  the partial-annotation module).
* `crop_view(image, labels, f, rng)` — DH25crop-style: one random crop of area fraction `f`
  (for f = 0.25: half the width × half the height) in which every nucleus stays annotated.

Determinism: the random generator of an image depends only on `(seed, image id)` through
a SHA-256 digest, never on the order in which images are visited or on Python's salted
`hash`, so a view is reproducible from `(dataset, seed)` on any machine and any number of
workers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

import numpy as np

from pa_jax import fileio
from pa_jax.data import readers


def image_rng(seed: int, image_id: str, view: str) -> np.random.Generator:
  """A generator seeded by (seed, image id, view name) alone."""
  digest = hashlib.sha256(f"{view}:{int(seed)}:{image_id}".encode()).digest()
  return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def num_kept(n: int, fraction: float) -> int:
  """round(f·n) with halves rounded up, and at least 1 when n > 0 (DESIGN.md)."""
  if n <= 0:
    return 0
  return int(min(n, max(1, np.floor(fraction * n + 0.5))))


def keep_instances(labels: np.ndarray, fraction: float,
                   rng: np.random.Generator) -> np.ndarray:
  """Keeps `num_kept(n, fraction)` random instances of a label map; the rest become 0.

  Args:
    labels: int (H, W) instance label map, 0 = background.
    fraction: in (0, 1].
    rng: numpy generator (use `image_rng`).
  Returns:
    Label map of the same dtype and shape; kept instances are bit-identical to the input.
  """
  if not 0.0 < fraction <= 1.0:
    raise ValueError(f"keep fraction must be in (0, 1], got {fraction}")
  ids = np.unique(labels)
  ids = ids[ids != 0]
  k = num_kept(len(ids), fraction)
  kept = np.sort(rng.permutation(ids)[:k]) if k else ids[:0]
  return np.where(np.isin(labels, kept), labels, np.zeros_like(labels))


def crop_window(height: int, width: int, fraction: float,
                rng: np.random.Generator) -> tuple[int, int, int, int]:
  """A random crop window `(y0, x0, h, w)` of area ≈ fraction·H·W with the image's aspect."""
  if not 0.0 < fraction <= 1.0:
    raise ValueError(f"crop fraction must be in (0, 1], got {fraction}")
  side = float(np.sqrt(fraction))
  h = max(1, int(round(height * side)))
  w = max(1, int(round(width * side)))
  y0 = int(rng.integers(0, height - h + 1))
  x0 = int(rng.integers(0, width - w + 1))
  return y0, x0, h, w


def crop_view(image: np.ndarray, labels: np.ndarray, fraction: float,
              rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int, int]]:
  """Crops image and label map to one random window of area `fraction`.

  Every nucleus inside the window stays annotated (nuclei cut by the border keep the part
  inside). Returns (image_crop, labels_crop, (y0, x0, h, w)).
  """
  y0, x0, h, w = crop_window(labels.shape[0], labels.shape[1], fraction, rng)
  return image[y0:y0 + h, x0:x0 + w], labels[y0:y0 + h, x0:x0 + w], (y0, x0, h, w)


@dataclasses.dataclass(frozen=True)
class ViewSpec:
  """Which partial view: kind 'full' | 'keep' | 'crop', its fraction and seed."""

  kind: str = "full"
  fraction: float = 1.0
  seed: int = 0

  def __post_init__(self):
    if self.kind not in ("full", "keep", "crop"):
      raise ValueError(f"unknown partial view {self.kind!r} (full, keep, crop)")
    if not 0.0 < self.fraction <= 1.0:
      raise ValueError(f"partial view fraction must be in (0, 1], got {self.fraction}")

  @property
  def name(self) -> str:
    if self.kind == "full":
      return "full"
    return f"{self.kind}{int(round(self.fraction * 100))}_seed{self.seed}"


def apply_view(image: np.ndarray, labels: np.ndarray, image_id: str,
               spec: ViewSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Applies a view to one image.

  Returns (image_view, partial_labels, full_labels_in_view): for `keep` the image is
  unchanged and `full_labels_in_view` is the original map; for `crop` all three are cropped.
  """
  if spec.kind == "full":
    return image, labels, labels
  rng = image_rng(spec.seed, image_id, spec.kind)
  if spec.kind == "keep":
    return image, keep_instances(labels, spec.fraction, rng), labels
  img, lab, _ = crop_view(image, labels, spec.fraction, rng)
  return img, lab, lab


def write_partial_dataset(source: os.PathLike | str, output: os.PathLike | str,
                          spec: ViewSpec, split: str | None = "train",
                          group: str | None = None, progress: bool = True,
                          overwrite: bool = False) -> dict:
  """Writes a partial view of a dataset folder as a new dataset folder.

  Only the rows selected by `split`/`group` are transformed; the output has `images/`,
  `labels/`, `index.csv` (heights/widths/nuclei updated), `partial.json` (the view and the
  counts) and `summary.csv` (per-image nuclei before/after). Images are copied byte for
  byte when the view does not change them. The output follows pa_jax.outputs: not the
  source or inside it, empty or absent unless `overwrite` (then replaced as a whole), and
  written into a temporary folder that becomes `output` only when every image is done.

  Returns the summary dict {view, seed, fraction, images, nuclei_before, nuclei_after}.
  """
  from pa_jax import outputs

  source = Path(source)
  outputs.check_output(output, [source], overwrite=overwrite)
  records = readers.read_dataset_folder(source, split=split, group=group)
  with outputs.staged_output(output, [source], overwrite=overwrite) as tmp:
    summary = _write_view(source, tmp, records, spec, split, group, progress)
  return summary


def _write_view(source: Path, output: Path, records: list, spec: ViewSpec,
                split: str | None, group: str | None, progress: bool) -> dict:
  """Writes the view of `records` into the (staged, empty) folder `output`."""
  index_rows = {r["id"]: r for r in readers.read_index(source / "index.csv")}
  rows, per_image = [], []
  before = after = 0
  iterator = records
  if progress:
    from tqdm import tqdm

    iterator = tqdm(records, desc=f"partial {spec.name}", unit="img")
  for rec in iterator:
    ex = readers.load_example(rec)
    img, lab, _ = apply_view(ex.image, ex.labels, rec.id, spec)
    n0, n1 = readers.count_instances(ex.labels), readers.count_instances(lab)
    before, after = before + n0, after + n1
    if spec.kind == "crop":
      fileio.write_png(output / "images" / f"{rec.id}.png", img)
    else:
      fileio.write_bytes(output / "images" / f"{rec.id}{rec.image_path.suffix.lower()}",
                         rec.image_path.read_bytes())
    fileio.write_label_map(output / "labels" / f"{rec.id}.png", lab)
    row = dict(index_rows.get(rec.id, {"id": rec.id}))
    row.update(height=lab.shape[0], width=lab.shape[1],
               channels=1 if img.ndim == 2 else img.shape[-1], nuclei=n1)
    rows.append(row)
    per_image.append({"id": rec.id, "nuclei_before": n0, "nuclei_after": n1})
  columns = list(readers.INDEX_COLUMNS)
  columns += [k for k in rows[0] if k not in columns]
  fileio.write_csv(output / "index.csv", rows, columns)
  fileio.write_csv(output / "summary.csv", per_image)
  summary = {"source": str(source), "view": spec.kind, "fraction": spec.fraction,
             "seed": spec.seed, "name": spec.name, "split": split, "group": group,
             "images": len(records), "nuclei_before": before, "nuclei_after": after}
  fileio.write_json(output / "partial.json", summary)
  return summary


def recount(folder: os.PathLike | str) -> tuple[int, int]:
  """(images, annotated nuclei) recounted from the label maps of a dataset folder."""
  recs = readers.read_dataset_folder(folder)
  return len(recs), sum(readers.count_instances(readers.read_label_map(r.label_path))
                        for r in recs)
