"""The shipped model file itself: it loads (checksum, config, architecture), segments an
image it never saw with the library call `run.py predict` makes, and is offered by the
napari widget's model list (the napari-free `engines`)."""

from __future__ import annotations

import numpy as np

from pa_jax.data import readers
from pa_jax.napari import engines
from pa_jax.zoo import registry
from pa_jax.zoo.load import open_model

from .conftest import ROOT

SAMPLE = ROOT / "data" / "sample"


def test_shipped_default_loads_with_its_card_and_frame():
  zm = open_model(registry.DEFAULT_MODEL)
  assert registry.DEFAULT_MODEL in registry.available()
  assert zm.meta["name"] == registry.DEFAULT_MODEL and zm.meta["dtype"] == "float16"
  # What the weights mean travels with them: the nucleus size, the mask frame, no dilation.
  assert zm.cfg.data.diameter == 30.0 and zm.cfg.model.roi.mask_box_scale == 1.2
  assert zm.cfg.eval.dilate is False and zm.model.spec.partial
  assert zm.cfg.predict.mask_overlap == 0.5  # docs/outlines.md
  card = zm.meta["card"]
  assert "CC BY-NC-SA 4.0" in card["license"] and "configs/zoo_nuclei.py" in card["command"]
  assert all(v.dtype == np.float32 for v in _leaves(zm.variables))


def _leaves(tree):
  if isinstance(tree, dict):
    for v in tree.values():
      yield from _leaves(v)
  else:
    yield np.asarray(tree)


def test_napari_lists_the_shipped_model_and_it_segments_a_held_out_image():
  """A dh360 test image of the demo sample (never in the model's training data): the
  shipped model finds most of its nuclei (the model card's figures are the benchmark's;
  this only guards against a broken file or loader: recall at IoU 0.5 above one half)."""
  from pa_jax.evaluation.metrics import image_metrics

  choice = engines.CHOICES[engines.SHIPPED]
  assert not choice.needs_folder and choice.attention
  rec = next(r for r in readers.read_dataset_folder(SAMPLE, split="test"))
  ex = readers.load_example(rec)
  out = engines.segment(engines.SHIPPED, None, ex.image)
  assert out.source == f"pa_jax {registry.DEFAULT_MODEL} step {zm_step()}"
  assert out.labels.shape == ex.labels.shape and set(out.scores) == set(np.unique(out.labels)) - {0}
  assert image_metrics(ex.labels, out.labels)["recall"] > 0.5


def zm_step() -> int:
  """The training step the default model's file records (its card and its label source)."""
  return int(open_model(registry.DEFAULT_MODEL).meta["step"])
