"""Dataset evaluation: per-image table, summary (overall and per group / modality), figure.

Two entry points:

* `evaluate_pairs(items, output_dir)` scores any iterable of
  `(id, gt_labels, pred_labels, meta, image_or_None)` — what `run.py evaluate --workdir`
  feeds with a trained model's predictions;
* `evaluate_folders(predictions_dir, ground_truth, output_dir)` scores a folder of label
  maps (Cellpose, StarDist, manual, `run.py predict`) against a dataset folder or a plain
  folder of ground-truth label maps, matching files by stem.

`evaluate_folders` follows the output policy of pa_jax.outputs (never an input folder, a
non-empty folder only with `overwrite`, written whole or not at all); its output may lie
inside the predictions folder (the default `<predictions>/evaluation`), because only the
label maps directly in that folder are read, never its sub-folders. With
`on_error='skip'`, a pair that cannot be scored (unreadable map, size mismatch) is listed
in `skipped.csv` (file, reason) instead of ending the command.

Both write into `output_dir`, atomically (pa_jax.fileio):
`per_image.csv` (one row per image), `summary.csv` and `summary.md` (mean over images of
every metric, plus the pooled AJI ΣC / ΣU; one row for all images and one per `group` and
per `modality` value when those are known) and `metrics.png` (per-image distribution of the
metrics, and ground-truth vs prediction contours on the worst images by mAP).
"""

from __future__ import annotations

import heapq
import io
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from pa_jax import fileio
from pa_jax.data import readers
from pa_jax.errors import InputError
from pa_jax.evaluation import metrics

SUMMARY_METRICS = ("map", "aji", "aji_pooled", "ncs", "precision", "recall", "f1", "pq")
PER_IMAGE_COLUMNS = ("id", "group", "modality", "n_gt", "n_pred", "map", "aji", "ncs",
                     "precision", "recall", "f1", "pq", "aji_c", "aji_u")
SUMMARY_COLUMNS = ("scope", "n_images", "n_gt", "n_pred") + SUMMARY_METRICS
METRIC_TITLES = {"map": "mAP", "aji": "AJI", "aji_pooled": "AJI (pooled)", "ncs": "NCS",
                 "precision": "P@0.5", "recall": "R@0.5", "f1": "F1@0.5", "pq": "PQ"}
# Stem endings that mark a label map; the longest first so "_cp_masks" wins over "_masks".
_LABEL_ENDINGS = tuple(sorted(readers.LABEL_STEM_SUFFIXES, key=len, reverse=True))

Item = tuple  # (id, gt_labels, pred_labels, meta: Mapping, image | None | callable)


# ------------------------------------------------------------------------- summary


def summarize(rows: list[Mapping[str, Any]], scope: str = "all") -> dict:
  """Mean over images of every metric, pooled AJI and totals, for a list of per-image rows."""
  out: dict[str, Any] = {"scope": scope, "n_images": len(rows),
                         "n_gt": int(sum(r["n_gt"] for r in rows)),
                         "n_pred": int(sum(r["n_pred"] for r in rows))}
  for k in ("map", "aji", "ncs", "precision", "recall", "f1", "pq"):
    out[k] = float(np.mean([r[k] for r in rows])) if rows else float("nan")
  c = sum(r["aji_c"] for r in rows)
  u = sum(r["aji_u"] for r in rows)
  # Pooled AJI over a set where every image is empty on both sides follows the per-image
  # rule (both empty → 1).
  out["aji_pooled"] = c / u if u else (1.0 if rows else float("nan"))
  return out


def _breakdown(rows: list[dict]) -> list[dict]:
  table = [summarize(rows, "all")]
  for column in ("group", "modality"):
    values = sorted({r[column] for r in rows if r.get(column)})
    if len(values) < 2 and all(r.get(column) for r in rows):
      continue  # one value for every image: its row would repeat "all"
    for v in values:
      table.append(summarize([r for r in rows if r.get(column) == v], f"{column}={v}"))
  return table


def _markdown(title: str, table: list[dict], rows: list[dict], worst: list[str]) -> str:
  lines = [f"# {title}", "",
           f"{len(rows)} images. Metrics as defined in DESIGN.md \"Metrics\": mean over "
           "images; AJI (pooled) = ΣC / ΣU over all images. P, R, F1 at IoU > 0.5; "
           "PQ = F1 × mean matched IoU.", ""]
  head = ["scope", "images", "GT nuclei", "predicted"] + [METRIC_TITLES[k]
                                                          for k in SUMMARY_METRICS]
  lines.append("| " + " | ".join(head) + " |")
  lines.append("|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|")
  for r in table:
    cells = [r["scope"], str(r["n_images"]), str(r["n_gt"]), str(r["n_pred"])]
    cells += [f"{r[k]:.4f}" for k in SUMMARY_METRICS]
    lines.append("| " + " | ".join(cells) + " |")
  if worst:
    lines += ["", "Worst images by mAP (contours in metrics.png): "
              + ", ".join(f"`{w}`" for w in worst)]
  if len(rows) <= 100:
    lines += ["", "## Per image", ""]
    cols = ["id", "n_gt", "n_pred", "map", "aji", "ncs", "precision", "recall", "f1", "pq"]
    lines.append("| " + " | ".join(cols) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(cols) - 1)) + "|")
    for r in rows:
      cells = [str(r["id"]), str(r["n_gt"]), str(r["n_pred"])]
      cells += [f"{r[k]:.4f}" for k in cols[3:]]
      lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


# -------------------------------------------------------------------------- figure


def _gray_rgb(image: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray:
  """Float RGB in [0, 1] for display (1st–99.5th percentile stretch), black if no image."""
  if image is None or tuple(image.shape[:2]) != tuple(shape):
    return np.zeros(shape + (3,), np.float32)
  img = np.asarray(image, np.float32)
  lo, hi = np.percentile(img, (1, 99.5))
  img = np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1)
  if img.ndim == 2:
    img = np.repeat(img[..., None], 3, axis=-1)
  return img * 0.8  # keep contours visible on bright pixels


def overlay_contours(image: np.ndarray | None, gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
  """RGB float image: ground-truth contours green, prediction contours magenta, both white."""
  from skimage.segmentation import find_boundaries

  rgb = _gray_rgb(image, gt.shape)
  g = find_boundaries(gt, mode="inner")
  p = find_boundaries(pred, mode="inner")
  rgb[g] = (0.0, 1.0, 0.0)
  rgb[p] = (1.0, 0.0, 1.0)
  rgb[g & p] = (1.0, 1.0, 1.0)
  return rgb


def _figure(rows: list[dict], worst: list[tuple], title: str) -> bytes:
  # The Agg canvas directly, without pyplot: no global backend switch, no GUI, thread-safe.
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  keys = ["map", "aji", "ncs", "precision", "recall", "f1", "pq"]
  n_cols = max(len(worst), 2)
  fig = Figure(figsize=(3.6 * n_cols, 7.6 if worst else 3.8), dpi=110)
  FigureCanvasAgg(fig)
  grid = fig.add_gridspec(2 if worst else 1, n_cols, height_ratios=[1, 1.15] if worst else [1])
  ax = fig.add_subplot(grid[0, :])
  data = [[r[k] for r in rows] for k in keys]
  ax.boxplot(data, widths=0.5, showfliers=False)
  rng = np.random.default_rng(0)
  for i, d in enumerate(data):
    ax.scatter(i + 1 + rng.uniform(-0.15, 0.15, len(d)), d, s=9, alpha=0.6, color="tab:blue")
  ax.set_xticks(range(1, len(keys) + 1), [METRIC_TITLES[k] for k in keys])
  ax.set_ylim(-0.03, 1.03)
  ax.set_ylabel("per-image value")
  ax.set_title(f"{title}: {len(rows)} images")
  ax.grid(axis="y", alpha=0.3)
  for i, (_, _, item_id, m, gt, pred, image) in enumerate(worst):
    a = fig.add_subplot(grid[1, i])
    a.imshow(overlay_contours(image, gt, pred), interpolation="nearest")
    name = item_id if len(item_id) <= 18 else item_id[:15] + "..."
    a.set_title(f"{name}\nmAP {m['map']:.2f}  AJI {m['aji']:.2f}  "
                f"GT {m['n_gt']} / pred {m['n_pred']}", fontsize=8)
    a.axis("off")
  if worst:
    fig.text(0.5, 0.01, "worst images by mAP — green: ground truth, magenta: prediction, "
             "white: both", ha="center", fontsize=9)
  fig.tight_layout(rect=(0, 0.03 if worst else 0, 1, 1))
  buf = io.BytesIO()
  fig.savefig(buf, format="png")
  return buf.getvalue()


# --------------------------------------------------------------------- evaluation


def evaluate_pairs(items: Iterable[Item], output_dir: os.PathLike | str,
                   title: str = "Evaluation", worst_k: int = 4,
                   progress: bool = True) -> dict:
  """Scores (ground truth, prediction) pairs and writes the report into `output_dir`.

  Args:
    items: iterable of `(id, gt_labels, pred_labels, meta, image)`; `meta` is a mapping
      with optional `group` / `modality`; `image` is the (H, W[, 3]) image for the overlay
      figure, None, or a zero-argument callable returning it (only called for the worst
      images). Consumed once, streaming: only the `worst_k` worst pairs stay in memory.
    output_dir: folder for per_image.csv, summary.csv, summary.md, metrics.png.
    title: heading of summary.md and of the figure.
    worst_k: how many of the worst images (lowest mAP) the figure shows.

  Returns:
    The overall summary: `n_images, n_gt, n_pred, map, aji, aji_pooled, ncs, precision,
    recall, f1, pq`, plus `by` (every summary row, overall first, then per group /
    modality), `worst` (ids) and `files` (paths written).

  Raises:
    InputError: a pair of maps differs in shape or is not an integer map (names the id);
      no items.
  """
  output_dir = Path(output_dir)
  rows: list[dict] = []
  heap: list[tuple] = []  # max-heap on mAP (negated) of the worst_k worst images
  iterator = items
  if progress:
    from tqdm import tqdm

    iterator = tqdm(items, desc="evaluate", unit="image", leave=False)
  for n, (item_id, gt, pred, meta, image) in enumerate(iterator):
    item_id = str(item_id)
    try:
      m = metrics.image_metrics(gt, pred)
    except ValueError as e:
      raise InputError(item_id, str(e)) from None
    meta = meta or {}
    rows.append({"id": item_id, "group": meta.get("group", "") or "",
                 "modality": meta.get("modality", "") or "", **m})
    if worst_k > 0:
      entry = (-m["map"], -n, item_id, m, gt, pred, image)
      if len(heap) < worst_k:
        heapq.heappush(heap, entry)
      elif entry[:2] > heap[0][:2]:
        heapq.heapreplace(heap, entry)
  if not rows:
    raise InputError(output_dir, "nothing to evaluate (no image pairs)")

  worst = sorted(heap, key=lambda e: (-e[0], -e[1]))  # worst first, then input order
  worst = [e[:6] + ((e[6]() if callable(e[6]) else e[6]),) for e in worst]
  table = _breakdown(rows)
  files = {name: output_dir / name
           for name in ("per_image.csv", "summary.csv", "summary.md", "metrics.png")}
  fileio.write_csv(files["per_image.csv"], rows, PER_IMAGE_COLUMNS)
  fileio.write_csv(files["summary.csv"], table, SUMMARY_COLUMNS)
  fileio.write_text(files["summary.md"], _markdown(title, table, rows, [e[2] for e in worst]))
  fileio.write_bytes(files["metrics.png"], _figure(rows, worst, title))
  summary = dict(table[0])
  summary.pop("scope")
  summary["by"] = table
  summary["worst"] = [e[2] for e in worst]
  summary["files"] = {k: str(v) for k, v in files.items()}
  return summary


def _normalize_stem(stem: str) -> tuple[str, bool]:
  """('a', True) for 'a_labels' / 'a_mask' / 'a_cp_masks' ...; ('a', False) for 'a'."""
  low = stem.lower()
  for end in _LABEL_ENDINGS:
    if low.endswith(end) and len(stem) > len(end):
      return stem[:-len(end)], True
  return stem, False


def scan_label_folder(folder: os.PathLike | str) -> tuple[dict[str, Path], dict[str, Path]]:
  """Label maps and images of a folder, keyed by stem.

  A file named `{stem}_labels` / `_label` / `_mask` / `_masks` / `_instances` / `_cp_masks`
  is the label map of `{stem}`; a plain `{stem}.png` beside it is then its image. A plain
  file alone is a label map. Two label maps for one stem are an error.
  Returns (labels, images).
  """
  folder = Path(folder)
  if not folder.is_dir():
    raise InputError(folder, "folder not found")
  marked: dict[str, list[Path]] = {}
  plain: dict[str, list[Path]] = {}
  for p in sorted(folder.iterdir()):
    if (not p.is_file() or p.name.startswith(".")
        or p.suffix.lower() not in readers.IMAGE_SUFFIXES):
      continue
    stem, is_marked = _normalize_stem(p.stem)
    (marked if is_marked else plain).setdefault(stem, []).append(p)
  labels: dict[str, Path] = {}
  images: dict[str, Path] = {}
  for stem in sorted(set(marked) | set(plain)):
    if stem in marked:
      cands = marked[stem]
      if stem in plain and len(plain[stem]) == 1:
        images[stem] = plain[stem][0]
    else:
      cands = plain[stem]
    if len(cands) > 1:
      raise InputError(cands[1], f"two label maps for {stem!r} ({cands[0].name}, "
                       f"{cands[1].name}); keep one")
    labels[stem] = cands[0]
  return labels, images


def _describe(ids: list[str], limit: int = 3) -> str:
  shown = ", ".join(ids[:limit])
  return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def evaluate_folders(predictions_dir: os.PathLike | str, ground_truth: os.PathLike | str,
                     output_dir: os.PathLike | str, index_csv: os.PathLike | str | None = None,
                     allow_missing: bool = False, split: str | None = None,
                     group: str | None = None, title: str | None = None,
                     worst_k: int = 4, progress: bool = True, overwrite: bool = False,
                     on_error: str = "stop") -> dict:
  """Scores a folder of predicted label maps against ground truth, matching by file stem.

  Args:
    predictions_dir: folder of instance label maps (PNG or TIFF, 8/16/32-bit integer),
      named `{id}.png` or `{id}_labels.png` / `_mask` / `_masks` / `_cp_masks` ...
    ground_truth: either a dataset folder (`images/`, `labels/`, `index.csv`: its labels,
      images for the figure and group/modality columns are used) or a plain folder of
      label maps (optionally with `labels/` and `images/` sub-folders).
    output_dir: where the report goes (see `evaluate_pairs`).
    index_csv: an index.csv giving `group` / `modality` per id (default: the dataset's).
    allow_missing: do not fail when some ground-truth images have no prediction.
    split, group: with a dataset folder, the rows that must all be predicted (comma lists
      allowed). Without them, a dataset folder's expected images are those predicted: a
      dataset usually holds more images (other splits, groups) than one run predicts.
    overwrite: replace a non-empty `output_dir` as a whole (pa_jax.outputs).
    on_error: 'stop' (a pair that cannot be read or scored ends the command, nothing is
      written) or 'skip' (it is listed in `output_dir/skipped.csv`; the others are scored).

  Errors (InputError, one line naming the file): a prediction whose stem has no ground
  truth; no stem in common; a ground-truth image without prediction (plain folders, or a
  dataset with split/group) unless `allow_missing`; a prediction whose size differs from its
  ground truth; unreadable or invalid label maps.
  """
  from pa_jax import outputs

  outputs.check_on_error(on_error)
  predictions_dir = Path(predictions_dir)
  ground_truth = Path(ground_truth)
  # The report must not replace or mix with an input or an earlier report; checked before
  # anything is read, so a refused output costs nothing.
  outputs.check_output(output_dir, [predictions_dir, ground_truth], overwrite=overwrite,
                       nest_ok=[predictions_dir])
  if not predictions_dir.is_dir():
    raise InputError(predictions_dir, "predictions folder not found")
  pred_files, _ = scan_label_folder(predictions_dir)
  if not pred_files:
    raise InputError(predictions_dir, "no label maps (.png, .tif) in this folder")
  if not ground_truth.exists():
    raise InputError(ground_truth, "ground truth not found")

  meta: dict[str, dict[str, str]] = {}
  gt_images: dict[str, Path] = {}
  if ground_truth.is_dir() and (ground_truth / "index.csv").is_file():
    rows = readers.read_index(ground_truth / "index.csv")
    gt_files: dict[str, Path] = {}
    keep_split = set(split.split(",")) if split else None
    keep_group = set(group.split(",")) if group else None
    selected = []
    for r in rows:
      meta[r["id"]] = {"group": r.get("group") or "", "modality": r.get("modality") or ""}
      # Empty cells as readers.read_dataset_folder reads them (split defaults to train).
      if keep_split and (r.get("split") or "train") not in keep_split:
        continue
      if keep_group and (r.get("group") or "") not in keep_group:
        continue
      selected.append(r["id"])
    for i in selected:
      lab = readers.find_file(ground_truth / "labels", i)
      if lab is not None:
        gt_files[i] = lab
      img = readers.find_file(ground_truth / "images", i)
      if img is not None:
        gt_images[i] = img
    expected = selected if (split or group) else [i for i in pred_files if i in gt_files]
    where = "in " + str(ground_truth / "index.csv") + (
        f" (split={split})" if split else "") + (f" (group={group})" if group else "")
  else:
    if ground_truth.is_file():
      raise InputError(ground_truth, "ground truth must be a folder of label maps or a "
                       "dataset folder")
    label_dir = ground_truth / "labels" if (ground_truth / "labels").is_dir() else ground_truth
    gt_files, gt_images = scan_label_folder(label_dir)
    if (ground_truth / "images").is_dir():
      for p in readers.list_images(ground_truth / "images"):
        gt_images.setdefault(p.stem, p)
    expected = sorted(gt_files)
    where = "in " + str(label_dir)
    if not gt_files:
      raise InputError(label_dir, "no ground-truth label maps in this folder")
  if index_csv is not None:
    for r in readers.read_index(index_csv):
      meta[r["id"]] = {"group": r.get("group") or "", "modality": r.get("modality") or ""}

  common = [i for i in pred_files if i in gt_files]
  if not common:
    raise InputError(predictions_dir, f"no prediction matches a ground-truth file by stem "
                     f"{where} (predictions: {_describe(sorted(pred_files))}; ground truth: "
                     f"{_describe(sorted(gt_files)) or 'none'})")
  orphans = [i for i in pred_files if i not in gt_files]
  if orphans:
    raise InputError(pred_files[orphans[0]], f"no ground truth for this prediction {where}"
                     + (f" ({len(orphans)} predictions without ground truth)"
                        if len(orphans) > 1 else ""))
  missing = [i for i in expected if i not in pred_files]
  if missing and not allow_missing:
    raise InputError(predictions_dir, f"{len(missing)} ground-truth images have no "
                     f"prediction: {_describe(missing)} (`allow_missing` scores the others)")

  skipped: list[tuple[str, str]] = []

  def read_pair(i: str) -> tuple[np.ndarray, np.ndarray]:
    gt = readers.read_label_map(gt_files[i])
    pred = readers.read_label_map(pred_files[i])
    if pred.shape != gt.shape:
      raise InputError(pred_files[i], f"prediction is {pred.shape[0]}x{pred.shape[1]} but "
                       f"its ground truth {gt_files[i]} is {gt.shape[0]}x{gt.shape[1]} (HxW)")
    return gt, pred

  def items():
    for i in sorted(common):
      try:
        gt, pred = read_pair(i)
      except InputError as e:
        if on_error == "stop":
          raise
        skipped.append((e.where, e.problem))
        continue
      image: Callable[[], np.ndarray | None] | None = None
      if i in gt_images:
        image = _lazy_image(gt_images[i])
      yield i, gt, pred, meta.get(i, {}), image

  if title is None:
    title = f"{predictions_dir.name} vs {ground_truth.name}"
  inputs = [predictions_dir, ground_truth]
  with outputs.staged_output(output_dir, inputs, overwrite=overwrite,
                             nest_ok=[predictions_dir]) as tmp:
    summary = evaluate_pairs(items(), tmp, title=title, worst_k=worst_k, progress=progress)
    csv_path = outputs.write_skipped(tmp, skipped)
  final = Path(output_dir)
  summary["files"] = {k: str(final / Path(v).name) for k, v in summary["files"].items()}
  summary["missing"] = missing
  summary["skipped"] = skipped
  summary["skipped_csv"] = None if csv_path is None else str(final / csv_path.name)
  return summary


def _lazy_image(path: Path) -> Callable[[], np.ndarray | None]:
  def load() -> np.ndarray | None:
    try:
      return readers.read_image(path)
    except InputError:
      return None  # the figure then shows contours on black; scores are unaffected
  return load
