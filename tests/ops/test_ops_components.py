"""Tests of pa_jax.ops.components: device == host == canonicalised scipy.ndimage.label."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from pa_jax.ops.components import (canonical_labels_numpy, label_components,
                                   label_components_device, label_components_host)


def snake(n):
  """Boustrophedon: full even rows joined alternately at the right/left end (one long path)."""
  m = np.zeros((n, n), bool)
  m[::2] = True
  for r in range(1, n, 2):
    m[r, -1 if (r // 2) % 2 == 0 else 0] = True
  return m


def spiral(n):
  """A 1-pixel-wide square spiral walking inwards from the top-left corner."""
  m = np.zeros((n, n), bool)
  r = c = 0
  m[0, 0] = True
  dirs = [(0, 1), (1, 0), (0, -1), (-1, 0)]
  d = 0
  while True:
    for _ in range(4):
      dr, dc = dirs[d]
      r2, c2 = r + 2 * dr, c + 2 * dc
      r3, c3 = min(max(r2 + dr, 0), n - 1), min(max(c2 + dc, 0), n - 1)
      if 0 <= r2 < n and 0 <= c2 < n and not m[r2, c2] and not m[r3, c3]:
        m[r + dr, c + dc] = m[r2, c2] = True
        r, c = r2, c2
        break
      d = (d + 1) % 4
    else:
      return m


def random_maps():
  rng = np.random.default_rng(0)
  maps = [np.zeros((32, 32), bool), np.ones((32, 32), bool)]
  for density in (0.05, 0.2, 0.35, 0.45, 0.5, 0.55, 0.6, 0.7, 0.9):
    for _ in range(2):
      maps.append(rng.random((32, 32)) < density)
  # Blobby maps (smoothed noise) look like thresholded centerness maps.
  for _ in range(6):
    noise = ndimage.gaussian_filter(rng.random((32, 32)), 1.5)
    maps.append(noise > np.quantile(noise, rng.uniform(0.4, 0.9)))
  checker = (np.add.outer(np.arange(32), np.arange(32)) % 2) == 0
  maps += [checker, ~checker, snake(32), snake(32)[::-1, ::-1].copy(), spiral(32),
           spiral(32)[::-1].copy(), spiral(32).T.copy()]
  return maps


MAPS = random_maps()


def test_map_count():
  assert len(MAPS) >= 30
  assert ndimage.label(spiral(32), np.ones((3, 3)))[1] == 1
  assert ndimage.label(snake(32), np.ones((3, 3)))[1] == 1


def test_canonical_reference():
  m = np.array([[0, 1, 0, 0],
                [0, 0, 0, 1],
                [1, 1, 0, 1]], bool)
  np.testing.assert_array_equal(canonical_labels_numpy(m, 8),
                                [[0, 2, 0, 0], [0, 0, 0, 8], [9, 9, 0, 8]])
  # The 4-connected reference is scipy's default structure.
  m2 = np.array([[1, 0], [0, 1]], bool)
  np.testing.assert_array_equal(canonical_labels_numpy(m2, 4), [[1, 0], [0, 4]])
  np.testing.assert_array_equal(canonical_labels_numpy(m2, 8), [[1, 0], [0, 1]])


@pytest.mark.parametrize("connectivity", [8, 4])
def test_device_host_scipy_agree(connectivity):
  dev = jax.jit(jax.vmap(lambda m: label_components_device(m, connectivity)))
  host = jax.jit(jax.vmap(lambda m: label_components_host(m, connectivity)))
  stack = np.stack(MAPS)
  d, h = np.asarray(dev(stack)), np.asarray(host(stack))
  assert d.dtype == np.int32 and h.dtype == np.int32
  for i, m in enumerate(MAPS):
    ref = canonical_labels_numpy(m, connectivity)
    np.testing.assert_array_equal(d[i], ref, err_msg=f"device, map {i}")
    np.testing.assert_array_equal(h[i], ref, err_msg=f"host, map {i}")
    # Same partition as scipy (canonicalisation is only a renaming): scipy's components and
    # the reference's are in one-to-one correspondence on the foreground.
    lab, n = ndimage.label(m, ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2))
    assert len(np.unique(ref[m])) == n
    assert np.unique(np.stack([lab[m], ref[m]]), axis=1).shape[1] == n


@pytest.mark.parametrize("shape", [(1, 17), (17, 1), (13, 29)])
def test_odd_shapes(shape):
  rng = np.random.default_rng(shape[0] * 100 + shape[1])
  for density in (0.3, 0.6):
    m = rng.random(shape) < density
    ref = canonical_labels_numpy(m)
    np.testing.assert_array_equal(label_components(m, "device"), ref)
    np.testing.assert_array_equal(label_components(m, "host"), ref)


def test_long_spiral_128():
  m = spiral(128)
  ref = canonical_labels_numpy(m)
  assert np.unique(ref).size == 2
  np.testing.assert_array_equal(jax.jit(label_components_device)(m), ref)


def test_nested_vmap_host_and_device():
  rng = np.random.default_rng(3)
  m = rng.random((2, 3, 16, 16)) < 0.5
  d = jax.vmap(jax.vmap(label_components_device))(m)
  h = jax.jit(jax.vmap(jax.vmap(label_components_host)))(m)
  np.testing.assert_array_equal(d, h)


def test_bad_arguments():
  with pytest.raises(ValueError):
    label_components(jnp.zeros((4, 4), bool), backend="gpu")
  with pytest.raises(ValueError):
    label_components_device(jnp.zeros((4, 4), bool), connectivity=6)
  with pytest.raises(ValueError):
    label_components_device(jnp.zeros((2, 4, 4), bool))


@pytest.mark.parametrize("backend", ["device", "host"])
def test_default_is_scipy_default_structure(backend):
  """Without a connectivity argument both backends label as `ndimage.label(m)` does (its
  default structure is 4-connected, as the paper's released code uses it)."""
  diag = np.eye(4, dtype=bool)  # four pixels touching only at corners: four components
  assert ndimage.label(diag)[1] == 4
  fn = jax.jit(lambda m: label_components(m, backend))
  out = np.asarray(fn(diag))
  assert len(np.unique(out[diag])) == 4
  for m in MAPS[:12]:
    lab, n = ndimage.label(m)
    ref = np.asarray(fn(m))
    assert len(np.unique(ref[m])) == n
    assert np.unique(np.stack([lab[m], ref[m]]), axis=1).shape[1] == n
