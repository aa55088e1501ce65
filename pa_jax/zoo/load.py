"""A zoo model as a run: (config, model, variables), the triple `experiment.load_run` gives
minus the step, from the model file alone (no workdir, no checkpoint, no training data)."""

from __future__ import annotations

import os
from typing import Any, NamedTuple

from pa_jax import experiment
from pa_jax.errors import InputError
from pa_jax.models.mask_rcnn import MaskRCNN
from pa_jax.zoo import model_file, registry


class ZooModel(NamedTuple):
  """A loaded zoo model; `load_model` returns its first three fields."""

  cfg: Any          # ml_collections config the model was trained with (upgraded)
  model: MaskRCNN   # built from cfg and the stored dataset statistics
  variables: Any    # float32 flax variables (nested dicts of numpy arrays)
  meta: dict        # the .json sidecar (name, step, sha256, card, ...)
  path: Any         # the .npz (pathlib.Path)


def open_model(name_or_path: os.PathLike | str, where: str = "model", hint: str = "") -> ZooModel:
  """The zoo model a name or path means (`registry.resolve`), checksum-checked."""
  npz = registry.resolve(name_or_path, where, hint)
  meta = model_file.read_meta(npz)
  cfg = experiment.config_from_stored(meta["config"])
  try:
    model = experiment.build_model(cfg, meta["dataset"])
  except (KeyError, TypeError, ValueError) as e:
    raise InputError(model_file.json_path(npz), f"cannot build its model: {e}") from None
  return ZooModel(cfg, model, model_file.read_variables(npz, meta), meta, npz)


def load_model(name_or_path: os.PathLike | str):
  """(config, model, variables) of a shipped model name, 'zoo:<name>' or a model file."""
  zm = open_model(name_or_path)
  return zm.cfg, zm.model, zm.variables
