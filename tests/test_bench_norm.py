"""bench/norm_cpu.py at toy size: the three GroupNorm forms agree, and every form's time is
written per shape and weighted into the total."""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import norm_cpu  # noqa: E402


def test_toy_run_writes_every_form(tmp_path):
  out = tmp_path / "norm.json"
  assert norm_cpu.main(["--shapes", "1x4x4x32:1,2x2x3x64:3", "--reps", "1", "--out", str(out)]) == 0
  res = json.loads(out.read_text())
  per = res["vjp_seconds_per_shape"]
  assert sorted(per) == ["1x4x4x32", "2x2x3x64"]
  for name in ("two_pass", "pa_jax", "flax"):
    want = per["1x4x4x32"][name] + 3 * per["2x2x3x64"][name]
    assert abs(res["vjp_seconds_total"][name] - want) < 1e-12
