"""PointwiseConv (a 1x1 conv as a channel matmul) against flax's nn.Conv and numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from pa_jax.models import layers
from pa_jax.models.layers import PointwiseConv, pointwise_conv
from pa_jax.models.resnet import ResNet

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


def test_gradients_match_nn_conv():
  # The point of the layer is its weight gradient (XLA:CPU's 1x1 conv wgrad is slow): it
  # must be the same gradient.
  x = jax.random.normal(jax.random.PRNGKey(2), (1, 12, 10, 8))
  conv, point = _pair(1, True)
  v = conv.init(jax.random.PRNGKey(3), x)
  loss = lambda m: (lambda v: jnp.sum(jnp.sin(m.apply(v, x))))
  gc = jax.grad(loss(conv))(v)
  gp = jax.jit(jax.grad(loss(point)))(v)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), gc, gp)


def test_bfloat16_compute_float32_params():
  x = jax.random.normal(jax.random.PRNGKey(4), (2, 4, 4, 3))
  conv, point = _pair(1, True, dtype=jnp.bfloat16)
  v = point.init(jax.random.PRNGKey(5), x)
  assert v["params"]["kernel"].dtype == jnp.float32
  yp, yc = point.apply(v, x), conv.apply(v, x)
  assert yp.dtype == yc.dtype == jnp.bfloat16
  np.testing.assert_allclose(
      np.asarray(yp, np.float32), np.asarray(yc, np.float32), rtol=2e-2, atol=2e-2
  )


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
