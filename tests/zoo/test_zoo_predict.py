"""`run.py predict` with a zoo model: `--model NAME_OR_PATH`, the shipped default when
neither `--workdir` nor `--model` is given (one line says so), and one error line when the
default is not in the checkout."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
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
      ["predict.json", "report.html"] + [f"{i}.png" for i in ids]
      + [f"{i}.nuclei.json" for i in ids])
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


# ------------------------------------------- predict.json: the nucleus size of each image

IDS = ("syn_0000", "syn_0001", "syn_0002")
RUN_FIELDS = ("method", "model", "source", "training_diameter_px", "diameter_mode",
              "diameter_px", "mask_overlap")


def _zooming(monkeypatch, target: float = 30.0) -> list:
  """`predictor_for` as predict calls it, the toy model given a training diameter
  (`data.diameter`) of `target` px; returns the predictors it makes."""
  from pa_jax.infer import predictor as P

  made, real = [], P.predictor_for

  def make(cfg, net, variables):
    made.append(real(cfg, net, variables))
    made[-1].target_diameter = target
    return made[-1]

  monkeypatch.setattr(P, "predictor_for", make)
  return made


def _blobs(monkeypatch) -> None:
  """The network pass replaced by 'label the bright blobs' (no compile): the estimate
  then measures the synthetic nuclei themselves."""
  from scipy import ndimage

  from pa_jax.data.intensity import IDENTITY_RANGE, stretch
  from pa_jax.infer import predictor as P

  def segment(self, img, intensity=None):  # integer pixels: stretched as the device would
    img = stretch(img, IDENTITY_RANGE if intensity is None else intensity)
    return ndimage.label(img[..., 0] > 0.5)[0].astype(np.int32), {}

  def run_batch(self, images, batch, intensity=None):
    labs = [segment(self, im, intensity)[0] for im in images]
    return labs, [np.ones(max(1, int(l.max())), np.float32) for l in labs]

  monkeypatch.setattr(P.Predictor, "_segment", segment)
  monkeypatch.setattr(P.Predictor, "_run_batch", run_batch)


def _doc(out: Path) -> dict:
  return json.loads((out / "predict.json").read_text())


def test_predict_json_records_a_given_diameter_and_mask_overlap(toy_model, toy_data,
                                                                tmp_path, monkeypatch):
  from pa_jax.predict import predict_folder

  made = _zooming(monkeypatch)
  out = tmp_path / "o"
  predict_folder(str(toy_data), str(out), model=str(toy_model), diameter=15.0,
                 mask_overlap=0.5, progress=False)
  assert len(made) == 1 and made[0].mask_overlap == 0.5  # --mask_overlap reached the predictor
  doc = _doc(out)
  assert {k: doc[k] for k in RUN_FIELDS} == {
      "method": "model", "model": "toy", "source": "pa_jax toy step 2",
      "training_diameter_px": 30.0, "diameter_mode": "given", "diameter_px": 15.0,
      "mask_overlap": 0.5}
  assert doc["images"] == [{"id": i, "diameter_px": 15.0, "diameter_source": "given",
                            "zoom": 2.0, "streamed": False} for i in IDS]  # 30 / 15
  page = (out / "report.html").read_text()
  assert "<th>diameter (px)</th><th>diameter from</th><th>zoom</th>" in page
  assert page.count("<td>15</td><td>given</td><td>2</td>") == 3
  assert "given: 15 px (the model&#x27;s training size: 30 px)" in page


def test_predict_json_records_an_estimated_diameter(toy_model, toy_data, tmp_path,
                                                    monkeypatch):
  from pa_jax.data import diameter as D
  from pa_jax.infer.predictor import Predictor
  from pa_jax.predict import predict_folder

  made = _zooming(monkeypatch)
  _blobs(monkeypatch)
  out = tmp_path / "o"
  predict_folder(str(toy_data), str(out), model=str(toy_model), mask_overlap=1.0,
                 progress=False)
  assert made[0].mask_overlap is None  # 1.0 = off: the plain overwrite program
  doc = _doc(out)
  assert (doc["diameter_mode"], doc["diameter_px"], doc["mask_overlap"]) == ("estimated",
                                                                             None, 1.0)
  assert [r["id"] for r in doc["images"]] == list(IDS)
  for row in doc["images"]:
    assert row["diameter_source"] == "estimated" and row["streamed"] is False
    assert 4.0 < row["diameter_px"] < 20.0  # the synthetic nuclei: radius 4-8 px
    z = D.zoom_factor(row["diameter_px"], 30.0)
    # the zoom applied: the estimate's, or the trial pass's it was within 10 % of
    assert row["zoom"] == pytest.approx(z) or (
        row["zoom"] in Predictor.TRIAL_ZOOMS and abs(math.log(z / row["zoom"])) < math.log(1.1))
  assert (out / "report.html").read_text().count("<td>estimated</td>") == 3


def test_slide_json_records_the_diameter(toy_model, toy_data, tmp_path, monkeypatch):
  import tifffile

  from pa_jax.data import readers
  from pa_jax.predict import predict_folder

  _zooming(monkeypatch)
  _blobs(monkeypatch)
  tif = tmp_path / "in" / "s.tif"
  tif.parent.mkdir()
  tifffile.imwrite(tif, readers.read_image(toy_data / "images" / "syn_0000.png"))
  out = tmp_path / "o"
  predict_folder(str(tif), str(out), model=str(toy_model), diameter=20.0, stream=True,
                 progress=False)
  info = json.loads((out / "s.slide.json").read_text())
  assert (info["diameter_px"], info["diameter_source"], info["zoom"]) == (20.0, "given", 1.5)
  assert _doc(out)["images"] == [{"id": "s", "diameter_px": 20.0, "diameter_source": "given",
                                  "zoom": 1.5, "streamed": True}]


def test_classical_predict_json_has_no_diameter(toy_data, tmp_path):
  from pa_jax.predict import predict_folder

  out = tmp_path / "c"
  predict_folder(str(toy_data), str(out), method="classical", progress=False)
  doc = _doc(out)
  assert {k: doc[k] for k in RUN_FIELDS} == {
      "method": "classical", "model": None, "source": "classical",
      "training_diameter_px": None, "diameter_mode": None, "diameter_px": None,
      "mask_overlap": None}
  assert doc["images"] == [{"id": i, "diameter_px": None, "diameter_source": None,
                            "zoom": None, "streamed": False} for i in IDS]
  assert "diameter" not in (out / "report.html").read_text()


@pytest.mark.parametrize("value", [0.0, -0.25, 1.5, float("nan")])
def test_mask_overlap_out_of_range_is_refused(value, toy_data, tmp_path):
  from pa_jax.predict import predict_folder

  with pytest.raises(InputError, match=r"^mask_overlap: .* is not in \(0, 1\]") as e:
    predict_folder(str(toy_data), str(tmp_path / "m"), mask_overlap=value)
  assert "\n" not in str(e.value)
  with pytest.raises(InputError, match="^mask_overlap: only applies to a model"):
    predict_folder(str(toy_data), str(tmp_path / "c"), method="classical", mask_overlap=0.5)
  assert not (tmp_path / "m").exists() and not (tmp_path / "c").exists()


def test_mask_overlap_out_of_range_is_one_cli_line(toy_data, tmp_path):
  proc = subprocess.run([sys.executable, str(ROOT / "run.py"), "predict", "--input",
                         str(toy_data), "--output", str(tmp_path / "out"),
                         "--mask_overlap=1.5"], cwd=ROOT, capture_output=True, text=True,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=300)
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
  assert lines[0].startswith("error: --mask-overlap: 1.5 is not in (0, 1]"), lines[0]
  assert not (tmp_path / "out").exists()
