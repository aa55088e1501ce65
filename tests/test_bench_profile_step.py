"""bench/profile_step.py: attributing traced ops to model parts (the trace itself is not
run here: its timings are documented in docs/performance.md with the command)."""

import collections
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("bench_profile_step", ROOT / "bench" / "profile_step.py")
ps = importlib.util.module_from_spec(spec)
sys.modules["bench_profile_step"] = ps
spec.loader.exec_module(ps)

HLO = """
ENTRY %main {
  %conv.1 = f32[64,14,14,256]{3,2,1,0} convolution(%a, %b), metadata={op_name="jit(_step)/transpose(jvp(MaskRCNN))/cond/branch_1_fun/mask_head/mask_fcn4/conv_general_dilated"}
  %dot.2 = f32[2,512,24,1792]{3,2,1,0} dot(%c, %d), metadata={op_name="jit(_step)/jvp(MaskRCNN)/MaskRCNN._roi_features/vmap()/dot_general"}
  ROOT %fusion.3 = f32[] fusion(%e), kind=kLoop
  %add.4 = f32[8] add(%f, %g), metadata={op_name="jit(_step)/jvp(MaskRCNN)/reduce_sum"}
}
"""


def test_ops_are_attributed_to_their_part_and_pass():
  ops = ps.hlo_ops(HLO)
  assert set(ops) == {"conv.1", "dot.2", "fusion.3", "add.4"}
  assert ps.part_of(ops["conv.1"]) == ("mask_head", "bwd")
  assert ps.part_of(ops["dot.2"]) == ("_roi_features", "fwd")
  assert ps.part_of(ops["fusion.3"]) == ("unattributed", "fwd")
  assert ps.part_of(ops["add.4"]) == ("other:reduce_sum", "fwd")


def test_summary_sums_per_part_and_lists_the_slowest():
  ops = ps.hlo_ops(HLO)
  tot = collections.Counter({"conv.1": 400_000, "dot.2": 1_500, "fusion.3": 500,
                             "not_in_hlo": 9_999_999})  # trace-only names are skipped
  s = ps.summarize(tot, ops, top=2)
  assert s["ms_by_part"] == {"mask_head/bwd": 400.0, "_roi_features/fwd": 1.5,
                             "unattributed/fwd": 0.5}
  assert s["ms_attributed_total"] == 402.0
  assert [o["op"] for o in s["slowest_ops"]] == ["conv.1", "dot.2"]
  assert s["slowest_ops"][0]["hlo"].startswith("f32[64,14,14,256]")
