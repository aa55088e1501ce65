"""pa_jax.losses against numpy references and hand cases; masking; jit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pa_jax import losses


def _np_bce(x, z):
  p = 1.0 / (1.0 + np.exp(-x))
  return -(z * np.log(p) + (1 - z) * np.log(1 - p))


def test_bce_matches_numpy_and_normalises_by_weight_sum():
  rng = np.random.default_rng(0)
  x = rng.normal(0, 3, (6, 5)).astype(np.float32)
  z = rng.integers(0, 2, (6, 5)).astype(np.float32)
  w = rng.integers(0, 2, (6, 5)).astype(np.float32)
  want = (_np_bce(x.astype(np.float64), z) * w).sum() / max(w.sum(), 1)
  got = jax.jit(losses.sigmoid_binary_cross_entropy)(x, z, w)
  assert float(got) == pytest.approx(want, rel=1e-5)
  got = losses.sigmoid_binary_cross_entropy(x, z, w, normalizer=7.0)
  assert float(got) == pytest.approx((_np_bce(x.astype(np.float64), z) * w).sum() / 7.0, rel=1e-5)


def test_softmax_ce_matches_numpy():
  rng = np.random.default_rng(1)
  x = rng.normal(0, 2, (8, 3))
  y = rng.integers(0, 3, 8)
  w = np.array([1, 1, 0, 1, 0, 1, 1, 1], np.float32)
  logp = x - np.log(np.exp(x).sum(-1, keepdims=True))
  want = -(logp[np.arange(8), y] * w).sum() / w.sum()
  got = jax.jit(losses.softmax_cross_entropy)(jnp.asarray(x, jnp.float32), y, w)
  assert float(got) == pytest.approx(want, rel=1e-5)


def test_smooth_l1_hand_cases():
  pred = jnp.array([[0.0, 0.0, 0.0, 0.0], [1.0, -2.0, 0.05, 0.0]])
  target = jnp.zeros((2, 4))
  w = jnp.array([0.0, 1.0])
  # beta 0.1: |1| -> 0.95, |-2| -> 1.95, |0.05| -> 0.5 * 0.0025 / 0.1 = 0.0125, 0 -> 0.
  assert float(losses.smooth_l1(pred, target, w, 0.1)) == pytest.approx(0.95 + 1.95 + 0.0125)
  # beta 0: plain L1, normalised by the given normalizer.
  assert float(losses.smooth_l1(pred, target, w, 0.0, normalizer=2.0)) == pytest.approx(3.05 / 2)


def test_no_weight_gives_zero_not_nan():
  x = jnp.zeros((0,))
  assert float(losses.sigmoid_binary_cross_entropy(x, x, x)) == 0.0
  z = jnp.ones((3, 4))
  assert float(losses.smooth_l1(z, z * 0, jnp.zeros(3), 0.1)) == 0.0


def test_masked_out_non_finite_values_reach_neither_loss_nor_gradient():
  pred = jnp.array([[0.5, -0.25, 0.1, 2.0], [0.0, 0.0, 0.0, 0.0]])
  target = jnp.array([[0.0, 0.0, 0.0, 0.0], [jnp.inf, jnp.nan, 0.0, 0.0]])  # slot 2 is padding
  w = jnp.array([1.0, 0.0])
  val, grad = jax.value_and_grad(lambda p: losses.smooth_l1(p, target, w, 0.0))(pred)
  assert float(val) == pytest.approx(2.85)
  assert np.all(np.isfinite(np.asarray(grad)))
  np.testing.assert_allclose(np.asarray(grad), [[1.0, -1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
  logits = jnp.array([0.0, jnp.inf])
  val, grad = jax.value_and_grad(
      lambda lg: losses.sigmoid_binary_cross_entropy(lg, jnp.array([1.0, 0.0]), jnp.array([1.0, 0.0])))(logits)
  assert float(val) == pytest.approx(np.log(2.0))
  assert np.all(np.isfinite(np.asarray(grad)))


def test_masked_non_finite_inputs_of_every_loss_give_finite_gradients():
  """The non-finite slot must be cleaned before the nonlinearity, not only in the sum:
  with a quadratic zone (beta > 0) or a NaN target the old `where`-on-the-sum gave NaN
  gradients in the masked row."""
  pred = jnp.array([[0.5, -0.25, 0.1, 2.0], [0.0, 0.0, 0.0, 0.0]])
  target = jnp.array([[0.0, 0.0, 0.0, 0.0], [jnp.inf, jnp.nan, 0.0, 0.0]])
  w = jnp.array([1.0, 0.0])
  val, g = jax.value_and_grad(lambda p: losses.smooth_l1(p, target, w, 0.1))(pred)
  assert np.isfinite(float(val)) and np.all(np.isfinite(np.asarray(g)))
  np.testing.assert_allclose(np.asarray(g)[1], 0.0)
  lg = jnp.array([0.3, 0.0])
  val, g = jax.value_and_grad(lambda x: losses.sigmoid_binary_cross_entropy(
      x, jnp.array([1.0, jnp.nan]), w))(lg)
  assert float(val) == pytest.approx(float(np.log1p(np.exp(-0.3))))
  assert np.all(np.isfinite(np.asarray(g))) and float(g[1]) == 0.0
  logits = jnp.array([[0.2, -0.1], [jnp.inf, jnp.nan]])
  val, g = jax.value_and_grad(lambda x: losses.softmax_cross_entropy(
      x, jnp.array([1, 0]), w))(logits)
  assert np.isfinite(float(val)) and np.all(np.isfinite(np.asarray(g)))
  np.testing.assert_allclose(np.asarray(g)[1], 0.0)
