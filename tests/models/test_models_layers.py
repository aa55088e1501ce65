"""PointwiseConv, TransposeConv2x2 and Conv3x3 (convs with matmul weight gradients) against
flax's nn.Conv / nn.ConvTranspose and numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from pa_jax.models import layers
from pa_jax.models.layers import (
    Conv3x3,
    PointwiseConv,
    TransposeConv2x2,
    pointwise_conv,
    transpose_conv_2x2,
)
from pa_jax.models.resnet import ResNet
from pa_jax.models.roi_heads import MaskHead

INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _pair(stride, use_bias, dtype=None):
  conv = nn.Conv(
      6,
      (1, 1),
      strides=(stride, stride),
      padding=((0, 0), (0, 0)),
      use_bias=use_bias,
      kernel_init=INIT,
      bias_init=nn.initializers.normal(1.0),
      dtype=dtype,
  )
  point = PointwiseConv(
      6,
      strides=stride,
      use_bias=use_bias,
      kernel_init=INIT,
      bias_init=nn.initializers.normal(1.0),
      dtype=dtype,
  )
  return conv, point


@pytest.mark.parametrize("stride,use_bias", [(1, True), (2, False), (2, True), (3, True)])
def test_same_parameters_and_outputs_as_nn_conv(stride, use_bias):
  # Odd sizes: a stride-s unpadded 1x1 conv keeps rows/cols 0, s, 2s, ... (ceil(H / s)).
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 9, 7, 5))
  conv, point = _pair(stride, use_bias)
  vc, vp = conv.init(jax.random.PRNGKey(1), x), point.init(jax.random.PRNGKey(1), x)
  assert jax.tree.structure(vc) == jax.tree.structure(vp)
  jax.tree.map(np.testing.assert_array_equal, vc, vp)  # same initialiser, same key
  yc, yp = conv.apply(vc, x), jax.jit(point.apply)(vc, x)
  assert yp.shape == yc.shape == (2, -(-9 // stride), -(-7 // stride), 6)
  np.testing.assert_allclose(yp, yc, rtol=1e-5, atol=1e-5)
  # Independent numpy reference: every output pixel is x[pixel] @ kernel + bias.
  k = np.asarray(vc["params"]["kernel"], np.float64)[0, 0]
  ref = np.asarray(x, np.float64)[:, ::stride, ::stride] @ k
  if use_bias:
    ref = ref + np.asarray(vc["params"]["bias"], np.float64)
  np.testing.assert_allclose(yp, ref, rtol=1e-5, atol=1e-5)


def assert_same_gradients(reference, layer, variables, x):
  """The gradients of sum(sin(layer(x))) w.r.t. the variables and the input equal the flax
  reference layer's (ours under jit, the reference eagerly)."""
  loss = lambda m: (lambda v, x: jnp.sum(jnp.sin(m.apply(v, x))))  # noqa: E731
  want = jax.grad(loss(reference), argnums=(0, 1))(variables, x)
  got = jax.jit(jax.grad(loss(layer), argnums=(0, 1)))(variables, x)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), want, got)


def test_gradients_match_nn_conv():
  # The point of the layer is its weight gradient (XLA:CPU's 1x1 conv wgrad is slow): it
  # must be the same gradient.
  x = jax.random.normal(jax.random.PRNGKey(2), (1, 12, 10, 8))
  conv, point = _pair(1, True)
  v = conv.init(jax.random.PRNGKey(3), x)
  assert_same_gradients(conv, point, v, x)


def assert_bfloat16_like_reference(reference, layer, x, seed):
  """bf16 compute with float32 parameters, and the same outputs as the flax reference to
  bf16 precision. Returns the variables."""
  v = layer.init(jax.random.PRNGKey(seed), x)
  assert v["params"]["kernel"].dtype == jnp.float32
  got, want = layer.apply(v, x), reference.apply(v, x)
  assert got.dtype == want.dtype == jnp.bfloat16
  np.testing.assert_allclose(
      np.asarray(got, np.float32), np.asarray(want, np.float32), rtol=2e-2, atol=2e-2
  )
  return v


def test_bfloat16_compute_float32_params():
  x = jax.random.normal(jax.random.PRNGKey(4), (2, 4, 4, 3))
  conv, point = _pair(1, True, dtype=jnp.bfloat16)
  assert_bfloat16_like_reference(conv, point, x, seed=5)


def test_empty_input_and_leading_batch_dims():
  point = PointwiseConv(4)
  v = point.init(jax.random.PRNGKey(0), jnp.zeros((1, 2, 2, 3)))
  assert point.apply(v, jnp.zeros((0, 5, 5, 3))).shape == (0, 5, 5, 4)
  assert point.apply(v, jnp.ones((2, 3, 5, 5, 3))).shape == (2, 3, 5, 5, 4)


def test_switch_builds_the_same_backbone(monkeypatch):
  # The switch changes the computation only: same variable tree and values, same features.
  x = jax.random.normal(jax.random.PRNGKey(6), (1, 32, 32, 3))
  model = ResNet(depth=50, base_channels=8, stage_sizes=(1, 1, 1, 1))
  out = {}
  for flag in (False, True):
    monkeypatch.setattr(layers, "POINTWISE_AS_MATMUL", flag)
    v = model.init(jax.random.PRNGKey(7), x)
    out[flag] = (v, model.apply(v, x))
  jax.tree.map(np.testing.assert_array_equal, out[False][0], out[True][0])
  for k in out[False][1]:
    np.testing.assert_allclose(out[True][1][k], out[False][1][k], rtol=1e-4, atol=1e-4)
  assert isinstance(pointwise_conv(3, name="p"), PointwiseConv)


# ---- TransposeConv2x2 (the mask head's 2x2 stride-2 transposed conv as a channel matmul)


def _deconv_pair(use_bias, dtype=None):
  kw = dict(use_bias=use_bias, kernel_init=INIT, bias_init=nn.initializers.normal(1.0),
            dtype=dtype)
  deconv = nn.ConvTranspose(6, (2, 2), strides=(2, 2), padding="VALID", **kw)
  return deconv, TransposeConv2x2(6, **kw)


@pytest.mark.parametrize("use_bias", [True, False])
def test_transpose_conv_same_parameters_and_outputs_as_nn_conv_transpose(use_bias):
  x = jax.random.normal(jax.random.PRNGKey(10), (3, 5, 7, 4))  # odd, non-square map
  deconv, mm = _deconv_pair(use_bias)
  vd, vm = deconv.init(jax.random.PRNGKey(11), x), mm.init(jax.random.PRNGKey(11), x)
  assert jax.tree.structure(vd) == jax.tree.structure(vm)
  jax.tree.map(np.testing.assert_array_equal, vd, vm)
  yd, ym = deconv.apply(vd, x), jax.jit(mm.apply)(vd, x)
  assert ym.shape == yd.shape == (3, 10, 14, 6)
  np.testing.assert_allclose(ym, yd, rtol=1e-5, atol=1e-5)
  # Independent numpy reference, torch's scatter view of a transposed conv: input pixel
  # (h, w) adds x[h, w] @ K'[i, j] to output (2h + i, 2w + j), K' the spatially flipped
  # flax kernel (weight_names.py: the torchvision import flips it the other way).
  k = np.asarray(vd["params"]["kernel"], np.float64)[::-1, ::-1]
  xn = np.asarray(x, np.float64)
  ref = np.zeros((3, 10, 14, 6))
  for i in range(2):
    for j in range(2):
      ref[:, i::2, j::2] = xn @ k[i, j]
  if use_bias:
    ref = ref + np.asarray(vd["params"]["bias"], np.float64)
  np.testing.assert_allclose(ym, ref, rtol=1e-5, atol=1e-5)


def test_transpose_conv_gradients_match():
  x = jax.random.normal(jax.random.PRNGKey(12), (4, 6, 6, 5))
  deconv, mm = _deconv_pair(True)
  v = deconv.init(jax.random.PRNGKey(13), x)
  assert_same_gradients(deconv, mm, v, x)


def test_transpose_conv_bfloat16_empty_and_leading_dims():
  x = jax.random.normal(jax.random.PRNGKey(14), (2, 3, 3, 4))
  deconv, mm = _deconv_pair(True, dtype=jnp.bfloat16)
  v = assert_bfloat16_like_reference(deconv, mm, x, seed=15)
  assert mm.apply(v, jnp.zeros((0, 14, 14, 4))).shape == (0, 28, 28, 6)
  assert mm.apply(v, jnp.ones((2, 3, 7, 7, 4))).shape == (2, 3, 14, 14, 6)


def test_transpose_conv_switch_builds_the_same_mask_head(monkeypatch):
  x = jax.random.normal(jax.random.PRNGKey(16), (5, 14, 14, 8))
  head = MaskHead(num_classes=2, conv_dim=8)
  out = {}
  for flag in (False, True):
    monkeypatch.setattr(layers, "TRANSPOSE_CONV_AS_MATMUL", flag)
    v = head.init(jax.random.PRNGKey(17), x)
    out[flag] = (v, jax.jit(head.apply)(v, x))
  jax.tree.map(np.testing.assert_array_equal, out[False][0], out[True][0])
  assert out[True][1].shape == (5, 28, 28, 1)
  np.testing.assert_allclose(out[True][1], out[False][1], rtol=1e-4, atol=1e-5)
  assert isinstance(transpose_conv_2x2(3, name="d"), TransposeConv2x2)


# ---- Conv3x3 (XLA's 3x3 conv with a weight gradient of nine matmuls)


def _conv3_pair(dtype=None):
  kw = dict(kernel_init=INIT, bias_init=nn.initializers.normal(1.0), dtype=dtype)
  return nn.Conv(6, (3, 3), padding=((1, 1), (1, 1)), **kw), Conv3x3(6, **kw)


@pytest.mark.parametrize("wgrad_as_matmul", [True, False])
def test_conv3x3_same_parameters_outputs_and_gradients(monkeypatch, wgrad_as_matmul):
  monkeypatch.setattr(layers, "CONV3X3_WGRAD_AS_MATMUL", wgrad_as_matmul)
  x = jax.random.normal(jax.random.PRNGKey(20), (3, 7, 5, 4))  # odd, non-square maps
  conv, c3 = _conv3_pair()
  vc, v3 = conv.init(jax.random.PRNGKey(21), x), c3.init(jax.random.PRNGKey(21), x)
  assert jax.tree.structure(vc) == jax.tree.structure(v3)
  jax.tree.map(np.testing.assert_array_equal, vc, v3)
  np.testing.assert_allclose(jax.jit(c3.apply)(vc, x), conv.apply(vc, x), rtol=1e-5, atol=1e-5)
  assert_same_gradients(conv, c3, vc, x)


def test_taps_wgrad_against_numpy_sums():
  # dk[i, j, c, o] = sum over images and pixels of xpad[n, h + i, w + j, c] * g[n, h, w, o].
  rng = np.random.default_rng(0)
  x, g = rng.normal(size=(2, 4, 3, 2)), rng.normal(size=(2, 4, 3, 5))
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  ref = np.zeros((3, 3, 2, 5))
  for i in range(3):
    for j in range(3):
      for h in range(4):
        for w in range(3):
          ref[i, j] += xp[:, h + i, w + j].T @ g[:, h, w]
  got = jax.jit(layers._taps_wgrad)(jnp.asarray(x, jnp.float32), jnp.asarray(g, jnp.float32))
  assert got.shape == (3, 3, 2, 5)
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_conv3x3_dgrad_against_numpy_sums():
  # y[n, h, w] = sum_ij xpad[n, h + i, w + j] @ k[i, j], so the input gradient is
  # dx[n, p, q] = sum_ij g[n, p + 1 - i, q + 1 - j] @ k[i, j].T (outside terms 0).
  rng = np.random.default_rng(1)
  g, k = rng.normal(size=(2, 4, 3, 5)), rng.normal(size=(3, 3, 2, 5))
  ref = np.zeros((2, 4, 3, 2))
  for p in range(4):
    for q in range(3):
      for i in range(3):
        for j in range(3):
          h, w = p + 1 - i, q + 1 - j
          if 0 <= h < 4 and 0 <= w < 3:
            ref[:, p, q] += g[:, h, w] @ k[i, j].T
  got = jax.jit(layers._conv3x3_dgrad)(jnp.asarray(g, jnp.float32), jnp.asarray(k, jnp.float32))
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_conv3x3_bfloat16_empty_leading_dims_and_switch(monkeypatch):
  x = jax.random.normal(jax.random.PRNGKey(22), (2, 5, 5, 4))
  conv, c3 = _conv3_pair(dtype=jnp.bfloat16)
  v = c3.init(jax.random.PRNGKey(23), x)
  y = c3.apply(v, x)
  assert y.dtype == jnp.bfloat16 and v["params"]["kernel"].dtype == jnp.float32
  g = jax.grad(lambda v: jnp.sum(c3.apply(v, x).astype(jnp.float32)))(v)
  assert g["params"]["kernel"].dtype == jnp.float32
  np.testing.assert_allclose(
      np.asarray(y, np.float32), np.asarray(conv.apply(v, x), np.float32), rtol=2e-2, atol=5e-2
  )
  assert c3.apply(v, jnp.zeros((0, 14, 14, 4))).shape == (0, 14, 14, 6)
  assert c3.apply(v, jnp.ones((2, 3, 7, 7, 4))).shape == (2, 3, 7, 7, 6)
  # "cpu" uses the custom gradient exactly when the backend is the CPU.
  monkeypatch.setattr(layers, "CONV3X3_WGRAD_AS_MATMUL", "cpu")
  jaxpr = str(jax.make_jaxpr(lambda v: c3.apply(v, x))(v))
  assert ("custom_vjp_call" in jaxpr) == (jax.default_backend() == "cpu")
  monkeypatch.setattr(layers, "CONV3X3_WGRAD_AS_MATMUL", False)
  assert "custom_vjp_call" not in str(jax.make_jaxpr(lambda v: c3.apply(v, x))(v))
