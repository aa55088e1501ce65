"""A library call that reports `on_progress(...)` turned into a generator of those reports.

napari's `thread_worker` runs a generator in a thread and delivers each yielded value to
the GUI thread (`worker.yielded`); the library reports progress through a callback
instead (`Session.next_round(on_progress=...)`). `progress_steps` bridges the two: it
runs the call in its own thread and yields each report as it arrives, so the widget
updates its progress bar while the call runs, and the call's code stays the CLI's.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Generator

from pa_jax.errors import PaJaxError

_DONE = object()


def progress_steps(call: Callable[[Callable[..., None]], Any]
                   ) -> Generator[tuple, None, Any]:
  """Yields the argument tuple of every `on_progress(*args)` of `call(on_progress)`, then
  returns its result (a generator's return value: `worker.returned` in napari). An
  exception of `call` is raised here, in the consumer's thread, after the reports made
  before it."""
  reports: queue.Queue = queue.Queue()
  outcome: dict[str, Any] = {}

  def target():
    try:
      outcome["value"] = call(lambda *args: reports.put(args))
    except BaseException as e:  # noqa: BLE001 - re-raised in the consumer's thread
      outcome["error"] = e
    finally:
      reports.put(_DONE)

  thread = threading.Thread(target=target, name="pa_jax-progress", daemon=True)
  thread.start()
  while (item := reports.get()) is not _DONE:
    yield item
  thread.join()
  if "error" in outcome:
    raise outcome["error"]
  return outcome["value"]


def show_report(bar, report: tuple) -> tuple[str, int, int]:
  """Moves a magicgui ProgressBar to one `(stage, done, total)` report; returns it typed."""
  stage, done, total = report
  bar.max = max(int(total), 1)
  bar.value = int(done)
  return stage, int(done), int(total)


def error_line(err: BaseException) -> str:
  """A worker's exception as one line: a library error is one already (it names the file
  or field); anything else gets its type, so the widget never shows a traceback."""
  text = str(err) if isinstance(err, PaJaxError) else f"{type(err).__name__}: {err}"
  return " ".join(text.split())
