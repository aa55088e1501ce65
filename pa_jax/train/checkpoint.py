"""Checkpoints (Orbax) and the run's JSON records.

Layout of a workdir:
  checkpoints/<step>/       latest `train.keep_checkpoints` TrainStates (Orbax
                            CheckpointManager; written atomically: a step folder appears
                            only once complete, so a killed run never leaves a broken one)
  checkpoints_best/<step>/  the single best TrainState by an eval metric (own manager,
                            BestN n=1, metric stored with the checkpoint)
  config.json               the full config (process 0, atomic)
  run.json                  run metadata: dataset statistics, partial view, counts,
                            devices, resumes (process 0, atomic)

Every process must call `save`/`save_best`/`restore_latest` (Orbax coordinates the hosts;
for multi-host runs the workdir must be on a filesystem all hosts share).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

import jax
import orbax.checkpoint as ocp

from pa_jax import fileio
from pa_jax.errors import InputError
from pa_jax.train.state import TrainState, abstract_state

CHECKPOINTS = "checkpoints"
CHECKPOINTS_BEST = "checkpoints_best"
CONFIG_JSON = "config.json"
RUN_JSON = "run.json"


def check_workdir_writable(workdir: os.PathLike | str) -> Path:
  """Creates `workdir` and proves a file can be written there; else a one-line InputError."""
  workdir = Path(workdir)
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    fd, probe = tempfile.mkstemp(dir=workdir, prefix=".write_probe.")
    os.close(fd)
    os.unlink(probe)
  except OSError as e:
    raise InputError(workdir, f"workdir cannot be written ({e.strerror or e})") from None
  return workdir


def save_config(workdir: os.PathLike | str, config: Any) -> Path | None:
  """Writes `workdir/config.json` (process 0 only, atomically). Returns its path."""
  if jax.process_index() != 0:
    return None
  path = Path(workdir) / CONFIG_JSON
  if hasattr(config, "to_json_best_effort"):
    text = config.to_json_best_effort(indent=2, sort_keys=True)
  elif hasattr(config, "to_dict"):
    text = json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str)
  else:
    text = json.dumps(config, indent=2, sort_keys=True, default=str)
  fileio.write_text(path, text + "\n")
  return path


def save_run_metadata(workdir: os.PathLike | str, metadata: Mapping[str, Any]) -> Path | None:
  """Writes `workdir/run.json` (process 0 only, atomically). Returns its path."""
  if jax.process_index() != 0:
    return None
  path = Path(workdir) / RUN_JSON
  fileio.write_json(path, dict(metadata))
  return path


class CheckpointStore:
  """The latest-N manager and the best-by-metric manager of one workdir."""

  def __init__(self, workdir: os.PathLike | str, keep: int = 3, best_metric: str = "map",
               best_mode: str = "max", async_save: bool = True, read_only: bool = False):
    """`read_only=True` (evaluate, predict): restore only. Nothing is created, and the
    temporary folders of a save in flight are left alone, so reading a run that is still
    training cannot break its next checkpoint."""
    if keep < 1:
      raise InputError("train.keep_checkpoints", f"{keep} must be >= 1")
    if best_mode not in ("max", "min"):
      raise ValueError(f"best_mode must be 'max' or 'min', got {best_mode!r}")
    self.workdir = Path(workdir).absolute()
    self.best_metric = best_metric
    self.best_mode = best_mode
    policies = ocp.checkpoint_managers
    writable = dict(enable_async_checkpointing=async_save, cleanup_tmp_directories=True,
                    create=True)
    if read_only:
      writable = dict(read_only=True, create=False, cleanup_tmp_directories=False)
    self.latest = ocp.CheckpointManager(
        self.workdir / CHECKPOINTS,
        options=ocp.CheckpointManagerOptions(
            preservation_policy=None if read_only else policies.LatestN(n=int(keep)),
            **writable))
    metric_of = lambda m: m[best_metric]  # noqa: E731
    self.best = ocp.CheckpointManager(
        self.workdir / CHECKPOINTS_BEST,
        options=ocp.CheckpointManagerOptions(
            best_fn=metric_of,  # makes Orbax store the metrics with each checkpoint
            best_mode=best_mode,
            preservation_policy=None if read_only else policies.BestN(
                get_metric_fn=metric_of, reverse=(best_mode == "min"), n=1,
                keep_checkpoints_without_metrics=False),
            **writable))

  # ---------------------------------------------------------------------- latest
  @property
  def directory(self) -> Path:
    return self.workdir / CHECKPOINTS

  def latest_step(self) -> int | None:
    return self.latest.latest_step()

  def save(self, state: TrainState) -> bool:
    """Saves `state` under its step (no-op if that step is already saved)."""
    step = int(jax.device_get(state.step))
    if step in self.latest.all_steps():
      return False
    return self.latest.save(step, args=ocp.args.StandardSave(state), force=True)

  def restore_latest(self, state_template: TrainState) -> TrainState | None:
    """The latest checkpoint restored with the shapes/shardings of `state_template`
    (a concrete state or its `abstract_state`), or None when there is none."""
    step = self.latest.latest_step()
    if step is None:
      return None
    return self.restore(step, state_template)

  def restore(self, step: int, state_template: TrainState, best: bool = False) -> TrainState:
    target = abstract_state(state_template)
    mngr = self.best if best else self.latest
    try:
      return mngr.restore(step, args=ocp.args.StandardRestore(target))
    except (ValueError, KeyError, TypeError) as e:
      raise InputError(mngr.directory / str(step), "checkpoint does not match this model/"
                       f"optimiser (changed config?): {e}") from None

  # ------------------------------------------------------------------------ best
  def best_value(self) -> float | None:
    step = self.best.best_step()
    if step is None:
      return None
    m = self.best.metrics(step)
    if not m or self.best_metric not in m:
      return None
    return float(m[self.best_metric])

  def best_step(self) -> int | None:
    return self.best.best_step()

  def save_best(self, state: TrainState, metrics: Mapping[str, float]) -> bool:
    """Saves `state` as the best checkpoint if `metrics[best_metric]` beats the stored
    best (same decision on every process: pass identical metrics)."""
    if self.best_metric not in metrics:
      return False
    value = float(metrics[self.best_metric])
    if value != value:  # NaN never wins
      return False
    current = self.best_value()
    if current is not None:
      better = value > current if self.best_mode == "max" else value < current
      if not better:
        return False
    step = int(jax.device_get(state.step))
    if step in self.best.all_steps():
      return False
    return self.best.save(step, args=ocp.args.StandardSave(state),
                          metrics={k: float(v) for k, v in metrics.items()}, force=True)

  # --------------------------------------------------------------------- housekeeping
  def wait(self) -> None:
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def close(self) -> None:
    self.latest.close()
    self.best.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
