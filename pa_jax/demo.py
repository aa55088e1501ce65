"""The embedded default (`python run.py`): minutes on a laptop CPU, no arguments.

1. derive the DH25-style partial view of `data/sample` (25 % of nuclei kept, seed 0) and
   count the annotations before/after;
2. score the shipped nucleus model (pa_jax/zoo) as it is on the held-out test images;
3. fine-tune it on the partial view with the partial-annotation module (configs/demo.py),
   with a progress bar; rerunning resumes (or skips a finished run);
4. score the fine-tuned model on the same images against their *full* labels, next to the
   shipped model and the classical Otsu + watershed floor;
5. write label maps, an overlay PNG and a results table into the workdir.
"""

from __future__ import annotations

import io
import json
import shutil
import time
from pathlib import Path

import numpy as np

from pa_jax import fileio
from pa_jax.data import partial_views, readers

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample"
KEYS = ("map", "aji", "ncs", "precision", "recall", "f1", "pq")


def _mean_metrics(rows) -> dict:
  return {k: float(np.mean([r[k] for r in rows])) for k in KEYS}


def _row(name: str, n: int, m: dict) -> str:
  return f"| {name} | {n} | " + " | ".join(f"{m[k]:.3f}" for k in KEYS) + " |"


def run(workdir: str | Path, sample: str | Path = SAMPLE, steps: int | None = None) -> int:
  from configs import demo as demo_config

  from pa_jax import experiment
  from pa_jax.evaluation import metrics, report
  from pa_jax.infer import classical
  from pa_jax.infer.predictor import predictor_for
  from pa_jax.zoo.load import open_model

  cfg = demo_config.get_config()
  cfg.data.source = str(sample)
  if steps is not None:
    cfg.train.steps = steps
  workdir = Path(workdir)
  t0 = time.time()
  print(f"pa_jax demo: {sample} -> {workdir}")

  # 1. the partial view the model trains on (written out so the user can look at it)
  spec = experiment.view_spec(cfg)
  view_dir = workdir / "train_view"
  if view_dir.exists():
    shutil.rmtree(view_dir)
  summary = partial_views.write_partial_dataset(sample, view_dir, spec, split="train",
                                                progress=False)
  print(f"[1/5] partial view {spec.name}: {summary['images']} training images, annotated "
        f"nuclei {summary['nuclei_before']} -> {summary['nuclei_after']}")

  test = [(rec, readers.load_example(rec)) for rec in
          readers.read_dataset_folder(sample, split="test")]

  # 2. the shipped model as it is
  shipped = open_model(cfg.model.init, where="model.init")
  zoo_predict = predictor_for(shipped.cfg, shipped.model, shipped.variables)
  zoo_rows = [metrics.image_metrics(ex.labels, zoo_predict(ex.image)) for _, ex in test]
  zoo = _mean_metrics(zoo_rows)
  name = shipped.meta.get("name", shipped.path.stem)
  print(f"[2/5] shipped model {name} as it is: "
        + "  ".join(f"{k}={zoo[k]:.3f}" for k in ("map", "aji", "recall")))

  # 3. fine-tune it (resumes from workdir/model if interrupted; a finished run is reused)
  print(f"[3/5] fine-tuning it with the partial-annotation module on {spec.name} labels "
        f"({cfg.train.steps} steps, batch {cfg.train.batch_size}, canvas {cfg.data.canvas_size})")
  moved = set_aside_other_run(workdir / "model", cfg)
  if moved is not None:
    print(f"      {workdir / 'model'} was fine-tuned with another recipe or starting model; "
          f"kept as {moved}, fine-tuning afresh")
  experiment.train(cfg, workdir / "model")
  cfg, model, variables, step = experiment.load_run(workdir / "model")
  predictor = predictor_for(cfg, model, variables)

  # 4. predictions on the held-out images, scored against the full labels
  pred_dir = workdir / "predictions"
  items, floor_rows = [], []
  for rec, ex in test:
    pred = predictor(ex.image)
    fileio.write_label_map(pred_dir / f"{rec.id}.png", pred)
    items.append((rec.id, ex.labels, pred, {"group": rec.group, "modality": rec.modality},
                  ex.image))
    floor_rows.append(metrics.image_metrics(ex.labels, classical.segment_classical(ex.image)))
  result = report.evaluate_pairs(items, workdir / "evaluation",
                                 title=f"demo: {name} fine-tuned with the PA module, step {step}",
                                 progress=False)
  overall = result.get("overall", result)
  floor = _mean_metrics(floor_rows)
  print("[4/5] evaluated against the full labels")

  # 5. overlay + results table
  _write_overlay(workdir / "overlay.png", items)
  n = len(items)
  table = ["| method | images | " + " | ".join(KEYS) + " |", "|---|---|" + "---|" * len(KEYS),
           _row(f"shipped model {name}, as it is", n, zoo),
           _row(f"{name} fine-tuned + PA module ({spec.name} labels, {step} steps)", n, overall),
           _row("classical floor (Otsu + watershed)", n, floor)]
  text = (f"# pa_jax demo results\n\nFine-tuned on `{sample}` ({summary['images']} images) "
          f"with {spec.name}: {summary['nuclei_before']} -> {summary['nuclei_after']} "
          f"annotated nuclei. Evaluated on the {n} test images against their full labels.\n\n"
          + "\n".join(table) + "\n\nA demo-sized model and schedule: see docs/results.md for "
          "the paper experiments and docs/zoo.md for the shipped model.\n")
  fileio.write_text(workdir / "results.md", text)
  print("[5/5] shipped:    " + "  ".join(f"{k}={zoo[k]:.3f}" for k in KEYS))
  print("      fine-tuned: " + "  ".join(f"{k}={overall[k]:.3f}" for k in KEYS))
  print("      floor:      " + "  ".join(f"{k}={floor[k]:.3f}" for k in KEYS))
  print(f"done in {time.time() - t0:.0f}s. Results: {workdir / 'results.md'}, overlay: "
        f"{workdir / 'overlay.png'}, predictions: {pred_dir}/, report: "
        f"{workdir / 'evaluation'}/, model: {workdir / 'model'}/")
  return 0


def set_aside_other_run(model_dir: Path, cfg) -> Path | None:
  """Moves a demo run trained under another config out of the way.

  A newer pa_jax can change the demo's recipe (configs/demo.py) or its shipped model
  (`model.init`), and a run cannot resume under another config (train refuses it). The old
  run is kept, renamed `model.from_<its start>` when it started from another model, else
  `model.old_recipe` (`.1`, `.2`, ... if taken), never deleted. Returns the new path, or
  None when there is nothing to move (no run yet, or the same config)."""
  from pa_jax.train.run_config import config_changes

  cfg_path = model_dir / "config.json"
  if not cfg_path.is_file():
    return None
  stored = json.loads(cfg_path.read_text())
  old = str(stored.get("model", {}).get("init", ""))
  if old != str(cfg.model.init):
    stem = "from_" + (old.split(":")[-1].replace("/", "_").replace(".", "_") or "scratch")
  elif config_changes(stored, cfg):
    stem = "old_recipe"
  else:
    return None
  dest, k = model_dir.with_name(f"model.{stem}"), 1
  while dest.exists():
    dest, k = model_dir.with_name(f"model.{stem}.{k}"), k + 1
  model_dir.rename(dest)
  return dest


def _write_overlay(path: Path, items) -> None:
  """Test images with full-label contours (green) and predicted contours (magenta)."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  from skimage.segmentation import find_boundaries

  n = len(items)
  fig = Figure(figsize=(5 * n, 5.4))
  FigureCanvasAgg(fig)
  for i, (img_id, gt, pred, _, image) in enumerate(items):
    ax = fig.add_subplot(1, n, i + 1)
    img = image.astype(np.float32)
    img = (img - img.min()) / max(float(img.max() - img.min()), 1e-6)
    rgb = (np.stack([img] * 3, -1) if img.ndim == 2 else img[..., :3]).copy()
    rgb[find_boundaries(gt, mode="inner")] = (0.1, 0.9, 0.1)
    rgb[find_boundaries(pred, mode="inner")] = (0.95, 0.1, 0.95)
    ax.imshow(rgb)
    ax.set_title(f"{img_id[:12]}: green truth, magenta prediction", fontsize=9)
    ax.axis("off")
  fig.tight_layout()
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=100)
  fileio.write_bytes(path, buf.getvalue())
