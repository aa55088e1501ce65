"""Fine-tuning a zoo model: `model.init` ('zoo:<name>' or a model file) starts a new run.

The zoo model's variables replace the random initialisation where the config's model has
the same arrays (same path, same shape). The partial-annotation module's own subtrees
(`PARTIAL_SUBTREES`) may be missing from the file (a model shipped without the module,
fine-tuned with it on): they keep their fresh initialisation, and one line says so. Any
other difference (a path only on one side, another shape) is one InputError naming
`model.init` and the first paths: the config describes another network than the file.

Only a new run starts here: `train.loop` restores a resumed run from its checkpoint. This
module never imports `experiment` (experiment imports it).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import numpy as np

from pa_jax.errors import InputError
from pa_jax.zoo import model_file, registry

WHERE = "model.init"
# Subtrees of `params` that MaskRCNN creates only with model.partial.enabled (its
# `centerness` head and `attention_<level>` blocks); a prefix match, so every level counts.
# tests/zoo checks this against a module-on and a module-off model.
PARTIAL_SUBTREES = ("params/centerness", "params/attention_")
_SHOWN = 3  # mismatching paths named in the error line


def check_init(m) -> None:
  """Refuses, before any data is read, a `model.init` that names no model file, or that
  comes with `model.pretrained` (both give the starting weights)."""
  if not m.init:
    return
  if m.pretrained:
    raise InputError(WHERE, f"{m.init!r} and model.pretrained {m.pretrained!r} both give the "
                     "starting weights; set one (--config.model.pretrained='' to fine-tune "
                     "the zoo model)")
  registry.resolve(m.init, WHERE, _hint())


def _hint() -> str:
  return "train from scratch with --config.model.init=''"


def start_variables(cfg) -> dict | None:
  """None when `model.init` is '' (random init, or model.pretrained), else the float32 flax
  variables of the zoo model it names (checksum-checked)."""
  m = cfg.model
  check_init(m)
  if not m.init:
    return None
  npz = registry.resolve(m.init, WHERE, _hint())
  return model_file.read_variables(npz, model_file.read_meta(npz))


# Fields that say what a model's weights mean rather than which weights exist: the nucleus
# size its images were zoomed to and the frame its masks are drawn in. A fine-tune at other
# values would feed the network inputs it never saw; their base defaults (native scale,
# Mask R-CNN's frame) mean "not chosen", so a config left at them takes the model's.
FRAME_FIELDS = (("data", "diameter", 0.0), ("model.roi", "mask_box_scale", 1.0))


def adopt_model_frame(cfg) -> list[str]:
  """Sets in `cfg` (in place) the `FRAME_FIELDS` of the `model.init` model where `cfg` has
  the base default and the model another value; returns 'field: old -> new' for each."""
  if not cfg.model.init:
    return []
  meta = model_file.read_meta(registry.resolve(cfg.model.init, WHERE, _hint()))
  changed = []
  for section, name, default in FRAME_FIELDS:
    stored = meta["config"]
    for part in section.split("."):
      stored = stored.get(part, {})
    if name not in stored:
      continue
    node = cfg
    for part in section.split("."):
      node = node[part]
    if float(node[name]) == default and float(stored[name]) != default:
      changed.append(f"{section}.{name}: {node[name]} -> {stored[name]}")
      node[name] = type(node[name])(stored[name])
  return changed


def _subtree(key: str) -> str | None:
  """The partial-module subtree ('params/attention_p2') a flattened key lies in, or None."""
  for prefix in PARTIAL_SUBTREES:
    if key.startswith(prefix):
      return "/".join(key.split("/")[:2])
  return None


def fit(fresh: Mapping[str, Any], loaded: Mapping[str, Any], source: str) -> list[str]:
  """The partial-module subtrees `loaded` lacks (to keep freshly initialised).

  fresh / loaded: flattened variables ('/'-joined keys -> anything with `.shape`: arrays,
  tracers, ShapeDtypeStructs) of the config's model and of the file. Raises one
  InputError naming model.init and the first mismatching paths otherwise."""
  problems, kept_fresh = [], set()
  for key in sorted(set(fresh) | set(loaded)):
    if key not in loaded:
      sub = _subtree(key)
      if sub is not None:
        kept_fresh.add(sub)
      else:
        problems.append(f"{key} not in the file")
    elif key not in fresh:
      problems.append(f"{key} not in this config's model")
    elif tuple(fresh[key].shape) != tuple(np.shape(loaded[key])):
      problems.append(f"{key} is {tuple(np.shape(loaded[key]))} in the file, "
                      f"{tuple(fresh[key].shape)} here")
  if problems:
    more = f" (and {len(problems) - _SHOWN} more)" if len(problems) > _SHOWN else ""
    raise InputError(WHERE, f"{source} does not fit this config's model: "
                     f"{'; '.join(problems[:_SHOWN])}{more}; fine-tune with the zoo model's "
                     f"architecture (its .json holds its config), or {_hint()}")
  return sorted(kept_fresh)


def overlay(fresh: Mapping[str, Any], loaded: Mapping[str, Any], source: str
            ) -> tuple[dict, list[str]]:
  """(`fresh` variables with every array of `loaded` in place, in fresh's dtypes; the
  partial-module subtrees left fresh). Raises as `fit`."""
  flat_fresh, flat_loaded = model_file.flatten(fresh), model_file.flatten(loaded)
  kept = fit(flat_fresh, flat_loaded, source)
  merged = {k: (np.asarray(flat_loaded[k], dtype=v.dtype) if k in flat_loaded else v)
            for k, v in flat_fresh.items()}
  return model_file.unflatten(merged), kept


def finetune_init(init: Callable, cfg) -> Callable:
  """`init(rng, batch) -> variables` that starts from the zoo model of `cfg.model.init`.

  The fresh initialisation still runs (it is traced inside `create_train_state`'s jit and
  gives the partial subtrees the run's own seed); the file's arrays replace the rest as
  constants of that program, as `model.pretrained` imports do."""
  source = f"{cfg.model.init}"

  def start(rng, batch):
    fresh = init(rng, batch)
    loaded = start_variables(cfg)
    merged, kept = overlay(fresh, loaded, source)
    if kept:
      print(f"model.init: {', '.join(kept)} not in {source} (the partial-annotation "
            "module): freshly initialised")
    return merged

  return start


def problem_with(cfg, init: Callable, example) -> str:
  """Why `cfg.model.init` cannot start the model whose fresh initialisation is
  `init(rng, batch)` (a missing or damaged file, another architecture), or '' when it can.
  Shapes only (`jax.eval_shape`): nothing is computed. For callers that fall back to
  random weights instead of failing (the annotation assistant's first round)."""
  try:
    loaded = start_variables(cfg)
    if loaded is None:
      return ""
    fresh = jax.eval_shape(init, jax.random.PRNGKey(0), example)
    fit(model_file.flatten(fresh), model_file.flatten(loaded), cfg.model.init)
  except InputError as e:
    return f"{e.where}: {e.problem}"
  return ""
