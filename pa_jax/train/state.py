"""`TrainState`: everything a run needs to continue, as one pytree (what Orbax saves)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from pa_jax.train.task import Task

DATA_AXIS = "data"


@struct.dataclass
class TrainState:
  """step:      int32 scalar, optimiser updates done (the state after update k has step k).
  params:    the trained flax collection 'params'.
  opt_state: optax state of `params`.
  variables: every other flax collection (frozen BN statistics, ...), not trained; a dict.
  rng:       base PRNG key (raw uint32[2]); the update that starts from step s uses
             fold_in(rng, s), drawn inside the jitted step (`train/step.py`), so a
             resumed run draws exactly the same randomness.
  """

  step: jax.Array
  params: Any
  opt_state: Any
  variables: Any
  rng: jax.Array


def make_data_mesh(devices=None) -> Mesh:
  """A 1-D ('data',) mesh over all devices of all processes (or the given ones).

  Auto (GSPMD) axis type: the compiler inserts the collectives, models need no sharding
  annotations.
  """
  if devices is None:
    devices = jax.devices()
  return jax.make_mesh((len(devices),), (DATA_AXIS,), axis_types=(AxisType.Auto,),
                       devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def _init_example(batch: Any) -> Any:
  """First row of a (host-local, numpy) batch: init only needs shapes and dtypes."""
  return jax.tree.map(lambda x: np.asarray(x)[:1], batch)


def create_train_state(task: Task, config, rng: jax.Array, example_batch: Any, mesh: Mesh,
                       optimizer: optax.GradientTransformation | None = None,
                       abstract: bool = False) -> TrainState:
  """Initialises the model and optimiser; every leaf replicated over `mesh`.

  `config` is the full config (uses `config.train`); `rng` a raw key (jax.random.PRNGKey);
  `example_batch` a host-local Batch (only its first row is used, for shapes);
  `optimizer` defaults to `make_optimizer(config.train, task.trainable)`.
  Init runs jitted with replicated outputs, so every process computes the same values
  from the same key without any transfer. `abstract=True` returns only the
  ShapeDtypeStructs (with shardings) without computing anything: the restore target
  when a checkpoint exists.
  """
  from pa_jax.train.optimizer import make_optimizer

  tx = optimizer if optimizer is not None else make_optimizer(config.train, task.trainable)
  init_rng, base_rng = jax.random.split(rng)
  example = _init_example(example_batch)

  def _init(init_rng, base_rng, example):
    variables = dict(task.init(init_rng, example))
    if "params" not in variables:
      raise ValueError("Task.init must return flax variables with a 'params' collection")
    params = variables.pop("params")
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=tx.init(params), variables=variables, rng=base_rng)

  rep = replicated(mesh)
  if abstract:
    shapes = jax.eval_shape(_init, init_rng, base_rng, example)
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep), shapes)
  return jax.jit(_init, out_shardings=rep)(init_rng, base_rng, example)


def abstract_state(state: TrainState) -> TrainState:
  """ShapeDtypeStructs (with shardings) of a state: the restore target for Orbax."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
      state)


def param_count(params: Any) -> int:
  return int(sum(np.prod(np.shape(x)) for x in jax.tree.leaves(params)))
