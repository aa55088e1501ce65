"""`run.py benchmark`: whole-process speed figures of a config on this machine.

Measures, with the config's own model, canvas and batch size on real training batches:
  * parameters (trainable) and the first-step compile time (trace + XLA compile + run),
  * seconds per train step (median over `steps` steps after the first),
  * first-predict compile time and seconds per predicted image (label map on the host),
and writes them as JSON (with the machine and JAX versions) so docs can cite a file and
the command that made it. Timings use `block_until_ready`; nothing here is a unit test.
"""

from __future__ import annotations

import platform
import time
from typing import Sequence

import jax
import numpy as np

from pa_jax import experiment, fileio
from pa_jax.data import readers


def _timed(fn, *args):
  t0 = time.perf_counter()
  out = fn(*args)
  jax.block_until_ready(out)
  return out, time.perf_counter() - t0


def run(cfg, steps: int = 10, predict_images: int = 5, output: str | None = None,
        config_name: str = "", overrides: Sequence[str] = ()) -> dict:
  from pa_jax.infer.predictor import predictor_for
  from pa_jax.train.optimizer import make_optimizer
  from pa_jax.train.state import create_train_state, make_data_mesh, param_count
  from pa_jax.train.step import make_train_step

  examples = experiment.training_examples(cfg, progress=False)
  stats = experiment.dataset_statistics(examples)
  model = experiment.build_model(cfg, stats)
  task = experiment.make_task(model)
  batches = experiment.batch_source(cfg, examples)
  mesh = make_data_mesh()
  tx = make_optimizer(cfg.train, task.trainable)
  first = batches.batch(0)
  state, t_init = _timed(lambda: create_train_state(task, cfg, jax.random.PRNGKey(cfg.seed),
                                                    first, mesh, tx))
  step_fn = make_train_step(task, tx, mesh, grad_accum=int(cfg.train.grad_accum))  # as training runs it
  from pa_jax.data.pipeline import shard_batch

  times = []
  for k in range(steps + 1):
    batch = shard_batch(batches.batch(k), mesh)
    (state, metrics), dt = _timed(step_fn, state, batch)
    times.append(dt)
  variables = {**state.variables, "params": state.params}
  # The predictor `run.py predict` builds (thresholds, dilation, tiling from the config).
  predictor = predictor_for(cfg, model, variables)
  records = experiment.source_records(cfg, cfg.data.eval_split)[:predict_images + 1]
  images = [readers.load_example(r).image for r in records]
  pred_times = []
  for img in images:
    t0 = time.perf_counter()
    predictor(img)
    pred_times.append(time.perf_counter() - t0)
  result = {
      "config": config_name, "overrides": list(overrides),
      "backbone": cfg.model.backbone, "partial": bool(cfg.model.partial.enabled),
      "canvas": cfg.data.canvas_size, "batch_size": cfg.train.batch_size,
      "params": param_count(state.params),
      "init_seconds": t_init,
      "first_step_seconds": times[0],
      "step_seconds_median": float(np.median(times[1:])) if steps else None,
      "images_per_second_train": (cfg.train.batch_size / float(np.median(times[1:]))
                                  if steps else None),
      "first_predict_seconds": pred_times[0] if pred_times else None,
      "predict_seconds_per_image": float(np.median(pred_times[1:])) if len(pred_times) > 1 else None,
      "predict_image_shape": list(images[0].shape) if images else None,
      "devices": [str(d) for d in jax.devices()], "jax": jax.__version__,
      "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
      "cpu_count": __import__("os").cpu_count(),
      "last_loss": float(metrics["loss"]),
  }
  if output:
    fileio.write_json(output, result)
  return result
