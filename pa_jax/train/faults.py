"""Storage faults and unreadable checkpoints, as one line a person can act on.

Orbax and TensorStore report a full disk or a damaged array file as kilobytes of tree
metadata and tracebacks from several threads; these helpers find the cause behind the
chain of exceptions and silence the library logs while a run is on.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import re
import sys
import threading
from pathlib import Path
from typing import Iterator


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
  """Drops the 'Event loop is closed' errors of reads and writes still in flight when a
  restore or a save failed: TensorStore completes them after Orbax closed its event loop,
  at any later moment (process exit included), from any thread, and each printed a
  traceback; asyncio also logs the never-retrieved task errors of the failed call when
  they are collected. Installed once, for the rest of the process (loop.train and
  experiment.load_run install it before Orbax starts); every other error still reaches
  the previous hooks."""
  if getattr(sys.excepthook, "_pa_jax", False):
    return
  old_except, old_unraisable = sys.excepthook, sys.unraisablehook
  old_thread = threading.excepthook

  def excepthook(kind, value, tb):
    if not _is_closed_loop(value):
      old_except(kind, value, tb)

  def unraisablehook(unraisable):
    if not _is_closed_loop(unraisable.exc_value):
      old_unraisable(unraisable)

  def thread_excepthook(args):
    if not _is_closed_loop(args.exc_value):
      old_thread(args)

  excepthook._pa_jax = True
  sys.excepthook, sys.unraisablehook = excepthook, unraisablehook
  threading.excepthook = thread_excepthook
  # The one-line error has told the user what failed; asyncio's "Task exception was
  # never retrieved" records of Orbax's own tasks would repeat it as a traceback. Only
  # those records are dropped; every other asyncio record still goes out.
  logging.getLogger("asyncio").addFilter(
      lambda r: not str(r.msg).startswith("Task exception was never retrieved"))


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
