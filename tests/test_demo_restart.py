"""The demo keeps, and steps aside from, a fine-tune made from an older shipped model."""

import json

from pa_jax.demo import set_aside_other_start


def _run(path, init):
  path.mkdir(parents=True)
  (path / "config.json").write_text(json.dumps({"model": {"init": init}}))
  (path / "checkpoints").mkdir()


def test_same_start_or_no_run_stays(tmp_path):
  assert set_aside_other_start(tmp_path / "model", "zoo:b") is None
  _run(tmp_path / "model", "zoo:b")
  assert set_aside_other_start(tmp_path / "model", "zoo:b") is None
  assert (tmp_path / "model" / "checkpoints").is_dir()


def test_other_start_is_renamed_never_deleted(tmp_path):
  _run(tmp_path / "model", "zoo:nuclei_cpu_v1")
  moved = set_aside_other_start(tmp_path / "model", "zoo:nuclei_cpu_v2")
  assert moved == tmp_path / "model.from_nuclei_cpu_v1"
  assert (moved / "checkpoints").is_dir() and not (tmp_path / "model").exists()
  # A second old run of the same start does not overwrite the first one kept.
  _run(tmp_path / "model", "zoo:nuclei_cpu_v1")
  assert set_aside_other_start(tmp_path / "model", "") == tmp_path / "model.from_nuclei_cpu_v1.1"
  _run(tmp_path / "model", "")
  assert set_aside_other_start(tmp_path / "model", "zoo:x") == tmp_path / "model.from_scratch"
