"""Connected-component labelling of a boolean map, on device and on the host.

Both backends return the same *canonical* labelling, so they are interchangeable bit for bit:
background is 0 and every component is labelled with `1 + the smallest row-major flat index`
of its pixels (its top-left-most pixel in raster order). Canonical ids are unique, stable
under any relabelling of the reference, and need no compaction step, which keeps the device
version free of data-dependent shapes. They are NOT consecutive: use them as segment ids with
`num_segments = h * w + 1`.

- `label_components_device`: pure jnp inside `lax.while_loop`, jittable/vmappable/shardable,
  no host round trip (what pod training uses).
- `label_components_host`: `scipy.ndimage.label` through `jax.pure_callback` (the reference;
  works under jit and vmap, one host call per batch).

Device algorithm (a grid version of Shiloach-Vishkin "hook + pointer-jump"): every
foreground pixel `p` holds a label `L[p]` that is the id of some pixel of its own component
with `L[p] <= p + 1`, i.e. a parent pointer `L[p] - 1`; roots satisfy `L[r] = r + 1`. One
iteration
  1. takes `m[p]` = the minimum label over the 3x3 (or 4-) neighbourhood of `p` (foreground
     only; background holds +inf);
  2. *hooks*: the root `L[p] - 1` of `p`'s tree is lowered to `m[p]` with a scatter-min, so a
     whole tree adopts a smaller neighbour label in one step instead of pixel by pixel;
  3. lowers `L[p]` to `m[p]` locally and fully compresses the pointers
     (`L <- L[L - 1]` until nothing changes, O(log depth) gathers).
The outer loop stops when an iteration changes nothing. Plain min-propagation needs as many
iterations as the longest geodesic path (thousands for a spiral); with hooking and pointer
jumping, 128x128 one-pixel-wide spirals and snakes (8k-pixel paths) converge in 3 outer
iterations (measured; ~0.5 ms on one CPU core), random maps in 2-4.

Why the result is canonical: labels only decrease, always name a pixel of the same component
and never go below that component's smallest id `c`; at the fixed point every edge joins two
pixels with the same label, so a component holds one label, and pixel `c - 1` can only hold
`c` (it started there and nothing smaller exists), hence every pixel holds `c`.

Memory: O(h * w) int32 for both backends.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

# Background / out-of-image sentinel for the min-propagation: larger than any id (h*w <= 2^31).
_BIG = jnp.iinfo(jnp.int32).max


def _check(mask, connectivity: int):
  if connectivity not in (4, 8):
    raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
  if mask.ndim != 2:
    raise ValueError(f"mask must be 2-D [h, w] (vmap for a batch), got shape {mask.shape}")


def _neighbour_min(lab: jnp.ndarray, connectivity: int) -> jnp.ndarray:
  """Minimum of `lab` over the 3x3 window (8-conn.) or the plus-shaped window (4-conn.).

  `lab` is int32 `[h, w]` with `_BIG` on background, so background never contributes. The
  3x3 minimum is separable (rows then columns): the value passed through a background pixel
  by the row pass only ever reaches pixels that are diagonal neighbours of its source, which
  8-connectivity joins anyway, so the separable window is exactly the 3x3 window.
  """
  pad = jnp.pad(lab, 1, constant_values=_BIG)
  h, w = lab.shape
  if connectivity == 8:
    rows = jnp.minimum(jnp.minimum(pad[:, 0:w], pad[:, 1:w + 1]), pad[:, 2:w + 2])  # [h+2, w]
    return jnp.minimum(jnp.minimum(rows[0:h], rows[1:h + 1]), rows[2:h + 2])
  centre = pad[1:h + 1, 1:w + 1]
  return jnp.minimum(
      jnp.minimum(centre, jnp.minimum(pad[0:h, 1:w + 1], pad[2:h + 2, 1:w + 1])),
      jnp.minimum(pad[1:h + 1, 0:w], pad[1:h + 1, 2:w + 2]))


def _compress(flat: jnp.ndarray, fg: jnp.ndarray) -> jnp.ndarray:
  """Pointer jumping `L <- L[L - 1]` on foreground until every pixel points at a root."""
  def cond(state):
    return state[1]

  def body(state):
    lab, _ = state
    # Background holds _BIG; gather from a safe index and keep _BIG there.
    parent = jnp.where(fg, lab - 1, 0)
    new = jnp.where(fg, lab[parent], _BIG)
    return new, jnp.any(new != lab)

  return jax.lax.while_loop(cond, body, (flat, jnp.array(True)))[0]


def label_components_device(mask: jnp.ndarray, connectivity: int = 4) -> jnp.ndarray:
  """Canonical connected-component labels, fully on device (jittable, static shapes).

  Args:
    mask: bool `[h, w]` (anything `!= 0` is foreground). One image; `jax.vmap` for a batch
      (the while loop then runs until the slowest image converges).
    connectivity: 4 (plus shape, scipy's default structure; the default, as the paper's
      released code labels its centerness map) or 8 (3x3 square, scipy's
      `structure=np.ones((3, 3))`). Static.

  Returns:
    int32 `[h, w]`: 0 on background; on a component, 1 + the smallest row-major flat index
    of its pixels. Identical to `label_components_host`.
  """
  _check(mask, connectivity)
  h, w = mask.shape
  fg = (mask != 0).reshape(-1)
  if h * w == 0:
    return jnp.zeros((h, w), jnp.int32)
  init = jnp.where(fg, jnp.arange(1, h * w + 1, dtype=jnp.int32), _BIG)

  def cond(state):
    return state[1]

  def body(state):
    lab, _ = state
    m = _neighbour_min(lab.reshape(h, w), connectivity).reshape(-1)
    m = jnp.where(fg, m, _BIG)  # m <= lab on foreground (the window includes the centre)
    # Hook: lower the root of p's tree to the smallest label next to p. Background scatters
    # _BIG into slot 0, which is a no-op for a min.
    root = jnp.where(fg, lab - 1, 0)
    new = lab.at[root].min(m)
    new = jnp.where(fg, jnp.minimum(new, m), _BIG)
    new = _compress(new, fg)
    return new, jnp.any(new != lab)

  lab = jax.lax.while_loop(cond, body, (init, jnp.array(True)))[0]
  return jnp.where(fg, lab, 0).reshape(h, w).astype(jnp.int32)


def _structure(connectivity: int) -> np.ndarray:
  return np.ones((3, 3), bool) if connectivity == 8 else ndimage.generate_binary_structure(2, 1)


def canonical_labels_numpy(mask: np.ndarray, connectivity: int = 4) -> np.ndarray:
  """Host reference: `scipy.ndimage.label`, relabelled to canonical ids.

  Args:
    mask: bool-like numpy `[h, w]`.
    connectivity: 4 (scipy's default) or 8.

  Returns:
    int32 numpy `[h, w]`: 0 on background, 1 + the smallest flat index of each component.
  """
  mask = np.asarray(mask) != 0
  _check(mask, connectivity)
  lab, n = ndimage.label(mask, structure=_structure(connectivity))
  flat = lab.reshape(-1)
  # np.unique's return_index is the first occurrence in raster order = the smallest flat index.
  values, first = np.unique(flat, return_index=True)
  canon = np.zeros(n + 1, np.int32)
  canon[values] = first.astype(np.int32) + 1
  canon[0] = 0
  return canon[lab].astype(np.int32)


def _host_callback(mask: np.ndarray, connectivity: int) -> np.ndarray:
  # With vmap_method='expand_dims' the mask arrives as [..., h, w] (leading batch dims added
  # by every enclosing vmap); label each image separately.
  mask = np.asarray(mask)
  h, w = mask.shape[-2:]
  flat = mask.reshape((-1, h, w))
  out = np.stack([canonical_labels_numpy(m, connectivity) for m in flat]) if flat.shape[0] else (
      np.zeros((0, h, w), np.int32))
  return out.reshape(mask.shape).astype(np.int32)


def label_components_host(mask: jnp.ndarray, connectivity: int = 4) -> jnp.ndarray:
  """Canonical connected-component labels via `scipy.ndimage.label` on the host.

  Works under `jax.jit` and `jax.vmap` (`pure_callback` with `vmap_method='expand_dims'`: a
  batch is sent to the host in one call and labelled image by image there). Not
  differentiable (integer output) and it synchronises with the host, so prefer the device
  version inside multi-device training.

  Args:
    mask: bool `[h, w]` (anything `!= 0` is foreground).
    connectivity: 4 (scipy's default) or 8 (static).

  Returns:
    int32 `[h, w]`, identical to `label_components_device`.
  """
  _check(mask, connectivity)
  mask = jnp.asarray(mask) != 0
  return jax.pure_callback(
      functools.partial(_host_callback, connectivity=connectivity),
      jax.ShapeDtypeStruct(mask.shape, jnp.int32), mask, vmap_method="expand_dims")


def label_components(mask: jnp.ndarray, backend: str = "device",
                     connectivity: int = 4) -> jnp.ndarray:
  """Canonical connected components of a boolean map; `backend` is 'device' or 'host'.

  Args:
    mask: bool `[h, w]`.
    backend: 'device' (`label_components_device`, jittable loop) or 'host'
      (`label_components_host`, scipy through a callback). Both give identical arrays.
    connectivity: 4 (scipy's default) or 8.

  Returns:
    int32 `[h, w]`: 0 on background, 1 + smallest flat index per component.
  """
  if backend == "device":
    return label_components_device(mask, connectivity)
  if backend == "host":
    return label_components_host(mask, connectivity)
  raise ValueError(f"components backend must be 'device' or 'host', got {backend!r}")
