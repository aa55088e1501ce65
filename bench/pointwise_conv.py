"""Convolutions as flax convs vs as channel matmuls (`models/layers`), in one train step.

`--layer pointwise` (the default) switches every 1x1 convolution between `nn.Conv` and
`PointwiseConv`; `--layer transpose` switches the mask head's 2x2 stride-2 transposed
convolution between `nn.ConvTranspose` and `TransposeConv2x2`; `--layer conv3x3` switches the
mask head's 3x3 convolutions' weight gradient between XLA's and `Conv3x3`'s nine matmuls.

Same model, same parameters, same batch, one process: both train steps are compiled, then
timed in alternation (A B A B ...) so that the machine's load hits both alike. Reports the
first step (compile) and the median wall and CPU seconds of the timed steps, the ratio, and
how far the two losses are apart (float rounding only).

    python bench/pointwise_conv.py --config configs/zoo_nuclei.py:cpu --reps 6 \\
        --out bench/results/pointwise_conv_cpu.json
    python bench/pointwise_conv.py --backbone resnet50 --reps 4 \\
        --out bench/results/pointwise_conv_r50_fpn.json
    python bench/pointwise_conv.py --layer transpose --config configs/zoo_nuclei.py:cpu \\
        --reps 6 --out bench/results/transpose_conv_cpu.json

`--backbone NAME` times the paper's backbone + FPN alone (forward and backward of a sum of
its outputs, float32, frozen BN as in the paper configs, batch 2 at 384x384), where the 1x1
convolutions are wide (64->256 ... 2048 channels): the whole Mask R-CNN at paper size takes
over 20 minutes to compile on this CPU.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_config import load_config, write_result  # noqa: E402

#: --layer -> the `pa_jax.models.layers` flag it switches (read when a model is traced).
SWITCHES = {"pointwise": "POINTWISE_AS_MATMUL", "transpose": "TRANSPOSE_CONV_AS_MATMUL",
            "conv3x3": "CONV3X3_WGRAD_AS_MATMUL"}


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--config", default="configs/zoo_nuclei.py:cpu")
  ap.add_argument("--override", action="append", default=[])
  ap.add_argument("--reps", type=int, default=6, help="timed steps per implementation")
  ap.add_argument("--max-examples", type=int, default=16)
  ap.add_argument("--backbone", default="", help="time backbone + FPN alone (e.g. resnet50)")
  ap.add_argument("--layer", choices=sorted(SWITCHES), default="pointwise",
                  help="which layers to switch (train-step mode)")
  ap.add_argument("--out", default="")
  a = ap.parse_args(argv)
  if a.backbone:
    return backbone_main(a, argv)

  import jax

  from pa_jax import experiment
  from pa_jax.data import pipeline
  from pa_jax.data.pipeline import shard_batch
  from pa_jax.models import layers
  from pa_jax.train.optimizer import make_optimizer
  from pa_jax.train.state import create_train_state, make_data_mesh
  from pa_jax.train.step import make_train_step

  cfg = load_config(a.config, a.override)
  records = experiment.source_records(cfg, cfg.data.train_split)[:a.max_examples]
  examples = pipeline.load_training_examples(records, experiment.view_spec(cfg),
                                             cfg.data.normalize, progress=False)
  model = experiment.build_model(cfg, experiment.dataset_statistics(examples))
  task = experiment.make_task(model)
  batches = experiment.batch_source(cfg, examples)
  batch0 = batches.batch(0)
  mesh = make_data_mesh()
  tx = make_optimizer(cfg.train, task.trainable)
  batch = shard_batch(batch0, mesh)

  impls = {"conv": False, "matmul": True}
  states, steps, res = {}, {}, {}
  for name, flag in impls.items():
    setattr(layers, SWITCHES[a.layer], flag)  # read while tracing: each step keeps its own
    states[name] = create_train_state(task, cfg, jax.random.PRNGKey(cfg.seed), batch0, mesh, tx)
    steps[name] = make_train_step(task, tx, mesh, grad_accum=int(cfg.train.grad_accum))
    t0 = time.perf_counter()
    states[name], m = steps[name](states[name], batch)
    jax.block_until_ready(m)
    res[name] = {"first_step_seconds": time.perf_counter() - t0, "wall": [], "cpu": [],
                 "first_loss": float(m["loss"])}
  setattr(layers, SWITCHES[a.layer], True)
  for _ in range(a.reps):
    for name in impls:
      t0, c0 = time.perf_counter(), time.process_time()
      states[name], m = steps[name](states[name], batch)
      jax.block_until_ready(m)
      res[name]["wall"].append(time.perf_counter() - t0)
      res[name]["cpu"].append(time.process_time() - c0)
      res[name]["last_loss"] = float(m["loss"])
  for r in res.values():
    r["wall_median"], r["cpu_median"] = float(np.median(r["wall"])), float(np.median(r["cpu"]))
  out = {"command": "python " + " ".join(["bench/pointwise_conv.py"] + (argv or sys.argv[1:])),
         "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
         "layer": a.layer, "config": a.config, "overrides": a.override, "batch_size": int(cfg.train.batch_size),
         "canvas": int(cfg.data.canvas_size), "load_avg_after": list(os.getloadavg()),
         "results": res,
         "matmul_over_conv_wall": res["matmul"]["wall_median"] / res["conv"]["wall_median"],
         "matmul_over_conv_cpu": res["matmul"]["cpu_median"] / res["conv"]["cpu_median"],
         "first_loss_abs_diff": abs(res["matmul"]["first_loss"] - res["conv"]["first_loss"])}
  for name, r in res.items():
    print(f"{name:7s} first step {r['first_step_seconds']:.1f} s, then {r['wall_median']:.3f} s "
          f"wall / {r['cpu_median']:.3f} CPU-s per step (median of {a.reps})")
  print(f"matmul / conv: {out['matmul_over_conv_wall']:.2f}x wall, "
        f"{out['matmul_over_conv_cpu']:.2f}x CPU-s; first-step losses "
        f"{res['conv']['first_loss']:.6f} vs {res['matmul']['first_loss']:.6f}")
  if a.out:
    write_result(a.out, out)
  return 0


def backbone_main(a, argv) -> int:
  import jax
  import jax.numpy as jnp

  from pa_jax.models import layers
  from pa_jax.models.fpn import FPN
  from pa_jax.models.resnet import resnet

  x = jax.random.normal(jax.random.PRNGKey(0), (2, 384, 384, 3))
  net = resnet(a.backbone, norm="frozen_bn", freeze_at=0)
  fpn = FPN(out_channels=256)

  def loss(params, x):
    feats = net.apply(params["net"], x)
    return sum(jnp.sum(v) for v in fpn.apply(params["fpn"], feats).values())

  res = {}
  for name, flag in (("conv", False), ("matmul", True)):
    layers.POINTWISE_AS_MATMUL = flag
    pn = net.init(jax.random.PRNGKey(1), x)
    params = {"net": pn, "fpn": fpn.init(jax.random.PRNGKey(2), net.apply(pn, x))}
    fn = jax.jit(jax.grad(loss))
    t0 = time.perf_counter()
    jax.block_until_ready(fn(params, x))
    res[name] = {"fn": fn, "params": params, "first_step_seconds": time.perf_counter() - t0,
                 "wall": [], "cpu": []}
  layers.POINTWISE_AS_MATMUL = True
  for _ in range(a.reps):
    for r in res.values():
      t0, c0 = time.perf_counter(), time.process_time()
      jax.block_until_ready(r["fn"](r["params"], x))
      r["wall"].append(time.perf_counter() - t0)
      r["cpu"].append(time.process_time() - c0)
  for r in res.values():
    del r["fn"], r["params"]
    r["wall_median"], r["cpu_median"] = float(np.median(r["wall"])), float(np.median(r["cpu"]))
  out = {"command": "python " + " ".join(["bench/pointwise_conv.py"] + (argv or sys.argv[1:])),
         "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
         "backbone": a.backbone, "input": [2, 384, 384, 3], "load_avg_after": list(os.getloadavg()),
         "results": res,
         "matmul_over_conv_wall": res["matmul"]["wall_median"] / res["conv"]["wall_median"],
         "matmul_over_conv_cpu": res["matmul"]["cpu_median"] / res["conv"]["cpu_median"]}
  for name, r in res.items():
    print(f"{name:7s} first call {r['first_step_seconds']:.1f} s, then {r['wall_median']:.3f} s "
          f"wall / {r['cpu_median']:.3f} CPU-s (median of {a.reps})")
  print(f"matmul / conv: {out['matmul_over_conv_wall']:.2f}x wall, "
        f"{out['matmul_over_conv_cpu']:.2f}x CPU-s")
  if a.out:
    write_result(a.out, out)
  return 0


if __name__ == "__main__":
  sys.exit(main())
