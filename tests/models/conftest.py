"""Shared helpers for the model tests.

XLA:CPU spends seconds compiling the PRNG code of ``module.init`` (threefry per
parameter) but well under a second compiling the forward pass. Most tests only need
*some* well-scaled weights, so they take shapes from ``jax.eval_shape(module.init)`` and
fill them from numpy; the real initialisers are exercised by a few dedicated tests.
"""

import math

import jax
import numpy as np
import pytest


def random_variables(module, *args, seed: int = 0, **kwargs):
  """Variables with ``module.init``'s structure filled with He-scaled random values."""
  shapes = jax.eval_shape(lambda *a: module.init(jax.random.PRNGKey(0), *a, **kwargs), *args)
  rng = np.random.default_rng(seed)

  def fill(path, s):
    name = path[-1].key
    if name == "kernel":
      fan_in = math.prod(s.shape[:-1]) if len(s.shape) > 1 else 1
      return rng.normal(0.0, math.sqrt(2.0 / fan_in), s.shape).astype(s.dtype)
    if name in ("scale", "var"):
      return rng.uniform(0.5, 1.5, s.shape).astype(s.dtype)
    return rng.normal(0.0, 0.1, s.shape).astype(s.dtype)  # bias, mean

  return jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.fixture
def rand_vars():
  return random_variables
