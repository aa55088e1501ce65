"""Tests of pa_jax.ops.sampling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pa_jax.ops.sampling import indices_to_mask, sample_balanced


def check_sample(assignment, valid, idx, ok, num_samples, fraction):
  """Reference: detectron2 counts, no duplicates, only allowed elements, positives first."""
  assignment = np.asarray(assignment)
  valid = np.ones_like(assignment, bool) if valid is None else np.asarray(valid)
  idx, ok = np.asarray(idx), np.asarray(ok)
  assert idx.shape == (num_samples,) and ok.shape == (num_samples,)
  n_pos_avail = int(np.sum((assignment == 1) & valid))
  n_neg_avail = int(np.sum((assignment == 0) & valid))
  n_pos = min(n_pos_avail, int(num_samples * fraction))
  n_neg = min(n_neg_avail, num_samples - n_pos)
  np.testing.assert_array_equal(ok, np.arange(num_samples) < n_pos + n_neg)
  chosen = idx[ok]
  assert len(set(chosen.tolist())) == len(chosen)
  assert np.all(valid[chosen])
  np.testing.assert_array_equal(assignment[chosen], [1] * n_pos + [0] * n_neg)
  assert np.all(idx[~ok] == 0)


@pytest.mark.parametrize("m,num_samples,fraction", [(300, 64, 0.5), (300, 64, 0.25),
                                                    (20, 64, 0.5), (50, 16, 0.0)])
def test_counts_and_membership(m, num_samples, fraction):
  rng = np.random.default_rng(m + num_samples)
  fn = jax.jit(lambda k, a, v: sample_balanced(k, a, num_samples, fraction, v))
  for trial in range(5):
    assignment = rng.choice([-1, 0, 1], size=m, p=[0.2, 0.7, 0.1]).astype(np.int32)
    if trial == 1:
      assignment[:] = -1  # nothing to sample
    if trial == 2:
      assignment[:] = 1  # only positives
    valid = rng.uniform(size=m) < 0.8
    if trial == 3:
      valid[:] = False  # all padding
    idx, ok = fn(jax.random.key(trial), assignment, valid)
    check_sample(assignment, valid, idx, ok, num_samples, fraction)
  idx, ok = sample_balanced(jax.random.key(9), jnp.asarray(assignment), num_samples, fraction)
  check_sample(assignment, None, idx, ok, num_samples, fraction)


def test_uniform_and_key_dependent():
  assignment = np.zeros(40, np.int32)
  assignment[:10] = 1
  keys = jax.random.split(jax.random.key(0), 2000)
  fn = jax.jit(jax.vmap(lambda k: sample_balanced(k, assignment, 8, 0.25)))
  idx, ok = fn(keys)
  assert idx.shape == (2000, 8)
  counts = np.bincount(np.asarray(idx)[np.asarray(ok)], minlength=40)
  # Each positive is drawn with prob 2/10, each negative with prob 6/30.
  np.testing.assert_allclose(counts / 2000, 0.2, atol=0.04)
  a, b = fn(jax.random.split(jax.random.key(1), 2))[0]
  assert not np.array_equal(a, b)


def test_indices_to_mask():
  mask = indices_to_mask(jnp.array([3, 0, 0]), jnp.array([True, True, False]), 5)
  np.testing.assert_array_equal(mask, [True, False, False, True, False])
