"""The mask head's convolutions on the CPU, pass by pass: XLA's forms against `models/layers`.

The paper-size train step spent most of its time in the mask branch (docs/performance.md,
"The mask head on the CPU"). For one of its four 3x3 convolutions (C -> C channels at
14x14) and its 2x2 stride-2 transposed convolution (14x14 -> 28x28), over the static mask
slots of a batch (`--rois`, default 2 images x 128 slots), this times the forward pass,
the input gradient (dgrad) and the weight gradient (wgrad) of

  * XLA's forms (`lax.conv_general_dilated`, flax's `nn.ConvTranspose`), and
  * pa_jax's (`layers.Conv3x3`'s nine-matmul wgrad, `layers.TransposeConv2x2`),

after checking that each pair computes the same numbers. Wall seconds, median of `--reps`
after a compile call. One line per pass.

    python bench/mask_conv_cpu.py [--rois 256] [--channels 256] [--reps 3] [--out FILE]
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

SIDE = 14


def seconds(f, *args, reps: int) -> float:
  import jax

  jax.block_until_ready(f(*args))  # compile
  ts = []
  for _ in range(reps):
    t = time.perf_counter()
    jax.block_until_ready(f(*args))
    ts.append(time.perf_counter() - t)
  return float(np.median(ts))


def passes(layer, x, cotangent, reps: int) -> dict:
  """{"fwd", "dgrad", "wgrad"} wall seconds of a flax `layer` (params from `init`)."""
  import jax

  v = layer.init(jax.random.PRNGKey(0), x)
  fwd = jax.jit(layer.apply)
  dgrad = jax.jit(lambda v, x: jax.vjp(lambda a: layer.apply(v, a), x)[1](cotangent)[0])
  wgrad = jax.jit(lambda v, x: jax.vjp(lambda p: layer.apply(p, x), v)[1](cotangent)[0])
  return {"fwd": seconds(fwd, v, x, reps=reps), "dgrad": seconds(dgrad, v, x, reps=reps),
          "wgrad": seconds(wgrad, v, x, reps=reps)}, v


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--rois", type=int, default=256)
  ap.add_argument("--channels", type=int, default=256)
  ap.add_argument("--reps", type=int, default=3)
  ap.add_argument("--out", default="")
  a = ap.parse_args(argv)

  import jax.numpy as jnp

  from bench_config import write_result
  from pa_jax.models import layers

  rng = np.random.default_rng(0)
  c = a.channels
  x = jnp.asarray(rng.normal(size=(a.rois, SIDE, SIDE, c)).astype(np.float32))
  g14 = jnp.asarray(rng.normal(size=(a.rois, SIDE, SIDE, c)).astype(np.float32))
  g28 = jnp.asarray(rng.normal(size=(a.rois, 2 * SIDE, 2 * SIDE, c)).astype(np.float32))
  before = layers.CONV3X3_WGRAD_AS_MATMUL
  layers.CONV3X3_WGRAD_AS_MATMUL = True  # "pa_jax" rows: the nine-matmul wgrad, any backend
  try:
    res = time_cases(a, x, g14, g28)
  finally:
    layers.CONV3X3_WGRAD_AS_MATMUL = before
  if a.out:
    write_result(a.out, {
        "command": "python " + " ".join(["bench/mask_conv_cpu.py"] + (argv or sys.argv[1:])),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "rois": a.rois, "channels": a.channels, "side": SIDE, "reps": a.reps,
        "load_avg_after": list(os.getloadavg()), "results": res})
  return 0


def time_cases(a, x, g14, g28) -> dict:
  """{"conv3x3" | "transpose2x2": {"xla": passes, "pa_jax": passes, "forward_gflop"}}."""
  import jax
  import numpy as np
  from flax import linen as nn

  from pa_jax.models import layers

  c = a.channels
  cases = {
      "conv3x3": (nn.Conv(c, (3, 3), padding=((1, 1), (1, 1))), layers.Conv3x3(c), g14),
      "transpose2x2": (
          nn.ConvTranspose(c, (2, 2), strides=(2, 2), padding="VALID"),
          layers.TransposeConv2x2(c),
          g28,
      ),
  }
  gflop = a.rois * SIDE * SIDE * c * c * 2 / 1e9  # per tap: x9 for 3x3, x4 for 2x2
  res = {}
  for name, (xla_layer, ours, g) in cases.items():
    t_xla, v = passes(xla_layer, x, g, a.reps)
    t_ours, _ = passes(ours, x, g, a.reps)
    np.testing.assert_allclose(np.asarray(ours.apply(v, x)), np.asarray(xla_layer.apply(v, x)),
                               rtol=1e-3, atol=1e-3)
    taps = 9 if name == "conv3x3" else 4
    res[name] = {"xla": t_xla, "pa_jax": t_ours, "forward_gflop": taps * gflop}
    for p in ("fwd", "dgrad", "wgrad"):
      print(f"{name:12s} {p:5s}  XLA {t_xla[p]:7.3f} s   pa_jax {t_ours[p]:7.3f} s   "
            f"[{a.rois} RoIs x {c} ch, {taps * gflop:.1f} GFLOP per pass, "
            f"{jax.devices()[0].platform}]")
  return res


if __name__ == "__main__":
  sys.exit(main())
