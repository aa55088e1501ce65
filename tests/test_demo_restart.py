"""The demo keeps, and steps aside from, a fine-tune made with an older recipe or model."""

import json

from configs import demo
from pa_jax.demo import set_aside_other_run
from pa_jax.train.checkpoint import config_json


def _run(path, cfg):
  """A demo run folder as train leaves it: its config.json and a checkpoints/ folder."""
  path.mkdir(parents=True)
  (path / "config.json").write_text(config_json(cfg))
  (path / "checkpoints").mkdir()


def _demo(**changes):
  cfg = demo.get_config()
  for key, value in changes.items():
    node = cfg
    *parents, leaf = key.split("__")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return cfg


def test_same_config_or_no_run_stays(tmp_path):
  assert set_aside_other_run(tmp_path / "model", _demo()) is None
  _run(tmp_path / "model", _demo())
  assert set_aside_other_run(tmp_path / "model", _demo()) is None
  assert (tmp_path / "model" / "checkpoints").is_dir()
  # Fields a resumed run may change (the number of steps) do not set a run aside.
  assert set_aside_other_run(tmp_path / "model", _demo(train__steps=400)) is None


def test_other_start_is_renamed_never_deleted(tmp_path):
  _run(tmp_path / "model", _demo(model__init="zoo:nuclei_cpu_v1"))
  moved = set_aside_other_run(tmp_path / "model", _demo(model__init="zoo:nuclei_cpu_v2"))
  assert moved == tmp_path / "model.from_nuclei_cpu_v1"
  assert (moved / "checkpoints").is_dir() and not (tmp_path / "model").exists()
  # A second old run of the same start does not overwrite the first one kept.
  _run(tmp_path / "model", _demo(model__init="zoo:nuclei_cpu_v1"))
  assert (set_aside_other_run(tmp_path / "model", _demo(model__init=""))
          == tmp_path / "model.from_nuclei_cpu_v1.1")
  _run(tmp_path / "model", _demo(model__init=""))
  assert (set_aside_other_run(tmp_path / "model", _demo(model__init="zoo:x"))
          == tmp_path / "model.from_scratch")


def test_an_older_recipe_is_set_aside(tmp_path):
  # The recipe of a newer pa_jax (here: the PA-box threshold): resuming would be refused.
  old = _demo(model__partial__threshold=0.95)
  _run(tmp_path / "model", old)
  new = _demo(model__partial__threshold=0.8)
  assert set_aside_other_run(tmp_path / "model", new) == tmp_path / "model.old_recipe"
  assert json.loads((tmp_path / "model.old_recipe" / "config.json").read_text())[
      "model"]["partial"]["threshold"] == 0.95
  assert not (tmp_path / "model").exists()
