"""The zoo model file: export -> load round trip, reproducible bytes, checked sha256, and
the registry's one-line answers."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest

from pa_jax.errors import InputError
from pa_jax.zoo import model_file, registry

from .conftest import ship


def _one_line(err: pytest.ExceptionInfo, *names: str) -> str:
  text = str(err.value)
  assert "\n" not in text, text
  for name in names:
    assert name in text, (name, text)
  return text


def test_export_then_load_gives_the_runs_model_to_float16_precision(toy_run, toy_model):
  from pa_jax import experiment
  from pa_jax.zoo.load import load_model

  run_cfg, run_model, run_vars, step = experiment.load_run(toy_run)
  cfg, model, variables = load_model(toy_model)
  assert model == run_model  # same spec, centerness anchor included
  assert cfg.to_dict() == run_cfg.to_dict()
  want, got = model_file.flatten(run_vars), model_file.flatten(variables)
  assert sorted(want) == sorted(got) and any(k.startswith("params/backbone/") for k in got)
  for k, x in want.items():
    assert got[k].dtype == np.float32
    np.testing.assert_array_equal(got[k], np.asarray(x).astype(np.float16).astype(np.float32))
  # Reproducible: the run's variables give the exported bytes again (no time stamp).
  assert model_file.npz_bytes(run_vars) == toy_model.read_bytes()
  meta = model_file.read_meta(toy_model)
  assert meta["step"] == step == 2 and meta["dtype"] == "float16" and meta["name"] == "toy"
  assert meta["dataset"] == json.loads((toy_run / "run.json").read_text())["dataset"]
  assert meta["sha256"] == hashlib.sha256(toy_model.read_bytes()).hexdigest()


def test_same_variables_same_bytes():
  v = {"params": {"b": np.ones((2,), np.float32), "a": {"k": np.arange(6.0).reshape(2, 3)}},
       "consts": {"n": np.arange(3, dtype=np.int32), "on": np.array([True, False])}}
  assert model_file.npz_bytes(v) == model_file.npz_bytes(dict(reversed(list(v.items()))))
  with np.load(io.BytesIO(model_file.npz_bytes(v))) as z:
    assert z.files == ["consts/n", "consts/on", "params/a/k", "params/b"]
    assert z["params/a/k"].dtype == np.float16 and z["consts/n"].dtype == np.int32
    assert z["consts/on"].dtype == bool


def test_a_changed_byte_is_a_checksum_error(toy_model, tmp_path):
  from pa_jax.zoo.load import load_model

  bad = tmp_path / "bad.npz"
  data = bytearray(toy_model.read_bytes())
  data[len(data) // 2] ^= 0xFF
  bad.write_bytes(bytes(data))
  bad.with_suffix(".json").write_bytes(toy_model.with_suffix(".json").read_bytes())
  with pytest.raises(InputError) as e:
    load_model(bad)
  _one_line(e, str(bad), "checksum mismatch: the file is damaged or was changed; re-checkout it")
  bad.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 1\n")
  with pytest.raises(InputError) as e:
    load_model(bad)
  _one_line(e, "Git LFS pointer", "git lfs pull")


def test_values_float16_cannot_hold_are_refused():
  with pytest.raises(InputError) as e:
    model_file.npz_bytes({"params": {"w": np.array([1.0, 7e4], np.float32)}}, "runs/x")
  _one_line(e, "runs/x", "params/w", "float16")
  with pytest.raises(InputError) as e:
    model_file.npz_bytes({"params": {"w": np.array([np.nan], np.float32)}}, "runs/x")
  _one_line(e, "params/w", "non-finite")


def test_registry_names_paths_and_one_line_errors(shipped, toy_model):
  ship(toy_model, shipped, "a_v1")
  ship(toy_model, shipped, "b_v2")
  (shipped / "half.npz").write_bytes(b"")  # no .json: not a model
  assert registry.available() == ["a_v1", "b_v2"]
  assert registry.resolve("a_v1") == registry.resolve("zoo:a_v1") == shipped / "a_v1.npz"
  assert registry.resolve(toy_model.with_suffix(".json")) == toy_model
  with pytest.raises(InputError) as e:
    registry.resolve("nope", "model.init")
  assert _one_line(e).startswith("model.init: unknown model 'nope'; shipped models: a_v1, b_v2")
  with pytest.raises(InputError) as e:
    registry.resolve(shipped / "half.npz")
  _one_line(e, "half.json", "not found")
  with pytest.raises(InputError) as e:
    registry.resolve(registry.DEFAULT_MODEL, hint="use another")
  _one_line(e, f"{registry.DEFAULT_MODEL}.npz",
            f"the shipped model {registry.DEFAULT_MODEL} is not in this checkout yet; use another")


def test_export_keeps_a_model_unless_overwrite_and_keeps_its_card(toy_run, toy_model, tmp_path):
  from pa_jax.zoo.export import export_run

  ship(toy_model, tmp_path, "m")
  card = tmp_path / "m.json"
  doc = json.loads(card.read_text())
  doc["card"]["description"] = "written by the lead"
  card.write_text(json.dumps(doc))
  with pytest.raises(InputError) as e:
    export_run(toy_run, tmp_path, "m")
  _one_line(e, str(tmp_path / "m.npz"), "`overwrite`")
  export_run(toy_run, tmp_path, "m", overwrite=True)
  doc = json.loads(card.read_text())
  assert doc["card"]["description"] == "written by the lead" and doc["name"] == "m"
  assert (tmp_path / "m.npz").read_bytes() == toy_model.read_bytes()  # same run, same bytes
  with pytest.raises(InputError) as e:
    export_run(toy_run, tmp_path, "m.npz")
  _one_line(e, "name", "m.npz")


def test_package_data_ships_the_models_folder():
  text = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
  assert '"pa_jax.zoo" = ["models/*.npz", "models/*.json"' in text
  assert registry.MODELS_DIR == Path(registry.__file__).parent / "models"
