"""The widget's model list: what segments an image, loaded by name (napari-free).

Each `Choice` says whether it needs a folder (a trained run's `--workdir`), whether it has
an attention map, and how to load a `Segmenter`. The list is `CHOICES`, in display order:
the classical floor, the shipped model (pa_jax/zoo, what `run.py predict` uses without
`--workdir`) and a trained run.

Segmenters call the library exactly as `run.py predict` does: the classical floor is
`pa_jax.infer.classical.segment_classical`, a trained run is `experiment.load_run` +
`predictor.predictor_for(...).predict_scored`, and its attention map is
`pa_jax.infer.attention.attention_map` of the predicted nuclei (`predict --attention`).
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from pa_jax.errors import InputError
from pa_jax.zoo.registry import DEFAULT_MODEL

CLASSICAL = "classical floor (Otsu + watershed)"
SHIPPED = f"shipped model ({DEFAULT_MODEL})"
TRAINED_RUN = "trained run (folder)"


@dataclasses.dataclass
class Segmentation:
  """What one call of `segment` gives back to the widget.

  labels: int32 [H, W] instance label map (0 = background).
  scores: {label: detection score} (empty for the classical floor and tiled images).
  source: provenance written as each nucleus' `source` ('classical', 'pa_jax RUN step k').
  attention: float32 [H, W] merged attention of the predicted nuclei, or None.
  """

  labels: np.ndarray
  scores: dict
  source: str
  attention: np.ndarray | None = None


class ClassicalSegmenter:
  """The classical floor with `classical.DEFAULT_PARAMS` overridden by `params`."""

  has_attention = False
  source = "classical"

  def __init__(self, params: Mapping[str, Any] | None = None):
    self.params = dict(params or {})

  def segment(self, image: np.ndarray) -> tuple[np.ndarray, dict]:
    from pa_jax.infer.classical import segment_classical

    try:
      return segment_classical(image, **self.params), {}
    except ValueError as e:
      raise InputError("classical_params", str(e)) from None

  def attention(self, image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    raise InputError("attention", "the classical floor has no attention map; choose a "
                     "trained partial-annotation run")


class RunSegmenter:
  """A trained run (its workdir) behind the same calls as `run.py predict --workdir`."""

  def __init__(self, workdir: Path, cfg, model, variables, step: int):
    from pa_jax.infer.predictor import predictor_for

    self.workdir, self.cfg, self.model, self.variables = workdir, cfg, model, variables
    self.predictor = predictor_for(cfg, model, variables)
    self.source = f"pa_jax {workdir.name} step {step}"
    spec = model.spec
    self.has_attention = bool(spec.partial) and "p2" in tuple(spec.attention_levels)

  def segment(self, image: np.ndarray) -> tuple[np.ndarray, dict]:
    return self.predictor.predict_scored(image)

  def attention(self, image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    from pa_jax.infer.attention import attention_map

    if not self.has_attention:
      raise InputError(self.workdir, "trained without the partial-annotation module "
                       "(model.partial.enabled=False): it has no attention map")
    return attention_map(self.model, self.variables, image, labels > 0, self.cfg.data.normalize)


def load_run(workdir: Path | str | None) -> RunSegmenter:
  """The run in `workdir` (its newest readable checkpoint), cached while its checkpoints
  folder is unchanged, so segmenting image after image loads and compiles it once."""
  if workdir is None or str(workdir).strip() in ("", "."):
    raise InputError("run folder", "choose the folder of a trained run (the --workdir of "
                     "`run.py train`, or an annotation project's train/round_k)")
  path = Path(workdir).expanduser().absolute()
  if not (path / "config.json").is_file():
    raise InputError(path, "no config.json: not a pa_jax training run")
  ckpt = path / "checkpoints"
  stamp = ckpt.stat().st_mtime_ns if ckpt.exists() else 0
  return _load_run_cached(str(path), stamp)


@functools.lru_cache(maxsize=2)
def _load_run_cached(path: str, stamp: int) -> RunSegmenter:
  from pa_jax import experiment

  cfg, model, variables, step = experiment.load_run(path)
  return RunSegmenter(Path(path), cfg, model, variables, step)


@functools.lru_cache(maxsize=1)
def load_shipped(_folder: Path | None = None) -> RunSegmenter:
  """The default shipped model behind the calls of a trained run (loaded once)."""
  from pa_jax.zoo.load import open_model

  zm = open_model(DEFAULT_MODEL)
  seg = RunSegmenter(zm.path, zm.cfg, zm.model, zm.variables, int(zm.meta["step"]))
  seg.source = f"pa_jax {zm.meta.get('name', DEFAULT_MODEL)} step {zm.meta['step']}"
  return seg


@dataclasses.dataclass(frozen=True)
class Choice:
  """One entry of the model list: `load(folder)` -> a segmenter; `attention`: whether it
  can draw the PA attention map (the widget offers the option only then)."""

  needs_folder: bool
  load: Callable[[Path | None], Any]
  attention: bool = False


CHOICES: dict[str, Choice] = {
    CLASSICAL: Choice(False, lambda _folder: ClassicalSegmenter()),
    SHIPPED: Choice(False, load_shipped, attention=True),
    TRAINED_RUN: Choice(True, load_run, attention=True),
}


def segment(choice: str, folder: Path | None, image: np.ndarray, attention: bool = False,
            on_progress: Callable[[str, int, int], None] | None = None) -> Segmentation:
  """Loads `choice` (with `folder` when it needs one) and segments `image` ([H, W] or
  [H, W, 3]); with `attention`, also the attention map of the predicted nuclei.

  on_progress(stage, done, total): 'load' 0, 'segment' 1, ['attention' 2,] 'done' total.
  """
  if choice not in CHOICES:
    raise InputError("model", f"unknown model {choice!r} (known: {', '.join(CHOICES)})")
  total = 3 if attention else 2
  tell = on_progress or (lambda *a: None)
  tell("load", 0, total)
  seg = CHOICES[choice].load(folder)
  if attention and not seg.has_attention:
    seg.attention(image, np.zeros(image.shape[:2], bool))  # raises the one-line reason
  tell("segment", 1, total)
  labels, scores = seg.segment(image)
  att = None
  if attention:
    tell("attention", 2, total)
    att = seg.attention(image, labels)
  tell("done", total, total)
  return Segmentation(np.asarray(labels, np.int32), dict(scores), seg.source, att)
