"""ops/max_pool.py against flax's `nn.max_pool` and a hand-computed case."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from pa_jax.ops.max_pool import max_pool_3x3_s2


def _flax_pool(x):
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


def _grads(pool, x, g):
  return jax.jit(lambda x: jax.vjp(pool, x)[1](g)[0])(x)


def _relu_with_ties(shape, seed=0):
  # A ReLU's output rounded to halves: zeros and equal values fill many windows.
  x = jax.random.normal(jax.random.PRNGKey(seed), shape)
  return jnp.round(jax.nn.relu(x) * 2) / 2


@pytest.mark.parametrize("shape", [(2, 16, 16, 4), (1, 7, 9, 3), (1, 1, 1, 1), (3, 2, 5, 2)])
def test_values_and_gradient_match_flax(shape):
  x = _relu_with_ties(shape)
  np.testing.assert_array_equal(max_pool_3x3_s2(x), _flax_pool(x))
  # Integer cotangents: every sum is exact, so the routing must match bit for bit.
  g = jax.random.randint(jax.random.PRNGKey(1), _flax_pool(x).shape, -8, 9).astype(x.dtype)
  np.testing.assert_array_equal(_grads(max_pool_3x3_s2, x, g), _grads(_flax_pool, x, g))


def test_all_equal_windows_route_to_the_first_tap():
  # All zeros: each output's gradient goes to its window's first in-image pixel.
  x = jnp.zeros((1, 4, 4, 1))
  g = jnp.arange(1.0, 5.0).reshape(1, 2, 2, 1)
  got = np.asarray(_grads(max_pool_3x3_s2, x, g))[0, :, :, 0]
  # Output (i, j)'s window starts at padded (2i, 2j) = image (2i - 1, 2j - 1), clipped to 0.
  want = np.zeros((4, 4))
  want[0, 0], want[0, 1], want[1, 0], want[1, 1] = 1, 2, 3, 4
  np.testing.assert_array_equal(got, want)


def test_hand_computed_gradient():
  x = jnp.array([[1., 5., 2.],
                 [0., 3., 9.],
                 [4., 6., 7.]]).reshape(1, 3, 3, 1)
  # 2x2 outputs: windows centred on (0,0), (0,2), (2,0), (2,2) -> maxima 5, 9, 6, 9.
  np.testing.assert_array_equal(max_pool_3x3_s2(x)[0, :, :, 0], [[5., 9.], [6., 9.]])
  g = jnp.array([[1., 10.], [100., 1000.]]).reshape(1, 2, 2, 1)
  want = np.zeros((3, 3))
  want[0, 1] = 1.  # the 5
  want[1, 2] = 10. + 1000.  # the 9, maximum of two windows
  want[2, 1] = 100.  # the 6
  np.testing.assert_array_equal(_grads(max_pool_3x3_s2, x, g)[0, :, :, 0], want)


def test_bfloat16_and_float_gradient_close_to_flax():
  x = jax.random.normal(jax.random.PRNGKey(2), (2, 12, 10, 8))
  g = jax.random.normal(jax.random.PRNGKey(3), _flax_pool(x).shape)
  np.testing.assert_allclose(_grads(max_pool_3x3_s2, x, g), _grads(_flax_pool, x, g),
                             rtol=0, atol=1e-6)
  xb = x.astype(jnp.bfloat16)
  out = max_pool_3x3_s2(xb)
  assert out.dtype == jnp.bfloat16
  np.testing.assert_array_equal(out, _flax_pool(xb))
  assert _grads(max_pool_3x3_s2, xb, g.astype(jnp.bfloat16)).dtype == jnp.bfloat16


@pytest.mark.parametrize("taps_grad", [True, False])
def test_either_gradient_matches_flax_under_jit(monkeypatch, taps_grad):
  from pa_jax.ops import max_pool
  monkeypatch.setattr(max_pool, "TAPS_GRAD", taps_grad)
  jax.clear_caches()  # the switch is read at trace time; drop traces made under the other
  x = _relu_with_ties((2, 9, 8, 3), seed=4)
  g = jax.random.randint(jax.random.PRNGKey(5), _flax_pool(x).shape, -8, 9).astype(x.dtype)
  np.testing.assert_array_equal(jax.jit(max_pool_3x3_s2)(x), _flax_pool(x))
  np.testing.assert_array_equal(_grads(max_pool_3x3_s2, x, g), _grads(_flax_pool, x, g))
  # Which form was traced: only the taps' custom gradient shows up as a custom_vjp call.
  jaxpr = str(jax.make_jaxpr(max_pool_3x3_s2)(x))
  assert ("custom_vjp_call" in jaxpr) == taps_grad
