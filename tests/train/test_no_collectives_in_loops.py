"""The compiled 8-device training step has no cross-device collective inside a loop.

DESIGN.md "Accelerator rules": per-image stages that loop (NMS, connected components, the
PA-ignore blocks, sampling) run per device. A collective inside a `while` body or condition
would run on every turn: on an accelerator, a cross-device (across hosts, network) round trip
per turn. This compiles the real model's training step (configs/dh25_pa.py:cpu with the
partial-annotation module, global batch 8) for 8 fake CPU devices and reads the HLO.

Only compilation runs (abstract state and batch); the canvas is shrunk to 128 px, which
changes array sizes but not one op of the program's structure.
"""

import json

import pytest

import _proc


@pytest.fixture(scope="module")
def compiled():
  code, out, err = _proc.run("loops_check.py", "--canvas", "128", "--batch", "8",
                             devices=8, timeout=600)
  assert code == 0, err[-3000:]
  return json.loads(out.strip().splitlines()[-1])


def test_no_collective_inside_any_while_loop(compiled):
  r = compiled
  assert r["n_devices"] == 8 and r["partial"]
  # The program really has the loops (NMS blocks + fixed point, connected components +
  # pointer jumping, PA-ignore blocks, ...) and really is data parallel.
  assert r["num_while"] >= 8
  assert r["num_collectives"] >= 1
  offenders = [(l["op_name"], c["opcode"], c["op_name"]) for l in r["loops"]
               for c in l["collectives"]]
  assert offenders == [], offenders


def test_the_loops_of_per_image_stages_run_under_shard_map(compiled):
  # Every loop of the model's per-image stages sits under shard_map; the others are the
  # key derivations (threefry) of the step, which are per step, not per image.
  for loop in compiled["loops"]:
    name = loop["op_name"]
    assert "shard_map" in name or "threefry" in name or "jit(_uniform)" in name, name
