"""The backbone's share of a training step, against the device's bf16 matmul rate.

Issue 12 asks, for the H200, for "the backbone's share of the step reported against the
bf16 matmul rate (~790 TFLOP/s)". Three figures, all taken in the process that has just
timed the step (`train_throughput.py --backbone-share`), on its parameters and last batch:

  * the backbone alone: forward + backward of the sum of its outputs with respect to its
    parameters, in the model's compute dtype, jitted on its own. The frozen stages'
    backward is skipped as in the step (`stop_gradient` inside `ResNet`). Its seconds
    (median), its FLOPs, hence its TFLOP/s;
  * the step's FLOPs.

Both FLOP counts come from XLA's cost analysis of the *lowered* programs, so that they are
the same measure and do not depend on the backend's compiled-program analysis (on GPUs
that one has returned -1 or miscounted library calls; jax issues 16008, 20184, 22249).
It is an estimate: each `cond` counts as its largest branch and each loop body once. The
compiled program's own figure is kept beside it (`backbone_flops_compiled`) when the
backend gives one.
  * the device's dense bf16 matmul rate, measured here: an `n x n x n` product, ten timed
    after three warm-ups (n = 8192 on a GPU, as the device notes' 769-798 TFLOP/s were
    measured; small on a CPU).

The share is `backbone seconds / step seconds`. It is the backbone timed alone, not its
slice of the step's own timeline: XLA fuses across the boundary and overlaps work inside
the step, so the two need not add up. A profile of the step on the GPU would attribute
kernels instead; this needs no trace parsing and runs the same on a CPU (the dry run).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np


def _flops(compiled_or_lowered) -> float | None:
  """FLOPs of XLA's cost analysis (a dict, or a list of one dict in older JAX); None when
  the backend gives none or a non-positive count (some GPU versions return -1)."""
  try:
    cost = compiled_or_lowered.cost_analysis()
  except Exception:  # noqa: BLE001 - some backends have none; the figure is then absent
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  if not cost or "flops" not in cost:
    return None
  flops = float(cost["flops"])
  return flops if flops > 0 else None


def _median_seconds(fn, reps: int) -> tuple[float, list[float]]:
  import jax

  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return float(np.median(times)), times


def matmul_rate(n: int, reps: int = 10, warmup: int = 3) -> dict:
  """Dense bf16 `n x n @ n x n` on the default device: TFLOP/s of the mean timed product
  (random normal data; zeros run faster on a GPU, see the device notes)."""
  import jax
  import jax.numpy as jnp

  ka, kb = jax.random.split(jax.random.PRNGKey(0))
  a = jax.random.normal(ka, (n, n), jnp.bfloat16)
  b = jax.random.normal(kb, (n, n), jnp.bfloat16)
  mm = jax.jit(lambda x, y: x @ y)
  for _ in range(warmup):
    jax.block_until_ready(mm(a, b))
  t0 = time.perf_counter()
  for _ in range(reps):
    out = mm(a, b)
  jax.block_until_ready(out)
  mean = (time.perf_counter() - t0) / reps
  return {"n": n, "reps": reps, "seconds_mean": mean, "tflops": 2.0 * n ** 3 / mean / 1e12}


def backbone_fwd_bwd(model, variables: dict, image) -> tuple[Any, tuple]:
  """(jitted fn, args): gradient of `sum(backbone outputs)` w.r.t. the backbone's params.

  `variables`: the model's `{'params': ..., <other collections>}`; `image` float32
  [B, H, W, 3] as the step's `Batch.pixels()` gives it.
  """
  import jax
  import jax.numpy as jnp

  params = variables["params"]
  others = {k: v for k, v in variables.items() if k != "params"}

  def loss(bb_params, rest, x):
    full = {**others, "params": {**rest, "backbone": bb_params}}
    outs = model.apply(full, x, method=lambda m, y: m.backbone(y, train=False))
    return sum(jnp.sum(v.astype(jnp.float32)) for v in jax.tree.leaves(outs))

  rest = {k: v for k, v in params.items() if k != "backbone"}
  return jax.jit(jax.grad(loss)), (params["backbone"], rest, image)


def backbone_share(model, variables: dict, image, step_seconds: float, step_jitted=None,
                   step_args: tuple = (), reps: int = 10, matmul_n: int | None = None,
                   nominal_tflops: float = 790.0) -> dict:
  """The figures of the module docstring as a JSON-able dict.

  Args:
    model: the `MaskRCNN` the step trains; variables: its `{'params', ...}` (the state's).
    image: float32 [B, H, W, 3], the step's batch pixels (its shape and dtype matter).
    step_seconds: the step's median seconds, timed by the caller.
    step_jitted, step_args: the jitted step and one call's arguments, for its FLOPs (lowered
      only, not compiled again); None skips that figure.
    reps: timed backbone calls.
    matmul_n: side of the bf16 product (None: 8192 on a GPU/TPU, 512 on a CPU).
    nominal_tflops: the issue's reference bf16 rate (the H200's measured ~790).
  """
  import jax

  fn, args = backbone_fwd_bwd(model, variables, image)
  t0 = time.perf_counter()
  lowered = fn.lower(*args)
  compiled = lowered.compile()
  compile_s = time.perf_counter() - t0
  jax.block_until_ready(compiled(*args))  # first call outside the timing
  seconds, times = _median_seconds(lambda: compiled(*args), reps)
  flops = _flops(lowered)
  platform = jax.devices()[0].platform
  n = matmul_n or (8192 if platform in ("gpu", "cuda", "tpu") else 512)
  peak = matmul_rate(n)
  out = {
      "what": "backbone forward + backward alone (grad of the sum of its outputs w.r.t. its "
              "params), jitted on its own; share = its seconds / the step's median seconds",
      "platform": platform,
      "image_shape": list(image.shape),
      "backbone_compile_seconds": compile_s,
      "backbone_seconds_median": seconds,
      "backbone_seconds": times,
      "backbone_flops": flops,
      "backbone_flops_compiled": _flops(compiled),
      "step_seconds_median": step_seconds,
      "share_of_step": seconds / step_seconds if step_seconds else None,
      "matmul_bf16": peak,
      "nominal_bf16_tflops": nominal_tflops,
  }
  if flops:
    rate = flops / seconds / 1e12
    out.update(backbone_tflops=rate, backbone_fraction_of_measured_matmul=rate / peak["tflops"],
               backbone_fraction_of_nominal=rate / nominal_tflops)
  if step_jitted is not None:
    step_flops = _flops(step_jitted.lower(*step_args))
    out["step_flops_lowered_estimate"] = step_flops
    if step_flops and flops:
      out["backbone_share_of_step_flops"] = flops / step_flops
      out["step_tflops_estimate"] = step_flops / step_seconds / 1e12
  return out
