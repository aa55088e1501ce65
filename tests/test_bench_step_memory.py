"""bench/step_memory.py: the sizes read from XLA's memory analysis, against hand-counted
buffers of a tiny compiled function."""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import step_memory  # noqa: E402


def test_memory_of_counts_arguments_outputs_and_aliases():
  x = jnp.ones((256, 256), jnp.float32)  # 256 KiB
  mb = 256 * 256 * 4 / 2 ** 20
  plain = step_memory.memory_of(jax.jit(lambda a: a * 2.0).lower(x).compile())
  assert plain["argument"] == mb and plain["output"] == mb and plain["alias"] == 0
  assert plain["peak_estimate"] == plain["argument"] + plain["output"] + plain["temp"]
  # A donated argument that the output reuses is counted once.
  donated = step_memory.memory_of(
      jax.jit(lambda a: a * 2.0, donate_argnums=0).lower(x).compile())
  assert donated["alias"] == mb
  assert donated["peak_estimate"] == mb + donated["temp"]
