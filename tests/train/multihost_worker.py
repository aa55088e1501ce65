"""One process of a multi-process toy training run (or the single-process reference).

  python multihost_worker.py --port P --num_processes 2 --process_id I --workdir W --out O
  python multihost_worker.py --num_processes 1 --workdir W --out O   (reference; run with
      XLA_FLAGS=--xla_force_host_platform_device_count=2 for the same 2-device mesh)

Trains the toy task for 3 steps through `pa_jax.train.loop.train` (each process building
only its rows of every global batch) and writes `O/params_<process_id>.npz` plus a JSON
with the checksum and the rows it read.
"""

import argparse
import json
import os

import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--port", type=int, default=0)
  ap.add_argument("--num_processes", type=int, default=1)
  ap.add_argument("--process_id", type=int, default=0)
  ap.add_argument("--workdir", required=True)
  ap.add_argument("--out", required=True)
  a = ap.parse_args()

  from pa_jax.train.distributed import is_main_process, maybe_initialize_distributed

  if a.num_processes > 1:
    maybe_initialize_distributed(f"localhost:{a.port}", a.num_processes, a.process_id)
  import jax

  import train_toy as T
  from pa_jax.train.loop import train

  source = T.toy_source(global_batch=4, process_index=jax.process_index(),
                        process_count=jax.process_count())
  rows = source.batch(0).image.shape[0]
  c = T.toy_config(steps=3, checkpoint_every=2, warmup_steps=0)
  state = train(T.toy_task(), source, c, a.workdir, {"test": "multihost"}, progress=False)
  flat = T.flat_params(state.params)
  checksum = float(sum(np.sum(np.abs(v.astype(np.float64))) for v in flat.values()))
  os.makedirs(a.out, exist_ok=True)
  pid = jax.process_index()
  np.savez(os.path.join(a.out, f"params_{pid}.npz"), **flat)
  info = {"process_index": pid, "process_count": jax.process_count(),
          "devices": jax.device_count(), "local_devices": jax.local_device_count(),
          "rows": rows, "step": int(jax.device_get(state.step)), "checksum": checksum,
          "main": is_main_process()}
  with open(os.path.join(a.out, f"info_{pid}.json"), "w") as f:
    json.dump(info, f)
  print(json.dumps(info))


if __name__ == "__main__":
  main()
