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

import contextlib
import errno
import json
import logging
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import jax
import orbax.checkpoint as ocp

from pa_jax import fileio
from pa_jax.errors import InputError
from pa_jax.train.state import TrainState, abstract_state

CHECKPOINTS = "checkpoints"
CHECKPOINTS_BEST = "checkpoints_best"
CHECKPOINTS_UNREADABLE = "checkpoints_unreadable"
CONFIG_JSON = "config.json"
RUN_JSON = "run.json"
TMP_MARK = ".orbax-checkpoint-tmp"  # Orbax's name for a step folder still being written


def _file_ancestor(path: Path) -> Path | None:
  """The nearest existing ancestor of `path` (itself included) when it is not a folder."""
  for p in (path, *path.parents):
    if p.exists():
      return None if p.is_dir() else p
  return None


def check_workdir_writable(workdir: os.PathLike | str) -> Path:
  """Creates `workdir` and proves a file can be written there; else a one-line InputError."""
  workdir = Path(workdir)
  blocker = _file_ancestor(workdir)
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


# Fields a resumed run may change: how long it trains and how often it logs, saves and
# evaluates, and how a finished run is evaluated or predicts. None of them changes what a
# checkpoint holds or what the steps already done computed. Everything else (model, data,
# view, optimiser, seed) would resume a run that is not the one that was trained.
RESUMABLE_FIELDS = ("train.steps", "train.log_every", "train.checkpoint_every",
                    "train.eval_every", "train.keep_checkpoints", "data.prefetch", "eval.*",
                    "predict.*")


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(tree, dict) and tree:
    out = {}
    for k, v in tree.items():
      out.update(_flatten(v, f"{prefix}{k}."))
    return out
  return {prefix[:-1]: tree}


def _resumable(field: str) -> bool:
  return any(field == f or (f.endswith(".*") and field.startswith(f[:-1]))
             for f in RESUMABLE_FIELDS)


def _short(v: Any) -> str:
  text = repr(v)
  return text if len(text) <= 40 else text[:37] + "..."


def config_changes(stored: Mapping[str, Any], config: Any) -> list[str]:
  """'field: old -> new' for every field of `config` that differs from the `stored`
  config.json (both compared as JSON, so tuples equal lists), resumable fields aside."""
  old = _flatten(dict(stored))
  new = _flatten(json.loads(config_json(config)))
  # Only fields both configs have: a field added (or dropped) by a later version of
  # pa_jax would otherwise make every older run impossible to resume; a real difference
  # in what the checkpoint holds still fails the restore, in one line.
  return [f"{k}: {_short(old[k])} -> {_short(new[k])}" for k in sorted(set(old) & set(new))
          if old[k] != new[k] and not _resumable(k)]


def has_checkpoint(workdir: os.PathLike | str) -> bool:
  """Whether `workdir` holds a saved checkpoint (latest or best): a run that has started."""
  for sub in (CHECKPOINTS, CHECKPOINTS_BEST):
    d = Path(workdir) / sub
    if d.is_dir() and any(p.name.isdigit() for p in d.iterdir()):
      return True
  return False


def check_same_config(workdir: os.PathLike | str, config: Any) -> None:
  """Refuses to resume a run under a config other than the one it was trained with.

  A workdir without a checkpoint has nothing to be inconsistent with: its config may
  change (e.g. a lower learning rate after a NaN at step 1). The stored config.json is
  only read here; it is rewritten once the run has started (`loop.train`)."""
  path = Path(workdir) / CONFIG_JSON
  if not has_checkpoint(workdir):
    return
  stored = fileio.read_json(path)
  if stored is None:
    return  # a run of an older version without config.json: the restore checks shapes
  changes = config_changes(stored, config)
  if not changes:
    return
  shown = ", ".join(changes[:4]) + (f" (and {len(changes) - 4} more)" if len(changes) > 4
                                    else "")
  raise InputError(path, f"this run was trained with a different config: {shown}; use a "
                   "new workdir or the original config")


def save_run_metadata(workdir: os.PathLike | str, metadata: Mapping[str, Any]) -> Path | None:
  """Writes `workdir/run.json` (process 0 only, atomically). Returns its path."""
  if jax.process_index() != 0:
    return None
  path = Path(workdir) / RUN_JSON
  fileio.write_json(path, dict(metadata))
  return path


# ------------------------------------------------------------------------- faults


@contextlib.contextmanager
def quiet_library_logs() -> Iterator[None]:
  """Silences the log records of Orbax (absl), asyncio and TensorStore meanwhile.

  Orbax logs every failure it also raises, with a traceback, from each thread that saw it
  (a full disk gave ~1,500 lines); the raised error reaches the user as one line, so the
  records add only noise. Its warnings on a healthy read-only restore are noise too."""
  loggers = [logging.getLogger(n) for n in ("absl", "orbax", "asyncio", "tensorstore")]
  levels = [lg.level for lg in loggers]
  for lg in loggers:
    lg.setLevel(logging.CRITICAL + 1)
  try:
    yield
  finally:
    for lg, level in zip(loggers, levels):
      lg.setLevel(level)


def _is_closed_loop(exc: BaseException | None) -> bool:
  return isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"


def ignore_late_read_callbacks() -> None:
  """Drops the 'Event loop is closed' errors of reads still in flight when a restore
  failed: TensorStore completes them after Orbax closed its event loop, at any later
  moment (process exit included), and each printed a traceback. Installed once, for the
  rest of the process; every other error still reaches the previous hooks."""
  if getattr(sys.excepthook, "_pa_jax", False):
    return
  old_except, old_unraisable = sys.excepthook, sys.unraisablehook

  def excepthook(kind, value, tb):
    if not _is_closed_loop(value):
      old_except(kind, value, tb)

  def unraisablehook(unraisable):
    if not _is_closed_loop(unraisable.exc_value):
      old_unraisable(unraisable)

  excepthook._pa_jax = True
  sys.excepthook, sys.unraisablehook = excepthook, unraisablehook


def _chain(e: BaseException) -> Iterator[BaseException]:
  """`e` and the exceptions behind it (__cause__, __context__), each once."""
  seen, todo = set(), [e]
  while todo:
    x = todo.pop(0)
    if x is None or id(x) in seen:
      continue
    seen.add(id(x))
    yield x
    todo += [x.__cause__, x.__context__]


_STORAGE_ERRNOS = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded",
                   errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
                   errno.EPERM: "permission denied"}
# TensorStore (Orbax's array writer) reports the OS error only as text.
_STORAGE_TEXTS = {"No space left on device": "disk full",
                  "Disk quota exceeded": "disk quota exceeded",
                  "Read-only file system": "read-only file system",
                  "Permission denied": "permission denied"}


def storage_problem(e: BaseException) -> tuple[str, str | None] | None:
  """('disk full', file or None) when `e`, or an error behind it, is the file system
  refusing a write; None for any other error."""
  for x in _chain(e):
    if isinstance(x, OSError) and x.errno in _STORAGE_ERRNOS:
      return _STORAGE_ERRNOS[x.errno], x.filename
  for x in _chain(e):
    text = str(x)
    for needle, problem in _STORAGE_TEXTS.items():
      if needle in text:
        return problem, None
  return None


def unreadable_reason(e: BaseException) -> str:
  """A few words on why a checkpoint did not restore (Orbax's own text is kilobytes of
  tree metadata or TensorStore specs)."""
  texts = [str(x) for x in _chain(e)]
  for t in texts:
    m = re.search(r"Requested shape: (\(.*?\)) is not compatible with the stored shape: "
                  r"(\(.*?\))", t)
    if m:
      return f"an array has shape {m.group(2)}, this model wants {m.group(1)}"
  for t in texts:
    m = re.match(r"([A-Z][A-Z_]+): ", t)
    if m:  # a TensorStore status: the array files are damaged or missing
      return f"its array data cannot be read ({m.group(1)})"
  for x in _chain(e):
    if isinstance(x, FileNotFoundError):
      return f"a file is missing ({Path(x.filename or '?').name})"
  if any("pytree structure" in t or "tree structure" in t.lower() for t in texts):
    return "its tree metadata is missing or damaged"
  first = next((l for l in str(e).splitlines() if l.strip()), type(e).__name__)
  return first if len(first) <= 100 else first[:97] + "..."


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
