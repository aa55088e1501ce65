"""bench/he_table.py: the Kumar / TNBC tables of docs/results.md from zoo_eval result files."""

import json

import pytest

import he_table  # bench/ is on sys.path: tests/conftest.py

KEYS = ("map", "aji", "aji_pooled", "precision", "recall", "f1")


def _result(path, model_value, floor_value, per_image):
  summary = {"model": {k: model_value for k in KEYS}, "floor": {k: floor_value for k in KEYS}}
  path.write_text(json.dumps({"results": {"kumar val": {
      "summary": summary, "per_image_aji": per_image, "rows": []}}}))
  return path


def test_coverage_means_first_and_last_window_of_partial_steps(tmp_path):
  # Steps without unannotated nuclei (full labels) carry no coverage and are skipped.
  rows = [{"step": s, "pa_unannotated_covered": c, "pa_unannotated_per_image": u}
          for s, c, u in [(10, 0.2, 5), (20, 0.4, 5), (30, 0.9, 0), (150, 0.6, 5), (200, 0.8, 5)]]
  (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
  first, last = he_table.coverage(tmp_path, steps=100)
  assert first == pytest.approx(0.3)   # steps 10 and 20
  assert last == pytest.approx(0.7)    # steps 150 and 200 (> 200 - 100)


def test_tables_rows_floor_and_per_image(tmp_path):
  a = _result(tmp_path / "a.json", 0.5, 0.25, {"img1": [0.5, 0.25], "img2": [0.4, 0.3]})
  b = _result(tmp_path / "b.json", 0.125, 0.25, {"img1": [0.1, 0.25]})
  text = he_table.tables("kumar val", [he_table.parse_row(f"shipped={a}"),
                                       he_table.parse_row(f"fine-tuned={b}")])
  lines = text.splitlines()
  assert lines[2] == "| shipped | " + " | ".join(["0.500"] * 6) + " |  |"
  assert lines[3].startswith("| fine-tuned | 0.125 |")
  assert lines[4].startswith("| classical floor") and "0.250" in lines[4]
  assert "| img1 | 0.500 | 0.100 | 0.250 |" in lines
  assert "| img2 | 0.400 |  | 0.300 |" in lines  # an image one run lacks stays blank


def test_parse_row_rejects_missing_path():
  with pytest.raises(SystemExit):
    he_table.parse_row("label-only")
