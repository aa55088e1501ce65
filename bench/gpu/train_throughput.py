"""Train a config for N steps as `run.py train` does (same task, optimiser, step, batch
source with prefetch) and report images/s and peak memory; no checkpoints, no evaluation.

  python bench/gpu/train_throughput.py --config configs/dh25_pa.py --steps 300 --out OUT.json
  python bench/gpu/train_throughput.py --config configs/dh25_pa.py:cpu --steps 2 --toy --out OUT.json

A frozen-BN config needs weights: without `--pretrained`, torchvision's randomly initialised
Mask R-CNN of the same backbone is exported to .npz first (needs torch; speed does not depend
on the values). Without torch, such a config falls back to `model.norm=group_norm`,
`freeze_at=0` and says so in the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "bench" / "gpu"))

import frameworks as fw  # noqa: E402

TOY = ["data.canvas_size=64", "model.backbone_width=8", "model.fpn_channels=16",
       "model.roi.fc_dim=32", "model.roi.mask_dim=8", "model.rpn.pre_nms_topk_train=64",
       "model.rpn.post_nms_topk_train=32", "model.roi.batch_per_image=32",
       "model.rpn.batch_per_image=32", "data.max_instances=64", "train.batch_size=2",
       "model.partial.max_pa_boxes=16", "model.partial.key_channels=8",
       "model.partial.value_channels=8"]


def main(argv=None) -> int:
  ap = argparse.ArgumentParser()
  ap.add_argument("--config", required=True)
  ap.add_argument("--override", action="append", default=[])
  ap.add_argument("--steps", type=int, default=300)
  ap.add_argument("--warmup", type=int, default=2, help="steps excluded from the rates (compile)")
  ap.add_argument("--pretrained", default="")
  ap.add_argument("--toy", action="store_true", help="tiny sizes (dry run)")
  ap.add_argument("--max-examples", type=int, default=0, help="0 = the whole training split")
  ap.add_argument("--max-seconds", type=float, default=0.0,
                  help="stop stepping after this many seconds of training (0 = no limit); the "
                  "steps actually run are recorded")
  ap.add_argument("--backbone-share", action="store_true",
                  help="then time the backbone alone and the bf16 matmul rate "
                  "(bench/gpu/backbone_share.py) and add them as 'backbone_share'")
  ap.add_argument("--share-deadline", type=float,
                  default=float(os.environ.get("CHECK_DEADLINE_UNIX", 0) or 0),
                  help="Unix time by which the backbone share must be done; skipped (and "
                  "said so) when less than --share-seconds remain. Default: $CHECK_DEADLINE_UNIX "
                  "(bench/gpu/check.sh sets it), 0 = no deadline")
  ap.add_argument("--share-seconds", type=float, default=60.0,
                  help="what the backbone share is budgeted to take (compile included)")
  ap.add_argument("--out", required=True)
  a = ap.parse_args(argv)

  import jax

  from pa_jax import experiment
  from pa_jax.data import pipeline
  from pa_jax.data.pipeline import shard_batch
  from pa_jax.train.optimizer import make_optimizer
  from pa_jax.train.state import create_train_state, make_data_mesh, param_count
  from pa_jax.train.step import make_train_step

  overrides = (TOY if a.toy else []) + a.override
  cfg = fw.load_config(a.config, overrides)
  res = {"command": "python " + " ".join(sys.argv), "date_utc": fw._now(), "config": a.config,
         "overrides": overrides, "machine": fw.machine(), "versions": fw._versions(),
         "devices": [str(d) for d in jax.devices()]}
  pretrained = a.pretrained
  if cfg.model.norm == "frozen_bn" and not pretrained:
    if fw._torch_available():
      pretrained = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"train_tp_{os.getpid()}.npz")
      import torch

      torch.manual_seed(0)
      base = fw.load_config(a.config, overrides)
      base.model.partial.enabled = False
      np.savez(pretrained, **fw.state_dict_numpy(fw.build_torchvision(base)))
      res["weights"] = "torchvision random init (exported here)"
    else:
      cfg.model.norm, cfg.model.freeze_at = "group_norm", 0
      res["weights"] = "no torch: model.norm=group_norm, freeze_at=0 instead of frozen_bn"
  res.update(compute_dtype=cfg.model.compute_dtype, backbone=cfg.model.backbone,
             batch_size=int(cfg.train.batch_size), canvas=int(cfg.data.canvas_size),
             partial=bool(cfg.model.partial.enabled))
  t0 = time.perf_counter()
  records = experiment.source_records(cfg, cfg.data.train_split)
  if a.max_examples:
    records = records[:a.max_examples]
  examples = pipeline.load_training_examples(records, experiment.view_spec(cfg), cfg.data.normalize,
                                             progress=False)
  res["data_seconds"] = time.perf_counter() - t0
  res["train_images"] = len(examples)
  model = experiment.build_model(cfg, experiment.dataset_statistics(examples))
  task = experiment.make_task(model, pretrained=pretrained)
  batches = experiment.batch_source(cfg, examples)
  mesh = make_data_mesh()
  tx = make_optimizer(cfg.train, task.trainable)
  t0 = time.perf_counter()
  state = create_train_state(task, cfg, jax.random.PRNGKey(cfg.seed), batches.batch(0), mesh, tx)
  jax.block_until_ready(state)
  res["init_seconds"] = time.perf_counter() - t0
  res["params"] = param_count(state.params)
  step_fn = make_train_step(task, tx, mesh, grad_accum=int(cfg.train.grad_accum))
  times, losses, wait = [], [], 0.0
  it = batches.iterate(0)
  t_all = None
  t_begin = time.perf_counter()
  done = 0
  for k in range(a.steps):
    # The limit counts from the end of the warm-up: the first step's compile (81 s for
    # paper-size dh25_pa on an H200) must not eat the time the rates are measured over.
    if a.max_seconds and k > a.warmup and time.perf_counter() - (t_all or t_begin) > a.max_seconds:
      break
    done = k + 1
    tw = time.perf_counter()
    batch = shard_batch(next(it), mesh)
    wait += time.perf_counter() - tw if k >= a.warmup else 0.0
    t0 = time.perf_counter()
    state, metrics = step_fn(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t0)
    if k == a.warmup - 1 or (a.warmup == 0 and k == 0):
      t_all = time.perf_counter()
    if k % 50 == 0 or k == a.steps - 1 or k == a.warmup:
      losses.append((k, float(metrics["loss"])))
      print(f"step {k}: loss {losses[-1][1]:.4f} {times[-1]:.3f}s", flush=True)
  timed = times[a.warmup:] or times
  n_timed = len(timed)
  wall = time.perf_counter() - (t_all or time.perf_counter())
  res.update(steps=done, steps_asked=a.steps, first_step_seconds=times[0], step_seconds_median=float(np.median(timed)),
             step_seconds_mean=float(np.mean(timed)),
             images_per_second_median_step=cfg.train.batch_size / float(np.median(timed)),
             images_per_second_wall=(cfg.train.batch_size * (done - a.warmup) / wall
                                     if wall > 0 and done > a.warmup else None),
             host_wait_seconds_for_batches=wait, timed_steps=n_timed, losses=losses,
             peak_rss_mb=fw._peak_rss_mb())
  res.update(fw._jax_mem("end"))
  Path(a.out).parent.mkdir(parents=True, exist_ok=True)
  Path(a.out).write_text(json.dumps(res, indent=1))
  print(json.dumps({k: res[k] for k in ("step_seconds_median", "images_per_second_median_step",
                                        "peak_rss_mb")}, indent=1))
  left = a.share_deadline - time.time() if a.share_deadline else None
  if a.backbone_share and left is not None and left < a.share_seconds:
    # Skipped rather than cut by check.sh's deadline, so the step still ends "ok".
    res["backbone_share"] = {"skipped": f"{left:.0f} s left before the deadline, "
                                        f"{a.share_seconds:.0f} s budgeted"}
    Path(a.out).write_text(json.dumps(res, indent=1))
    print("backbone share:", res["backbone_share"]["skipped"])
  elif a.backbone_share:
    # After the training figures are on disk: a time limit that cuts this keeps them.
    from backbone_share import backbone_share

    variables = {**state.variables, "params": state.params}
    res["backbone_share"] = backbone_share(
        model, variables, batch.pixels(), res["step_seconds_median"],
        step_jitted=getattr(step_fn, "jitted", None), step_args=(state, batch))
    Path(a.out).write_text(json.dumps(res, indent=1))
    print(json.dumps({k: v for k, v in res["backbone_share"].items()
                      if k != "backbone_seconds"}, indent=1))
  return 0


if __name__ == "__main__":
  sys.exit(main())
