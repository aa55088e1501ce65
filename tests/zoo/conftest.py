"""One toy run (smallest model, 64 px synthetic images, 2 training steps) trained once per
test session and exported as a zoo model; every test of this folder reads them.

Most of the folder's time is XLA compiling the toy's training step once; the tests after
it compile only an init or a predict program of the same toy model.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # configs/, and run.py for the in-process CLI tests


def toy_config(source, partial: bool = False):
  """configs/base.py's defaults, cpu_sized then toy_sized (2 steps, checkpointed at the
  end): native scale, no augmentation beyond flips, no periodic evaluation."""
  from configs import base

  c = base.toy_sized(base.cpu_sized(base.get_config()))
  c.model.partial.enabled = partial
  c.data.source = str(source)
  c.data.view = "full"
  c.data.workers = 0
  c.data.prefetch = 0
  c.predict.tile_size = 128
  c.predict.score_threshold = 0.0  # an untrained net: draw whatever it finds
  return c


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory) -> Path:
  """A synthetic dataset folder: 3 fluorescence images of 64 x 64 (2 train, 1 test)."""
  from pa_jax.data.synthetic import synthetic_dataset

  root = tmp_path_factory.mktemp("zoo_data") / "ds"
  synthetic_dataset(root, n_images=3, seed=0, height=64, width=64, n_nuclei=(4, 8),
                    radius=(4, 8))
  return root


@pytest.fixture(scope="session")
def toy_run(tmp_path_factory, toy_data) -> Path:
  """The workdir of a 2-step toy run without the partial-annotation module."""
  from pa_jax import experiment

  workdir = tmp_path_factory.mktemp("zoo_run") / "run"
  experiment.train(toy_config(toy_data), workdir)
  return workdir


@pytest.fixture(scope="session")
def toy_model(tmp_path_factory, toy_run) -> Path:
  """The toy run exported as the zoo model `toy`: the .npz (its .json beside it)."""
  from pa_jax.zoo.export import export_run

  npz, _ = export_run(toy_run, tmp_path_factory.mktemp("zoo_models"), "toy")
  return npz


@pytest.fixture
def shipped(monkeypatch, tmp_path):
  """The registry's models folder pointed at an empty tmp folder; returns it."""
  from pa_jax.zoo import registry

  folder = tmp_path / "models"
  folder.mkdir()
  monkeypatch.setattr(registry, "MODELS_DIR", folder)
  return folder


def ship(toy_model: Path, folder: Path, name: str) -> None:
  """Copies the toy model into `folder` as `name` (the .json's name is informational)."""
  (folder / f"{name}.npz").write_bytes(toy_model.read_bytes())
  (folder / f"{name}.json").write_bytes(toy_model.with_suffix(".json").read_bytes())
