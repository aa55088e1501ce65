"""run.py as a user calls it: classical predict in every format, scoring, bad flags."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample"


def _run(*args, cwd=ROOT):
  return subprocess.run([sys.executable, "run.py", *args], cwd=cwd, capture_output=True, text=True)


def test_classical_predict_all_formats_then_evaluate(tmp_path):
  img = sorted((SAMPLE / "images").glob("*.png"))[0]
  inp = tmp_path / "in"
  inp.mkdir()
  (inp / img.name).write_bytes(img.read_bytes())
  out = tmp_path / "out"
  r = _run("predict", "--method", "classical", "--input", str(inp), "--output", str(out),
           "--format", "label,coco,geojson,roi,csv", "--contours", "spline")
  assert r.returncode == 0, r.stderr[-2000:]
  stem = img.stem
  for name in (f"{stem}.png", f"{stem}.geojson", f"{stem}_rois.zip", f"{stem}.csv", "annotations.json"):
    assert (out / name).is_file(), name
  coco = json.loads((out / "annotations.json").read_text())
  from pa_jax.data import readers

  labels = readers.read_label_map(out / f"{stem}.png")
  assert len(coco["annotations"]) == len(np.unique(labels)) - 1 > 5
  gt = tmp_path / "gt"
  gt.mkdir()
  (gt / f"{stem}.png").write_bytes((SAMPLE / "labels" / img.name).read_bytes())
  r = _run("evaluate", "--predictions", str(out), "--ground-truth", str(gt), "--output",
           str(tmp_path / "eval"))
  assert r.returncode == 0, r.stderr[-2000:]
  assert "1 images: map=" in r.stdout
  assert (tmp_path / "eval" / "summary.md").is_file()


def test_bad_flags_are_one_line_errors(tmp_path):
  r = _run("predict", "--method", "classical", "--input", str(SAMPLE), "--output",
           str(tmp_path / "o"), "--format", "label,pdf")
  assert r.returncode == 2 and "pdf" in r.stderr and r.stderr.strip().count("\n") == 0
  r = _run("predict", "--input", str(SAMPLE), "--output", str(tmp_path / "o"), "--workdir",
           str(tmp_path / "run"), "--model", "nuclei_cpu_v1")
  assert r.returncode == 2 and "--workdir" in r.stderr and "not both" in r.stderr
  r = _run("evaluate", "--workdir", str(tmp_path / "nothing"))
  assert r.returncode == 2 and "config.json" in r.stderr
  r = _run("annotate", "--images", str(tmp_path / "missing"), "--output", str(tmp_path / "a"))
  assert r.returncode == 2 and "missing" in r.stderr


def test_classical_params_flag_changes_the_segmentation_and_is_recorded(tmp_path):
  img = sorted((SAMPLE / "images").glob("*.png"))[0]
  outs = {}
  for name, extra in [("default", []), ("textbook", ["--classical_params",
                                                     "min_distance=5,distance_sigma=0"])]:
    out = tmp_path / name
    r = _run("predict", "--method", "classical", "--input", str(img), "--output", str(out), *extra)
    assert r.returncode == 0, r.stderr[-2000:]
    from pa_jax.data import readers

    outs[name] = readers.read_label_map(out / f"{img.stem}.png")
    params = json.loads((out / "classical_params.json").read_text())
    assert params["min_distance"] == ("auto" if name == "default" else 5)
  # A 5-px marker spacing splits the ~40-px dh360 nuclei: more (over-segmented) nuclei.
  assert len(np.unique(outs["textbook"])) > len(np.unique(outs["default"]))
  r = _run("predict", "--method", "classical", "--input", str(img), "--output",
           str(tmp_path / "bad"), "--classical_params", "min_dist=5")
  assert r.returncode == 2 and "--classical_params" in r.stderr and "min_dist" in r.stderr
  assert r.stderr.strip().count("\n") == 0


def test_read_json_missing_is_none_bad_is_one_line(tmp_path):
  """fileio.read_json: what evaluate/predict read run.json and config.json with."""
  from pa_jax import fileio
  from pa_jax.errors import InputError

  assert fileio.read_json(tmp_path / "absent.json") is None
  fileio.write_json(tmp_path / "ok.json", {"a": [1, 2]})
  assert fileio.read_json(tmp_path / "ok.json") == {"a": [1, 2]}
  (tmp_path / "bad.json").write_text('{"a": ')
  with pytest.raises(InputError) as err:
    fileio.read_json(tmp_path / "bad.json")
  assert str(err.value).startswith(str(tmp_path / "bad.json")) and "\n" not in str(err.value)
  # A run folder whose config.json is broken: evaluate says so in one line.
  run = tmp_path / "run"
  run.mkdir()
  (run / "config.json").write_text("{")
  r = _run("evaluate", "--workdir", str(run))
  assert r.returncode != 0 and "config.json: cannot read JSON" in r.stderr.strip().splitlines()[-1]


def test_benchmark_records_config_overrides():
  """`run.py benchmark` writes the `--config.x` overrides into its JSON: both absl forms."""
  # One module for run.py in the whole session (tests/zoo imports it as `run`): executing
  # the file a second time would define its absl flags twice.
  if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
  import run as run_main
  argv = ["benchmark", "--config", "configs/dh25_pa.py:cpu", "--steps", "3",
          "--config.model.roi.mask_dim=32", "--config.train.batch_size", "4",
          "--output", "x.json"]
  assert run_main._config_overrides(argv) == ["--config.model.roi.mask_dim=32",
                                              "--config.train.batch_size=4"]
  assert run_main._config_overrides(["benchmark", "--config", "c.py"]) == []
