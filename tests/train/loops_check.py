"""Compiles the real training step (configs/dh25_pa.py:cpu, PA module on) for every device
of the process and prints one JSON line: the while loops of the compiled HLO and the
collectives inside them (`pa_jax.train.hlo.summary`).

Run with XLA_FLAGS=--xla_force_host_platform_device_count=8 (tests/train/_proc.py does).
Nothing is executed: the state and batch are abstract (shapes + shardings), so only tracing
and XLA compilation cost time.

  python tests/train/loops_check.py [--canvas 256] [--batch 8] [--grad_accum 1] [--hlo FILE]
"""

import argparse
import json
import os
import sys
import time

import jax
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from configs import dh25_pa  # noqa: E402
from pa_jax import experiment  # noqa: E402
from pa_jax.train import hlo  # noqa: E402
from pa_jax.train.optimizer import learning_rate_fn, make_optimizer  # noqa: E402
from pa_jax.train.state import batch_sharded, create_train_state, make_data_mesh  # noqa: E402
from pa_jax.train.step import make_train_step  # noqa: E402


def abstract_batch(cfg, mesh):
  b, c, m = cfg.train.batch_size, cfg.data.canvas_size, cfg.data.max_instances
  ex = experiment._empty_example(c, m)
  sh = batch_sharded(mesh)
  from pa_jax.structures import Batch

  host = Batch(**{k: np.stack([np.asarray(v)] * b) for k, v in ex.items()})
  return host, jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh), host)


def main(argv=None):
  ap = argparse.ArgumentParser()
  ap.add_argument("--canvas", type=int, default=0, help="0 = the config's canvas")
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--grad_accum", type=int, default=1)
  ap.add_argument("--hlo", default="", help="also write the compiled HLO text here")
  args = ap.parse_args(argv)

  cfg = dh25_pa.get_config("cpu")
  cfg.train.batch_size = args.batch
  cfg.train.grad_accum = args.grad_accum
  if args.canvas:
    cfg.data.canvas_size = args.canvas
  stats = {"median_width": 20.0, "median_height": 20.0}
  model = experiment.build_model(cfg, stats)
  task = experiment.make_task(model)
  mesh = make_data_mesh()
  tx = make_optimizer(cfg.train, task.trainable)
  host, batch = abstract_batch(cfg, mesh)
  state = create_train_state(task, cfg, jax.random.PRNGKey(0), host, mesh, tx, abstract=True)
  step = make_train_step(task, tx, mesh, learning_rate_fn=learning_rate_fn(cfg.train),
                         grad_accum=args.grad_accum)
  t0 = time.time()
  lowered = step.jitted.lower(state, batch)
  t1 = time.time()
  text = lowered.compile().as_text()
  t2 = time.time()
  if args.hlo:
    with open(args.hlo, "w") as f:
      f.write(text)
  out = hlo.summary(text)
  out.update(n_devices=len(jax.devices()), canvas=cfg.data.canvas_size,
             partial=bool(cfg.model.partial.enabled), lower_s=round(t1 - t0, 1),
             compile_s=round(t2 - t1, 1))
  print(json.dumps(out))


if __name__ == "__main__":
  sys.exit(main())
