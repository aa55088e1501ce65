"""bench/zoo_eval.py: `--images-of` scores a model on another config's held-out images."""

import os

import pytest

import zoo_eval  # bench/ is on sys.path: tests/conftest.py
from bench_config import ROOT, load_config
from pa_jax import experiment
from pa_jax.errors import InputError

SHARED = ROOT.parent / "shared" / "datasets"
pytestmark = pytest.mark.skipif(not (SHARED / "kumar").is_dir(),
                                reason="needs ../shared/datasets beside the checkout")


def _ids(cfg, split):
  return sorted(os.path.basename(r.image_path) for r in experiment.source_records(cfg, split))


def test_images_of_gives_a_dsb2018_only_model_the_shipped_models_val_tiles():
  leave_out = load_config("configs/zoo_nuclei.py:cpu_dsb2018")
  shipped = load_config("configs/zoo_nuclei.py:cpu")
  # The leave-out recipe reads dsb2018 alone and carves nothing: it has no 'val' split.
  with pytest.raises(InputError, match="no images in split 'val'"):
    _ids(leave_out, "val")
  scored = zoo_eval.with_images_of(leave_out, "configs/zoo_nuclei.py:cpu")
  val = _ids(scored, "val")
  assert val == _ids(shipped, "val")
  assert len(val) == 4 + 10  # a quarter of Kumar's organs and of TNBC's slides
  # Only which images: the model's own preparation (its recipe's fields) is kept, and the
  # config it was given is not changed.
  assert scored.train.steps == leave_out.train.steps == 1500
  assert leave_out.data.source.endswith("dsb2018")
