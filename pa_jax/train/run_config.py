"""Whether a resumed run has the config it was trained with.

`train` on an existing workdir must resume the run that was trained there, not a different
experiment under the same name: a changed config is refused in one line naming the
fields that differ, before anything in the workdir changes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

from pa_jax import fileio
from pa_jax.errors import InputError
from pa_jax.train.checkpoint import CHECKPOINTS, CHECKPOINTS_BEST, CONFIG_JSON, config_json


# Fields a resumed run may change: how long it trains and how often it logs, saves and
# evaluates, and how a finished run is evaluated or predicts. None of them changes what a
# checkpoint holds or what the steps already done computed. Everything else (model, data,
# view, optimiser, seed) would resume a run that is not the one that was trained.
RESUMABLE_FIELDS = ("train.steps", "train.log_every", "train.checkpoint_every",
                    "train.eval_every", "train.keep_checkpoints", "data.prefetch",
                    "data.workers", "eval.*", "predict.*")


# What a run saved before each of these fields existed was computed with (a default that
# changed when the field was added). `upgrade_stored` is the one place that fills them into
# a stored config.json, so an old run evaluates, predicts and resumes as it was trained.
LEGACY_VALUES = {
    "model.partial.centerbox_weights": (1.0, 1.0, 1.0, 1.0),
    "model.partial.centerbox_beta": 1.0 / 9.0,
    "model.partial.connectivity": 8,
    "model.partial.attention_zero_init": True,
    "model.partial.attention_mask_padding": False,
    "model.roi.mask_box_scale": 1.0,
    "model.init": "",
    "model.mask_padding": False,
    "predict.canvas_octaves": 0,
    "data.diameter": 0.0,
    "data.rotate90": False,
    "data.scale_jitter": (1.0, 1.0),
    "data.intensity_jitter": 0.0,
    "data.stain_jitter": 0.0,
    "data.source_repeats": (),
    "data.val_fraction": 0.0,
    "data.val_sources": (),
    "data.val_seed": 0,
}

# Input-pipeline fields (2026-11-30) a stored run lacks: how it read its data (the dataset
# folder, rows built in line). They change no result, only where rows come from and how
# fast; `upgrade_stored` fills them too, so readers need no `.get` fallback.
PIPELINE_DEFAULTS = {
    "data.workers": 0,
    "data.reader": "folder",
    "data.tfds_dir": "",
    "data.tfds_name": "",
}

# With the module off in both configs these fields change nothing the run computes.
_PARTIAL_PREFIX = "model.partial."


def upgrade_stored(stored: Mapping[str, Any]) -> dict[str, Any]:
  """A stored config.json (as parsed JSON) with every `LEGACY_VALUES` / `PIPELINE_DEFAULTS`
  field it lacks added at that value (as JSON: tuples become lists). Returns a new dict; `stored` is not
  changed. Fields present are kept as stored."""
  out = json.loads(json.dumps(stored))
  for field, value in {**LEGACY_VALUES, **PIPELINE_DEFAULTS}.items():
    *parents, leaf = field.split(".")
    node = out
    for name in parents:
      node = node.setdefault(name, {})
    if leaf not in node:
      node[leaf] = json.loads(json.dumps(value))
  return out


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(tree, dict) and tree:
    out = {}
    for k, v in tree.items():
      out.update(_flatten(v, f"{prefix}{k}."))
    return out
  return {prefix[:-1]: tree}


def _resumable(field: str) -> bool:
  return any(field == f or (f.endswith(".*") and field.startswith(f[:-1]))
             for f in RESUMABLE_FIELDS)


def _short(v: Any) -> str:
  text = repr(v)
  return text if len(text) <= 40 else text[:37] + "..."


def config_changes(stored: Mapping[str, Any], config: Any) -> list[str]:
  """'field: old -> new' for every field of `config` that differs from the `stored`
  config.json (upgraded by `upgrade_stored`; both compared as JSON, so tuples equal lists),
  resumable fields aside, and `model.partial.*` aside when the module is off in both."""
  old = _flatten(upgrade_stored(stored))
  new = _flatten(json.loads(config_json(config)))
  enabled = f"{_PARTIAL_PREFIX}enabled"
  module_off = not old.get(enabled) and not new.get(enabled)
  # Only fields both configs have: a field added (or dropped) by a later version of
  # pa_jax would otherwise make every older run impossible to resume; a real difference
  # in what the checkpoint holds still fails the restore, in one line. A field whose
  # default changed is in LEGACY_VALUES, so the stored run has its old value to compare.
  return [f"{k}: {_short(old[k])} -> {_short(new[k])}" for k in sorted(set(old) & set(new))
          if old[k] != new[k] and not _resumable(k)
          and not (module_off and k.startswith(_PARTIAL_PREFIX))]


def has_checkpoint(workdir: os.PathLike | str) -> bool:
  """Whether `workdir` holds a saved checkpoint (latest or best): a run that has started."""
  for sub in (CHECKPOINTS, CHECKPOINTS_BEST):
    d = Path(workdir) / sub
    if d.is_dir() and any(p.name.isdigit() for p in d.iterdir()):
      return True
  return False


def check_same_config(workdir: os.PathLike | str, config: Any) -> None:
  """Refuses to resume a run under a config other than the one it was trained with.

  A workdir without a checkpoint has nothing to be inconsistent with: its config may
  change (e.g. a lower learning rate after a NaN at step 1). The stored config.json is
  only read here; it is rewritten once the run has started (`loop.train`)."""
  path = Path(workdir) / CONFIG_JSON
  if not has_checkpoint(workdir):
    return
  stored = fileio.read_json(path)
  if stored is None:
    return  # a run of an older version without config.json: the restore checks shapes
  changes = config_changes(stored, config)
  if not changes:
    return
  shown = ", ".join(changes[:4]) + (f" (and {len(changes) - 4} more)" if len(changes) > 4
                                    else "")
  raise InputError(path, f"this run was trained with a different config: {shown}; use a "
                   "new workdir or the original config")
