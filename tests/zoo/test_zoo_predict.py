"""`run.py predict` with a zoo model: `--model NAME_OR_PATH`, the shipped default when
neither `--workdir` nor `--model` is given (one line says so), and one error line when the
default is not in the checkout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import pa_jax
from pa_jax.errors import InputError
from pa_jax.zoo import registry

from .conftest import ROOT, ship


def _cli(*argv: str) -> int:
  """run.py's parse + dispatch in this process (the jitted predict program is shared with
  the other tests); errors raise as in the library, `_run` is what turns them into lines."""
  import run

  try:
    return run.main(run.FLAGS(["run.py", *map(str, argv)]))
  finally:
    run.FLAGS.unparse_flags()


def _files(folder: Path) -> list[str]:
  return sorted(p.name for p in folder.iterdir())


def test_predict_with_model_writes_label_maps(toy_model, toy_data, tmp_path, capsys):
  from pa_jax.data import readers

  assert _cli("predict", "--model", toy_model, "--input", toy_data, "--output",
              tmp_path / "zoo") == 0
  assert capsys.readouterr().out.splitlines() == [
      f"3 images segmented; outputs in {tmp_path / 'zoo'}"]  # a named model: no notice
  ids = ("syn_0000", "syn_0001", "syn_0002")
  assert _files(tmp_path / "zoo") == sorted(
      ["report.html"] + [f"{i}.png" for i in ids] + [f"{i}.nuclei.json" for i in ids])
  for i in ids:
    assert readers.read_label_map(tmp_path / "zoo" / f"{i}.png").shape == (64, 64)
  # Every nucleus names where it came from: the model's name and step (not a run's).
  assert _sources(tmp_path / "zoo") == {"pa_jax toy step 2"}


def _sources(folder: Path) -> set[str]:
  return {n["source"] for p in folder.glob("*.nuclei.json")
          for n in json.loads(p.read_text())["nuclei"]}


def test_no_workdir_no_model_uses_the_shipped_default_and_says_so(shipped, toy_model, toy_data,
                                                                  tmp_path, capsys):
  ship(toy_model, shipped, registry.DEFAULT_MODEL)
  assert _cli("predict", "--input", toy_data, "--output", tmp_path / "out") == 0
  first = capsys.readouterr().out.splitlines()[0]
  assert first == (f"using the shipped model {registry.DEFAULT_MODEL} "
                   f"({registry.shown(shipped / (registry.DEFAULT_MODEL + '.npz'))}); "
                   "--model NAME_OR_PATH or --workdir RUN picks another")
  assert (tmp_path / "out" / "syn_0000.png").is_file()
  assert isinstance(pa_jax.load_predictor(), pa_jax.Predictor)
  assert pa_jax.load_predictor(model=registry.DEFAULT_MODEL).tile_size == 128


def test_workdir_and_model_together_are_refused(toy_run, toy_model, toy_data, tmp_path):
  from pa_jax.predict import predict_folder

  with pytest.raises(InputError, match="^model: give a trained run .* not both$"):
    predict_folder(str(toy_data), str(tmp_path / "o"), workdir=str(toy_run),
                   model=str(toy_model))
  with pytest.raises(InputError, match="^best: "):
    pa_jax.load_predictor(model=toy_model, best=True)
  assert not (tmp_path / "o").exists()


def test_missing_default_model_is_one_line_and_exit_code_2(tmp_path, toy_data):
  empty = tmp_path / "models"
  empty.mkdir()
  code = ("import runpy, sys; from pathlib import Path; from pa_jax.zoo import registry; "
          f"registry.MODELS_DIR = Path({str(empty)!r}); "
          f"sys.argv = ['run.py', 'predict', '--input', {str(toy_data)!r}, '--output', "
          f"{str(tmp_path / 'out')!r}]; runpy.run_path('run.py', run_name='__main__')")
  proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=300)
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert proc.returncode == 2 and len(lines) == 1 and not proc.stdout, proc.stderr[-2000:]
  assert lines[0] == (f"error: {empty / registry.DEFAULT_MODEL}.npz: the shipped model "
                      f"{registry.DEFAULT_MODEL} is not in this checkout yet; segment with a "
                      "trained run (--workdir) or another model file (--model)")
  assert not (tmp_path / "out").exists()


def test_diameter_is_refused_where_it_means_nothing(toy_model, toy_data, tmp_path):
  """--diameter sizes the input for a model trained at a set nucleus size: the classical
  method has none, and a size must be positive; nothing is written either way."""
  from pa_jax.predict import predict_folder

  with pytest.raises(InputError, match="^diameter: only applies to a model"):
    predict_folder(str(toy_data), str(tmp_path / "c"), method="classical", diameter=12.0)
  with pytest.raises(InputError, match="^diameter: -3.0 is not a positive size"):
    predict_folder(str(toy_data), str(tmp_path / "m"), model=str(toy_model), diameter=-3.0)
  assert not (tmp_path / "c").exists() and not (tmp_path / "m").exists()
