"""Checkpoints (Orbax) and the run's JSON records.

Layout of a workdir:
  checkpoints/<step>/       latest `train.keep_checkpoints` TrainStates (Orbax
                            CheckpointManager; written atomically: a step folder appears
                            only once complete, so a killed run never leaves a broken one)
  checkpoints_best/<step>/  the single best TrainState by an eval metric (own manager,
                            BestN n=1, metric stored with the checkpoint)
  checkpoints_unreadable/<step>/  a checkpoint that could not be restored when a run
                            resumed, moved aside (never deleted) so that training goes on
                            from the newest readable one and can save that step again
  config.json               the full config (process 0, atomic); written only once the run
                            has started (a new run, or a checkpoint restored)
  run.json                  run metadata: dataset statistics, partial view, counts,
                            devices, resumes (process 0, atomic); written with config.json

Every process must call `save`/`save_best`/`restore_latest` (Orbax coordinates the hosts;
for multi-host runs the workdir must be on a filesystem all hosts share).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping

import jax
import orbax.checkpoint as ocp

from pa_jax import fileio
from pa_jax.errors import InputError
from pa_jax.outputs import file_above
from pa_jax.train.faults import ignore_late_read_callbacks, quiet_library_logs, unreadable_reason
from pa_jax.train.state import TrainState, abstract_state

CHECKPOINTS = "checkpoints"
CHECKPOINTS_BEST = "checkpoints_best"
CHECKPOINTS_UNREADABLE = "checkpoints_unreadable"
CONFIG_JSON = "config.json"
RUN_JSON = "run.json"
TMP_MARK = ".orbax-checkpoint-tmp"  # Orbax's name for a step folder still being written


def check_workdir_writable(workdir: os.PathLike | str) -> Path:
  """Creates `workdir` and proves a file can be written there; else a one-line InputError."""
  workdir = Path(workdir)
  blocker = file_above(workdir)
  if blocker is not None:  # mkdir would say "File exists" / "Not a directory": unhelpful
    raise InputError(workdir, f"workdir cannot be written: cannot create a folder under "
                     f"{blocker}, which is a file")
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    fd, probe = tempfile.mkstemp(dir=workdir, prefix=".write_probe.")
    os.close(fd)
    os.unlink(probe)
  except OSError as e:
    raise InputError(workdir, f"workdir cannot be written ({e.strerror or e})") from None
  return workdir


def config_json(config: Any) -> str:
  """`config` as the JSON text of config.json."""
  if hasattr(config, "to_json_best_effort"):
    return config.to_json_best_effort(indent=2, sort_keys=True)
  if hasattr(config, "to_dict"):
    return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str)
  return json.dumps(config, indent=2, sort_keys=True, default=str)


def save_config(workdir: os.PathLike | str, config: Any) -> Path | None:
  """Writes `workdir/config.json` (process 0 only, atomically). Returns its path."""
  if jax.process_index() != 0:
    return None
  path = Path(workdir) / CONFIG_JSON
  fileio.write_text(path, config_json(config) + "\n")
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
    """Checkpoint `step`; a one-line InputError when it cannot be restored."""
    mngr = self.best if best else self.latest
    try:
      return self._restore(step, state_template, best)
    except Exception as e:  # Orbax and TensorStore raise plain Exception/ValueError
      ignore_late_read_callbacks()
      raise InputError(mngr.directory / str(step),
                       f"cannot restore this checkpoint: {unreadable_reason(e)}") from None

  def _restore(self, step: int, state_template: TrainState, best: bool) -> TrainState:
    mngr = self.best if best else self.latest
    with quiet_library_logs():
      return mngr.restore(step, args=ocp.args.StandardRestore(abstract_state(state_template)))

  def restore_readable(self, state_template: TrainState, best: bool = False,
                       warn: Callable[[str], None] | None = None
                       ) -> tuple[TrainState | None, int | None, list[int]]:
    """(state, step, unreadable steps): the newest checkpoint that restores, trying older
    ones when newer ones are damaged (a disk error, a half-copied run), each skipped one
    reported through `warn` in one line. (None, None, []) when there is no checkpoint;
    a one-line InputError when none restores.

    A checkpoint that does not fit this model (changed config) fails the same way for
    every step, so the error then shows the first reason, which names the shapes."""
    mngr = self.best if best else self.latest
    skipped: list[tuple[int, str]] = []
    for step in sorted(mngr.all_steps(), reverse=True):
      try:
        state = self._restore(step, state_template, best)
      except Exception as e:  # noqa: BLE001 - any failure means "not readable"
        ignore_late_read_callbacks()
        skipped.append((step, unreadable_reason(e)))
        continue
      for bad, why in skipped:
        if warn is not None:
          warn(f"warning: {mngr.directory / str(bad)} is unreadable ({why}); using "
               f"step {step}")
      return state, step, [bad for bad, _ in skipped]
    if not skipped:
      return None, None, []
    listing = "; ".join(f"{st}: {why}" for st, why in skipped[:3])
    raise InputError(mngr.directory, f"no checkpoint can be restored ({listing})")

  def set_aside(self, step: int) -> Path:
    """Moves the unreadable `checkpoints/<step>` to `checkpoints_unreadable/<step>` (kept
    for the user, out of Orbax's way: the resumed run saves that step afresh)."""
    src = self.directory / str(step)
    dst = self.workdir / CHECKPOINTS_UNREADABLE / str(step)
    n = 1
    while dst.exists():
      dst = dst.with_name(f"{step}.{n}")
      n += 1
    try:
      dst.parent.mkdir(parents=True, exist_ok=True)
      os.replace(src, dst)
    except OSError as e:
      raise InputError(src, f"unreadable checkpoint cannot be moved aside ({e.strerror or e})"
                       ) from None
    self.latest.reload()
    return dst

  def remove_partial(self) -> None:
    """Deletes the temporary folders of saves that failed (e.g. on a full disk). Call only
    once no save is in flight."""
    for d in (self.directory, self.workdir / CHECKPOINTS_BEST):
      if d.is_dir():
        for p in d.iterdir():
          if TMP_MARK in p.name:
            shutil.rmtree(p, ignore_errors=True)

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
