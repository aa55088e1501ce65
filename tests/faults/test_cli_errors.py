"""Every error path of run.py is one line (issue 13, part 2): config files that are
missing, do not parse or raise; an unexpected exception (one line, exit 1, the traceback
only with --debug); a TrainingError's own exit code; parameter names shown as flags; and
the misleading annotate messages (annotation files that match no image, --rounds 0 on a
folder that is no project yet). Toy sizes, no training."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from .conftest import ROOT, RUN_PY, error_line, run_cli


def _images(folder: Path, names=("im0", "im1")) -> Path:
  from PIL import Image

  folder.mkdir(parents=True, exist_ok=True)
  yy, xx = np.mgrid[:64, :64]
  for k, name in enumerate(names):
    img = np.full((64, 64), 10, np.uint8)
    img[(yy - 20 - 4 * k) ** 2 + (xx - 30) ** 2 < 60] = 200
    Image.fromarray(img).save(folder / f"{name}.png")
  return folder


# -------------------------------------------------------------------- config files


def test_config_file_missing(tmp_path):
  p = run_cli("train", "--config", tmp_path / "missing.py", "--workdir", tmp_path / "w")
  error_line(p, 2, "missing.py", "not found")
  assert not (tmp_path / "w").exists()


def test_config_file_with_a_syntax_error(tmp_path):
  cfg = tmp_path / "broken.py"
  cfg.write_text("def get_config(:\n  return None\n")
  p = run_cli("train", "--config", cfg, "--workdir", tmp_path / "w")
  error_line(p, 2, str(cfg), "line 1")


def test_config_file_that_raises(tmp_path):
  cfg = tmp_path / "raises.py"
  cfg.write_text("def get_config():\n  raise RuntimeError('boom in the config')\n")
  p = run_cli("train", "--config", cfg, "--workdir", tmp_path / "w")
  error_line(p, 2, str(cfg), "RuntimeError", "boom in the config", "line 2")
  cfg.write_text("def get_config():\n  return {}['no_such_key']\n")
  p = run_cli("train", "--config", cfg, "--workdir", tmp_path / "w")
  error_line(p, 2, str(cfg), "no_such_key", "line 2")
  # A config check that raises InputError names its field, as any library check does.
  cfg.write_text("from pa_jax.errors import InputError\n\ndef get_config():\n"
                 "  raise InputError('model.partial.anchor', 'must be one of a, b')\n")
  p = run_cli("train", "--config", cfg, "--workdir", tmp_path / "w")
  error_line(p, 2, "model.partial.anchor", "must be one of a, b")
  assert not (tmp_path / "w").exists()


# ------------------------------------------------------------- unexpected errors


def _run_patched(raise_expr: str, *args: str, tmp_path: Path) -> subprocess.CompletedProcess:
  """`run.py predict --method classical ...` with `readers.open_dataset` raising
  `raise_expr`: a stand-in for a bug or an unforeseen fault deep in the library."""
  code = (
      "import runpy, sys\n"
      f"sys.path.insert(0, {str(ROOT)!r})\n"
      "import pa_jax.data.readers as r\n"
      "def boom(*a, **k):\n"
      "  from pa_jax import errors\n"
      f"  raise {raise_expr}\n"
      "r.open_dataset = boom\n"
      f"sys.argv = [{str(RUN_PY)!r}] + sys.argv[1:]\n"
      f"runpy.run_path({str(RUN_PY)!r}, run_name='__main__')\n")
  inp = _images(tmp_path / "imgs")
  return subprocess.run([sys.executable, "-c", code, "predict", "--method", "classical",
                         "--input", str(inp), "--output", str(tmp_path / "out"), *args],
                        capture_output=True, text=True, timeout=300,
                        env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"})


def test_unexpected_exception_is_one_line_and_debug_shows_the_traceback(tmp_path):
  p = _run_patched("RuntimeError('disk controller on fire')", tmp_path=tmp_path)
  line = error_line(p, 1, "RuntimeError", "disk controller on fire", "--debug")
  assert line.startswith("error: ")
  p = _run_patched("RuntimeError('disk controller on fire')", "--debug", tmp_path=tmp_path)
  assert p.returncode != 0 and "Traceback" in p.stderr and "disk controller" in p.stderr


def test_training_error_keeps_its_exit_code(tmp_path):
  p = _run_patched("errors.TrainingError('runs/x', 'loss is NaN at step 3')",
                   tmp_path=tmp_path)
  error_line(p, 3, "runs/x", "NaN")


def test_parameter_names_are_shown_as_flags(tmp_path):
  inp = _images(tmp_path / "imgs")
  p = run_cli("predict", "--method", "classical", "--input", inp, "--output",
              tmp_path / "out", "--contours", "bezier")
  error_line(p, 2, "--contours", "bezier")
  p = run_cli("predict", "--method", "classical", "--input", inp, "--output",
              tmp_path / "out", "--on-error", "ignore")
  error_line(p, 2, "on_error")
  assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------ annotate


def test_annotate_unmatched_annotations_name_the_folders_and_files(tmp_path):
  from PIL import Image

  imgs = _images(tmp_path / "imgs")
  ann = tmp_path / "ann"
  ann.mkdir()
  lab = np.zeros((64, 64), np.uint8)
  lab[10:20, 10:20] = 1
  for name in ("scan_0001.png", "scan_0002.png"):  # named after nothing in imgs/
    Image.fromarray(lab).save(ann / name)
  p = run_cli("annotate", "--images", imgs, "--annotations", ann, "--output",
              tmp_path / "project")
  error_line(p, 2, str(imgs), str(ann), "scan_0001.png")
  assert not (tmp_path / "project").exists()


def test_annotate_rounds_0_on_a_fresh_output_says_there_is_no_project(tmp_path):
  imgs = _images(tmp_path / "imgs")
  out = tmp_path / "project"
  p = run_cli("annotate", "--images", imgs, "--output", out, "--rounds", "0")
  line = error_line(p, 2, str(out), "no annotation project")
  assert "current" not in line and not out.exists()
