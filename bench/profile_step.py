"""Where one pa_jax train step spends its time, by model part and pass, from an XLA trace.

  python bench/profile_step.py --preset paper_r50 --out bench/results/profile_step_paper_r50.json
  python bench/profile_step.py --preset paper_r50 --npz <torchvision state dict .npz> ...

Builds the preset's model (bench/frameworks.py presets, float32 unless --dtype), runs
`--warmup` steps over the same real dh360 batches the framework comparison uses, then
records one more step under `jax.profiler` (a Perfetto trace) and sums the executed XLA
ops' durations:
  * by model part: the first matching scope of each op's `op_name` metadata (`mask_head`,
    `_roi_features` (RoIAlign), `backbone`, `fpn`, `_rpn`, `box_head`, ...), split into the
    forward pass and the backward pass (`transpose(` in the name);
  * the slowest single ops, with their HLO text (shape, layout, fusion kind), which is how
    the slow mask-head input gradient and RoIAlign backward of docs/performance.md were
    found.
Durations are wall time of each op on the host threads that ran it, so parts that ran in
parallel can add up to more than the step. Used on the CPU backend only so far: on a GPU
the trace's op events come from device lanes, which this summary has not been checked
against. The trace itself lives in a temporary folder and is deleted after summing.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

#: Model scopes in `op_name` metadata, in the order they are matched (first wins).
PARTS = ("mask_head", "mask_targets", "_roi_features", "box_head", "backbone", "fpn", "_rpn",
         "generate_proposals", "rpn_targets", "sample_rois", "attention", "centerness")


def hlo_ops(text: str) -> dict:
  """{instruction name: its HLO text after `=`} of a compiled module's text."""
  out = {}
  for line in text.splitlines():
    m = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = (.*)", line)
    if m:
      out[m.group(1)] = m.group(2)
  return out


def part_of(hlo: str | None) -> tuple[str, str]:
  """(model part, 'fwd' | 'bwd') of one HLO instruction from its op_name metadata."""
  m = re.search(r'op_name="([^"]+)"', hlo or "")
  if not m:
    return "unattributed", "fwd"
  name = m.group(1)
  pass_ = "bwd" if "transpose(" in name else "fwd"
  for p in PARTS:
    if p in name:
      return p, pass_
  return "other:" + name.rsplit("/", 1)[-1], pass_


def op_durations(trace_dir: str) -> collections.Counter:
  """Microseconds per executed op name, summed over the Perfetto trace in `trace_dir`."""
  files = sorted(glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True))
  if not files:
    raise FileNotFoundError(f"{trace_dir}: no .trace.json.gz written by jax.profiler")
  ev = json.load(gzip.open(files[-1]))
  ev = ev["traceEvents"] if isinstance(ev, dict) else ev
  tot = collections.Counter()
  for e in ev:
    if e.get("ph") == "X" and not e["name"].startswith(("ThunkExecutor", "$", "Slinky")):
      tot[e["name"]] += e.get("dur", 0)
  return tot


def summarize(tot: collections.Counter, ops: dict, top: int) -> dict:
  parts = collections.Counter()
  for name, us in tot.items():
    if name in ops:
      parts["/".join(part_of(ops[name]))] += us
  return {
      "ms_by_part": {k: round(v / 1e3, 1) for k, v in parts.most_common()},
      "ms_attributed_total": round(sum(parts.values()) / 1e3, 1),
      "slowest_ops": [{"ms": round(us / 1e3, 1), "op": n, "hlo": ops[n][:400]}
                      for n, us in tot.most_common() if n in ops][:top],
  }


def main(argv=None) -> int:
  import frameworks as fw

  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--preset", default="paper_r50", choices=sorted(fw.PRESETS))
  ap.add_argument("--override", action="append", default=[], help="config override a.b=c")
  ap.add_argument("--npz", default=None, help="torchvision state dict to import (optional)")
  ap.add_argument("--dtype", default="float32")
  ap.add_argument("--warmup", type=int, default=3)
  ap.add_argument("--top", type=int, default=25)
  ap.add_argument("--roi-align-backward", default="auto", choices=("auto", "dense", "scatter"),
                  help="pa_jax.ops.roi_align.BACKWARD for this run (dense: before 2026-12-01)")
  ap.add_argument("--conv3x3-grads", default="cpu", choices=("cpu", "xla"),
                  help="xla: the mask head's 3x3 convs differentiated by XLA "
                       "(layers.CONV3X3_WGRAD_AS_MATMUL=False), not by their custom backward")
  ap.add_argument("--out", required=True)
  a = ap.parse_args(argv)

  import jax

  from pa_jax import experiment
  from pa_jax.data.pipeline import shard_batch
  from pa_jax.models import layers
  from pa_jax.ops import roi_align
  from pa_jax.train.optimizer import make_optimizer
  from pa_jax.train.state import create_train_state, make_data_mesh
  from pa_jax.train.step import make_train_step

  roi_align.BACKWARD = a.roi_align_backward
  layers.CONV3X3_WGRAD_AS_MATMUL = "cpu" if a.conv3x3_grads == "cpu" else False
  spec, ov = fw.preset(a.preset, a.override)
  cfg = fw.load_config(spec, ov)
  cfg.model.compute_dtype = a.dtype
  model, _, batches, first = fw.pa_jax_setup(cfg)
  task = experiment.make_task(model, pretrained=a.npz)
  mesh = make_data_mesh()
  tx = make_optimizer(cfg.train, task.trainable)
  state = create_train_state(task, cfg, jax.random.PRNGKey(cfg.seed), first, mesh, tx)
  step = make_train_step(task, tx, mesh, grad_accum=1)
  times = []
  for k in range(a.warmup):
    t0 = time.perf_counter()
    state, m = step(state, shard_batch(batches.batch(k % 4), mesh))
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t0)
  batch = shard_batch(batches.batch(a.warmup % 4), mesh)
  with tempfile.TemporaryDirectory() as trace_dir:
    jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
    t0 = time.perf_counter()
    state, m = step(state, batch)
    jax.block_until_ready(m)
    traced = time.perf_counter() - t0
    jax.profiler.stop_trace()
    tot = op_durations(trace_dir)
  ops = hlo_ops(step.jitted.lower(state, batch).compile().as_text())
  res = {"command": "python bench/profile_step.py " + " ".join(argv or sys.argv[1:]),
         "date": fw._now(), "preset": a.preset, "overrides": ov, "dtype": a.dtype,
         "roi_align_backward": a.roi_align_backward, "conv3x3_grads": a.conv3x3_grads,
         "machine": fw.machine(), "warmup_step_seconds": times,
         "traced_step_seconds": traced,
         "roi_positives_per_image": float(m["roi_positives_per_image"]),
         **summarize(tot, ops, a.top)}
  Path(a.out).parent.mkdir(parents=True, exist_ok=True)
  Path(a.out).write_text(json.dumps(res, indent=1))
  for k, v in list(res["ms_by_part"].items())[:15]:
    print(f"{v:9.1f} ms  {k}")
  print(f"traced step {traced:.2f} s -> {a.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
