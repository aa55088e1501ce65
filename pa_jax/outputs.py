"""Output folders: a command never destroys its inputs or an earlier result.

`predict`, `evaluate`, `partial` (and the first round of `annotate`) write a whole folder of
results. The policy, applied by `check_output` before anything is computed and by
`staged_output` while writing:

* An output that **is** an input, or that **contains** one, is always refused, `overwrite`
  or not: replacing the output as a whole would delete the input with it
  (`predict --input imgs --output imgs` used to overwrite the raw images with label maps).
* An output **inside** an input folder is refused too (a later read of that input would
  pick the results up as inputs), except where the caller names the input in `nest_ok`
  because its reader only reads the folder's own files, never its sub-folders: `evaluate`
  writes `<predictions>/evaluation` by default and reads only the label maps directly in
  `<predictions>`. A single input *file* only forbids the output being that file.
* An output that is an existing file, or lies under one, is refused.
* An existing output folder that holds anything is refused unless `overwrite`: new and old
  files would be mixed (a COCO `annotations.json` listing only the new images beside the
  old label maps). An empty existing folder is fine.
* Results are written into a hidden temporary sibling `.<name>.tmp-<pid>` and moved onto
  the output only when the command succeeded: with `overwrite` the old folder is swapped
  out as a whole (renamed to `.<name>.old-<pid>`, the new one renamed in, the old deleted),
  so old and new results are never mixed. On any failure, Ctrl-C included, the temporary
  folder is removed and the old output is untouched; an interrupted command never leaves
  a half-written output. Leftovers of a killed process (SIGKILL) are cleaned up, or an
  old folder caught between the two renames restored, by the next command on that output.
* A folder that cannot be created or written (read-only, disk full) is one `InputError`
  naming the path.
* `on_error` of the commands that read a folder of files (`check_on_error`): 'stop' ends
  the command at the first bad file, and since results are staged nothing is written;
  'skip' goes on and lists each skipped file with its reason in `skipped.csv`
  (`write_skipped`).

Library code names the parameter (`overwrite`), in backquotes, so that run.py can turn
it into the flag (`--overwrite`) at the edge.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from pa_jax import fileio
from pa_jax.errors import InputError

# OSErrors that mean "this place refuses our writes", reported as one line naming the path.
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS,
                 errno.EFBIG, errno.ENAMETOOLONG}


def _resolve(path: os.PathLike | str) -> Path:
  """Absolute path with links and `..` resolved (missing tails are kept as given)."""
  return Path(path).expanduser().resolve(strict=False)


def _inside(child: Path, parent: Path) -> bool:
  """Whether `child` lies strictly below `parent` (both resolved)."""
  return child != parent and child.is_relative_to(parent)


def file_above(path: Path) -> Path | None:
  """The path itself or its nearest existing ancestor when that is not a folder."""
  for p in (path, *path.parents):
    if p.exists() or p.is_symlink():
      return None if p.is_dir() else p
  return None


_COUNT_LIMIT = 10_000  # a message needs no exact count of a huge folder (`--output ~`)


def count_entries(folder: Path, limit: int = _COUNT_LIMIT) -> tuple[int, int]:
  """(files, sub-folders) below `folder`, recursively (links not followed), counting
  stops once `limit` files are seen."""
  files = other = 0
  for _, dirs, names in os.walk(folder):
    files += len(names)
    other += len(dirs)
    if files >= limit:
      break
  return files, other


def describe_contents(folder: Path) -> str:
  """'12 files' / '1 file' / '3 folders' / 'over 10000 files' for a message."""
  files, other = count_entries(folder)
  if files >= _COUNT_LIMIT:
    return f"over {_COUNT_LIMIT} files"
  if files:
    return f"{files} file{'s' * (files != 1)}"
  return f"{other} folder{'s' * (other != 1)}"


def _is_empty_dir(folder: Path) -> bool:
  try:
    return not any(folder.iterdir())
  except OSError as e:
    raise InputError(folder, f"cannot read this folder ({e.strerror or e})") from None


def check_output(output: os.PathLike | str, inputs: Iterable[os.PathLike | str] = (), *,
                 overwrite: bool = False, nest_ok: Iterable[os.PathLike | str] = (),
                 is_own: bool = False) -> Path:
  """Checks `output` against the policy of this module; returns it resolved.

  Args:
    output: the output folder (need not exist).
    inputs: the input files and folders of the command (None entries are ignored).
    overwrite: an existing non-empty output may be replaced as a whole.
    nest_ok: inputs whose reader never reads sub-folders, so the output may lie inside.
    is_own: the caller recognised a non-empty `output` as its own persistent kind (an
      annotation project), so it is no "earlier result" to protect.
  Raises:
    InputError naming the output (and the input it collides with).
  """
  out = _resolve(output)
  blocker = file_above(out)
  if blocker == out:
    raise InputError(output, "is an existing file, not a folder; choose a folder for the "
                     "results")
  if blocker is not None:
    raise InputError(output, f"cannot be created: {blocker} is a file, not a folder")
  nest = {_resolve(p) for p in nest_ok if p is not None}
  for given in inputs:
    if given is None:
      continue
    inp = _resolve(given)
    if out == inp:
      raise InputError(output, f"is also the input {given}; the results would replace it. "
                       "Choose another output folder")
    if _inside(inp, out):
      raise InputError(output, f"contains the input {given}; the results would replace it. "
                       "Choose another output folder")
    if _inside(out, inp) and inp.is_dir() and inp not in nest:
      raise InputError(output, f"lies inside the input folder {given}; the results would "
                       "be read back as input. Choose a folder outside it")
  if out.is_dir() and not overwrite and not is_own and not _is_empty_dir(out):
    raise InputError(output, f"is not empty (it holds {describe_contents(out)} from an "
                     "earlier run); pass `overwrite` to replace them as a whole, or choose "
                     "a new folder")
  return out


def tmp_sibling(out: Path, kind: str = "tmp", pid: int | None = None) -> Path:
  """`.<name>.<kind>-<pid>` beside `out`: on the same file system, so renames are atomic."""
  return out.parent / f".{out.name}.{kind}-{os.getpid() if pid is None else pid}"


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except OSError:
    return True  # exists, owned by someone else
  return True


def recover(out: Path) -> None:
  """Cleans up after a killed command on `out`: removes the temporary folders of dead
  processes, and restores an old output left renamed between the two renames of a swap."""
  if not out.parent.is_dir():
    return
  prefix = f".{out.name}."
  for p in list(out.parent.iterdir()):
    if not p.name.startswith(prefix):
      continue
    kind, _, pid = p.name[len(prefix):].rpartition("-")
    if kind not in ("tmp", "old", "prev") or not pid.isdigit() or _pid_alive(int(pid)):
      continue
    if kind == "old" and not out.exists():
      os.rename(p, out)  # killed after moving the old output away: put it back
    elif kind == "prev":
      # Killed while writing in place (`replaced_in_place`): the old output comes back.
      shutil.rmtree(out, ignore_errors=True)
      os.rename(p, out)
    else:
      shutil.rmtree(p, ignore_errors=True)


def _move_into(src: Path, dst: Path) -> None:
  """Moves the entries of `src` into the empty folder `dst` (a mount point cannot be
  renamed over), then removes `src`."""
  for p in src.iterdir():
    shutil.move(str(p), str(dst / p.name))
  src.rmdir()


def commit(tmp: Path, out: Path) -> None:
  """Puts the finished folder `tmp` in place of `out` as a whole."""
  if not out.exists():
    os.rename(tmp, out)
    return
  if not any(out.iterdir()):
    try:
      os.rename(tmp, out)  # POSIX: a folder may be renamed over an empty folder
    except OSError as e:
      if e.errno not in (errno.EBUSY, errno.EXDEV, errno.EPERM):
        raise
      _move_into(tmp, out)
    return
  old = tmp_sibling(out, "old")
  os.rename(out, old)
  try:
    os.rename(tmp, out)
  except BaseException:
    os.rename(old, out)  # the old output stays as it was
    raise
  shutil.rmtree(old, ignore_errors=True)


ON_ERROR = ("stop", "skip")


def check_on_error(on_error: str) -> str:
  """`on_error` if it is one of ON_ERROR, else an InputError naming the parameter."""
  if on_error not in ON_ERROR:
    raise InputError("on_error", f"{on_error!r} is not one of {', '.join(ON_ERROR)}")
  return on_error


def write_skipped(folder: Path, skipped: Sequence[tuple[str, str]]) -> Path | None:
  """Writes `skipped.csv` (file, reason) into `folder` when anything was skipped."""
  if not skipped:
    return None
  path = folder / "skipped.csv"
  fileio.write_csv(path, [{"file": f, "reason": r} for f, r in skipped], ("file", "reason"))
  return path


@contextlib.contextmanager
def replaced_in_place(out: Path) -> Iterator[Path]:
  """For outputs that must be written at their final path (a project whose files record
  their own paths): moves the old folder aside, yields `out` (new, empty), and deletes
  the old folder on success; on failure removes what was written and puts the old
  folder back. A killed process's old folder is restored by the next `recover(out)`."""
  out = Path(out)
  recover(out)
  prev = tmp_sibling(out, "prev")
  try:
    os.rename(out, prev)
    out.mkdir()
  except OSError as e:
    if prev.exists() and not out.exists():
      os.rename(prev, out)
    raise write_error(e, out) from None
  try:
    yield out
  except BaseException:
    shutil.rmtree(out, ignore_errors=True)
    os.rename(prev, out)
    raise
  shutil.rmtree(prev, ignore_errors=True)


def write_error(err: OSError, fallback: os.PathLike | str) -> InputError:
  """One-line InputError for an OSError raised while writing (naming its path)."""
  where = err.filename or fallback
  return InputError(where, f"cannot write here ({err.strerror or err})")


def _outside_tmp(err: InputError, tmp: Path, out: Path) -> InputError:
  """`err` naming the final output path instead of the temporary folder (which is gone by
  the time the user reads the message)."""
  where = Path(err.where)
  if not where.is_relative_to(tmp):
    return err
  return InputError(out / where.relative_to(tmp), err.problem)


@contextlib.contextmanager
def staged_output(output: os.PathLike | str, inputs: Iterable[os.PathLike | str] = (), *,
                  overwrite: bool = False, nest_ok: Iterable[os.PathLike | str] = (),
                  ) -> Iterator[Path]:
  """Checks `output` (`check_output`), yields an empty temporary folder beside it to write
  the results into, and on success puts that folder in place of `output` as a whole.

  On any exception (Ctrl-C included) the temporary folder is removed, `output` is left as
  it was and the exception propagates; an OSError of a refused write (disk full,
  read-only) becomes one InputError naming the path.

    with staged_output(out, inputs=[images], overwrite=False) as tmp:
      write_everything(tmp)   # `out` appears only if this returns
  """
  out = check_output(output, inputs, overwrite=overwrite, nest_ok=nest_ok)
  new_parents = [p for p in out.parents if not p.exists()]
  try:
    out.parent.mkdir(parents=True, exist_ok=True)
    recover(out)
    tmp = tmp_sibling(out)
    shutil.rmtree(tmp, ignore_errors=True)  # our own pid: a stale folder of a past process
    tmp.mkdir()
  except OSError as e:
    _remove_empty(new_parents)
    raise InputError(out.parent, f"cannot create the output folder here "
                     f"({e.strerror or e})") from None
  try:
    try:
      yield tmp
    except InputError as e:
      raise _outside_tmp(e, tmp, out) from None
    commit(tmp, out)
  except OSError as e:
    shutil.rmtree(tmp, ignore_errors=True)
    _remove_empty(new_parents)
    if e.errno in _WRITE_ERRNOS:
      raise _outside_tmp(write_error(e, out), tmp, out) from None
    raise
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    _remove_empty(new_parents)  # a failed command leaves no trace, not even empty folders
    raise


def _remove_empty(folders: Iterable[Path]) -> None:
  """Removes the folders (innermost first) that are still empty."""
  for p in folders:
    with contextlib.suppress(OSError):
      p.rmdir()
