"""FPN: level shapes, top-down wiring and the nearest-neighbour resize rule."""

import jax
import jax.numpy as jnp
import numpy as np

from pa_jax.models.fpn import FPN, resize_nearest
from pa_jax.models.resnet import ResNet


def test_fpn_shapes_on_64x96(rand_vars):
  # Backbone feature shapes for a 64x96 image (shapes only), then random features.
  backbone = ResNet(depth=18, base_channels=8, stage_sizes=(1, 1, 1, 1))
  x = jax.ShapeDtypeStruct((2, 64, 96, 3), jnp.float32)
  shapes = jax.eval_shape(lambda x: backbone.apply(backbone.init(jax.random.PRNGKey(1), x), x), x)
  keys = jax.random.split(jax.random.PRNGKey(0), 4)
  feats = {k: jax.random.normal(kk, s.shape) for (k, s), kk in zip(shapes.items(), keys)}
  fpn = FPN(out_channels=32)
  fvars = rand_vars(fpn, feats)
  out = jax.jit(fpn.apply)(fvars, feats)
  assert list(out) == ["p2", "p3", "p4", "p5", "p6"]
  expected = {"p2": (16, 24), "p3": (8, 12), "p4": (4, 6), "p5": (2, 3), "p6": (1, 2)}
  for k, hw in expected.items():
    assert out[k].shape == (2, *hw, 32)
  # P6 is the stride-2 subsample of P5 (torchvision LastLevelMaxPool, kernel 1).
  np.testing.assert_array_equal(np.asarray(out["p6"]), np.asarray(out["p5"])[:, ::2, ::2])
  assert set(fvars["params"]) == {f"lateral{k}" for k in range(2, 6)} | {
      f"output{k}" for k in range(2, 6)
  }


def test_fpn_default_channels_and_top_down_wiring(rand_vars):
  shapes = {"c2": (1, 16, 24, 8), "c3": (1, 8, 12, 16), "c4": (1, 4, 6, 32), "c5": (1, 2, 3, 64)}
  keys = jax.random.split(jax.random.PRNGKey(3), 5)
  feats = {k: jax.random.normal(kk, s) for (k, s), kk in zip(shapes.items(), keys)}
  fpn = FPN()
  variables = rand_vars(fpn, feats)
  apply = jax.jit(fpn.apply)
  out = apply(variables, feats)
  assert all(v.shape[-1] == 256 for v in out.values())
  # Changing C5 changes every finer level (top-down path); changing C2 touches only P2.
  out5 = apply(variables, {**feats, "c5": feats["c5"] + 1.0})
  out2 = apply(variables, {**feats, "c2": feats["c2"] + 1.0})
  for k in ("p2", "p3", "p4", "p5"):
    assert not np.allclose(out5[k], out[k])
  assert not np.allclose(out2["p2"], out["p2"])
  for k in ("p3", "p4", "p5", "p6"):
    np.testing.assert_array_equal(np.asarray(out2[k]), np.asarray(out[k]))


def test_resize_nearest_follows_pytorch_rule():
  x = jnp.arange(2 * 3 * 5, dtype=jnp.float32).reshape(1, 2 * 3, 5, 1)[:, :3]
  y = np.asarray(resize_nearest(x, (5, 9)))  # odd sizes: not an exact 2x
  rows = np.floor(np.arange(5) * 3 / 5).astype(int)
  cols = np.floor(np.arange(9) * 5 / 9).astype(int)
  np.testing.assert_array_equal(y, np.asarray(x)[:, rows][:, :, cols])
  z = np.asarray(resize_nearest(x, (6, 10)))
  np.testing.assert_array_equal(z, np.asarray(x).repeat(2, 1).repeat(2, 2))
