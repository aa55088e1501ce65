"""Where the PA boxes of a trained partial-annotation run come from, on its training images.

  python bench/pa_probe.py runs/dh25_pa_cpu [--images 60] [--thresholds 0.95,0.8,0.5]

Runs the run's centerness head on whole training images (the partial view it trained on,
with the full labels beside it) and splits "is this unannotated nucleus covered by a PA
box?" into its two causes: does the centerness map exceed the PA threshold anywhere on the
nucleus (0.95, DESIGN.md; 0.9 and 0.5 shown for scale), and is the box decoded from the
component's peak good (box IoU >= 0.5 with the nucleus)? Also counts PA boxes that lie on
no nucleus at all (box IoU < 0.3 with every true nucleus). Prints one markdown table.

`--diameter` zooms the images to another median nucleus size than the run's
`data.diameter`. `--thresholds` re-runs the PA-box stage at other centerness thresholds than the run's
(one table row each): what a lower threshold would have given the same weights. It reads
the hidden full labels of the training images, so it explains a run; it is not a way to
pick the threshold of a partial-label run, which has no such labels.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's pa_jax


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  from pa_jax.ops.boxes import pairwise_iou

  if len(a) == 0 or len(b) == 0:
    return np.zeros((len(a), len(b)), np.float32)
  return np.asarray(pairwise_iou(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)))


def _at_training_zoom(ex):
  """`ex` with image and both label maps zoomed by `ex.zoom` (the size normalisation that
  training applies at crop time, `pipeline.canvas_example`), as the network saw them."""
  import dataclasses as dc

  from pa_jax.data import diameter as diam

  if ex.zoom == 1.0:
    return ex
  image = diam.zoom_image(ex.image, ex.zoom)
  return dc.replace(ex, image=image, zoom=1.0,
                    labels=diam.resize_labels(ex.labels, image.shape[:2]),
                    full_labels=diam.resize_labels(ex.full_labels, image.shape[:2]))


def probe(workdir: Path, max_images: int, threshold: float | None = None,
          diameter: float | None = None) -> dict:
  from pa_jax import experiment
  from pa_jax.data.pipeline import instance_boxes
  from pa_jax.infer.predictor import canvas_for

  cfg, model, variables, step = experiment.load_run(workdir)
  if diameter is not None:  # the training images zoomed to another nucleus size
    cfg.data.diameter = float(diameter)
  # Whole training images hold far more nuclei than a training crop (a zoomed Kumar tile
  # ~1,000): lift the crop-sized cap on PA boxes so that it does not hide coverage.
  changes = {"max_pa_boxes": max(model.spec.max_pa_boxes, 4096)}
  if threshold is not None:  # the same weights, another PA-box threshold
    changes["pa_threshold"] = float(threshold)
  model = model.clone(spec=dataclasses.replace(model.spec, **changes))
  if not model.spec.partial:
    raise SystemExit(f"{workdir}: trained without the partial-annotation module")
  examples = [ex for ex in experiment.training_examples(cfg, progress=False)
              if ex.full_labels is not None][:max_images]
  if not examples:
    raise SystemExit(f"{workdir}: its training images have no full labels to compare with")

  def centerness_and_pa_boxes(m, image, image_size):
    # The model's own centerness head and PA-box stage (threshold, components backend,
    # anchor and max_pa_boxes from the run's spec), as training and inference use them.
    out, *_ = m._rpn(m.features(image, image_size))
    c = m.centerness(out.hidden["p2"])
    boxes, _, valid = m._pa_boxes(c.logits, c.deltas, image_size)
    return c.logits[0], boxes[0], valid[0]

  fn = jax.jit(lambda v, x, hw: model.apply(v, x, hw, method=centerness_and_pa_boxes))
  spec = model.spec
  stride = spec.anchor_strides[0]
  n = dict(unannotated=0, above_threshold=0, above_95=0, above_90=0, above_50=0, covered=0,
           annotated=0, annotated_covered=0, pa_boxes=0, pa_on_no_nucleus=0)
  for ex in examples:
    ex = _at_training_zoom(ex)
    h, w = ex.labels.shape
    ch, cw = canvas_for(h, w)
    x = np.zeros((1, ch, cw, 3), np.float32)
    x[0, :h, :w] = ex.image
    logits, boxes, ok = fn(variables, x, np.array([[h, w]], np.int32))
    boxes = np.asarray(boxes)[np.asarray(ok)]
    prob = np.asarray(jax.nn.sigmoid(logits))
    ids, true_boxes = instance_boxes(ex.full_labels)
    annotated = set(np.unique(ex.full_labels[ex.labels > 0]).tolist())
    n["pa_boxes"] += len(boxes)
    n["pa_on_no_nucleus"] += int(np.sum(_iou(boxes, true_boxes).max(axis=1, initial=0) < 0.3))
    best = _iou(true_boxes, boxes).max(axis=1, initial=0)
    # Peak centerness over each nucleus' pixels, read at its stride-4 cell.
    ys, xs = np.nonzero(ex.full_labels)
    cell = prob[np.minimum(ys // stride, prob.shape[0] - 1), np.minimum(xs // stride, prob.shape[1] - 1)]
    lab = ex.full_labels[ys, xs]
    order = np.searchsorted(ids, lab)
    peak = np.full(len(ids), -1.0)
    np.maximum.at(peak, order, cell)
    for i, idx in enumerate(ids):
      if int(idx) in annotated:
        n["annotated"] += 1
        n["annotated_covered"] += int(best[i] >= 0.5)
        continue
      n["unannotated"] += 1
      n["above_threshold"] += int(peak[i] > spec.pa_threshold)
      n["above_95"] += int(peak[i] > 0.95)
      n["above_90"] += int(peak[i] > 0.9)
      n["above_50"] += int(peak[i] > 0.5)
      n["covered"] += int(best[i] >= 0.5)
  n.update(images=len(examples), step=step, threshold=spec.pa_threshold)
  return n


def main(argv: list[str]) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("workdir", type=Path)
  p.add_argument("--images", type=int, default=60)
  p.add_argument("--diameter", type=float, default=None,
                 help="zoom the images to this median nucleus diameter instead of the run's")
  p.add_argument("--thresholds", default="",
                 help="comma-separated PA-box thresholds to try (default: the run's own)")
  a = p.parse_args(argv)
  thresholds = [float(t) for t in a.thresholds.split(",") if t.strip()] or [None]
  for i, t in enumerate(thresholds):
    n = probe(a.workdir, a.images, t, a.diameter)
    u = max(n["unannotated"], 1)
    if i == 0:
      print(f"{a.workdir}, {n['images']} training images, "
            f"{n['unannotated']} unannotated + {n['annotated']} annotated nuclei")
      print("| step | PA threshold | unannotated nuclei with centerness > threshold | > 0.95 | > 0.9 | > 0.5 | "
            "covered by a PA box (IoU >= 0.5) | annotated nuclei covered | PA boxes / image | "
            "PA boxes on no nucleus |")
      print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {n['step']} | {n['threshold']:g} | {n['above_threshold'] / u:.0%} | {n['above_95'] / u:.0%} | {n['above_90'] / u:.0%} | "
          f"{n['above_50'] / u:.0%} | {n['covered'] / u:.0%} | "
          f"{n['annotated_covered'] / max(n['annotated'], 1):.0%} | "
          f"{n['pa_boxes'] / n['images']:.1f} | "
          f"{n['pa_on_no_nucleus'] / max(n['pa_boxes'], 1):.0%} |", flush=True)


if __name__ == "__main__":
  main(sys.argv[1:])
