"""bench/eval_curves.py: periodic evaluations read back from metrics.jsonl (docs/results.md)."""

import json
from pathlib import Path

import pytest

import eval_curves as ec  # bench/ is on sys.path: tests/conftest.py


def _run(path: Path, records):
  path.mkdir()
  (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
  return path


def test_tables_last_record_of_a_step_wins_and_best(tmp_path, capsys):
  a = _run(tmp_path / "a", [
      {"step": 10, "loss": 1.0},  # training records are skipped
      {"step": 500, "eval/map": 0.40, "eval/recall": 0.7},
      {"step": 1000, "eval/map": 0.20, "eval/recall": 0.8},
      {"step": 1000, "eval/map": 0.50, "eval/recall": 0.9},  # resumed run re-logged step 1000
  ])
  b = _run(tmp_path / "b", [{"step": 500, "eval/map": 0.30}])
  recs = ec.eval_records(a)
  assert recs == {500: {"map": 0.40, "recall": 0.7}, 1000: {"map": 0.50, "recall": 0.9}}
  t = ec.table({"a": recs, "b": ec.eval_records(b)}, "map").splitlines()
  assert t[0] == "| step | a | b |"
  assert t[2] == "| 500 | 0.400 | 0.300 |" and t[3] == "| 1000 | 0.500 | — |"
  assert t[4] == "| best | 0.500 (step 1000) | 0.300 (step 500) |"
  ec.main([str(a), str(b), "--metrics", "recall", "--png", str(tmp_path / "c.png")])
  out = capsys.readouterr().out
  assert "| best | 0.900 (step 1000) | — |" in out and (tmp_path / "c.png").stat().st_size > 0


def test_run_without_periodic_evaluation_is_a_clear_error(tmp_path):
  w = _run(tmp_path / "w", [{"step": 10, "loss": 1.0}])
  with pytest.raises(SystemExit, match="no periodic evaluation"):
    ec.eval_records(w)
  with pytest.raises(SystemExit, match="no metrics.jsonl"):
    ec.eval_records(tmp_path / "missing")
