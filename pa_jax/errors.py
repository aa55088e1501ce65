"""User-facing errors.

Every problem with a user's input (a file, a folder, a config value) is raised as an
`InputError` whose message is one line that names the offending path or field and says what
is wrong. `run.py` prints that line and exits non-zero instead of showing a traceback, so a
biologist sees "labels/a.png: label map is 256x256 but its image is 256x320", not 40 frames
of stack.
"""

from __future__ import annotations

import os


class InputError(ValueError):
  """Bad user input. `str(err)` is a single line naming the file/field and the problem."""

  def __init__(self, where: os.PathLike | str, problem: str):
    self.where = str(where)
    self.problem = " ".join(str(problem).split())  # force a single line
    super().__init__(f"{self.where}: {self.problem}")
