"""Which trained model a command segments with: a run (`workdir`), a zoo model (`model`: a
name or a model file) or, with neither, the shipped default (`registry.DEFAULT_MODEL`).

`run.py predict` and `pa_jax.load_predictor` share this, so both accept the same choices
and refuse the same mixtures in the same one line.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

from pa_jax import experiment
from pa_jax.errors import InputError
from pa_jax.zoo import registry
from pa_jax.zoo.load import open_model

# What a caller without the default model can do instead (parameters: run.py shows flags).
DEFAULT_HINT = "segment with a trained run (`workdir`) or another model file (`model`)"


class Trained(NamedTuple):
  """A model ready to build a Predictor from, and how outputs name it."""

  cfg: Any
  model: Any        # MaskRCNN
  variables: Any
  source: str       # provenance of every exported nucleus: 'pa_jax <run or model> step <k>'
  label: str        # the run folder or the model name, for messages


def zoo_model(workdir: os.PathLike | str | None, model: os.PathLike | str | None,
              best: bool = False) -> str | None:
  """The zoo model to load (`model`, or DEFAULT_MODEL when neither is given), or None for
  the run in `workdir`. Refuses both together, and `best` (a run's best checkpoint) with a
  zoo model."""
  if workdir and model:
    raise InputError("model", "give a trained run (`workdir`) or a zoo model (`model`), "
                     "not both")
  if workdir:
    return None
  if best:
    raise InputError("best", "picks a trained run's best checkpoint; a zoo model (`model`) "
                     "has one")
  return str(model) if model else registry.DEFAULT_MODEL


def model_path(workdir, model, best: bool = False) -> Path | None:
  """The .npz `open_trained` would read (None for a run): checked, nothing loaded."""
  name = zoo_model(workdir, model, best)
  return None if name is None else registry.resolve(name, "model", DEFAULT_HINT)


def open_trained(workdir: os.PathLike | str | None = None,
                 model: os.PathLike | str | None = None, best: bool = False) -> Trained:
  """Loads the run in `workdir` (newest readable, or `best` checkpoint) or the zoo model
  `model` (default: DEFAULT_MODEL)."""
  name = zoo_model(workdir, model, best)
  if name is None:
    cfg, net, variables, step = experiment.load_run(workdir, best=best)
    return Trained(cfg, net, variables, f"pa_jax {Path(workdir).name} step {step}",
                   str(workdir))
  zm = open_model(name, "model", DEFAULT_HINT)
  return Trained(zm.cfg, zm.model, zm.variables,
                 f"pa_jax {zm.meta['name']} step {zm.meta['step']}", str(zm.meta["name"]))
