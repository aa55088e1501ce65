"""Per-layer timings behind docs/performance.md "Where XLA:CPU loses": ResNet-50 forward and
backward at 360x360 and four representative convolutions by pass (forward, input gradient,
weight gradient), in JAX under XLA flag variants and in torch; `frameworks.py profile` runs
each variant in its own process."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))  # its sibling modules, as when run as a script

from frameworks_timing import _median  # noqa: E402


# ----------------------------------------------------------------------------- profile

#: XLA:CPU variants tried on the backbone fwd+bwd (each in its own process).
XLA_VARIANTS = {
    "default": "",
    "no_multi_thread_eigen": "--xla_cpu_multi_thread_eigen=false",
    "legacy_runtime": "--xla_cpu_use_thunk_runtime=false",
    "fast_math": "--xla_cpu_enable_fast_math=true",
    "onednn": "--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_custom_call=true",
    "xnnpack": "--xla_cpu_use_xnnpack=true",
    "xnn_graph_greedy": "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY",
}

#: Representative convs of a ResNet-50 at a 360x360 input: (name, H=W, Cin, Cout, k, stride).
CONV_CASES = [
    ("layer1_3x3_64", 90, 64, 64, 3, 1),
    ("layer1_1x1_64_256", 90, 64, 256, 1, 1),
    ("layer3_3x3_256", 23, 256, 256, 3, 1),
    ("stem_7x7_s2", 360, 3, 64, 7, 2),
]


def _bench(fn, reps: int) -> dict:
  """Wall and CPU seconds (all threads of the process) of `fn`, first call apart."""
  t0 = time.perf_counter()
  fn()
  first = time.perf_counter() - t0
  ts, cs = [], []
  for _ in range(reps):
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    ts.append(time.perf_counter() - t0)
    cs.append(time.process_time() - c0)
  return {"first": first, "median": _median(ts), "all": ts, "cpu_median": _median(cs)}


def profile_jax(size: int, reps: int, layouts: bool, conv_only: bool = False) -> dict:
  res = {"framework": "jax", "xla_flags": os.environ.get("XLA_FLAGS", "")}
  if not conv_only:
    res.update(_profile_jax_r50(size, reps, layouts))
  res["convs"] = _profile_jax_convs(reps, layouts)
  return res


def _profile_jax_r50(size: int, reps: int, layouts: bool) -> dict:
  import jax
  import jax.numpy as jnp

  from pa_jax.models.resnet import resnet

  res = {}
  net = resnet("resnet50", base_channels=64, norm="frozen_bn", freeze_at=0)
  x = jax.random.normal(jax.random.PRNGKey(0), (1, size, size, 3), jnp.float32)
  variables = jax.jit(lambda k, x: net.init(k, x, train=False))(jax.random.PRNGKey(1), x)
  params, rest = variables["params"], {k: v for k, v in variables.items() if k != "params"}

  def out_sum(p, x):
    feats = net.apply({**rest, "params": p}, x, train=False)
    leaves = feats.values() if isinstance(feats, dict) else jax.tree.leaves(feats)
    return sum(jnp.sum(f) for f in leaves)

  fwd = jax.jit(out_sum)
  g_params = jax.jit(jax.grad(out_sum, argnums=0))
  g_input = jax.jit(jax.grad(out_sum, argnums=1))
  g_both = jax.jit(jax.grad(out_sum, argnums=(0, 1)))
  blk = lambda f: (lambda: jax.block_until_ready(f(params, x)))  # noqa: E731
  res["r50_fwd"] = _bench(blk(fwd), reps)
  res["r50_fwd_bwd_both"] = _bench(blk(g_both), reps)
  if layouts:  # the full split only in the default variant
    res["r50_fwd_bwd_params"] = _bench(blk(g_params), reps)
    res["r50_fwd_bwd_input_only"] = _bench(blk(g_input), reps)
  return res


def _profile_jax_convs(reps: int, layouts: bool) -> dict:
  import jax
  import jax.numpy as jnp
  from jax import lax

  convs = {}
  for name, hw, cin, cout, k, st in CONV_CASES:
    pad = ((k // 2, k // 2),) * 2
    xi = jax.random.normal(jax.random.PRNGKey(2), (1, hw, hw, cin), jnp.float32)
    w = jax.random.normal(jax.random.PRNGKey(3), (k, k, cin, cout), jnp.float32) * 0.05

    def conv(x, w, dn=("NHWC", "HWIO", "NHWC")):
      return lax.conv_general_dilated(x, w, (st, st), pad, dimension_numbers=dn)

    y = jax.jit(conv)(xi, w)
    ct = jnp.ones_like(y)
    f = jax.jit(conv)
    dgrad = jax.jit(lambda x, w: jax.vjp(lambda a: conv(a, w), x)[1](ct)[0])
    wgrad = jax.jit(lambda x, w: jax.vjp(lambda b: conv(x, b), w)[1](ct)[0])
    c = {}
    for kind, fn_k in (("fwd", f), ("dgrad", dgrad), ("wgrad", wgrad)):
      b = _bench(lambda: jax.block_until_ready(fn_k(xi, w)), reps)
      c[kind], c[kind + "_cpu"] = b["median"], b["cpu_median"]
    c["gflop_fwd"] = 2.0 * y.size * cin * k * k / 1e9
    if layouts:
      xn = jnp.transpose(xi, (0, 3, 1, 2))
      wn = jnp.transpose(w, (3, 2, 0, 1))
      dn = ("NCHW", "OIHW", "NCHW")
      ctn = jnp.transpose(ct, (0, 3, 1, 2))
      fn_ = jax.jit(lambda x, w: conv(x, w, dn))
      wg_n = jax.jit(lambda x, w: jax.vjp(lambda b: conv(x, b, dn), w)[1](ctn)[0])
      dg_n = jax.jit(lambda x, w: jax.vjp(lambda a: conv(a, w, dn), x)[1](ctn)[0])
      c["nchw_fwd"] = _bench(lambda: jax.block_until_ready(fn_(xn, wn)), reps)["median"]
      c["nchw_dgrad"] = _bench(lambda: jax.block_until_ready(dg_n(xn, wn)), reps)["median"]
      c["nchw_wgrad"] = _bench(lambda: jax.block_until_ready(wg_n(xn, wn)), reps)["median"]
    convs[name] = c
  return convs


def profile_torch(size: int, reps: int, conv_only: bool = False) -> dict:
  import torch
  from torchvision.models import resnet50
  from torchvision.models._utils import IntermediateLayerGetter
  from torchvision.ops import FrozenBatchNorm2d

  res = {"framework": "torch", "threads": torch.get_num_threads()}
  if conv_only:
    res["convs"] = _profile_torch_convs(reps)
    return res
  body = IntermediateLayerGetter(resnet50(weights=None, norm_layer=FrozenBatchNorm2d),
                                 {"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"})
  x = torch.randn(1, 3, size, size)

  def fwd():
    with torch.no_grad():
      sum(v.sum() for v in body(x).values())

  def fwd_bwd(input_grad: bool, param_grad: bool):
    for p in body.parameters():
      p.requires_grad_(param_grad)
    xi = x.clone().requires_grad_(input_grad)

    def run():
      body.zero_grad(set_to_none=True)
      sum(v.sum() for v in body(xi).values()).backward()
    return run

  res["r50_fwd"] = _bench(fwd, reps)
  res["r50_fwd_bwd_params"] = _bench(fwd_bwd(False, True), reps)
  res["r50_fwd_bwd_input_only"] = _bench(fwd_bwd(True, False), reps)
  res["r50_fwd_bwd_both"] = _bench(fwd_bwd(True, True), reps)
  res["convs"] = _profile_torch_convs(reps)
  return res


def _profile_torch_convs(reps: int) -> dict:
  import torch
  import torch.nn.functional as F

  convs = {}
  for name, hw, cin, cout, k, st in CONV_CASES:
    xi = torch.randn(1, cin, hw, hw)
    w = torch.randn(cout, cin, k, k) * 0.05
    y = F.conv2d(xi, w, stride=st, padding=k // 2)
    ct = torch.ones_like(y)

    def f():
      with torch.no_grad():
        F.conv2d(xi, w, stride=st, padding=k // 2)

    def dgrad():
      a = xi.clone().requires_grad_(True)
      torch.autograd.grad(F.conv2d(a, w, stride=st, padding=k // 2), a, ct)

    def wgrad():
      b = w.clone().requires_grad_(True)
      torch.autograd.grad(F.conv2d(xi, b, stride=st, padding=k // 2), b, ct)

    c = {"gflop_fwd": 2.0 * y.numel() * cin * k * k / 1e9}
    for kind, fn_k in (("fwd", f), ("dgrad", dgrad), ("wgrad", wgrad)):
      b = _bench(fn_k, reps)
      c[kind], c[kind + "_cpu"] = b["median"], b["cpu_median"]
    convs[name] = c
  return convs
