"""Training faults through the real CLI (issue 13): a changed config, a full or read-only
disk, damaged checkpoints, a workdir under a file, a run used from another folder.
Each must end in one line (or one warning line on a run that goes on), keep what was saved
before, and never print a traceback.

One toy run (tiny model, 64 px canvas, 2 steps, a checkpoint at each) is trained once per
module and copied for each test; the tests that train again train at most one step.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT, error_line, run_cli, snapshot

sys.path.insert(0, str(ROOT))  # pa_jax and configs, when pytest runs from another folder

TMP_MARK = ".orbax-checkpoint-tmp"
QUIET = {"TQDM_DISABLE": "1"}  # progress bars also go to stderr; these tests count its lines

TINY_CONFIG = f'''"""A toy run for the fault tests: tiny model, 64 px canvas, 2 steps."""
import sys
sys.path.insert(0, {str(ROOT)!r})
from configs import base, demo


def get_config(arg=None):
  c = base.toy_sized(demo.get_config())
  c.model.partial.enabled = False  # a smaller program to compile
  c.data.source = "data/sample"  # relative, as a user types it
  c.train.checkpoint_every = 1
  c.predict.tile_size = 128
  return c
'''


def _cli(*args, cwd=None) -> subprocess.CompletedProcess:
  return run_cli(*args, cwd=cwd, env=QUIET)


def _warnings(proc) -> list[str]:
  assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
  return [l for l in proc.stderr.splitlines() if l.startswith("warning:")]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
  """A folder holding `tiny.py`, `data/sample` (3 train, 2 test images) and `run/`, a
  2-step run trained from that folder with the relative source `data/sample`."""
  base = tmp_path_factory.mktemp("trained")
  (base / "tiny.py").write_text(TINY_CONFIG)
  src, dst = ROOT / "data" / "sample", base / "data" / "sample"
  rows = (src / "index.csv").read_text().splitlines()
  keep = [rows[0]] + [r for r in rows[1:] if ",train," in r][:3] + \
      [r for r in rows[1:] if ",test," in r][:2]
  for sub in ("images", "labels"):
    (dst / sub).mkdir(parents=True)
    for r in keep[1:]:
      for f in (src / sub).glob(r.split(",")[0] + ".*"):
        shutil.copy(f, dst / sub / f.name)
  (dst / "index.csv").write_text("\n".join(keep) + "\n")
  proc = _cli("train", "--config", "tiny.py", "--workdir", "run", cwd=base)
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert sorted(os.listdir(base / "run" / "checkpoints")) == ["1", "2"]
  return base


@pytest.fixture
def run_copy(trained, tmp_path) -> Path:
  """A private copy of the trained folder (config, data, run)."""
  dst = tmp_path / "A"
  shutil.copytree(trained, dst, symlinks=True)
  return dst


def _damage(step_dir: Path) -> None:
  """Truncates the array data of a checkpoint (what a disk error or a half-copied run
  leaves): its metadata is intact, its arrays are not."""
  data = [p for p in step_dir.rglob("*") if p.is_file() and p.parent.name == "d"]
  assert data, sorted(step_dir.rglob("*"))
  for p in data:
    os.truncate(p, 10)


def _load_step(workdir: Path) -> int:
  from pa_jax import experiment

  return experiment.load_run(workdir)[3]


# ------------------------------------------------------------------------ changed config


def test_changed_config_is_refused_in_one_line_and_leaves_the_run_as_it_was(run_copy):
  run = run_copy / "run"
  before = snapshot(run)
  proc = _cli("train", "--config", "tiny.py", "--workdir", "run",
              "--config.model.partial.enabled=True", "--config.train.learning_rate=0.02",
              cwd=run_copy)
  line = error_line(proc, 2, "config.json", "model.partial.enabled: False -> True",
                    "train.learning_rate: 0.002 -> 0.02")
  assert len(line) < 300, line  # not Orbax's kilobytes of tree metadata
  assert snapshot(run) == before  # config.json and run.json byte-identical
  assert _load_step(run) == 2  # the run's own evaluate/predict still work


def test_resumable_fields_may_change_and_others_are_named():
  from configs import demo
  from pa_jax.train import checkpoint as ckpt
  from pa_jax.train import run_config

  c = demo.get_config()
  stored = json.loads(ckpt.config_json(c))
  c.train.steps = 5000  # extending a run
  c.train.log_every = 3
  c.eval.max_images = 2
  assert run_config.config_changes(stored, c) == []
  c.model.partial.enabled = False
  c.data.view_fraction = 0.5
  assert run_config.config_changes(stored, c) == ["data.view_fraction: 0.25 -> 0.5",
                                            "model.partial.enabled: True -> False"]


# ---------------------------------------------------------------------------- full disk


def _du_kib(folder: Path) -> int:
  return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) // 1024


def test_full_disk_stops_in_one_line_and_keeps_the_earlier_checkpoints(run_copy,
                                                                       small_disk):
  """Resuming to step 3 on a disk with room for the run but not for one more checkpoint."""
  size = _du_kib(run_copy / "run") + 900  # a checkpoint of the toy run is ~2 MB
  disk = small_disk(size)
  run = disk / "run"
  shutil.copytree(run_copy / "run", run)
  ckpts = snapshot(run / "checkpoints")
  lines = (run / "metrics.jsonl").read_text()
  proc = _cli("train", "--config", "tiny.py", "--workdir", run, "--config.train.steps=3",
              cwd=run_copy)
  line = error_line(proc, 2, str(run))
  assert "disk full" in line and "checkpoint 2 is intact" in line, line
  assert not [p for p in run.rglob("*") if TMP_MARK in p.name]
  assert snapshot(run / "checkpoints") == ckpts
  assert (run / "metrics.jsonl").read_text().startswith(lines)  # no torn line either
  assert all(l.endswith("}") for l in (run / "metrics.jsonl").read_text().splitlines())
  assert _load_step(run) == 2


def test_read_only_workdir_is_one_line_and_untouched(run_copy, small_disk):
  disk = small_disk(_du_kib(run_copy / "run") + 900)
  run = disk / "run"
  shutil.copytree(run_copy / "run", run)
  before = snapshot(run)
  rc = subprocess.run(["mount", "-o", "remount,ro", str(disk)], capture_output=True)
  if rc.returncode != 0:
    pytest.skip("cannot remount the tmpfs read-only")
  proc = _cli("train", "--config", "tiny.py", "--workdir", run, "--config.train.steps=3",
              cwd=run_copy)
  line = error_line(proc, 2, str(run))
  assert "Read-only file system" in line or "read-only" in line, line
  assert snapshot(run) == before


# ----------------------------------------------------------------- damaged checkpoints


def test_resume_falls_back_to_the_newest_readable_checkpoint(run_copy):
  run = run_copy / "run"
  _damage(run / "checkpoints" / "2")
  step1 = snapshot(run / "checkpoints" / "1")
  proc = _cli("train", "--config", "tiny.py", "--workdir", "run", cwd=run_copy)
  assert proc.returncode == 0, proc.stderr[-4000:]
  warnings = _warnings(proc)
  assert len(warnings) == 1, proc.stderr[-4000:]
  assert "checkpoints/2 is unreadable" in warnings[0] and "step 1" in warnings[0]
  assert len(warnings[0]) < 300, warnings[0]
  assert snapshot(run / "checkpoints" / "1") == step1
  assert (run / "checkpoints_unreadable" / "2").is_dir()  # kept for the user
  assert sorted(os.listdir(run / "checkpoints")) == ["1", "2"]  # step 2 trained again
  assert _load_step(run) == 2


def test_predict_falls_back_to_the_newest_readable_checkpoint(run_copy, capfd):
  run = run_copy / "run"
  _damage(run / "checkpoints" / "2")
  assert _load_step(run) == 1
  err = capfd.readouterr().err
  warnings = [l for l in err.splitlines() if l.strip()]
  assert len(warnings) == 1 and warnings[0].startswith("warning: "), err[-4000:]
  assert "checkpoints/2 is unreadable" in warnings[0] and "step 1" in warnings[0]


def test_deleted_checkpoint_metadata_still_restores_or_falls_back(run_copy):
  run = run_copy / "run"
  (run / "checkpoints" / "2" / "_CHECKPOINT_METADATA").unlink()
  (run / "checkpoints" / "2" / "default" / "_METADATA").unlink()
  assert _load_step(run) == 1


def test_no_readable_checkpoint_is_one_line(run_copy):
  run = run_copy / "run"
  for step in ("1", "2"):
    _damage(run / "checkpoints" / step)
  out = run_copy / "pred"
  proc = _cli("predict", "--workdir", run, "--input", run_copy / "data" / "sample" / "images",
              "--output", out)
  line = error_line(proc, 2, str(run / "checkpoints"), "no checkpoint can be restored")
  assert len(line) < 400, line


# ---------------------------------------------------------------------- paths of a run


def test_workdir_under_a_file_says_so(run_copy):
  (run_copy / "some.txt").write_text("notes\n")
  proc = _cli("train", "--config", "tiny.py", "--workdir", "some.txt/run", cwd=run_copy)
  line = error_line(proc, 2, "some.txt/run", "some.txt, which is a file")
  assert "JSON" not in line
  assert (run_copy / "some.txt").read_text() == "notes\n"


def test_evaluate_workdir_from_another_folder(run_copy, tmp_path):
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  proc = _cli("evaluate", "--workdir", run_copy / "run", "--output", tmp_path / "eval",
              cwd=elsewhere)
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert (tmp_path / "eval").is_dir()


# ------------------------------------------------------------------------------- NaN


def test_non_finite_loss_is_a_training_error_with_exit_code_3():
  from pa_jax.errors import InputError, TrainingError
  from pa_jax.train.loop import NonFiniteLossError

  err = NonFiniteLossError(5, {"loss": float("nan")}, "no checkpoint was saved before it")
  assert isinstance(err, TrainingError) and not isinstance(err, InputError)
  assert err.exit_code == 3 and str(err).startswith("step 5: non-finite loss=nan")

