"""bench/mask_conv_cpu.py at toy size: it checks each pair computes the same numbers, then
writes every pass's time for both forms."""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import mask_conv_cpu  # noqa: E402


def test_toy_run_writes_every_pass(tmp_path, capsys):
  out = tmp_path / "mask_conv.json"
  assert mask_conv_cpu.main(["--rois", "3", "--channels", "4", "--reps", "1", "--out", str(out)]) == 0
  res = json.loads(out.read_text())
  assert res["rois"] == 3 and res["channels"] == 4
  for name, taps in (("conv3x3", 9), ("transpose2x2", 4)):
    r = res["results"][name]
    for form in ("xla", "pa_jax"):
      assert sorted(r[form]) == ["dgrad", "fwd", "wgrad"]
      assert all(t >= 0 for t in r[form].values())
    assert r["forward_gflop"] == 3 * 14 * 14 * 4 * 4 * 2 * taps / 1e9
  assert capsys.readouterr().out.count("pa_jax") == 6
