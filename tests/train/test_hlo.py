"""pa_jax.train.hlo: finding collectives inside while loops of compiled HLO text."""

import json

import _proc
from pa_jax.train import hlo

# Hand-written, in the shape XLA prints: an outer loop whose body holds an inner loop whose
# body calls (through a fusion) an async all-reduce; the entry holds a plain all-reduce and
# refers to instruction NAMES that look like collectives, which must not count.
TEXT = """HloModule jit_f, entry_computation_layout={(f32[8]{0})->f32[]}

%add (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %add.1 = f32[] add(f32[] %a, f32[] %b)
}

%fused_reduce (p: f32[8]) -> f32[] {
  %p = f32[8]{0} parameter(0)
  %ars = f32[8]{0} all-reduce-start(f32[8]{0} %p), replica_groups={{0,1}}, to_apply=%add
  %ard = f32[8]{0} all-reduce-done(f32[8]{0} %ars)
  %z = f32[] constant(0)
  ROOT %r = f32[] reduce(f32[8]{0} %ard, f32[] %z), dimensions={0}, to_apply=%add
}

%inner_body (s: (s32[], f32[8])) -> (s32[], f32[8]) {
  %s = (s32[], f32[8]{0}) parameter(0)
  %v = f32[8]{0} get-tuple-element((s32[], f32[8]{0}) %s), index=1
  %f = f32[] fusion(f32[8]{0} %v), kind=kLoop, calls=%fused_reduce
  ROOT %t = (s32[], f32[8]{0}) tuple(s32[] %i, f32[8]{0} %v)
}

%inner_cond (s: (s32[], f32[8])) -> pred[] {
  %s = (s32[], f32[8]{0}) parameter(0)
  ROOT %c = pred[] constant(true)
}

%outer_body (s: (s32[], f32[8])) -> (s32[], f32[8]) {
  %s = (s32[], f32[8]{0}) parameter(0)
  ROOT %w2 = (s32[], f32[8]{0}) while((s32[], f32[8]{0}) %s), condition=%inner_cond, body=%inner_body, metadata={op_name="jit(f)/while/body/while"}
}

%outer_cond (s: (s32[], f32[8])) -> pred[] {
  %s = (s32[], f32[8]{0}) parameter(0)
  ROOT %c = pred[] constant(false)
}

ENTRY %main.9 (x: f32[8]) -> f32[] {
  %x = f32[8]{0} parameter(0)
  %all-reduce.3 = f32[8]{0} all-reduce(f32[8]{0} %x), replica_groups={{0,1}}, to_apply=%add
  %t0 = (s32[], f32[8]{0}) tuple(s32[] %zero, f32[8]{0} %all-reduce.3)
  %w1 = (s32[], f32[8]{0}) while((s32[], f32[8]{0}) %t0), condition=%outer_cond, body=%outer_body, metadata={op_name="jit(f)/while"}
  %all-gather = f32[8]{0} copy(f32[8]{0} %all-reduce.3)
  ROOT %out = f32[] reduce(f32[8]{0} %all-gather, f32[] %z), dimensions={0}, to_apply=%add
}
"""


def test_parse_finds_loops_calls_and_collectives():
  m = hlo.parse(TEXT)
  assert m.entry == "main.9"
  ops = {i.name: i.opcode for i in m.computations["main.9"]}
  assert ops["all-reduce.3"] == "all-reduce" and ops["all-gather"] == "copy"
  assert ops["w1"] == "while" and ops["t0"] == "tuple"
  loops = {l.instruction.name: l for l in hlo.while_loops(m)}
  assert set(loops) == {"w1", "w2"}
  assert loops["w1"].body == "outer_body" and loops["w1"].condition == "outer_cond"
  assert loops["w1"].inside == {"outer_body", "outer_cond", "inner_body", "inner_cond",
                                "fused_reduce", "add"}
  assert loops["w2"].instruction.op_name == "jit(f)/while/body/while"
  assert sorted(i.opcode for i in hlo.collectives(m)) == ["all-reduce", "all-reduce-done",
                                                         "all-reduce-start"]


def test_collective_in_a_nested_loop_counts_for_every_enclosing_loop():
  found = hlo.collectives_in_loops(TEXT)
  pairs = sorted((l.instruction.name, i.opcode) for l, i in found)
  assert pairs == [("w1", "all-reduce-done"), ("w1", "all-reduce-start"),
                   ("w2", "all-reduce-done"), ("w2", "all-reduce-start")]
  s = hlo.summary(TEXT)
  assert s["num_while"] == 2 and s["num_collectives"] == 3


def test_no_collective_in_loops_when_the_loop_is_clean():
  clean = TEXT.replace("all-reduce-start(", "negate(").replace("all-reduce-done(", "copy(")
  assert hlo.collectives_in_loops(clean) == []
  assert len(hlo.collectives(hlo.parse(clean))) == 1  # the entry's all-reduce only


def test_is_collective():
  for op in ("all-reduce", "all-gather-start", "reduce-scatter", "collective-permute-done",
             "all-to-all"):
    assert hlo.is_collective(op)
  for op in ("reduce", "while", "all", "scatter", "custom-call"):
    assert not hlo.is_collective(op)


def test_compiled_programs_on_4_devices():
  """Real XLA output: a psum in a shard_map'd loop is found, one after the loop is not; a
  vmapped loop over a sharded batch under plain GSPMD gets an all-reduced predicate, and
  `per_image` (vmap inside shard_map) removes it."""
  code, out, err = _proc.run("hlo_check.py", devices=4, timeout=240)
  assert code == 0, err[-3000:]
  r = json.loads(out.strip().splitlines()[-1])
  assert r["psum_in_loop"]["in_loops"] == ["all-reduce"]
  assert r["psum_after_loop"] == {"in_loops": [], "loops": 1, "collectives": 1}
  assert r["gspmd_vmap"]["in_loops"] == ["all-reduce"]
  assert r["with_per_image"]["in_loops"] == [] and r["with_per_image"]["loops"] == 1
