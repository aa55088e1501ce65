"""`train()`: the training loop (resumable, multi-host, NaN-safe, signal-safe).

Step numbering: "step k" is the k-th optimiser update; it consumes `batches.batch(k-1)`
and leaves `TrainState.step == k`. metrics.jsonl, TensorBoard, checkpoints and error
messages all use this k; `train.steps` updates are done in total.

Reproducibility: the data of step k is a pure function of k (BatchSource), the key of
step k is `fold_in(state.rng, k-1)` and the state is restored exactly, so a run killed at
any point and restarted with the same command ends with the same parameters and the same
metrics.jsonl as an uninterrupted run.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Mapping

import jax
import numpy as np

from pa_jax import fileio
from pa_jax.data.pipeline import shard_batch
from pa_jax.errors import InputError, PaJaxError, TrainingError
from pa_jax.train import checkpoint as ckpt
from pa_jax.train import faults
from pa_jax.train.distributed import is_main_process, maybe_initialize_distributed
from pa_jax.train.metrics_log import MetricsLogger, plot_curves
from pa_jax.train.optimizer import learning_rate_fn, make_optimizer
from pa_jax.train.state import TrainState, create_train_state, make_data_mesh, param_count
from pa_jax.train.step import check_batch_size, make_train_step
from pa_jax.train.task import Task


class NonFiniteLossError(TrainingError):
  """A NaN/Inf loss, loss term or gradient; one line naming the step and the terms. A run
  that diverged is not bad input: exit code 3, not a usage error's 2."""

  def __init__(self, step: int, terms: Mapping[str, float], checkpoint_note: str):
    self.step = step
    self.terms = dict(terms)
    listing = ", ".join(f"{k}={v}" for k, v in terms.items())
    super().__init__(f"step {step}", f"non-finite {listing}; training stopped, "
                     f"{checkpoint_note}")


class TrainingInterrupted(Exception):
  """SIGINT/SIGTERM: the last completed step was checkpointed; rerun to resume."""

  def __init__(self, signum: int, step: int, directory: Path):
    self.signum = signum
    self.step = step
    name = signal.Signals(signum).name
    super().__init__(f"interrupted by {name} after step {step}; checkpoint saved in "
                     f"{directory}; run the same command again to resume")

  @property
  def exit_code(self) -> int:
    return 128 + self.signum


class _StopFlag:
  """SIGINT/SIGTERM handlers that only raise a flag, checked between steps (a step or a
  checkpoint is never torn). A second Ctrl-C raises KeyboardInterrupt immediately."""

  def __init__(self):
    self.signum: int | None = None
    self._previous: dict[int, Any] = {}

  def _handler(self, signum, frame):
    if self.signum is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.signum = signum

  def install(self) -> None:
    if threading.current_thread() is not threading.main_thread():
      return  # signal handlers can only be set from the main thread
    for s in (signal.SIGINT, signal.SIGTERM):
      self._previous[s] = signal.signal(s, self._handler)

  def uninstall(self) -> None:
    for s, h in self._previous.items():
      signal.signal(s, h)
    self._previous.clear()

  def agreed(self) -> int | None:
    """The stop signal, agreed by all processes (a tiny all-gather when multi-host)."""
    if jax.process_count() == 1:
      return self.signum
    from jax.experimental import multihost_utils

    mine = np.int32(self.signum or 0)
    got = int(np.max(multihost_utils.process_allgather(mine)))
    return got or None


def _fetch_checked(pending: list, store: ckpt.CheckpointStore) -> dict[str, float]:
  """Host copies of the pending `(step, device metrics)`; the first non-finite step stops
  the run. Empties `pending` and returns the last step's metrics ({} when none pending).

  Steps are dispatched without waiting (the device runs ahead of the host); metrics come
  back only at sync points, where every step since the last one is checked in order, so
  the error still names the first bad step and no checkpoint after it exists.
  """
  fetched = jax.device_get([m for _, m in pending])
  m: dict[str, float] = {}
  for (k_done, _), raw in zip(pending, fetched):
    m = {n: float(v) for n, v in raw.items()}
    bad = {n: v for n, v in m.items() if n != "learning_rate" and not math.isfinite(v)}
    if bad:
      store.wait()
      last = store.latest_step()
      note = (f"the latest checkpoint (step {last}) in {store.directory} is intact"
              if last is not None else "no checkpoint was saved before it")
      raise NonFiniteLossError(k_done, bad, note)
  pending.clear()
  return m


def _first_batch(batches: Any, step: int) -> Any:
  if hasattr(batches, "batch"):
    return batches.batch(step)
  it = batches.iterate(step)
  try:
    return next(it)
  finally:
    getattr(it, "close", lambda: None)()


def _validate(tc, n_devices: int) -> None:
  for name, low in (("steps", 1), ("log_every", 1), ("checkpoint_every", 1),
                    ("eval_every", 0), ("keep_checkpoints", 1), ("grad_accum", 1),
                    ("batch_size", 1)):
    v = int(tc[name])
    if v < low:
      raise InputError(f"train.{name}", f"{v} must be >= {low}")
  check_batch_size(int(tc.batch_size), n_devices, int(tc.grad_accum))


def _broadcast_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
  """Process 0's evaluation metrics on every process (decisions stay identical)."""
  clean = {}
  for k, v in metrics.items():
    try:
      clean[k] = float(v)
    except (TypeError, ValueError):
      continue
  if jax.process_count() == 1:
    return clean
  from jax.experimental import multihost_utils

  keys = sorted(clean)
  vals = np.asarray([clean[k] for k in keys], np.float64)
  vals = np.asarray(multihost_utils.broadcast_one_to_all(vals))
  return dict(zip(keys, (float(x) for x in vals)))


def _run_metadata(workdir: Path, run_metadata: Mapping[str, Any] | None, config, mesh,
                  state: TrainState, start_step: int) -> dict:
  old = fileio.read_json(workdir / ckpt.RUN_JSON) or {}
  meta = dict(old)
  meta.update(dict(run_metadata or {}))
  meta.update({
      "jax_version": jax.__version__,
      "devices": int(mesh.size),
      "device_kind": jax.devices()[0].device_kind,
      "processes": int(jax.process_count()),
      "global_batch_size": int(config.train.batch_size),
      "steps": int(config.train.steps),
      "param_count": param_count(state.params),
  })
  if start_step > 0:
    meta["resumes"] = list(old.get("resumes", [])) + [
        {"step": int(start_step), "time": time.strftime("%Y-%m-%dT%H:%M:%S")}]
  else:
    meta.setdefault("started", time.strftime("%Y-%m-%dT%H:%M:%S"))
  return meta


def _warn(text: str) -> None:
  print(text, file=sys.stderr, flush=True)


def _restore_or_init(store: ckpt.CheckpointStore, task: Task, config, rng, batches, mesh,
                     tx, main: bool) -> TrainState:
  """The newest readable checkpoint, or a fresh state when there is none. Unreadable newer
  checkpoints are reported (one line each) and moved to checkpoints_unreadable/, so that
  the run can save those steps again; they are never deleted."""
  steps = store.latest.all_steps()
  example = _first_batch(batches, max(steps) if steps else 0)
  if not steps:
    return create_train_state(task, config, rng, example, mesh, tx)
  target = create_train_state(task, config, rng, example, mesh, tx, abstract=True)
  state, step, unreadable = store.restore_readable(target, warn=_warn if main else None)
  if unreadable and step is not None:
    # The first batch was drawn for the newest step; a batch of the restored step has the
    # same shapes, which is all `target` used.
    if main:
      for bad in unreadable:
        store.set_aside(bad)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils

      multihost_utils.sync_global_devices("pa_jax_set_aside")
      store.latest.reload()
  return state


def _storage_error(e: BaseException, store: ckpt.CheckpointStore,
                   workdir: Path) -> InputError | None:
  """One line for a write the file system refused (full disk, read-only, permissions),
  naming the path and the checkpoint still intact; None for any other error."""
  found = faults.storage_problem(e)
  if found is None:
    return None
  problem, filename = found
  where = Path(filename) if filename else workdir
  try:
    last = store.latest_step()
  except Exception:  # noqa: BLE001 - the note is a courtesy; the error must still come out
    last = None
  kept = (f"checkpoint {last} is intact" if last is not None else "no checkpoint was saved")
  return InputError(where, f"{problem} while training; {kept}; free space (or fix the "
                    "folder) and run the same command again to resume")


def _quietly(fn, *args) -> None:
  """Runs a clean-up step after an error without letting its own error hide the first."""
  try:
    fn(*args)
  except Exception:  # noqa: BLE001
    pass


def train(task: Task, batches: Any, config, workdir: os.PathLike | str,
          run_metadata: Mapping[str, Any] | None = None, *, best_metric: str = "map",
          best_mode: str = "max", mesh=None, progress: bool = True) -> TrainState:
  """Trains `task` for `config.train.steps` updates in `workdir`, resuming if possible.

  batches: a `pa_jax.data.pipeline.BatchSource` (or anything with `batch(step)` and
    `iterate(start_step)` returning this process's rows of the global batch of a step).
  config: the full ml_collections config (`seed`, `train.*`).
  run_metadata: JSON-able facts recorded in `workdir/run.json` (dataset statistics such
    as the median nucleus size, partial view name/seed, image counts, ...).
  best_metric/best_mode: the `task.evaluate` metric that picks `checkpoints_best`.
  Returns the final TrainState. Raises NonFiniteLossError (exit 3), TrainingInterrupted,
  InputError (bad config, unwritable workdir, a full disk, no readable checkpoint).

  Faults keep the last good state:
  * config.json and run.json are written only once the run has started (a new run, or a
    checkpoint restored): a refused resume leaves the run as it was.
  * An unreadable newest checkpoint is reported in one line on stderr and moved to
    `checkpoints_unreadable/`; the run resumes from the newest readable one.
  * A write the file system refuses (full disk, read-only) stops the run in one line; the
    partial checkpoint folder is removed, earlier checkpoints and the lines already in
    metrics.jsonl stay as they were.
  """
  maybe_initialize_distributed()
  tc = config.train
  workdir = Path(workdir).absolute()
  ckpt.check_workdir_writable(workdir)
  mesh = mesh if mesh is not None else make_data_mesh()
  _validate(tc, mesh.size)
  main = is_main_process()
  total = int(tc.steps)

  tx = make_optimizer(tc, task.trainable)
  lr_fn = learning_rate_fn(tc)
  rng = jax.random.PRNGKey(int(config.seed))
  faults.ignore_late_read_callbacks()
  quiet = faults.quiet_library_logs()
  quiet.__enter__()  # until the very end: Orbax logs from its threads as it fails
  store = None
  logger = None
  stop = _StopFlag()
  batch_iter: Iterator | None = None
  state: TrainState | None = None
  pending: list = []  # (step, device metrics) dispatched but not yet checked finite
  failed = False
  try:
    store = ckpt.CheckpointStore(workdir, keep=int(tc.keep_checkpoints),
                                 best_metric=best_metric, best_mode=best_mode)
    state = _restore_or_init(store, task, config, rng, batches, mesh, tx, main)
    start = int(jax.device_get(state.step))
    if main:  # the run has started: only now may its records change
      ckpt.save_config(workdir, config)
      ckpt.save_run_metadata(workdir, _run_metadata(workdir, run_metadata, config, mesh,
                                                    state, start))
    logger = MetricsLogger(workdir, total, start, enabled=main, progress=progress)
    if start > 0:
      logger.message(f"resumed from {store.directory / str(start)} (step {start})")
    if start >= total:
      return state

    train_step = make_train_step(task, tx, mesh, learning_rate_fn=lr_fn,
                                 grad_accum=int(tc.grad_accum))
    log_every, ckpt_every, eval_every = int(tc.log_every), int(tc.checkpoint_every), int(tc.eval_every)
    global_b = int(tc.batch_size)

    def evaluate(st: TrainState, k: int) -> None:
      if task.evaluate is None:
        return
      metrics = _broadcast_metrics(task.evaluate(st))
      logger.log_eval(k, metrics)
      store.save_best(st, metrics)

    stop.install()
    batch_iter = batches.iterate(start)
    window_time, imgs = 0.0, 0  # images/sec counts step time only (no eval/checkpoint)
    for index in range(start, total):
      k = index + 1
      t0 = time.perf_counter()
      host_batch = next(batch_iter)
      rows = jax.tree.leaves(host_batch)[0].shape[0]
      if rows * jax.process_count() != global_b:
        raise InputError("train.batch_size", f"{global_b} but the batch source gives "
                         f"{rows} rows on each of {jax.process_count()} processes")
      batch = shard_batch(host_batch, mesh)
      new_state, metrics = train_step(state, batch)
      pending.append((k, metrics))  # before `state` moves on: never an unchecked save
      state = new_state
      # Sync points: the host waits for the device only where it needs numbers (logs,
      # checkpoints, evaluation, the end). A checkpoint is written only after every step
      # up to it was checked finite.
      evaluate_now = task.evaluate is not None and (
          k == total or (eval_every > 0 and k % eval_every == 0))
      save_now = k % ckpt_every == 0 or k == total
      log_now = k % log_every == 0 or k == total
      sync = log_now or save_now or evaluate_now
      m = _fetch_checked(pending, store) if sync else {}
      window_time += time.perf_counter() - t0
      imgs += global_b
      logger.progress(k)
      if log_now:
        m["images_per_sec"] = imgs / window_time if window_time > 0 else float("nan")
        logger.log_train(k, m)
        window_time, imgs = 0.0, 0
      if save_now:
        store.save(state)
      if evaluate_now:
        evaluate(state, k)
      # A stop is honoured after this step's checkpoint and evaluation, so a resumed run
      # logs exactly what an uninterrupted one does. One process reads its own flag every
      # step; several agree on it (an all-gather) at the sync points, which every process
      # reaches at the same steps.
      if k < total and (sync or jax.process_count() == 1):
        signum = stop.agreed()
        if signum is not None:
          _fetch_checked(pending, store)
          store.save(state)
          store.wait()
          raise TrainingInterrupted(signum, k, store.directory)
    store.wait()  # an asynchronous save that failed raises here
    if main:
      plot_curves(workdir)
    logger.close()  # its last flush may fail too (full disk)
    return state
  except KeyboardInterrupt:
    failed = True
    # A second Ctrl-C (or one outside the main thread): save what is consistent, if any
    # (never a state whose latest steps were not checked finite).
    if state is not None and store is not None:
      try:
        _fetch_checked(pending, store)
        store.save(state)
        store.wait()
      except Exception:  # the state may have been donated to a step in flight
        pass
    raise
  except (PaJaxError, TrainingInterrupted):
    failed = True
    raise
  except Exception as e:
    failed = True
    err = _storage_error(e, store, workdir) if store is not None else None
    if err is None:
      raise
    raise err from None
  finally:
    stop.uninstall()
    if batch_iter is not None and hasattr(batch_iter, "close"):
      _quietly(batch_iter.close)
    if logger is not None:
      (_quietly if failed else lambda f: f())(logger.close)
    if store is not None:
      if failed:
        # Saves in flight end (or fail) here; then their temporary folders go, so the
        # workdir holds only complete checkpoints.
        _quietly(store.wait)
        _quietly(store.close)
        _quietly(store.remove_partial)
      else:
        try:
          store.wait()
        finally:
          store.close()
    quiet.__exit__(None, None, None)
