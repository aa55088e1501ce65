"""bench/max_pool_cpu.py at toy size: it checks both pools agree, then writes both passes'
times for each shape."""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import max_pool_cpu  # noqa: E402


def test_toy_run_writes_both_pools(tmp_path, capsys):
  out = tmp_path / "max_pool.json"
  assert max_pool_cpu.main(["--shapes", "1x6x6x2,2x5x7x3", "--reps", "1", "--out", str(out)]) == 0
  res = json.loads(out.read_text())["results"]
  assert sorted(res) == ["1x6x6x2", "2x5x7x3"]
  for r in res.values():
    for form in ("flax", "pa_jax"):
      assert sorted(r[form]) == ["fwd", "fwd_bwd"] and all(t >= 0 for t in r[form].values())
  assert capsys.readouterr().out.count("pa_jax") == 4
