"""`run.py export-model`: a trained run's checkpoint as a zoo model file pair.

The run is read with `experiment.load_run` (newest readable checkpoint, or the best one);
its config.json (upgraded to every current field) and run.json dataset statistics travel
in the .json, so the model predicts and fine-tunes without the run's folder.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping

from pa_jax import experiment, fileio
from pa_jax.errors import InputError
from pa_jax.train.run_config import upgrade_stored
from pa_jax.zoo import model_file, registry

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
# What the lead fills in before shipping; kept when a model is exported again.
CARD_TEMPLATE = {"description": "", "training_data": "", "intended_use": "", "metrics": {},
                 "license": "", "authors": ""}


def check_name(name: str) -> str:
  """`name` when it is usable as a file name and a registry name ('nuclei_cpu_v1')."""
  if not _NAME.fullmatch(name or "") or name.endswith((".npz", ".json")):
    raise InputError("name", f"{name!r} is not a model name: letters, digits, '_', '-', '.' "
                     "(no suffix), e.g. nuclei_cpu_v2")
  return name


def _card(out_dir: Path, name: str, card: Mapping[str, Any] | None) -> dict:
  """`card`, else the card of a model exported earlier under `name`, else the template."""
  if card is not None:
    return dict(card)
  old = fileio.read_json(out_dir / f"{name}.json")
  if isinstance(old, dict) and isinstance(old.get("card"), dict):
    return old["card"]
  return dict(CARD_TEMPLATE)


def export_run(workdir: os.PathLike | str, out_dir: os.PathLike | str | None, name: str,
               best: bool = False, overwrite: bool = False,
               card: Mapping[str, Any] | None = None) -> tuple[Path, Path]:
  """Writes `out_dir/<name>.npz` and `out_dir/<name>.json` (default out_dir: the shipped
  models, `registry.MODELS_DIR`) from the run in `workdir`; `best`: its best-by-mAP
  checkpoint. An existing pair of that name is replaced only with `overwrite` (its card is
  kept unless `card` is given). Returns (npz path, json path)."""
  check_name(name)
  out = Path(out_dir) if out_dir else registry.MODELS_DIR
  npz = out / f"{name}.npz"
  if not overwrite and (npz.exists() or npz.with_suffix(".json").exists()):
    raise InputError(npz, "a model of this name exists; pass `overwrite` to replace it, or "
                     "choose another `name`")
  _, _, variables, step = experiment.load_run(workdir, best=best)
  workdir = Path(workdir)
  run = fileio.read_json(workdir / "run.json") or {}
  stats = run.get("dataset")
  if not isinstance(stats, dict) or not {"median_width", "median_height"} <= set(stats):
    raise InputError(workdir / "run.json", "no dataset statistics (median nucleus size): "
                     "not a run trained by this version of pa_jax")
  # The config as the run stored it (not load_run's: that one may point data.source at
  # an absolute path of this machine), with the fields added since filled in.
  config = upgrade_stored(fileio.read_json(workdir / "config.json", missing_ok=False))
  meta = {"step": step, "run": workdir.absolute().name,
          "checkpoint": "best" if best else "latest", "card": _card(out, name, card),
          "dataset": stats, "config": config}
  return model_file.write_model(out, name, variables, meta, where=workdir)
