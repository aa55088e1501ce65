"""pa_jax vs torchvision: the same Mask R-CNN, the same weights, the same real batch.

  python bench/frameworks.py compare --preset paper_r50 --out bench/results/frameworks_cpu_paper_r50.json
  python bench/frameworks.py compare --preset cpu_small --out bench/results/frameworks_cpu_small.json
  python bench/frameworks.py profile --out bench/results/frameworks_cpu_profile.json

`compare` (1) builds torchvision's `MaskRCNN` with the config's anchors, top-k, RoI and
detection counts, thresholds and box-coder weights (`torchvision_settings`), exports ITS
randomly initialised state dict to .npz and imports that into pa_jax through
`pa_jax/models/weights.py` (strict), (2) runs both on the same real dh360 image and reports
max abs differences of the FPN outputs and RPN objectness and the IoU match of the final
boxes, once with stock torchvision (RoIAlign `aligned=False`) and once with torchvision's
RoIAlign switched to `aligned=True` (pa_jax's choice, detectron2's ROIAlignV2), and
(3) times each framework in its own subprocess (`worker`) on the same real batch: train
step, inference per image, images/s and peak memory. Everything lands in one JSON with the
command, date, machine and versions.

Inputs are identical tensors: pa_jax's canvas image (percentile-normalised to [0, 1],
zero-padded to the canvas), handed to torchvision with image_mean 0, image_std 1 and its
resize switched off (`transform.resize` = identity); torchvision pads to a multiple of 32
with zeros exactly as pa_jax's canvas does.

This file holds the presets, the agreement check and the command line; the torchvision
model is built in `frameworks_torchvision.py`, the timing workers live in
`frameworks_timing.py` and the per-layer profile in `frameworks_profile.py` (their names are
importable from here too). The pure pieces (`preset`, `torchvision_settings`,
`tv_grid_anchors`, `summarize_agreement`, `box_match`) need neither torch nor a dataset and
are unit-tested in tests/test_bench_frameworks.py.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))  # as when run as a script

from bench_config import load_config  # noqa: E402
# The pieces live in three modules; importing them here keeps `frameworks.<name>` working
# for the tests, bench/profile_step.py and bench/gpu/train_throughput.py.
from frameworks_profile import XLA_VARIANTS, profile_jax, profile_torch  # noqa: E402,F401
from frameworks_timing import (  # noqa: E402,F401
    MAX_EXAMPLES, _jax_mem, _now, _peak_rss_mb, _versions, machine, pa_jax_setup,
    pa_jax_variables, test_canvases, time_pa_jax, time_torchvision)
from frameworks_torchvision import (  # noqa: E402,F401
    build_torchvision, count_roi_positives, pa_jax_cell_anchors, set_roi_align_aligned,
    state_dict_numpy, torch_inputs, torchvision_settings, tv_grid_anchors,
    tv_predict_unpasted)

# --------------------------------------------------------------------------- presets

#: name -> (config spec, overrides). Batch and canvas are the issue's: dh360 canvas 384.
PRESETS = {
    # The paper's R50-FPN baseline (issue 12 item 5), CPU-sized batch 2.
    "paper_r50": ("configs/dh100_baseline.py", ["model.backbone=resnet50", "train.batch_size=2"]),
    # The same at GPU batch size, R50 and ResNeXt-101 64x4d (bench/gpu/check.sh).
    "gpu_r50": ("configs/dh100_baseline.py", ["model.backbone=resnet50", "train.batch_size=8"]),
    "gpu_x101": ("configs/dh100_baseline.py", ["model.backbone=resnext101_64x4d",
                                               "train.batch_size=8"]),
    # The CPU-sized family (base.cpu_sized): ResNet-18 at half width, GroupNorm, 256 canvas,
    # smaller heads and top-k. The baseline (partial module off), so that torchvision has
    # the same network.
    "cpu_small": ("configs/dh100_baseline.py:cpu", []),
    # Toy size for --dry-run / tests: tiny everything.
    "toy": ("configs/dh100_baseline.py:cpu", [
        "data.canvas_size=64", "model.backbone_width=8", "model.fpn_channels=16",
        "model.roi.fc_dim=32", "model.roi.mask_dim=8", "model.rpn.pre_nms_topk_train=64",
        "model.rpn.post_nms_topk_train=32", "model.rpn.pre_nms_topk_test=64",
        "model.rpn.post_nms_topk_test=32", "model.roi.batch_per_image=32",
        "model.rpn.batch_per_image=32", "model.roi.max_detections=16",
        "data.max_instances=64", "train.batch_size=2"]),
}


#: Every preset runs pa_jax as torchvision computes: on the whole padded canvas (torchvision
#: has no `model.mask_padding`), so both frameworks run the same network.
SAME_AS_TORCHVISION = ["model.mask_padding=False"]


def preset(name: str, extra: Sequence[str] = ()) -> tuple[str, list[str]]:
  """(config spec, overrides) of a preset, plus `extra` overrides (later ones win)."""
  if name not in PRESETS:
    raise ValueError(f"unknown preset {name!r}; one of {sorted(PRESETS)}")
  spec, ov = PRESETS[name]
  return spec, SAME_AS_TORCHVISION + list(ov) + list(extra)


# ---------------------------------------------------------------------------- agreement


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  a = np.asarray(a, np.float64).reshape(-1, 4)
  b = np.asarray(b, np.float64).reshape(-1, 4)
  lt = np.maximum(a[:, None, :2], b[None, :, :2])
  rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
  inter = np.prod(np.clip(rb - lt, 0, None), axis=-1)
  area = lambda x: np.prod(np.clip(x[:, 2:] - x[:, :2], 0, None), axis=-1)  # noqa: E731
  union = area(a)[:, None] + area(b)[None, :] - inter
  return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def box_match(ref: np.ndarray, other: np.ndarray, thresholds=(0.5, 0.9, 0.99)) -> dict:
  """How many `ref` boxes have a partner in `other` (best IoU) above each threshold, both ways."""
  ref, other = np.asarray(ref).reshape(-1, 4), np.asarray(other).reshape(-1, 4)
  out = {"n_ref": int(len(ref)), "n_other": int(len(other))}
  if len(ref) == 0 or len(other) == 0:
    for t in thresholds:
      out[f"ref_matched_iou{t}"] = float(len(ref) == len(other))
      out[f"other_matched_iou{t}"] = float(len(ref) == len(other))
    return out
  iou = box_iou(ref, other)
  best_r, best_o = iou.max(axis=1), iou.max(axis=0)
  for t in thresholds:
    out[f"ref_matched_iou{t}"] = float(np.mean(best_r >= t))
    out[f"other_matched_iou{t}"] = float(np.mean(best_o >= t))
  k = min(len(ref), len(other))
  out["top_k_compared"] = k
  out["top_k_same_order_iou0.99"] = float(np.mean(np.diag(iou[:k, :k]) >= 0.99))
  return out


def summarize_agreement(pairs: dict) -> dict:
  """{name: (a, b)} -> {name: {max_abs, max_rel (to max |b|), shape}} (numpy only)."""
  out = {}
  for name, (a, b) in pairs.items():
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
      out[name] = {"shape_a": list(a.shape), "shape_b": list(b.shape), "error": "shape mismatch"}
      continue
    d = np.abs(a - b)
    scale = float(np.max(np.abs(b))) if b.size else 0.0
    out[name] = {"shape": list(a.shape), "max_abs": float(d.max()) if d.size else 0.0,
                 "max_rel": float(d.max() / scale) if scale > 0 else 0.0,
                 "ref_max_abs": scale}
  return out


def agreement(cfg, model, variables, tv_model, image_batch) -> dict:
  """FPN, RPN objectness and final detections of both frameworks on image 0 of a batch."""
  import jax
  import jax.numpy as jnp
  import torch

  from pa_jax.models.mask_rcnn import MaskRCNN

  b1 = jax.tree.map(lambda x: np.asarray(x)[:1], image_batch)
  img = jnp.asarray(b1.image, jnp.float32)

  def feats_and_rpn(m, x):
    f = m.features(x)
    out = m.rpn(f)
    return f, out.objectness, out.deltas

  # Full float32 matmuls and convolutions: on a GPU JAX's default is TF32 (10-bit
  # mantissa), which would make this a check of the precision mode, not of the models.
  with jax.default_matmul_precision("highest"):
    f_j, obj_j, dlt_j = jax.jit(lambda v, x: model.apply(v, x, method=feats_and_rpn))(
        variables, img)
    det = jax.jit(lambda v, x, s: model.apply(v, x, s, method=MaskRCNN.predict))(
        variables, img, jnp.asarray(b1.image_size))
  tv_model.eval()
  images, _ = torch_inputs(b1, "cpu", with_targets=False)
  with torch.no_grad():
    il, _ = tv_model.transform(images)
    f_t = tv_model.backbone(il.tensors)
    obj_t, dlt_t = tv_model.rpn.head(list(f_t.values()))
  pairs = {}
  for k, name in zip(["0", "1", "2", "3", "pool"], ["p2", "p3", "p4", "p5", "p6"]):
    pairs[f"fpn_{name}"] = (np.asarray(f_j[name]), f_t[k].numpy().transpose(0, 2, 3, 1))
  a = obj_t[0].shape[1]
  for i, name in enumerate(["p2", "p3", "p4", "p5", "p6"]):
    oj = np.asarray(obj_j[name]).reshape(1, -1)
    ot = obj_t[i].numpy().transpose(0, 2, 3, 1).reshape(1, -1)
    pairs[f"rpn_objectness_{name}"] = (oj, ot)
    dj = np.asarray(dlt_j[name]).reshape(1, -1, 4)
    n, _, h, w = dlt_t[i].shape
    dt = dlt_t[i].numpy().reshape(n, a, 4, h, w).transpose(0, 3, 4, 1, 2).reshape(1, -1, 4)
    pairs[f"rpn_deltas_{name}"] = (dj, dt)
  res = {"tensors": summarize_agreement(pairs), "input_shape": list(img.shape),
         "image_size": [int(x) for x in np.asarray(b1.image_size[0])]}
  valid = np.asarray(det.valid[0])
  boxes_j = np.asarray(det.boxes[0])[valid]
  scores_j = np.asarray(det.scores[0])[valid]
  for aligned in (False, True):
    set_roi_align_aligned(aligned)
    with torch.no_grad():
      out_t = tv_model(images)[0]
    bt, st = out_t["boxes"].numpy(), out_t["scores"].numpy()
    m = box_match(bt, boxes_j)
    # Scores of matched boxes (best IoU partner).
    if len(bt) and len(boxes_j):
      iou = box_iou(bt, boxes_j)
      j = iou.argmax(1)
      ok = iou.max(1) >= 0.99
      m["matched_score_max_abs"] = float(np.max(np.abs(st[ok] - scores_j[j[ok]]))) if ok.any() else None
      k = min(len(bt), len(boxes_j), 100)
      m["top100_box_max_abs"] = float(np.max(np.abs(bt[:k] - boxes_j[:k])))
    m["torchvision_detections"] = int(len(bt))
    m["pa_jax_detections"] = int(len(boxes_j))
    res[f"detections_tv_aligned_{aligned}"] = m
  set_roi_align_aligned(False)
  return res


def cmd_profile_worker(a) -> int:
  res = (profile_torch(a.size, a.reps, a.conv_only) if a.framework == "torch"
         else profile_jax(a.size, a.reps, a.layouts, a.conv_only))
  res["versions"] = _versions()
  Path(a.out).write_text(json.dumps(res, indent=1))
  return 0


def cmd_profile(a) -> int:
  out = Path(a.out)
  result = {"command": "python " + " ".join(sys.argv), "date_utc": _now(), "machine": machine(),
            "versions": _versions(), "input": [1, a.size, a.size, 3], "reps": a.reps,
            "runs": {}}
  jobs = [("torch", "torch", "")] if _torch_available() and not a.no_torch else []
  variants = a.variants.split(",") if a.variants else list(XLA_VARIANTS)
  jobs += [("jax", f"jax_{v}", XLA_VARIANTS[v]) for v in variants]
  for fw, name, flags in jobs:
    wout = f"{out}.{name}.tmp.json"
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + flags).strip()
    cmd = [sys.executable, str(Path(__file__).resolve()), "profile-worker", "--framework", fw,
           "--size", str(a.size), "--reps", str(a.reps), "--out", wout]
    if name == "jax_default":
      cmd.append("--layouts")
    if a.conv_only:
      cmd.append("--conv-only")
    print("+", f"XLA_FLAGS='{env['XLA_FLAGS']}'" if fw == "jax" else "", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=str(ROOT), env=env, capture_output=True, text=True)
    run = {"returncode": p.returncode, "wall_seconds": time.perf_counter() - t0,
           "xla_flags": flags, "load_avg_after": list(os.getloadavg())}
    if p.returncode == 0 and os.path.exists(wout):
      run.update(json.loads(Path(wout).read_text()))
      os.remove(wout)
    else:
      run["stderr_tail"] = p.stderr[-1500:]
    result["runs"][name] = run
    out.write_text(json.dumps(result, indent=1))
    short = {k: (v.get("median") if isinstance(v, dict) and "median" in v else None)
             for k, v in run.items() if k.startswith("r50_")}
    print(name, p.returncode, json.dumps(short), flush=True)
  return 0


# ---------------------------------------------------------------------------------- CLI


def cmd_worker(a) -> int:
  spec, ov = preset(a.preset, a.override)
  cfg = load_config(spec, ov)
  if a.framework == "pa_jax":
    res = time_pa_jax(cfg, a.npz, a.steps, a.warmup, a.predict_images, a.dtype)
  else:
    res = time_torchvision(cfg, a.npz, a.steps, a.warmup, a.predict_images, a.dtype, a.device)
  res["versions"] = _versions()
  Path(a.out).write_text(json.dumps(res, indent=1))
  return 0


def cmd_export(a) -> int:
  """torchvision's randomly initialised Mask R-CNN of a preset's config, as .npz (weights
  for a frozen-BN config on a machine without downloads; speed does not depend on them)."""
  import torch

  spec, ov = preset(a.preset, a.override)
  cfg = load_config(spec, ov)
  torch.manual_seed(a.seed)
  sd = state_dict_numpy(build_torchvision(cfg, "cpu"))
  np.savez(a.out, **sd)
  print(f"{a.out}: {len(sd)} tensors ({cfg.model.backbone}, random init)")
  return 0


def _torch_available() -> bool:
  return importlib.util.find_spec("torch") is not None and importlib.util.find_spec("torchvision") is not None


def cmd_compare(a) -> int:
  spec, ov = preset(a.preset, a.override)
  cfg = load_config(spec, ov)
  # The agreement check is a float32 one: paper-size configs default to bfloat16 compute,
  # which put the FPN 1.7 % apart on an H200 (2026-11-30). The timed workers set their own
  # dtype (--dtypes).
  cfg.model.compute_dtype = "float32"
  out = Path(a.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  result = {"command": "python " + " ".join(sys.argv), "date_utc": _now(),
            "preset": a.preset, "config": spec, "overrides": ov, "machine": machine(),
            "versions": _versions(), "device": a.device, "dtypes": a.dtypes,
            "steps": a.steps, "warmup": a.warmup, "predict_images": a.predict_images,
            "canvas": int(cfg.data.canvas_size), "batch_size": int(cfg.train.batch_size)}
  if not _torch_available():
    result["skipped"] = "torch/torchvision not installed (pip install -r requirements-bench.txt)"
    out.write_text(json.dumps(result, indent=1))
    print(result["skipped"])
    return 0
  import torch

  torch.manual_seed(a.seed)
  tv = build_torchvision(cfg, "cpu")
  npz = str(out.with_suffix("")) + "_weights.npz" if a.keep_weights else os.path.join(
      os.environ.get("TMPDIR", "/tmp"), f"frameworks_{a.preset}_{os.getpid()}.npz")
  sd = state_dict_numpy(tv)
  np.savez(npz, **sd)
  t0 = time.perf_counter()
  model, examples, batches, first = pa_jax_setup(cfg)
  variables, report = pa_jax_variables(model, first, sd)
  result["weights"] = {"tensors_in_state_dict": len(sd), "loaded": report["loaded"],
                       "skipped": report["skipped"], "unexpected": report["unexpected"],
                       "missing": report["missing"]}
  if a.agreement_from:
    prev = json.loads(Path(a.agreement_from).read_text())
    result["agreement"] = prev["agreement"]
    result["agreement_note"] = f"copied from {prev.get('command')} ({prev.get('date_utc')})"
  elif not a.no_agree:
    tb, recs = test_canvases(cfg, 1)
    result["agreement"] = agreement(cfg, model, variables, tv, tb)
    result["agreement"]["image_id"] = recs[0].id if hasattr(recs[0], "id") else str(recs[0])
    result["agreement_seconds"] = time.perf_counter() - t0
    print(json.dumps(result["agreement"], indent=1))
  del tv, variables
  result["runs"] = []
  frameworks = [f for f in a.frameworks.split(",") if f]
  for dtype in a.dtypes.split(","):
    for fw in frameworks:
      wout = f"{out}.{fw}.{dtype}.tmp.json"
      cmd = [sys.executable, str(Path(__file__).resolve()), "worker", "--framework", fw,
             "--preset", a.preset, "--npz", npz, "--steps", str(a.steps), "--warmup",
             str(a.warmup), "--predict-images", str(a.predict_images), "--dtype", dtype,
             "--device", a.device, "--out", wout] + sum((["--override", o] for o in a.override), [])
      print("+", " ".join(cmd), flush=True)
      t0 = time.perf_counter()
      p = subprocess.run(cmd, cwd=str(ROOT))
      run = {"framework": fw, "compute_dtype": dtype, "returncode": p.returncode,
             "wall_seconds": time.perf_counter() - t0, "load_avg_after": list(os.getloadavg())}
      if p.returncode == 0 and os.path.exists(wout):
        run.update(json.loads(Path(wout).read_text()))
        os.remove(wout)
      result["runs"].append(run)
      out.write_text(json.dumps(result, indent=1))
  result["ratios"] = ratios(result["runs"])
  if not a.keep_weights and os.path.exists(npz):
    os.remove(npz)
  out.write_text(json.dumps(result, indent=1))
  print(json.dumps(result["ratios"], indent=1))
  return 0


def ratios(runs: list) -> dict:
  """pa_jax / torchvision time ratios per dtype (> 1: pa_jax slower)."""
  out = {}
  by = {(r.get("framework"), r.get("compute_dtype")): r for r in runs}
  for (fw, dt), r in by.items():
    if fw != "pa_jax" or ("torchvision", dt) not in by:
      continue
    t = by[("torchvision", dt)]
    d = {}
    for key in ("train_step_median", "predict_seconds_per_image", "train_step_cpu_median",
                "predict_cpu_seconds_per_image", "predict_unpasted_seconds_per_image"):
      if r.get(key) and t.get(key):
        d[key + "_ratio"] = r[key] / t[key]
    out[dt] = d
  return out


def mask_work(run: dict) -> str:
  """'positives (slots)' of a run's mask head in training: pa_jax computes its static slots
  whatever the positives; torchvision only its positives. '–' for runs from before it was
  recorded."""
  pos = run.get("mask_positives_per_image")
  if pos is None:
    return "–"
  slots = run.get("mask_slots_per_image")
  return f"{pos:.1f}" + (f" ({slots})" if slots else "")


def markdown(paths: Sequence[str]) -> str:
  """Markdown rows (one per framework run) of compare JSON files, for docs/performance.md."""
  rows = ["| preset | framework | dtype | train step s (CPU-s) | train img/s | predict s/img (CPU-s) "
          "| predict s/img, masks not pasted | detections/img | mask-head positives/img (slots) "
          "| peak RSS MB | device peak MB |",
          "|---|---|---|---|---|---|---|---|---|---|---|"]
  f = lambda x, d=2: "–" if x is None else f"{x:.{d}f}"  # noqa: E731
  for path in paths:
    d = json.loads(Path(path).read_text())
    for r in d.get("runs", []):
      if r.get("returncode"):
        rows.append(f"| {d['preset']} | {r['framework']} | {r['compute_dtype']} | failed (rc {r['returncode']}) |||||||")
        continue
      dev = r.get("device_peak_mb_train") or r.get("device_peak_mb") or r.get("device_peak_mb_end")
      rows.append(
          f"| {d['preset']} | {r['framework']} | {r['compute_dtype']} | {f(r.get('train_step_median'))} "
          f"({f(r.get('train_step_cpu_median'))}) | {f(r.get('train_images_per_second'), 3)} | "
          f"{f(r.get('predict_seconds_per_image'))} ({f(r.get('predict_cpu_seconds_per_image'))}) | "
          f"{f(r.get('predict_unpasted_seconds_per_image'), 3)} | {r.get('detections_per_image')} | "
          f"{mask_work(r)} | {f(r.get('peak_rss_mb'), 0)} | {f(dev, 0)} |")
  return "\n".join(rows)


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  sub = ap.add_subparsers(dest="cmd", required=True)
  p = sub.add_parser("table")
  p.add_argument("json", nargs="+")
  p = sub.add_parser("profile")
  p.add_argument("--size", type=int, default=360)
  p.add_argument("--reps", type=int, default=3)
  p.add_argument("--variants", default="", help="comma list of XLA_VARIANTS (default: all)")
  p.add_argument("--no-torch", action="store_true")
  p.add_argument("--conv-only", action="store_true", help="only the per-conv fwd/dgrad/wgrad split")
  p.add_argument("--out", required=True)
  p = sub.add_parser("profile-worker")
  p.add_argument("--framework", choices=["jax", "torch"], required=True)
  p.add_argument("--size", type=int, default=360)
  p.add_argument("--reps", type=int, default=3)
  p.add_argument("--layouts", action="store_true")
  p.add_argument("--conv-only", action="store_true")
  p.add_argument("--out", required=True)
  p = sub.add_parser("export")
  p.add_argument("--preset", default="paper_r50", choices=sorted(PRESETS))
  p.add_argument("--override", action="append", default=[], help="config override a.b=c")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", required=True)
  for name in ("compare", "worker"):
    p = sub.add_parser(name)
    p.add_argument("--preset", default="paper_r50", choices=sorted(PRESETS))
    p.add_argument("--override", action="append", default=[], help="config override a.b=c")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--predict-images", type=int, default=2)
    p.add_argument("--device", default="cpu", help="torch device: cpu or cuda")
    p.add_argument("--out", required=True)
    if name == "compare":
      p.add_argument("--dtypes", default="float32", help="comma list: float32,bfloat16")
      p.add_argument("--frameworks", default="pa_jax,torchvision")
      p.add_argument("--seed", type=int, default=0)
      p.add_argument("--no-agree", action="store_true")
      p.add_argument("--agreement-from", default="", help="reuse the agreement of an earlier JSON")
      p.add_argument("--keep-weights", action="store_true")
    else:
      p.add_argument("--framework", required=True, choices=["pa_jax", "torchvision"])
      p.add_argument("--npz", default=None)
      p.add_argument("--dtype", default="float32")
  a = ap.parse_args(argv)
  return {"compare": cmd_compare, "worker": cmd_worker, "export": cmd_export,
          "profile": cmd_profile, "profile-worker": cmd_profile_worker,
          "table": lambda a: print(markdown(a.json)) or 0}[a.cmd](a)


if __name__ == "__main__":
  sys.exit(main())
