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
  lifted = jax.vmap(fn)
  if data_parallel_size() == 1:
    return lifted(*args)
  spec = PartitionSpec(BATCH_AXIS)
  # check_vma=False: `fn` holds no collective, so every value in it varies over "data" and
  # there is nothing to check; with the check on, each loop of an op would have to mark its
  # constant initial carries (`jnp.array(True)`) as varying with `lax.pcast`.
  return jax.shard_map(lifted, mesh=jax.sharding.get_abstract_mesh(), in_specs=spec,
                       out_specs=spec, axis_names=frozenset({BATCH_AXIS}),
                       check_vma=False)(*args)
