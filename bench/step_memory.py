"""What a pa_jax train step's device memory is made of, from XLA's buffer assignment.

  python bench/frameworks.py export --preset gpu_r50 --out /tmp/tv_r50.npz
  python bench/step_memory.py --preset gpu_r50 --npz /tmp/tv_r50.npz \\
      --variant half_rois=model.roi.batch_per_image=256 \\
      --out bench/results/step_memory_gpu_r50.json

On the first H200 lease pa_jax's training peak was 3.2x torchvision's at R50-FPN, batch 8
(9.46 against 2.99 GB; docs/performance.md). XLA allocates a compiled program's buffers
statically, so the compiled step's memory analysis (arguments + outputs - donated aliases
+ temporaries) says where that memory goes without running the step, and on any backend:
this script compiles the preset's step (never runs it) once per variant, each a list of
config overrides, and reports the sizes side by side. The CPU's buffer assignment is not
the GPU's (other fusions, other scratch), so the CPU figures locate the big parts; the GPU
figures are for a GPU run of the same command.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import frameworks as fw  # noqa: E402

MB = 2 ** 20


def memory_of(compiled) -> dict:
  """MB of the compiled program's buffers, and the peak they imply."""
  ma = compiled.memory_analysis()
  sizes = {k: getattr(ma, f"{k}_size_in_bytes") / MB
           for k in ("argument", "output", "alias", "temp", "generated_code")}
  sizes["peak_estimate"] = sizes["argument"] + sizes["output"] - sizes["alias"] + sizes["temp"]
  return sizes


def step_memory(preset: str, overrides: list[str], npz: str | None, dtype: str) -> dict:
  """Compiles the preset's train step with `overrides` and returns its memory sizes."""
  import jax

  from pa_jax import experiment
  from pa_jax.data.pipeline import shard_batch
  from pa_jax.train.optimizer import make_optimizer
  from pa_jax.train.state import create_train_state, make_data_mesh, param_count
  from pa_jax.train.step import make_train_step

  spec, ov = fw.preset(preset, overrides)
  cfg = fw.load_config(spec, ov)
  if not any(o.startswith("model.compute_dtype=") for o in overrides):
    cfg.model.compute_dtype = dtype  # a variant may set its own
  model, _, batches, first = fw.pa_jax_setup(cfg)
  task = experiment.make_task(model, pretrained=npz or "")
  mesh = make_data_mesh()
  tx = make_optimizer(cfg.train, task.trainable)
  state = create_train_state(task, cfg, jax.random.PRNGKey(cfg.seed), first, mesh, tx)
  step = make_train_step(task, tx, mesh, grad_accum=1)
  batch = shard_batch(batches.batch(0), mesh)
  t0 = time.perf_counter()
  compiled = step.jitted.lower(state, batch).compile()
  out = {"overrides": overrides, "compile_seconds": time.perf_counter() - t0,
         "params": param_count(state.params), "batch_size": int(cfg.train.batch_size)}
  out.update(memory_of(compiled))
  return out


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--preset", default="gpu_r50", choices=sorted(fw.PRESETS))
  ap.add_argument("--npz", default=None, help="torchvision state dict (frozen-BN presets)")
  ap.add_argument("--dtype", default="float32")
  ap.add_argument("--variant", action="append", default=[],
                  help="NAME=a.b=c;d.e=f: overrides compiled as one more variant")
  ap.add_argument("--out", required=True)
  a = ap.parse_args(argv)
  import jax

  variants = {"base": []}
  for v in a.variant:
    name, _, rest = v.partition("=")
    variants[name] = [o for o in rest.split(";") if o]
  res = {"command": "python " + " ".join(["bench/step_memory.py"] + (argv or sys.argv[1:])),
         "date_utc": fw._now(), "preset": a.preset, "dtype": a.dtype,
         "backend": jax.default_backend(), "machine": fw.machine(), "versions": fw._versions(),
         "variants": {}}
  for name, ov in variants.items():
    res["variants"][name] = step_memory(a.preset, ov, a.npz, a.dtype)
    r = res["variants"][name]
    print(f"{name:16s} peak {r['peak_estimate']:8.0f} MB  temp {r['temp']:8.0f}  "
          f"args {r['argument']:7.0f}  out {r['output']:7.0f}  alias {r['alias']:7.0f}  "
          f"({r['compile_seconds']:.0f} s compile)", flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1))
  return 0


if __name__ == "__main__":
  sys.exit(main())
