"""pa_jax: nucleus instance segmentation from partially annotated images (JAX/Flax).

The library's front door, shared by run.py and the napari plugin::

  import pa_jax

  predictor = pa_jax.load_predictor("runs/dh25_pa_cpu")      # a trained run
  predictor = pa_jax.load_predictor()                         # the shipped model (docs/zoo.md)
  labels, scores = predictor.predict_scored(image)            # int32 [H, W], {id: score}
  labels = pa_jax.segment_classical(image)                    # the classical floor
  cfg, model, variables, step = pa_jax.load_run("runs/dh25_pa_cpu")
  session = pa_jax.Session.open("images/", "project/", annotations="partial/")

Bad input raises `pa_jax.InputError` (one line: where, then the problem). Everything but
InputError is imported on first use, so `import pa_jax` stays light (no JAX).
"""

from __future__ import annotations

from pa_jax.errors import InputError

__all__ = ["InputError", "Predictor", "Session", "load_predictor", "load_run",
           "segment_classical"]


def load_predictor(workdir=None, best: bool = False, *, model=None):
  """The `Predictor` of a trained run or a zoo model, with its config's thresholds and
  tiling.

  workdir: the run's folder (config.json, run.json, checkpoints/); best: restore the
  best checkpoint instead of the newest readable one. model: a shipped model's name or
  a .npz model file (docs/zoo.md). Neither: the shipped default model.
  """
  # Not `Predictor.from_workdir`: experiment builds Predictors for its periodic
  # evaluation, so predictor.py importing experiment would close an import cycle.
  from pa_jax.infer.predictor import predictor_for
  from pa_jax.zoo.choose import open_trained

  trained = open_trained(workdir, model, best)
  return predictor_for(trained.cfg, trained.model, trained.variables)


def __getattr__(name: str):
  # Lazy: these pull in JAX, Flax or scikit-image; `import pa_jax` should not.
  if name == "Predictor":
    from pa_jax.infer.predictor import Predictor
    return Predictor
  if name == "load_run":
    from pa_jax.experiment import load_run
    return load_run
  if name == "segment_classical":
    from pa_jax.infer.classical import segment_classical
    return segment_classical
  if name == "Session":
    from pa_jax.annotate.session import Session
    return Session
  raise AttributeError(f"module 'pa_jax' has no attribute {name!r}")


def __dir__() -> list[str]:
  return sorted(set(globals()) | set(__all__))
