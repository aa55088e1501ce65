"""User-facing errors.

Every problem that a user can fix or must know about is raised as a `PaJaxError`; `run.py`
catches that one class, prints one line and exits with the error's `exit_code`, instead of
showing a traceback (`--debug` shows it). So a biologist sees
"labels/a.png: label map is 256x256 but its image is 256x320", not 40 frames of stack.

* `InputError` (exit 2): bad user input or an environment that refuses us. `where` names the
  file, folder, config field or parameter (`model.partial.enabled`, `channel`), never a CLI
  flag: the library is also driven by a GUI, and `run.py` translates parameter names to
  flags at the edge.
* `TrainingError` (exit 3): a run that started correctly and then failed on its own, e.g. a
  NaN loss. Not a usage error, so it does not share exit code 2.
"""

from __future__ import annotations

import os


def one_line(text: object) -> str:
  """`text` with every run of white space (newlines included) folded to one space."""
  return " ".join(str(text).split())


class PaJaxError(Exception):
  """Base of every error `run.py` reports in one line. `str(err)` is that line."""

  exit_code = 2

  def __init__(self, where: os.PathLike | str, problem: str):
    self.where = str(where)
    self.problem = one_line(problem)  # force a single line
    super().__init__(f"{self.where}: {self.problem}")


class InputError(PaJaxError, ValueError):
  """Bad user input (a file, folder, config field or argument), or a path that cannot be
  read or written. `str(err)` is a single line naming it and the problem."""

  exit_code = 2


class TrainingError(PaJaxError):
  """A training run that failed after it started (non-finite loss, ...); exit code 3."""

  exit_code = 3
