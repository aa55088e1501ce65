"""Shipped models ("zoo"), as Cellpose and StarDist ship theirs: docs/zoo.md.

  registry.py    which model a name means (pa_jax/zoo/models/, DEFAULT_MODEL, resolve)
  model_file.py  the <name>.npz + <name>.json format (float16, sha256-checked)
  export.py      export_run: a trained run -> a model file pair (`run.py export-model`)
  load.py        load_model: a model file -> (config, model, variables)
  init.py        model.init: a new training run starts from a zoo model (fine-tuning)

Only the registry is imported here (standard library): the rest loads JAX on first use.
"""

from __future__ import annotations

from pa_jax.zoo.registry import DEFAULT_MODEL, available, resolve

__all__ = ["DEFAULT_MODEL", "available", "export_run", "load_model", "resolve"]


def __getattr__(name: str):
  if name == "load_model":
    from pa_jax.zoo.load import load_model
    return load_model
  if name == "export_run":
    from pa_jax.zoo.export import export_run
    return export_run
  raise AttributeError(f"module 'pa_jax.zoo' has no attribute {name!r}")
