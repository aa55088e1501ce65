"""Input pipeline throughput (tfds build, 1/2/4 row threads) beside the train step's.

    python bench/input_pipeline.py [--config configs/dh25_pa.py:cpu] [--tfds_dir runs/tfds]
        [--tfds_name dsb2018/dh25_seed0] [--threads 1 2 4] [--batches 40] [--train_steps 4]
        [--output bench/results/input_pipeline_cpu.json] [data.field=value ...]

Builds the config's view as a tfds array_record build (once; reused after, see
`build_reused`), then:
  * pipeline: images/s of `BatchSource.iterate` over the build (read, zlib decode,
    normalise, crop, flip, stack; the config's batch size and prefetch) for each thread
    count, and of the folder reader's in-memory examples (after its load, also timed);
  * train: the config's jitted train step fed by the tfds pipeline (first step = compile,
    excluded): median seconds and images/s per step, and how long each step waited for
    its batch (0 = the device never waited).
Nothing here is a unit test; timings depend on what else the machine runs.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from bench_config import ROOT, load_config, write_result  # noqa: E402
from data import tfds_nuclei  # noqa: E402
from pa_jax import experiment  # noqa: E402
from pa_jax.data.pipeline import shard_batch  # noqa: E402


def pipeline_rate(source, batches: int) -> dict:
  """Images/s of `source.iterate` over `batches` batches, after one warm-up batch."""
  it = source.iterate(0)
  next(it)  # opens the array_record files, starts the threads
  t0 = time.perf_counter()
  for _ in range(batches):
    next(it)
  dt = time.perf_counter() - t0
  rows = batches * source.global_batch // source.process_count
  return {"images": rows, "seconds": dt, "images_per_second": rows / dt}


def train_rate(cfg, source, stats: dict, steps: int) -> dict:
  """Median step time and batch wait of `steps` train steps fed by `source`."""
  from pa_jax.train.optimizer import make_optimizer
  from pa_jax.train.state import create_train_state, make_data_mesh
  from pa_jax.train.step import make_train_step

  task = experiment.make_task(experiment.build_model(cfg, stats))
  mesh = make_data_mesh()
  tx = make_optimizer(cfg.train, task.trainable)
  it = source.iterate(0)
  first = next(it)
  state = create_train_state(task, cfg, jax.random.PRNGKey(cfg.seed), first, mesh, tx)
  step_fn = make_train_step(task, tx, mesh, grad_accum=int(cfg.train.grad_accum))
  batch, steps_s, waits = first, [], []
  for k in range(steps + 1):
    t0 = time.perf_counter()
    state, metrics = step_fn(state, shard_batch(batch, mesh))
    jax.block_until_ready(metrics)
    t1 = time.perf_counter()
    batch = next(it)
    steps_s.append(t1 - t0)
    waits.append(time.perf_counter() - t1)
  step = float(np.median(steps_s[1:]))
  return {"steps": steps, "first_step_seconds": steps_s[0], "step_seconds_median": step,
          "images_per_second": cfg.train.batch_size / step,
          "input_wait_seconds_median": float(np.median(waits[1:])),
          "input_wait_seconds_max": float(np.max(waits[1:]))}


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--config", default="configs/dh25_pa.py:cpu")
  p.add_argument("--tfds_dir", default=str(ROOT / "runs/tfds"))
  p.add_argument("--tfds_name", default="dsb2018/dh25_seed0")
  p.add_argument("--threads", type=int, nargs="+", default=[1, 2, 4])
  p.add_argument("--batches", type=int, default=40)
  p.add_argument("--train_steps", type=int, default=4)
  p.add_argument("--output", default=str(ROOT / "bench/results/input_pipeline_cpu.json"))
  p.add_argument("overrides", nargs="*", help="config fields, e.g. train.batch_size=4")
  a = p.parse_args(argv)
  load_before = os.getloadavg()
  cfg = load_config(a.config, a.overrides)
  dataset, config = a.tfds_name.split("/")[:2]
  reused = (Path(a.tfds_dir) / dataset / config).is_dir()
  t0 = time.perf_counter()
  tfds_nuclei.build(dataset, config, a.tfds_dir)
  build_s = time.perf_counter() - t0
  cfg.data.reader, cfg.data.tfds_dir, cfg.data.tfds_name = "tfds", a.tfds_dir, a.tfds_name

  pipeline = []
  for n in a.threads:
    cfg.data.workers = n
    source, stats = experiment.training_data(cfg, progress=False)
    pipeline.append({"threads": n, **pipeline_rate(source, a.batches)})
    print(f"tfds, {n} threads: {pipeline[-1]['images_per_second']:.1f} images/s", flush=True)
  cfg.data.reader, cfg.data.workers = "folder", 0
  t0 = time.perf_counter()
  folder_source, folder_stats = experiment.training_data(cfg, progress=False)
  folder = {"load_seconds": time.perf_counter() - t0, **pipeline_rate(folder_source, a.batches)}
  print(f"folder (in memory): {folder['images_per_second']:.1f} images/s after a "
        f"{folder['load_seconds']:.1f} s load", flush=True)

  cfg.data.reader, cfg.data.workers = "tfds", max(a.threads)
  source, stats = experiment.training_data(cfg, progress=False)
  train = {"threads": max(a.threads), **train_rate(cfg, source, stats, a.train_steps)}
  print(f"train step: {train['images_per_second']:.2f} images/s, input wait "
        f"{train['input_wait_seconds_median'] * 1e3:.1f} ms median", flush=True)
  result = {"config": a.config, "overrides": list(a.overrides), "tfds_name": a.tfds_name,
            "batch_size": cfg.train.batch_size, "prefetch": cfg.data.prefetch,
            "canvas": cfg.data.canvas_size, "train_images": stats["images"],
            "same_statistics_as_folder": stats == folder_stats, "build_seconds": build_s,
            "build_reused": reused,
            "pipeline_tfds": pipeline, "pipeline_folder_in_memory": folder, "train": train,
            "loadavg_before": list(load_before), "loadavg_after": list(os.getloadavg()),
            "cpu_count": os.cpu_count(), "machine": platform.machine(), "jax": jax.__version__}
  write_result(a.output, result)
  return result


if __name__ == "__main__":
  main()
