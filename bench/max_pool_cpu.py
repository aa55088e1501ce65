"""The ResNet stem's 3x3 / stride-2 max-pool: flax's `nn.max_pool` against `ops/max_pool.py`.

For each stem-output shape (`--shapes`, NHWC; the defaults are the `:cpu` train step's
[2, 128, 128, 32] and the paper-size one's [2, 192, 192, 64]) this checks that the two give
the same values and gradients, then times the forward pass and forward + backward (a vjp),
wall seconds, median of `--reps` after a compile call. The input is a ReLU's output, as in
the stem.

    python bench/max_pool_cpu.py [--shapes 2x128x128x32,2x192x192x64] [--reps 20] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from mask_conv_cpu import seconds  # noqa: E402


def time_shape(shape: tuple[int, ...], reps: int) -> dict:
  """{"flax" | "pa_jax": {"fwd", "fwd_bwd"}} wall seconds for one input shape."""
  import jax
  from flax import linen as nn

  from pa_jax.ops.max_pool import max_pool_3x3_s2

  flax_pool = lambda x: nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))  # noqa: E731
  x = jax.nn.relu(jax.random.normal(jax.random.PRNGKey(0), shape))
  g = jax.random.normal(jax.random.PRNGKey(1), flax_pool(x).shape)
  res, grads = {}, {}
  for name, pool in (("flax", flax_pool), ("pa_jax", max_pool_3x3_s2)):
    fwd = jax.jit(pool)
    fwd_bwd = jax.jit(lambda x, pool=pool: jax.vjp(pool, x)[1](g)[0])
    grads[name] = (np.asarray(fwd(x)), np.asarray(fwd_bwd(x)))
    res[name] = {"fwd": seconds(fwd, x, reps=reps), "fwd_bwd": seconds(fwd_bwd, x, reps=reps)}
  np.testing.assert_array_equal(grads["pa_jax"][0], grads["flax"][0])
  np.testing.assert_allclose(grads["pa_jax"][1], grads["flax"][1], rtol=0, atol=1e-5)
  return res


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--shapes", default="2x128x128x32,2x192x192x64")
  ap.add_argument("--reps", type=int, default=20)
  ap.add_argument("--out", default="")
  a = ap.parse_args(argv)

  from bench_config import write_result

  results = {}
  for text in a.shapes.split(","):
    shape = tuple(int(d) for d in text.split("x"))
    r = results[text] = time_shape(shape, a.reps)
    for p in ("fwd", "fwd_bwd"):
      print(f"{text:16s} {p:8s} flax {r['flax'][p] * 1e3:8.2f} ms   "
            f"pa_jax {r['pa_jax'][p] * 1e3:8.2f} ms")
  if a.out:
    write_result(a.out, {
        "command": "python " + " ".join(["bench/max_pool_cpu.py"] + (argv or sys.argv[1:])),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "reps": a.reps, "load_avg_after": list(os.getloadavg()), "results": results})
  return 0


if __name__ == "__main__":
  sys.exit(main())
