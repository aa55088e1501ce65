"""How `run.py` reports an error: one line on stderr, parameter names shown as flags.

Library code raises `PaJaxError`s that name parameters and config fields (a GUI caller has
no flags); this module turns them into the line a CLI user reads, and turns the failures
of flag and config-file parsing (absl, ml_collections), which arrive as many exception
types with multi-line texts, into one line naming the file or flag. run.py keeps only the
dispatch (`_parse`, `_run`).
"""

from __future__ import annotations

import os
import re
import traceback

from pa_jax.errors import InputError, PaJaxError, one_line

# Library errors name parameters (a GUI has no flags); the CLI user is told the flag.
FLAG_OF = {name: "--" + name.replace("_", "-") for name in (
    "workdir", "dataset", "keep", "crop", "seed", "split", "group", "output", "overwrite",
    "on_error", "predictions", "ground_truth", "best", "allow_missing", "input", "method",
    "classical_params", "format", "contours", "attention", "images", "annotations",
    "rounds", "target_recall", "accept_proposals", "steps", "channel", "plane", "level",
    "region", "stream", "model", "name", "from_scratch", "diameter", "mask_overlap",
    "score_threshold")}
FLAG_OF["classical_params"] = "--classical_params"  # as documented in the README
# Parameters whose values are paths: an error's `where` equal to one of these names is far
# more likely a folder called so ("images: folder not found") than the parameter.
PATH_PARAMS = {"workdir", "dataset", "output", "predictions", "ground_truth", "input",
               "images", "annotations"}


def flag_text(text: str) -> str:
  """A library message for the CLI: `name` (a parameter in backquotes) becomes its flag."""
  return re.sub(r"`(\w+)`", lambda m: FLAG_OF.get(m.group(1), m.group(0)), text)


def error_line(err) -> str:
  """`error: <where>: <problem>` of a PaJaxError, parameter names turned into flags."""
  where = err.where if err.where in PATH_PARAMS else FLAG_OF.get(err.where, err.where)
  return f"error: {where}: {flag_text(err.problem)}"


def unexpected_line(err: BaseException) -> str:
  return (f"error: {type(err).__name__}: {one_line(err) or '(no message)'} "
          "(run with --debug for the traceback)")


def config_file_arg(argv: list[str]) -> str | None:
  """The file given to --config (without its `:arg`), or None."""
  for i, a in enumerate(argv):
    if a == "--config" and i + 1 < len(argv):
      return argv[i + 1].split(":", 1)[0]
    if a.startswith("--config="):
      return a[len("--config="):].split(":", 1)[0]
  return None


def config_load_error(path: str | None, err: BaseException):
  """One InputError naming the config file, the line and the error it raised."""
  path = path or "--config"
  if not os.path.isfile(path):
    return InputError(path, "config file not found")
  cause = err
  while isinstance(cause, OSError) and cause.__cause__ is not None:
    cause = cause.__cause__  # ml_collections wraps what the file raised
  if isinstance(cause, SyntaxError):
    return InputError(path, f"cannot load this config file: {cause.msg} at line "
                      f"{cause.lineno}")
  line = None
  target = os.path.realpath(path)
  for frame in traceback.extract_tb(cause.__traceback__):
    if os.path.realpath(frame.filename) == target:
      line = frame.lineno
  lines = [l.strip() for l in str(cause).splitlines() if l.strip()]
  kind, text = type(cause).__name__, lines[-1] if lines else ""
  if "Error whilst parsing config file" in str(cause):
    # ml_collections re-raised a TypeError/ValueError with the traceback as its text.
    for f, n in re.findall(r'File "([^"]+)", line (\d+)', str(cause)):
      if os.path.realpath(f) == target:
        line = int(n)
    kind, _, text = text.partition(": ")
  at = f" at line {line}" if line else ""
  return InputError(path, f"cannot load this config file: {kind}{at}: {one_line(text)}")


def is_config_load_failure(argv: list[str], err: BaseException) -> bool:
  """Whether `err` (raised while parsing flags) came from loading the --config file."""
  path = config_file_arg(argv)
  if path is None:
    return False
  if not os.path.isfile(path) or isinstance(err, SyntaxError):
    return True
  if "Error whilst parsing config file" in str(err):
    return True
  target = os.path.realpath(path)
  tb = err.__traceback__
  return any(os.path.realpath(f.filename) == target for f in traceback.extract_tb(tb))


def config_override_error(argv: list[str], err: Exception) -> str:
  """One line for a bad --config.* override, e.g. a typo in a field name."""
  msg = " ".join(str(err).replace("\\n", " ").replace("\n", " ").strip("'\"").split())
  bad = [a.split("=")[0] for a in argv if a.startswith("--config.")]
  where = bad[0] if len(bad) == 1 else "--config"
  return f"error: {where}: {msg}"


def flag_error(err: Exception) -> str:
  """One line for a flag error; for a config file that failed to load, its own last line."""
  lines = [l for l in str(err).splitlines() if l.strip()]
  head = lines[0]
  if len(lines) > 1 and "Traceback" in str(err):
    return f"error: {head.split(':')[0]}: {lines[-1].strip()}"
  return f"error: {head}"


def debug_requested(argv: list[str]) -> bool:
  """--debug on a command line that FLAGS could not parse."""
  return any(a in ("--debug", "--debug=true", "--debug=True", "--debug=1") for a in argv)


def pajax_error_in_chain(err: BaseException):
  """The PaJaxError that `err` wraps (ml_collections and absl re-raise what a config's
  get_config raised as other types), or None."""
  seen = set()
  while err is not None and id(err) not in seen:
    if isinstance(err, PaJaxError):
      return err
    seen.add(id(err))
    err = err.__cause__ or err.__context__
  return None
