"""ResNet / ResNeXt backbone: shapes, strides, grouping, normalisation and freezing."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pa_jax.models.norm import FROZEN_COLLECTION, FrozenBatchNorm, GroupNorm, make_norm
from pa_jax.models.resnet import ResNet, is_frozen_module, resnet, trainable_mask


def _init_apply(make_variables, model, x):
  variables = make_variables(model, x)
  return variables, jax.jit(model.apply)(variables, x)


def test_resnet18_full_size_shapes_and_strides():
  # Full-width ResNet-18 shapes without allocating anything.
  x = jax.ShapeDtypeStruct((2, 64, 96, 3), jnp.float32)
  model = resnet("resnet18")
  variables = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x), x)
  out = jax.eval_shape(lambda v, x: model.apply(v, x), variables, x)
  assert list(out) == ["c2", "c3", "c4", "c5"]
  for level, ch in zip((2, 3, 4, 5), (64, 128, 256, 512)):
    s = 2**level
    assert out[f"c{level}"].shape == (2, 64 // s, 96 // s, ch)


def test_resnet18_tiny_runs_under_jit(rand_vars):
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 64, 96, 3))
  _, out = _init_apply(rand_vars, ResNet(depth=18, base_channels=8), x)
  assert {k: v.shape for k, v in out.items()} == {
      "c2": (2, 16, 24, 8),
      "c3": (2, 8, 12, 16),
      "c4": (2, 4, 6, 32),
      "c5": (2, 2, 3, 64),
  }
  assert all(np.isfinite(np.asarray(v)).all() for v in out.values())


def test_tiny_resnet50_style_shapes_and_odd_sizes(rand_vars):
  model = ResNet(depth=50, base_channels=8, stage_sizes=(1, 2, 1, 1))
  x = jax.random.normal(jax.random.PRNGKey(2), (1, 65, 97, 3))
  variables, out = _init_apply(rand_vars, model, x)
  # PyTorch's symmetric paddings give ceil(size / stride) at every level.
  for level, ch in zip((2, 3, 4, 5), (32, 64, 128, 256)):
    s = 2**level
    assert out[f"c{level}"].shape == (1, math.ceil(65 / s), math.ceil(97 / s), ch)
  p = variables["params"]
  assert set(p) == {"conv1", "layer1_0", "layer2_0", "layer2_1", "layer3_0", "layer4_0"}
  # torchvision-like names: stride in conv2 (3x3) of the bottleneck, projection shortcut.
  assert p["layer2_0"]["conv2"]["kernel"].shape == (3, 3, 16, 16)
  assert p["layer2_0"]["downsample_0"]["kernel"].shape == (1, 1, 32, 64)
  assert "downsample_0" not in p["layer2_1"]


def test_resnext_uses_grouped_convs(rand_vars):
  tiny = ResNet(depth=101, groups=4, width_per_group=4, base_channels=16, stage_sizes=(1, 1, 1, 1))
  x = jax.random.normal(jax.random.PRNGKey(3), (1, 32, 32, 3))
  variables, out = _init_apply(rand_vars, tiny, x)
  # width = int(16 * 4 / 64) * 4 = 4 channels in 4 groups -> kernel [3, 3, 4 / 4, 4].
  assert variables["params"]["layer1_0"]["conv2"]["kernel"].shape == (3, 3, 1, 4)
  assert variables["params"]["layer4_0"]["conv2"]["kernel"].shape == (3, 3, 8, 32)
  assert out["c5"].shape == (1, 1, 1, 128 * 4)
  # Full-size ResNeXt-101 64x4d: 64 groups of 4 (stage 1) up to 64 groups of 32 (stage 4).
  full = resnet("resnext101_64x4d")
  shapes = jax.eval_shape(
      lambda x: full.init(jax.random.PRNGKey(0), x),
      jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32),
  )
  p = shapes["params"]
  assert p["layer1_0"]["conv2"]["kernel"].shape == (3, 3, 4, 256)
  assert p["layer4_0"]["conv2"]["kernel"].shape == (3, 3, 32, 2048)
  assert len([k for k in p if k.startswith("layer3_")]) == 23


def test_frozen_bn_has_no_trainable_params_and_matches_formula():
  model = ResNet(depth=18, base_channels=8, norm="frozen_bn")
  x = jax.random.normal(jax.random.PRNGKey(4), (1, 32, 32, 3))
  variables = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x), x)
  assert set(variables) == {"params", FROZEN_COLLECTION}
  flat = jax.tree_util.tree_leaves_with_path(variables["params"])
  assert all(path[-1].key == "kernel" for path, _ in flat)  # convs only
  assert set(variables[FROZEN_COLLECTION]["bn1"]) == {"scale", "bias", "mean", "var"}
  assert set(variables[FROZEN_COLLECTION]["layer1_0"]) == {"bn1", "bn2"}

  rng = np.random.default_rng(0)
  c = 5
  stats = {k: rng.uniform(0.5, 2.0, c).astype(np.float32) for k in ("scale", "bias", "mean", "var")}
  xin = rng.normal(size=(2, 3, 4, c)).astype(np.float32)
  y = jax.jit(FrozenBatchNorm().apply)({FROZEN_COLLECTION: stats}, xin)
  ref = (xin - stats["mean"]) / np.sqrt(stats["var"] + 1e-5) * stats["scale"] + stats["bias"]
  np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-5, atol=1e-5)


def test_group_norm_matches_numpy():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, 3, 5, 64)).astype(np.float32)
  variables = {"params": {"scale": jnp.ones(64), "bias": jnp.zeros(64)}}
  y = np.asarray(jax.jit(GroupNorm().apply)(variables, x))
  g = x.reshape(2, 3, 5, 32, 2)
  ref = (g - g.mean(axis=(1, 2, 4), keepdims=True)) / np.sqrt(
      g.var(axis=(1, 2, 4), keepdims=True) + 1e-5
  )
  np.testing.assert_allclose(y, ref.reshape(x.shape), rtol=1e-4, atol=1e-4)


def _two_pass_group_norm(x, scale, bias, groups, eps=1e-5):
  """The textbook form, differentiated by JAX: the reference for values and gradients."""
  g = x.reshape(x.shape[0], -1, groups, x.shape[-1] // groups)
  mean = g.mean(axis=(1, 3), keepdims=True)
  var = jnp.square(g - mean).mean(axis=(1, 3), keepdims=True)
  return ((g - mean) / jnp.sqrt(var + eps)).reshape(x.shape) * scale + bias


@pytest.mark.parametrize("shape,groups", [((2, 3, 5, 64), 32), ((2, 7, 7, 48), 24),
                                          ((3, 16, 16, 32), 32), ((1, 2, 3, 4, 96), 32)])
def test_group_norm_values_and_gradients_match_the_two_pass_form(shape, groups):
  rng = np.random.default_rng(2)
  # An offset mean (3) and unequal channel scales: the one-pass variance must still hold.
  x = jnp.asarray(rng.normal(3.0, 1.5, size=shape).astype(np.float32))
  c = shape[-1]
  params = {"scale": jnp.asarray(rng.normal(1, 0.3, c), jnp.float32),
            "bias": jnp.asarray(rng.normal(0, 0.3, c), jnp.float32)}
  cot = jnp.asarray(rng.normal(size=shape).astype(np.float32))
  gn = GroupNorm()
  y, vjp = jax.vjp(jax.jit(lambda p, x: gn.apply({"params": p}, x)), params, x)
  y_ref, vjp_ref = jax.vjp(lambda p, x: _two_pass_group_norm(x, p["scale"], p["bias"], groups),
                           params, x)
  np.testing.assert_allclose(y, y_ref, rtol=1e-4, atol=1e-4)
  (dp, dx), (dp_ref, dx_ref) = vjp(cot), vjp_ref(cot)
  np.testing.assert_allclose(dx, dx_ref, rtol=1e-3, atol=1e-3)
  for k in ("scale", "bias"):
    np.testing.assert_allclose(dp[k], dp_ref[k], rtol=1e-3, atol=1e-3)


def test_group_norm_constant_group_and_bfloat16():
  # A constant group has variance 0 (one-pass: E[x^2] - E[x]^2 may round below 0, clipped):
  # the output is the bias, finite.
  x = jnp.full((1, 4, 4, 64), 7.0)
  variables = {"params": {"scale": jnp.ones(64), "bias": jnp.arange(64.0)}}
  y = GroupNorm().apply(variables, x)
  np.testing.assert_allclose(y[0, 0, 0], np.arange(64.0), atol=1e-2)
  yb = GroupNorm(dtype=jnp.bfloat16).apply(variables, x.astype(jnp.bfloat16))
  assert yb.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(yb)))


def test_make_norm_rejects_unknown_kind():
  with pytest.raises(ValueError, match="unknown norm kind"):
    make_norm("layer_norm", train=True)


def _grad_norms(make_variables, model, x, **apply_kw):
  variables = make_variables(model, x)
  params = variables["params"]
  rest = {k: v for k, v in variables.items() if k != "params"}

  def loss(p):
    out = model.apply({"params": p, **rest}, x, **apply_kw)
    if isinstance(out, tuple):
      out = out[0]
    return sum(jnp.sum(v**2) for v in out.values())

  grads = jax.jit(jax.grad(loss))(params)
  return {
      name: float(sum(jnp.sum(jnp.abs(g)) for g in jax.tree_util.tree_leaves(sub)))
      for name, sub in grads.items()
  }


def test_freeze_at_stops_gradients(rand_vars):
  x = jax.random.normal(jax.random.PRNGKey(5), (1, 32, 32, 3))
  model = ResNet(
      depth=18, base_channels=8, stage_sizes=(1, 1, 1, 1), norm="group_norm", freeze_at=2
  )
  norms = _grad_norms(rand_vars, model, x)
  assert norms["conv1"] == 0.0 and norms["bn1"] == 0.0 and norms["layer1_0"] == 0.0
  assert norms["layer2_0"] > 0 and norms["layer3_0"] > 0 and norms["layer4_0"] > 0
  # Nothing frozen: every stage gets gradient.
  norms0 = _grad_norms(rand_vars, model.clone(freeze_at=0), x)
  assert all(v > 0 for v in norms0.values())


def test_trainable_bn_updates_stats_except_in_frozen_stages(rand_vars):
  x = jax.random.normal(jax.random.PRNGKey(6), (2, 32, 32, 3)) * 3 + 1
  model = ResNet(depth=18, base_channels=4, stage_sizes=(1, 1, 1, 1), norm="bn", freeze_at=2)
  variables = rand_vars(model, x)
  assert "scale" in variables["params"]["bn1"]
  _, new_state = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(
      variables, x
  )
  old, new = variables["batch_stats"], new_state["batch_stats"]
  same = lambda a, b: all(np.array_equal(u, w) for u, w in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))  # noqa: E731
  assert same(old["bn1"], new["bn1"]) and same(old["layer1_0"], new["layer1_0"])
  assert not same(old["layer2_0"], new["layer2_0"])


def test_trainable_mask_marks_frozen_stages():
  model = ResNet(depth=18, base_channels=8, stage_sizes=(1, 1, 1, 1), norm="group_norm")
  params = jax.eval_shape(
      lambda x: model.init(jax.random.PRNGKey(0), x), jnp.zeros((1, 32, 32, 3))
  )["params"]
  mask = trainable_mask(params, freeze_at=2)
  assert jax.tree_util.tree_structure(mask) == jax.tree_util.tree_structure(params)
  assert not any(jax.tree_util.tree_leaves(mask["conv1"])) and not any(
      jax.tree_util.tree_leaves(mask["layer1_0"])
  )
  assert all(jax.tree_util.tree_leaves(mask["layer2_0"]))
  assert (
      is_frozen_module("bn1", 1)
      and not is_frozen_module("layer1_0", 1)
      and not is_frozen_module("conv1", 0)
  )


def test_real_initialisers_under_jit():
  # The one test that compiles the PRNG-based init (slow to compile on CPU); a
  # counter-based 'rbg' key keeps it to a few seconds.
  model = ResNet(depth=50, base_channels=4, stage_sizes=(1, 1, 1, 1), norm="bn")
  x = jnp.ones((1, 32, 32, 3))
  out, variables = jax.jit(model.init_with_output)(jax.random.key(0, impl="rbg"), x)
  assert out["c5"].shape == (1, 1, 1, 128)
  k = np.asarray(variables["params"]["layer1_0"]["conv2"]["kernel"])
  # kaiming_normal(fan_out): std ~ sqrt(2 / (3 * 3 * 4)).
  assert 0.5 < k.std() / np.sqrt(2 / 36) < 1.5
  np.testing.assert_array_equal(np.asarray(variables["batch_stats"]["bn1"]["var"]), 1.0)


def test_bfloat16_compute_keeps_float32_params():
  model = ResNet(depth=50, base_channels=8, stage_sizes=(1, 1, 1, 1), dtype=jnp.bfloat16)
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x), x)
  out = jax.eval_shape(model.apply, variables, x)
  assert all(v.dtype == jnp.bfloat16 for v in out.values())
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(variables))


def test_basic_block_rejects_grouping():
  with pytest.raises(ValueError, match="BasicBlock"):
    jax.eval_shape(
        lambda x: ResNet(depth=18, groups=2).init(jax.random.PRNGKey(0), x),
        jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32),
    )
