"""GroupNorm forms on the CPU, forward + backward, over the `:cpu` backbone's norms.

The CPU-sized model (half-width ResNet-18, GroupNorm) has 20 norms: the stem's, two per
BasicBlock and three in the downsampling shortcuts. For each of their shapes (batch 2,
256-px canvas) this times one vjp (gradients of the input and of scale / bias) of

  * `two_pass`: the statistics as `mean((x - mean)^2)` (pa_jax's GroupNorm before),
  * `pa_jax`: `models/norm.GroupNorm` (one pass: `E[x^2] - E[x]^2`),
  * `flax`: `flax.linen.GroupNorm` with the same groups and epsilon,

after checking that the three give the same outputs. Wall seconds, best of `--reps` after a
compile call; the totals weight each shape by how often the backbone uses it.

    python bench/norm_cpu.py [--reps 15] [--out FILE]
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

#: (stem-or-stage output shape, number of norms on it) in the `:cpu` backbone at batch 2.
CPU_BACKBONE_NORMS = (((2, 128, 128, 32), 1), ((2, 64, 64, 32), 4), ((2, 32, 32, 64), 5),
                      ((2, 16, 16, 128), 5), ((2, 8, 8, 256), 5))


def _forms():
  import jax
  import jax.numpy as jnp
  from flax import linen as nn

  from pa_jax.models.norm import BN_EPSILON, GroupNorm, group_norm_groups

  class TwoPassGroupNorm(nn.Module):
    @nn.compact
    def __call__(self, x):
      c = x.shape[-1]
      g = group_norm_groups(c, 32)
      scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
      bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
      grouped = x.reshape(x.shape[:-1] + (g, c // g))
      axes = tuple(range(1, grouped.ndim - 2)) + (grouped.ndim - 1,)
      mean = grouped.mean(axis=axes, keepdims=True)
      var = jnp.square(grouped - mean).mean(axis=axes, keepdims=True)
      y = ((grouped - mean) * jax.lax.rsqrt(var + BN_EPSILON)).reshape(x.shape)
      return y * scale + bias

  return {"two_pass": lambda c: TwoPassGroupNorm(),
          "pa_jax": lambda c: GroupNorm(),
          "flax": lambda c: nn.GroupNorm(num_groups=group_norm_groups(c, 32), epsilon=BN_EPSILON)}


def time_shape(shape: tuple[int, ...], reps: int) -> dict:
  """{form: best vjp wall seconds} for one input shape; the outputs are checked equal."""
  import jax

  x = jax.nn.relu(jax.random.normal(jax.random.PRNGKey(0), shape)) + 0.5
  cot = jax.random.normal(jax.random.PRNGKey(2), shape)
  res, outs = {}, {}
  for name, make in _forms().items():
    m = make(shape[-1])
    v = m.init(jax.random.PRNGKey(1), x)
    outs[name] = np.asarray(m.apply(v, x))
    f = jax.jit(lambda v, x, m=m: jax.vjp(m.apply, v, x)[1](cot))
    jax.block_until_ready(f(v, x))
    ts = []
    for _ in range(reps):
      t = time.perf_counter()
      jax.block_until_ready(f(v, x))
      ts.append(time.perf_counter() - t)
    res[name] = min(ts)
  for name in ("pa_jax", "flax"):
    np.testing.assert_allclose(outs[name], outs["two_pass"], rtol=1e-4, atol=1e-4)
  return res


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--reps", type=int, default=15)
  ap.add_argument("--shapes", default="", help="e.g. 1x8x8x32:2 (shape:count, comma list); "
                  "default: the :cpu backbone's")
  ap.add_argument("--out", default="")
  a = ap.parse_args(argv)

  from bench_config import write_result

  layout = CPU_BACKBONE_NORMS
  if a.shapes:
    layout = tuple((tuple(int(d) for d in s.split(":")[0].split("x")), int(s.split(":")[1]))
                   for s in a.shapes.split(","))
  per_shape, total = {}, {}
  for shape, count in layout:
    key = "x".join(map(str, shape))
    r = per_shape[key] = time_shape(shape, a.reps)
    for name, t in r.items():
      total[name] = total.get(name, 0.0) + count * t
    print(f"{key:16s} x{count}  " + "   ".join(f"{n} {t * 1e3:7.2f} ms" for n, t in r.items()))
  print("total             " + "   ".join(f"{n} {t * 1e3:7.2f} ms" for n, t in total.items()))
  if a.out:
    write_result(a.out, {
        "command": "python " + " ".join(["bench/norm_cpu.py"] + (argv or sys.argv[1:])),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "reps": a.reps, "load_avg_after": list(os.getloadavg()),
        "layout": [["x".join(map(str, s)), n] for s, n in layout],
        "vjp_seconds_per_shape": per_shape, "vjp_seconds_total": total})
  return 0


if __name__ == "__main__":
  sys.exit(main())
