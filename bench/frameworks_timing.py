"""Timing workers of bench/frameworks.py: pa_jax's and torchvision's train step and
prediction on the same real batches, with peak memory, each run in its own process by
`frameworks.py worker`; plus the setup both share (config -> model, batches, test canvases)
and the machine / version records."""

from __future__ import annotations

import datetime
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))  # its sibling modules, as when run as a script

from frameworks_torchvision import (  # noqa: E402
    build_torchvision, count_roi_positives, pa_jax_sgd, set_learning_rate, torch_inputs,
    tv_predict_unpasted)


# ------------------------------------------------------------------------------ pa_jax


#: Training images decoded for the timed batches (batches cycle over steps 0..3 of them).
MAX_EXAMPLES = 8


def pa_jax_setup(cfg, n_examples: int | None = MAX_EXAMPLES):
  """(model, examples, batch source, first batch) of a config on its real data: the first
  `n_examples` training images of the split (all when None)."""
  from pa_jax import experiment
  from pa_jax.data import pipeline

  records = experiment.source_records(cfg, cfg.data.train_split)
  if n_examples:
    records = records[:max(n_examples, int(cfg.train.batch_size))]
  examples = pipeline.load_training_examples(records, experiment.view_spec(cfg),
                                             cfg.data.normalize, progress=False)
  stats = experiment.dataset_statistics(examples)
  model = experiment.build_model(cfg, stats)
  batches = experiment.batch_source(cfg, examples)
  return model, examples, batches, batches.batch(0)


def test_canvases(cfg, n: int):
  """`n` dh360 test images on the canvas (no flips), as a numpy Batch."""
  from pa_jax import experiment
  from pa_jax.data import pipeline

  records = experiment.source_records(cfg, cfg.data.eval_split)[:n]
  exs = pipeline.load_training_examples(records, experiment.view_spec(cfg), cfg.data.normalize,
                                        progress=False)
  rng = np.random.default_rng(0)
  items = [pipeline.canvas_example(e, int(cfg.data.canvas_size), int(cfg.data.max_instances),
                                   rng, False, False) for e in exs]
  return pipeline.stack_batch(items), records


def pa_jax_variables(model, batch, state_dict: dict, seed: int = 0):
  import jax

  from pa_jax.models.weights import import_pretrained

  k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
  # Shapes only (no compile of the init program): strict import sets every variable.
  variables = jax.eval_shape(lambda a, b, c: model.init(a, b, c), k1, batch, k2)
  variables, report = import_pretrained(variables, state_dict, strict=True, verbose=False)
  return variables, report


# ------------------------------------------------------------------------------ timing


def _peak_rss_mb() -> float:
  """Peak resident memory of THIS process image (VmHWM). Not ru_maxrss: Linux carries that
  over exec from the forking parent, so a worker would report its parent's size."""
  try:
    for line in open("/proc/self/status"):
      if line.startswith("VmHWM:"):
        return int(line.split()[1]) / 1024.0
  except OSError:
    pass
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _versions() -> dict:
  v = {"python": platform.python_version()}
  for mod in ("jax", "jaxlib", "flax", "optax", "numpy", "torch", "torchvision"):
    try:
      v[mod] = __import__(mod).__version__
    except Exception:  # noqa: BLE001 - absent is a fact to record
      v[mod] = None
  return v


def machine() -> dict:
  info = {"machine": platform.machine(), "cpu_count": os.cpu_count(),
          "platform": platform.platform(), "load_avg_1_5_15": list(os.getloadavg())}
  try:
    for line in open("/proc/cpuinfo"):
      if line.startswith("model name"):
        info["cpu"] = line.split(":", 1)[1].strip()
        break
  except OSError:
    pass
  return info


def _step_timings(times: list[float], cpu: list[float], warmup: int, batch: int) -> dict:
  """Wall and CPU seconds of the timed train steps (after `warmup`), images/s, first step."""
  wall = _median(times[warmup:])
  return {"train_step_cpu_seconds": cpu[warmup:], "train_step_cpu_median": _median(cpu[warmup:]),
          "first_step_seconds": times[0], "train_step_seconds": times[warmup:],
          "train_step_median": wall, "train_images_per_second": batch / wall}


def _predict_timings(walls: list[float], cpu: list[float], detections: list[int]) -> dict:
  """Prediction figures of one worker: per-image wall and CPU seconds (the first image, the
  compile or warm-up, apart) and the detections each image kept."""
  wall = _median(walls[1:])
  return {"first_predict_seconds": walls[0], "predict_seconds": walls[1:],
          "predict_seconds_per_image": wall, "predict_images_per_second": 1.0 / wall,
          "predict_cpu_seconds_per_image": _median(cpu[1:]), "detections_per_image": detections}


def _median(xs):
  return float(np.median(xs)) if xs else None


def time_pa_jax(cfg, npz: str, steps: int, warmup: int, n_predict: int, dtype: str) -> dict:
  import jax
  import jax.numpy as jnp

  from pa_jax import experiment
  from pa_jax.data.pipeline import shard_batch
  from pa_jax.models.mask_rcnn import MaskRCNN
  from pa_jax.train.optimizer import make_optimizer
  from pa_jax.train.state import create_train_state, make_data_mesh
  from pa_jax.train.step import make_train_step

  cfg.model.compute_dtype = dtype
  model, examples, batches, first = pa_jax_setup(cfg)
  res = {"framework": "pa_jax", "devices": [str(d) for d in jax.devices()],
         "compute_dtype": dtype}
  res["rss_after_data_mb"] = _peak_rss_mb()
  task = experiment.make_task(model, pretrained=npz)
  mesh = make_data_mesh()
  tx = make_optimizer(cfg.train, task.trainable)
  t0 = time.perf_counter()
  state = create_train_state(task, cfg, jax.random.PRNGKey(cfg.seed), first, mesh, tx)
  jax.block_until_ready(state)
  res["init_seconds"] = time.perf_counter() - t0
  # Prediction first, with the imported (shared) weights: after training, the two
  # frameworks' weights differ and so would their detection counts (torchvision's work
  # depends on them).
  variables = {**state.variables, "params": state.params}
  tb, _ = test_canvases(cfg, n_predict + 1)
  pred = jax.jit(lambda v, x, s: model.apply(v, x, s, method=MaskRCNN.predict))
  ptimes, pcpu, ndet = [], [], []
  for i in range(n_predict + 1):
    x, s = jnp.asarray(tb.image[i:i + 1]), jnp.asarray(tb.image_size[i:i + 1])
    t0, c0 = time.perf_counter(), time.process_time()
    d = pred(variables, x, s)
    jax.block_until_ready(d)
    ptimes.append(time.perf_counter() - t0)
    pcpu.append(time.process_time() - c0)
    ndet.append(int(np.asarray(d.valid).sum()))
  res.update(_predict_timings(ptimes, pcpu, ndet))
  # pa_jax's predict never pastes masks (that is the host post-process): the same figure.
  res["predict_unpasted_seconds_per_image"] = res["predict_seconds_per_image"]
  step_fn = make_train_step(task, tx, mesh, grad_accum=int(cfg.train.grad_accum))
  times, cpu, positives = [], [], []
  for k in range(warmup + steps):
    batch = shard_batch(batches.batch(k % 4), mesh)
    t0, c0 = time.perf_counter(), time.process_time()
    state, metrics = step_fn(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t0)
    cpu.append(time.process_time() - c0)
    positives.append(float(metrics.get("roi_positives_per_image", np.nan)))
  res.update(_step_timings(times, cpu, warmup, cfg.train.batch_size))
  res["last_loss"] = float(metrics["loss"])
  # The mask head's real work: pa_jax runs it on the chunks of roi.batch_per_image *
  # positive_fraction static slots per image that hold a positive (mask_train_chunk);
  # torchvision on exactly its positives. Mean over the timed steps, as torchvision's.
  if "roi_positives_per_image" in metrics:
    res["mask_positives_per_image"] = float(np.mean(positives[warmup:]))
    res["mask_positives_per_step"] = positives[warmup:]
    res["mask_train_chunk"] = int(cfg.model.roi.get("mask_train_chunk", 32))
  res["mask_slots_per_image"] = max(1, int(cfg.model.roi.batch_per_image
                                           * cfg.model.roi.positive_fraction))
  res["peak_rss_after_train_mb"] = _peak_rss_mb()
  res.update(_jax_mem("train"))
  res["peak_rss_mb"] = _peak_rss_mb()
  res.update(_jax_mem("end"))
  return res


def _jax_mem(tag: str) -> dict:
  import jax

  try:
    st = jax.devices()[0].memory_stats() or {}
  except Exception:  # noqa: BLE001
    st = {}
  if "peak_bytes_in_use" in st:
    return {f"device_peak_mb_{tag}": st["peak_bytes_in_use"] / 2 ** 20}
  return {}


def time_torchvision(cfg, npz: str | None, steps: int, warmup: int, n_predict: int, dtype: str,
                     device: str) -> dict:
  import jax
  import torch

  # JAX only on the host here (data, the learning-rate schedule): on a GPU machine it would
  # otherwise open its memory pool beside torch's. No JAX backend has started in a worker
  # process before this line, so the setting takes effect.
  jax.config.update("jax_platforms", "cpu")
  model, examples, batches, first = pa_jax_setup(cfg)  # same data (pa_jax's model unused)
  del model
  res = {"framework": "torchvision", "device": device, "compute_dtype": dtype,
         "torch_threads": torch.get_num_threads()}
  res["rss_after_data_mb"] = _peak_rss_mb()
  tv = build_torchvision(cfg, device)
  if npz:
    sd = {k: torch.from_numpy(v) for k, v in np.load(npz).items()}
    tv.load_state_dict(sd)
  amp = dtype == "bfloat16"
  dev_type = "cuda" if device.startswith("cuda") else "cpu"
  sync = (lambda: torch.cuda.synchronize()) if dev_type == "cuda" else (lambda: None)
  # Prediction first, with the shared weights (see time_pa_jax).
  tv.eval()
  tb, _ = test_canvases(cfg, n_predict + 1)
  inputs = [torch_inputs(__import__("jax").tree.map(lambda x: np.asarray(x)[i:i + 1], tb), device,
                         with_targets=False)[0] for i in range(n_predict + 1)]

  def timed(predict):
    """(wall seconds, CPU seconds, outputs) of `predict(images)` on each test image."""
    walls, cpus, outs = [], [], []
    for images in inputs:
      sync()
      t0, c0 = time.perf_counter(), time.process_time()
      with torch.no_grad(), torch.autocast(dev_type, dtype=torch.bfloat16, enabled=amp):
        outs.append(predict(images))
      sync()
      walls.append(time.perf_counter() - t0)
      cpus.append(time.process_time() - c0)
    return walls, cpus, outs

  ptimes, pcpu, outs = timed(tv)
  ndet = [int(out[0]["boxes"].shape[0]) for out in outs]
  if dev_type == "cuda":
    res["device_peak_mb_predict"] = torch.cuda.max_memory_allocated() / 2 ** 20
  res.update(_predict_timings(ptimes, pcpu, ndet))
  # Like for like with pa_jax's predict: the same images, stopping before mask pasting.
  utimes, _, _ = timed(lambda images: tv_predict_unpasted(tv, images))
  res["predict_unpasted_seconds"] = utimes[1:]
  res["predict_unpasted_seconds_per_image"] = _median(utimes[1:])
  tv.train()
  # pa_jax's optimiser in torch (schedule, decay mask), and a seeded sampler.
  torch.manual_seed(0)
  params = [p for p in tv.parameters() if p.requires_grad]
  opt, rates = pa_jax_sgd(params, cfg.train, warmup + steps)
  res["learning_rates"] = rates
  if dev_type == "cuda":
    torch.cuda.reset_peak_memory_stats()
  positives = count_roi_positives(tv)
  times, cpu = [], []
  for k in range(warmup + steps):
    images, targets = torch_inputs(batches.batch(k % 4), device)
    sync()
    t0, c0 = time.perf_counter(), time.process_time()
    with torch.autocast(dev_type, dtype=torch.bfloat16, enabled=amp):
      losses = tv(images, targets)
    loss = sum(losses.values())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.train.clip_grad_norm:
      torch.nn.utils.clip_grad_norm_(params, float(cfg.train.clip_grad_norm))
    set_learning_rate(opt, rates[k])
    opt.step()
    sync()
    times.append(time.perf_counter() - t0)
    cpu.append(time.process_time() - c0)
  res.update(_step_timings(times, cpu, warmup, cfg.train.batch_size))
  res["last_loss"] = float(loss.detach())
  # Mean positives per image over the timed steps: the RoIs its mask head ran on.
  timed_pos = positives[warmup * cfg.train.batch_size:]
  if timed_pos:
    res["mask_positives_per_image"] = float(np.mean(timed_pos))
    per_step = np.reshape(timed_pos, (-1, int(cfg.train.batch_size))).mean(axis=1)
    res["mask_positives_per_step"] = [float(x) for x in per_step]  # as pa_jax's
  res["peak_rss_after_train_mb"] = _peak_rss_mb()
  if dev_type == "cuda":
    res["device_peak_mb_train"] = torch.cuda.max_memory_allocated() / 2 ** 20
  res["peak_rss_mb"] = _peak_rss_mb()
  if dev_type == "cuda":
    res["device_peak_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
  return res



def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
