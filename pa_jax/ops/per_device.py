"""Lifting a single-image stage over a batch so that it runs on each device alone.

Per-image stages that loop (NMS, connected components, the PA-ignore blocks) must not
communicate inside their loops. Lifted with a plain `jax.vmap` over a batch sharded on
`"data"`, GSPMD turns the batched loop predicate ("does any image still need a turn?") into a
cross-device all-reduce on every turn. `per_image` lifts in two layers instead (big_vision
style): `jax.vmap` over one device's images inside `jax.shard_map` over `"data"`, so each
device's loop turns as often as ITS slowest image needs, with no communication at all.

The mesh comes from the context (`jax.sharding.use_abstract_mesh`, which the training step
sets while tracing). Without a mesh, or with a single device on `"data"`, it is exactly
`jax.vmap(fn)(*args)`, so single-device programs do not change. Results never depend on the
device count: every image is computed alone either way.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

# The data-parallel mesh axis (`pa_jax.train.state.DATA_AXIS`; ops do not import train).
BATCH_AXIS = "data"


def data_parallel_size() -> int:
  """Devices on the context mesh's `"data"` axis (1 without a mesh or without that axis)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or BATCH_AXIS not in mesh.axis_names:
    return 1
  return int(mesh.shape[BATCH_AXIS])


def per_image(fn: Callable[..., Any], *args: Any) -> Any:
  """`jax.vmap(fn)(*args)`, run per device under `jax.shard_map` when the batch is sharded.

  Args:
    fn: one image -> pytree of arrays; pure (no flax module calls, no parameters). Constants
      it needs (anchors, config values) are closed over as numpy / Python values.
    *args: pytrees whose every leaf has the batch as leading axis `B`, with `B` divisible by
      the number of devices on `"data"` (the training step checks it).

  Returns:
    `fn`'s pytree with a leading batch axis, sharded like the inputs (`P("data")`).

  Nothing inside `fn` may need a gradient: give it `stop_gradient`-ed inputs.
  """
  return _lift_per_device(jax.vmap(fn), *args)


def _lift_per_device(local: Callable[..., Any], *args: Any) -> Any:
  """`local(*args)` on each device's rows under `jax.shard_map` over `"data"` (no mesh, or
  one device: called directly). `local` sees and returns a leading batch axis."""
  if data_parallel_size() == 1:
    return local(*args)
  spec = PartitionSpec(BATCH_AXIS)
  # check_vma=False: `local` holds no collective, so every value in it varies over "data" and
  # there is nothing to check; with the check on, each loop of an op would have to mark its
  # constant initial carries (`jnp.array(True)`) as varying with `lax.pcast`.
  return jax.shard_map(local, mesh=jax.sharding.get_abstract_mesh(), in_specs=spec,
                       out_specs=spec, axis_names=frozenset({BATCH_AXIS}),
                       check_vma=False)(*args)


def prefix_sizes(total: int, smallest: int = 32) -> tuple[int, ...]:
  """The static prefix lengths `per_image_on_prefix` may cut to: `smallest`, doubling,
  below `total`, then `total` itself (e.g. 256 -> (32, 64, 128, 256))."""
  sizes, s = [], max(1, int(smallest))
  while s < total:
    sizes.append(s)
    s *= 2
  return (*sizes, total)


def per_image_on_prefix(fn: Callable[..., Any], valid: Any, prefixed: tuple, rest: tuple,
                        smallest: int = 32) -> Any:
  """`per_image(fn, *prefixed, *rest)` with the `prefixed` arrays cut along their slot axis
  (axis 1) to the shortest of `prefix_sizes` that holds every valid slot of the device's
  images.

  For stages whose cost grows with padded slots that take no part, e.g. anchor matching
  against `data.max_instances` ground-truth slots when an image holds 20 nuclei: the
  matching's IoU matrix and its reductions shrink with the cut. The length is chosen at run
  time by a `lax.switch` over one branch per static size (outside the vmap, so only one
  branch runs), per device under `shard_map`, from the last valid slot rather than the
  count, so it is exact whether or not the valid slots are a prefix.

  Args:
    fn: as `per_image`'s; its outputs must not have a slot axis of the `prefixed` arrays
      (they would differ in shape between branches).
    valid: bool [B, M]: which slots take part; slots after the last True are dropped.
    prefixed: arrays [B, M, ...] cut to [B, m, ...].
    rest: other per-image arrays [B, ...], passed whole.
    smallest: the shortest cut (see `prefix_sizes`).
  Returns:
    `fn`'s pytree with a leading batch axis; equal to `per_image(fn, *prefixed, *rest)`
    whenever `fn` ignores the slots beyond the last valid one.
  """
  m = valid.shape[1]
  sizes = prefix_sizes(m, smallest)

  def local(valid, prefixed, rest):
    last = jnp.max(jnp.where(valid, jnp.arange(1, m + 1), 0), initial=0)
    branch = jnp.searchsorted(jnp.asarray(sizes), last, side="left")
    branches = [
        (lambda p, r, s=s: jax.vmap(fn)(*[x[:, :s] for x in p], *r)) for s in sizes
    ]
    return jax.lax.switch(branch, branches, prefixed, rest)

  return _lift_per_device(local, valid, tuple(prefixed), tuple(rest))
