"""Which model a name means: the models shipped in `pa_jax/zoo/models/`, or a model file.

A shipped model is the pair `<name>.npz` + `<name>.json` in `MODELS_DIR` (format:
`pa_jax.zoo.model_file`); `DEFAULT_MODEL` is what `run.py predict` uses without
`--workdir` / `--model`. `resolve` takes a registered name (also as 'zoo:<name>', the
form of `model.init`) or a path to either file of a pair, and answers with the .npz path,
or one InputError line naming what is wrong.

Standard library only: configs and the CLI read `DEFAULT_MODEL` without importing JAX.
"""

from __future__ import annotations

import os
from pathlib import Path

from pa_jax.errors import InputError

MODELS_DIR = Path(__file__).resolve().parent / "models"
DEFAULT_MODEL = "nuclei_cpu_v2"
ZOO_PREFIX = "zoo:"
SUFFIXES = (".npz", ".json")


def available(models_dir: os.PathLike | str | None = None) -> list[str]:
  """Names of the complete pairs (.npz and .json) in `models_dir` (default MODELS_DIR)."""
  folder = Path(models_dir) if models_dir is not None else MODELS_DIR
  if not folder.is_dir():
    return []
  return sorted(p.stem for p in folder.glob("*.npz") if p.with_suffix(".json").is_file())


def shown(path: os.PathLike | str) -> str:
  """`path` as a person should read it: relative to the working folder when below it."""
  path = Path(path).absolute()
  try:
    return str(path.relative_to(Path.cwd()))
  except ValueError:
    return str(path)


def _is_path(text: str) -> bool:
  return text.endswith(SUFFIXES) or os.sep in text or "/" in text


def resolve(name_or_path: os.PathLike | str, where: str = "model", hint: str = "") -> Path:
  """The .npz of a registered name, 'zoo:<name>' or a path to a .npz / .json model file.

  `where` names the parameter in errors ('model', 'model.init'); `hint` ends the line
  for a missing default model (what the caller can do instead). Raises InputError: a
  path whose pair is incomplete, an unknown name (listing the shipped ones), or the
  default model when this checkout does not hold it yet."""
  text = str(name_or_path)
  if text.startswith(ZOO_PREFIX):
    text = text[len(ZOO_PREFIX):]
  if _is_path(text):
    path = Path(text)
    npz = path.with_suffix(".npz") if path.suffix in SUFFIXES else path
    for p in (npz, npz.with_suffix(".json")):
      if not p.is_file():
        raise InputError(p, "model file not found (a zoo model is a .npz with its .json)")
    return npz
  npz = MODELS_DIR / f"{text}.npz"
  names = available()
  if text in names:
    return npz
  if text == DEFAULT_MODEL:
    raise InputError(shown(npz), f"the shipped model {DEFAULT_MODEL} is not in this checkout "
                     "yet" + (f"; {hint}" if hint else ""))
  listing = ", ".join(names) if names else "none yet"
  raise InputError(where, f"unknown model {text!r}; shipped models: {listing} (or the path "
                   "of a .npz model file)")
