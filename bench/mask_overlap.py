"""Mask-overlap suppression before painting (issue #14 item 6): diagnosis and before/after.

A shipped model (`--model`) or a trained run (`--workdir`) on dsb2018's dh360 test images
and on the Kumar and TNBC validation tiles its config carves (`data.val_*`), both never
read in training.

1. Diagnosis, on the detections the label map is painted from (valid, score >=
   `predict.score_threshold`, masks pasted and cut at `model.roi.mask_threshold`, at the
   zoom the prediction used, per tile where the image is tiled, a pair counted in the tile
   whose core holds the smaller mask's centre): the pairs whose smaller mask lies >= 50 %
   inside the other, whether the smaller one is the higher- or the lower-scoring one, and
   which of the two matches a ground-truth nucleus better (best IoU, in the same frame).
2. Measurement: the label maps of the full prediction (zoom, tiling, dilation as
   `predictor_for` does them) rendered with `predict.mask_overlap` off (1.0: overlaps go to
   the higher score), with the claimed-fraction rule at each `--thresholds` value
   (`masks_to_label_map(overlap_threshold=t)`), and with a score-blind containment rule
   measured here only (of two masks, the smaller >= 50 % inside the larger, drop the
   smaller, or the larger, whatever the scores).
   Per set: the DSB2018 term TP / (TP + FP + FN) at each IoU threshold 0.50 .. 0.95 (its
   mean is mAP), AJI, predicted nuclei; means over images. The network runs once per
   input: the variants re-render its cached detections, checked once against the
   Predictor's own program.
3. A before/after figure (`--figure`, '' = none): the crop of a `--figure-set` image where
   the `--chosen` threshold removes the most predicted nuclei (then pixels).

    python bench/mask_overlap.py [--model nuclei_cpu_v2 | --workdir runs/demo/model]
        [--sets dh360,val] [--thresholds 0.3,0.5,0.7] [--chosen 0.5] [--max-images N]
        [--figure docs/figures/mask_overlap.png] [--out bench/results/mask_overlap_<model>.json]
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import os
import platform
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from scipy import ndimage, sparse  # noqa: E402

from bench_config import write_result  # noqa: E402
from configs.base import SHARED_DATASETS  # noqa: E402
from pa_jax import experiment  # noqa: E402
from pa_jax.data import diameter as diam  # noqa: E402
from pa_jax.data import readers  # noqa: E402
from pa_jax.evaluation import metrics  # noqa: E402
from pa_jax.infer import predictor as P  # noqa: E402
from pa_jax.infer import tiling  # noqa: E402
from pa_jax.ops import masks as mask_ops  # noqa: E402
from pa_jax.zoo.registry import DEFAULT_MODEL  # noqa: E402

DSB = tuple(float(t) for t in metrics.DSB_THRESHOLDS)
CONTAIN = 0.5  # "mostly inside": the diagnosis' pair criterion and the containment variant's


# ------------------------------------------------------------------ detections and pairs


def pasted_masks(det: dict, canvas: tuple[int, int], h: int, w: int, threshold: float,
                 min_score: float, chunk: int = 16):
  """(indices into the detection slots, sparse bool [n, h * w] masks, areas [n]) of the
  detections the label map is painted from. Pasted `chunk` at a time (fixed shape, one
  compile) so that no [n, H, W] float stack of a whole tile is held."""
  keep = np.flatnonzero(det["valid"] & (det["scores"] >= min_score))
  rows = []
  for a in range(0, keep.size, chunk):
    idx = keep[a:a + chunk]
    m = np.zeros((chunk,) + det["masks"].shape[1:], np.float32)
    b = np.zeros((chunk, 4), np.float32)
    m[:idx.size], b[:idx.size] = det["masks"][idx], det["mask_boxes"][idx]
    soft = np.asarray(_paste(canvas)(jnp.asarray(m), jnp.asarray(b)))[:idx.size, :h, :w]
    rows.append(sparse.csr_matrix((soft >= threshold).reshape(idx.size, -1)))
  flat = sparse.vstack(rows).tocsr() if rows else sparse.csr_matrix((0, h * w), dtype=bool)
  return keep, flat, np.asarray(flat.sum(axis=1)).ravel()


@functools.lru_cache(maxsize=None)
def _paste(canvas: tuple[int, int]):
  return jax.jit(lambda m, b: mask_ops.paste_masks_soft(m, b, canvas[0], canvas[1]))


def contained_pairs(flat, area: np.ndarray, frac: float = CONTAIN) -> list[tuple[int, int, float]]:
  """(smaller, larger, inside fraction) of every pair whose smaller mask has >= `frac` of
  its pixels inside the other's (positions into `flat`; equal areas: the later one is
  the smaller)."""
  inter = (flat.astype(np.float32) @ flat.astype(np.float32).T).tocoo()
  out = []
  for a, b, v in zip(inter.row, inter.col, inter.data):
    if a >= b or v <= 0:
      continue
    small, big = (a, b) if area[a] < area[b] else (b, a)
    if area[small] > 0 and v >= frac * area[small]:
      out.append((int(small), int(big), float(v / area[small])))
  return out


def best_iou(mask_row, gt_flat: np.ndarray, gt_area: np.ndarray) -> float:
  """Best IoU of one mask (sparse bool [1, P]) with any ground-truth nucleus."""
  ids, cnt = np.unique(gt_flat[mask_row.indices], return_counts=True)
  cnt, ids = cnt[ids > 0], ids[ids > 0]
  if not ids.size:
    return 0.0
  return float(np.max(cnt / (gt_area[ids] + mask_row.nnz - cnt)))


def diagnose_pass(det: dict, canvas, h: int, w: int, gt_tile: np.ndarray, core: tuple,
                  threshold: float, min_score: float) -> dict:
  """Counts of one network pass (one tile or one whole image): detections painted, pairs
  with one mask >= 50 % inside the other, by which member is smaller, and which member
  matches the ground truth better. Only detections / pairs whose (smaller) mask has its
  centre in `core` (y0, x0, y1, x1, tile frame) are counted: tiles overlap."""
  keep, flat, area = pasted_masks(det, canvas, h, w, threshold, min_score)
  ys, xs = np.divmod(np.arange(h * w), w)

  def in_core(i):
    row = flat[i]
    if not row.nnz:
      return False
    cy, cx = ys[row.indices].mean(), xs[row.indices].mean()
    return core[0] <= cy < core[2] and core[1] <= cx < core[3]

  gt_flat = gt_tile.reshape(-1)
  gt_area = np.bincount(gt_flat, minlength=int(gt_flat.max()) + 1)
  out = defaultdict(int)
  out["detections"] = sum(in_core(i) for i in range(keep.size))
  scores = det["scores"][keep]
  for small, big, _ in contained_pairs(flat, area):
    if not in_core(small):
      continue
    out["pairs"] += 1
    higher, lower = (small, big) if scores[small] > scores[big] else (big, small)
    out["smaller_is_higher" if higher == small else "smaller_is_lower"] += 1
    iou_hi, iou_lo = best_iou(flat[higher], gt_flat, gt_area), best_iou(flat[lower], gt_flat,
                                                                          gt_area)
    who = "smaller" if higher == small else "larger"
    out[f"higher_is_{who}_and_better"] += int(iou_hi > iou_lo)
    out[f"higher_is_{who}_and_worse"] += int(iou_hi < iou_lo)
    out["higher_matches"] += int(iou_hi > 0.5)
    out["lower_matches"] += int(iou_lo > 0.5)
  return dict(out)


def drop_contained(det: dict, canvas, h: int, w: int, threshold: float, min_score: float,
                   drop: str = "smaller") -> np.ndarray:
  """valid [K] with one member of every pair whose smaller mask lies >= 50 % inside the
  other switched off, whatever the scores: the `drop` = 'smaller' one (nuclei do not
  nest: the inner mask is a fragment) or the 'larger' one (the outer mask is a merge or
  an over-extended outline)."""
  keep, flat, area = pasted_masks(det, canvas, h, w, threshold, min_score)
  valid = det["valid"] & (det["scores"] >= min_score)
  for small, big, _ in contained_pairs(flat, area):
    valid[keep[small if drop == "smaller" else big]] = False
  return valid


# ------------------------------------------------------------------ the predictor


@functools.lru_cache(maxsize=None)
def _render(canvas: tuple[int, int], threshold: float, overlap: float | None):
  return jax.jit(jax.vmap(functools.partial(
      mask_ops.masks_to_label_map, height=canvas[0], width=canvas[1], threshold=threshold,
      overlap_threshold=overlap)))


class VariantPredictor(P.Predictor):
  """`Predictor` whose label maps are rendered by `self.variant`: ('off', None),
  ('claimed', t) or ('contained', 'smaller' | 'larger'). The network runs once per distinct
  input (a cache cleared per image, `reset`); the first render of each variant is compared with the
  Predictor's own program (`_jitted_predict(..., overlap)`), so the variants are the
  pipeline's. The 'off' variant logs each pass for the diagnosis and fixes the zoom of the
  image: every variant runs at the zoom the 'off' prediction used, so that only the
  painting differs (the rule would otherwise also move the diameter estimate, which is
  made from the label map of a zoom-1 pass, and with it every detection)."""

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self.variant = ("off", None)
    self.checked: dict[float, float] = {}  # threshold -> fraction of pixels differing
    self.reset()

  def reset(self) -> None:
    self.cache, self.log, self.zoom_now, self.used_zoom = {}, [], 1.0, None

  def estimate_zoom(self, img, intensity=None):
    if self.variant[0] != "off":
      return P.ZoomEstimate(self.used_zoom, self.last_diameter, None, None)
    est = super().estimate_zoom(img, intensity)
    # A reused pass ran at its trial zoom (1, 2 or 0.5), within 10 % of the estimate.
    self.used_zoom = est.zoom if est.result is None else est.result_zoom
    return est

  def _segment_zoomed(self, img, zoom, intensity=None):
    self.zoom_now = zoom
    return super()._segment_zoomed(img, zoom, intensity)

  def _run_batch(self, images, batch, intensity=None):
    h, w = images[0].shape[:2]
    canvas = P.canvas_for(h, w)
    n = len(images)
    padded, sizes, ranges = P.pad_batch(images, batch, canvas, intensity)
    key = hashlib.sha1(padded.tobytes() + ranges.tobytes()).hexdigest()
    thr, low = float(self.mask_threshold), float(self.min_score)
    if key not in self.cache:
      raw, det = P._jitted_predict(self.model, canvas, thr, low, None)(
          self.variables, jnp.asarray(padded), jnp.asarray(sizes), jnp.asarray(ranges))
      det = {k: np.asarray(getattr(det, k)) for k in ("masks", "mask_boxes", "scores", "valid")}
      self.cache[key] = (np.asarray(raw), det)
      if self.variant[0] == "off":
        self.log += [(self.zoom_now, h, w, canvas, {k: v[i] for k, v in det.items()})
                     for i in range(n)]
    raw, det = self.cache[key]
    kind, t = self.variant
    valid = det["valid"] & (det["scores"] >= low)
    if kind == "contained":
      valid = np.stack([drop_contained({k: v[i] for k, v in det.items()}, canvas, h, w, thr, low,
                                       t) for i in range(valid.shape[0])])
    if kind != "off":
      overlap = t if kind == "claimed" else None
      raw = np.asarray(_render(canvas, thr, overlap)(det["masks"], det["mask_boxes"], det["scores"],
                                               valid))
      if kind == "claimed" and t not in self.checked:
        self.checked[t] = self._check(raw, canvas, padded, sizes, ranges, t)
    return raw[:n, :h, :w], det["scores"][:n]

  def _check(self, raw, canvas, padded, sizes, ranges, t) -> float:
    """Fraction of pixels where the re-render differs from the Predictor's own program."""
    ref, _ = P._jitted_predict(self.model, canvas, float(self.mask_threshold),
                               float(self.min_score), t)(self.variables, jnp.asarray(padded),
                                                         jnp.asarray(sizes),
                                                         jnp.asarray(ranges))
    differ = float(np.mean(np.asarray(ref) != raw))
    print(f"  check overlap {t}: re-render vs Predictor program, {differ:.2e} of pixels differ",
          flush=True)
    return differ


# ------------------------------------------------------------------ scoring


def per_threshold(gt: np.ndarray, pred: np.ndarray) -> dict:
  """TP / (TP + FP + FN) at each DSB IoU threshold (mean = mAP), AJI, predicted count."""
  table = metrics.contingency(gt, pred)
  return {"per_t": [metrics.dsb_map(table, thresholds=[t]) for t in DSB],
          "aji": metrics.aji(table), "n_pred": int(table.n_pred), "n_gt": int(table.n_gt)}


def diagnose_image(pred: VariantPredictor, gt: np.ndarray, shape: tuple[int, int]) -> dict:
  """`diagnose_pass` summed over the passes of the zoom the prediction used."""
  used = pred.used_zoom or diam.zoom_factor(pred.diameter, pred.target_diameter)
  passes = [p for p in pred.log if p[0] == used]
  zh, zw = max(1, round(shape[0] * used)), max(1, round(shape[1] * used))
  gt_z = diam.resize_labels(gt, (zh, zw)) if (zh, zw) != gt.shape else gt
  if max(zh, zw) > pred.tile_size:
    tiles = tiling.tile_grid(zh, zw, pred.tile_size, pred.overlap)
    cores = tiling.tile_cores(zh, zw, pred.tile_size, pred.overlap)
  else:
    tiles, cores = [(0, 0, zh, zw)], [(0, 0, zh, zw)]
  assert len(tiles) == len(passes), (len(tiles), len(passes))
  total = defaultdict(int)
  for (_, h, w, canvas, det), tile, core in zip(passes, tiles, cores):
    local = (core[0] - tile[0], core[1] - tile[1], core[2] - tile[0], core[3] - tile[1])
    counts = diagnose_pass(det, canvas, h, w, gt_z[tile[0]:tile[2], tile[1]:tile[3]], local,
                           float(pred.mask_threshold), float(pred.min_score))
    for k, v in counts.items():
      total[k] += v
  return dict(total)


def image_sets(cfg, sets: list[str], max_images: int) -> dict[str, list[readers.Record]]:
  """{set name: records}: 'dh360' = dsb2018 test rows of group dh360 (the model's own
  dsb2018 source, else the shared one); 'val' = the Kumar and TNBC tiles carved from the
  model's own config (one set per dataset)."""
  out = {}
  if "dh360" in sets:
    src = next((p for p in experiment.source_paths(cfg.data.source) if "dsb2018" in str(p)),
               f"{SHARED_DATASETS}/dsb2018")
    out["dsb2018 test dh360"] = readers.open_dataset(src, split="test", group="dh360",
                                                     require_labels=True)
  if "val" in sets:
    for rec in experiment.source_records(cfg, "val"):
      name = Path(rec.image_path).resolve().parent.parent.name
      if name != "dsb2018":
        out.setdefault(f"{name} val", []).append(rec)
  return {k: v[:max_images] if max_images else v for k, v in out.items()}


def summarize(rows: list[dict], variants: list[str]) -> dict:
  """Means over images of each variant's per-threshold terms, mAP and AJI; pair counts."""
  out = {}
  for v in variants:
    per_t = np.mean([r["scores"][v]["per_t"] for r in rows], axis=0)
    out[v] = {"per_t": [round(float(x), 4) for x in per_t], "map": round(float(per_t.mean()), 4),
              "aji": round(float(np.mean([r["scores"][v]["aji"] for r in rows])), 4),
              "n_pred": int(sum(r["scores"][v]["n_pred"] for r in rows))}
  diag = defaultdict(int)
  for r in rows:
    for k, c in r["diagnosis"].items():
      diag[k] += c
  return {"images": len(rows), "n_gt": int(sum(r["scores"]["off"]["n_gt"] for r in rows)),
          "variants": out, "diagnosis": dict(diag)}


def diagnosis_markdown(results: dict) -> str:
  """One row per set: the pairs with one mask >= 50 % inside the other, split by which
  member scores higher, and which member matches a nucleus better (higher best IoU)."""
  lines = ["| set | detections drawn | pairs | smaller scores higher | of which smaller "
           "matches better / worse | smaller scores lower | of which larger matches better "
           "/ worse |", "|---|" + "---:|" * 6]
  for name, res in results.items():
    d = defaultdict(int, res["diagnosis"])
    lines.append(f"| {name} | {d['detections']} | {d['pairs']} | {d['smaller_is_higher']} | "
                 f"{d['higher_is_smaller_and_better']} / {d['higher_is_smaller_and_worse']} | "
                 f"{d['smaller_is_lower']} | {d['higher_is_larger_and_better']} / "
                 f"{d['higher_is_larger_and_worse']} |")
  return "\n".join(lines)


def markdown(results: dict, variants: list[str]) -> str:
  """The diagnosis table, then one table per set: rows = variants, columns = the DSB term
  at each IoU threshold, mAP, AJI, predicted nuclei."""
  lines = [diagnosis_markdown(results), ""]
  for name, res in results.items():
    lines += [f"**{name}** ({res['images']} images, {res['n_gt']} nuclei)", "",
              "| rule | " + " | ".join(f"{t:.2f}" for t in DSB) + " | mAP | AJI | nuclei |",
              "|---|" + "---:|" * (len(DSB) + 3)]
    for v in variants:
      s = res["variants"][v]
      lines.append(f"| {v} | " + " | ".join(f"{x:.3f}" for x in s["per_t"])
                   + f" | {s['map']:.3f} | {s['aji']:.3f} | {s['n_pred']} |")
    lines.append("")
  return "\n".join(lines)


# ------------------------------------------------------------------ figure


def removed_window(before: np.ndarray, after: np.ndarray, side: int
                   ) -> tuple[int, int, int, int]:
  """(nuclei removed, pixels removed, y0, x0) of the `side` x `side` window, centred on a
  removed nucleus, that holds the most removed nuclei (centres), then removed pixels. A
  nucleus of `before` is removed when >= 80 % of its pixels are background `after` (a
  neighbour's dilation may take a few)."""
  gone = (before > 0) & (after == 0)
  ids = np.unique(before[gone])
  if not ids.size:
    return 0, 0, 0, 0
  frac = ndimage.mean(gone, before, ids)
  ids = ids[np.asarray(frac) >= 0.8]
  centres = np.array(ndimage.center_of_mass(before > 0, before, ids)).reshape(-1, 2)
  best = (0, 0, 0, 0)
  for cy, cx in centres:
    y0 = int(np.clip(cy - side // 2, 0, max(0, gone.shape[0] - side)))
    x0 = int(np.clip(cx - side // 2, 0, max(0, gone.shape[1] - side)))
    inside = ((centres[:, 0] >= y0) & (centres[:, 0] < y0 + side) & (centres[:, 1] >= x0)
              & (centres[:, 1] < x0 + side))
    cand = (int(inside.sum()), int(gone[y0:y0 + side, x0:x0 + side].sum()), y0, x0)
    best = max(best, cand)
  return best


def write_figure(path: str, item: dict, side: int, title_after: str) -> None:
  """Before / after crops: ground-truth outlines green, prediction magenta, both white."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  from pa_jax.evaluation.report import overlay_contours

  _, _, y0, x0 = item["window"]
  crop = (slice(y0, y0 + side), slice(x0, x0 + side))
  fig = Figure(figsize=(8.4, 4.6), dpi=110)
  FigureCanvasAgg(fig)
  for i, (key, title) in enumerate((("before", "before: overlaps to the higher score"),
                                    ("after", title_after))):
    ax = fig.add_subplot(1, 2, i + 1)
    image = item["image"][crop]
    ax.imshow(overlay_contours(image, item["gt"][crop], item[key][crop]),
              interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.axis("off")
  fig.suptitle(f"{item['set']} {item['id'][:16]}, crop y {y0}, x {x0}: green truth, "
               "magenta prediction, white both", fontsize=9)
  fig.tight_layout()
  Path(path).parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path)
  print("figure written to", path)


# ------------------------------------------------------------------ main


def open_model(args):
  """(config, model, variables, label) of --workdir or --model; the label names the JSON."""
  if args.workdir:
    cfg, model, variables, step = experiment.load_run(args.workdir)
    run = Path(args.workdir)
    return cfg, model, variables, f"{run.parent.name}_{run.name}_{step}"
  from pa_jax.zoo.load import open_model as open_zoo

  zm = open_zoo(args.model)
  return zm.cfg, zm.model, zm.variables, zm.meta.get("name", zm.path.stem)


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--model", default=DEFAULT_MODEL)
  ap.add_argument("--workdir", default="", help="a trained run instead of --model")
  ap.add_argument("--sets", default="dh360,val")
  ap.add_argument("--thresholds", default="0.3,0.5,0.7")
  ap.add_argument("--chosen", type=float, default=0.5, help="threshold shown in the figure")
  ap.add_argument("--max-images", type=int, default=0)
  ap.add_argument("--figure", default="docs/figures/mask_overlap.png")
  ap.add_argument("--figure-set", default="dsb2018 test dh360")
  ap.add_argument("--figure-side", type=int, default=128)
  ap.add_argument("--out", default="")
  args = ap.parse_args(argv)
  cfg, model, variables, label = open_model(args)
  out_path = args.out or f"bench/results/mask_overlap_{label}.json"
  base = P.predictor_for(cfg, model, variables)
  if base.mask_overlap is not None:
    print(f"note: the model's config asks for mask_overlap {base.mask_overlap}; "
          "the variants below set it themselves")
  pred = VariantPredictor(model, variables, base.normalize, base.mask_threshold,
                          base.dilate, base.min_score, base.tile_size, base.overlap,
                          base.batch_size, target_diameter=base.target_diameter,
                          diameter=base.diameter)
  thresholds = [float(t) for t in args.thresholds.split(",") if t]
  variants = ([("off", None)] + [("claimed", t) for t in thresholds]
              + [("contained", "smaller"), ("contained", "larger")])
  names = ["off" if k == "off" else f"claimed {t:g}" if k == "claimed"
           else f"contained {CONTAIN:g}, {t} dropped" for k, t in variants]
  chosen = f"claimed {args.chosen:g}"
  t0 = time.time()
  results, best = {}, None
  for set_name, records in image_sets(cfg, args.sets.split(","), args.max_images).items():
    rows = []
    for rec in records:
      ex = readers.load_example(rec)
      t1 = time.perf_counter()
      pred.reset()
      maps = {}
      for name, variant in zip(names, variants):
        pred.variant = variant
        maps[name] = pred(ex.image)
        if name == "off":
          diagnosis = diagnose_image(pred, ex.labels, ex.labels.shape)
      scores = {n: per_threshold(ex.labels, maps[n]) for n in names}
      rows.append({"id": rec.id, "seconds": round(time.perf_counter() - t1, 2),
                   "diameter": pred.last_diameter, "diagnosis": diagnosis,
                   "scores": {n: {**s, "per_t": [round(x, 4) for x in s["per_t"]]}
                              for n, s in scores.items()}})
      if set_name == args.figure_set and chosen in maps:
        win = removed_window(maps["off"], maps[chosen], args.figure_side)
        if best is None or win[:2] > best["window"][:2]:
          best = {"set": set_name, "id": rec.id, "image": ex.image, "gt": ex.labels,
                  "before": maps["off"], "after": maps[chosen], "window": win}
      print(f"{set_name} {rec.id[:16]}: pairs {diagnosis.get('pairs', 0)} (smaller higher "
            f"{diagnosis.get('smaller_is_higher', 0)}), mAP "
            + "  ".join(f"{n.split(' (')[0]} {np.mean(scores[n]['per_t']):.3f}" for n in names)
            + f"  ({rows[-1]['seconds']:.0f}s)", flush=True)
    results[set_name] = {**summarize(rows, names), "rows": rows}
  table = markdown(results, names)
  print(table)
  best = best if args.figure else None
  if best is not None:
    write_figure(args.figure, best, args.figure_side, f"after: mask_overlap {args.chosen:g}")
  write_result(out_path, {
      "model": label, "command": "python " + " ".join(sys.argv),
      "machine": platform.platform(), "seconds": round(time.time() - t0),
      "mask_threshold": base.mask_threshold, "score_threshold": base.min_score,
      "dilate": base.dilate, "iou_thresholds": list(DSB), "variants": names,
      "render_check_pixels_differ": {str(k): v for k, v in pred.checked.items()},
      "figure": {"path": args.figure, "set": best["set"], "id": best["id"],
                 "removed_nuclei": best["window"][0], "removed_pixels": best["window"][1],
                 "y0": best["window"][2], "x0": best["window"][3], "side": args.figure_side}
                if best else None,
      "results": results, "markdown": table})


if __name__ == "__main__":
  main()
