"""One jitted, data-parallel training step.

Data parallelism with `jax.jit` + `NamedSharding` over the 1-D ('data',) mesh: the batch
enters sharded along axis 0 (each device holds B / n_devices images), the TrainState is
replicated. The loss is the mean over the global batch, so its gradient — computed by
GSPMD as per-device partial gradients followed by an all-reduce that XLA inserts — IS the
average of the per-device gradients: no explicit `pmean` is needed and every device ends
with the same replicated update. Across hosts the same program runs on every process
(multi-controller); the all-reduce spans the processes.

No collective inside a loop. The step is traced with the mesh as context
(`jax.sharding.use_abstract_mesh`): a model's per-image stages that loop (NMS, connected
components, ...) read it through `pa_jax.ops.per_device.per_image` and run under
`jax.shard_map` over 'data', each device on its own images. Everything else (the network,
the losses' global sums and normalisers, the gradient all-reduce) stays GSPMD, outside any
loop; `tests/train/test_no_collectives_in_loops.py` reads the compiled HLO to keep it so.

Gradient accumulation (`grad_accum = k`): the global batch is split into k micro-batches
(micro-batch j = rows j, j+k, j+2k, ... so each stays spread over every device), a
`lax.scan` sums their gradients, and the optimiser is applied once to the mean. With a
batch-mean loss this equals the gradient of the whole batch.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from pa_jax.errors import InputError
from pa_jax.train.state import DATA_AXIS, TrainState, batch_sharded, replicated
from pa_jax.train.task import UPDATED_VARIABLES, Task


def _split_micro(batch: Any, k: int, mesh: Mesh) -> Any:
  """[B, ...] → [k, B/k, ...] with micro-batch j = rows j::k (keeps device locality)."""

  def split(x):
    x = x.reshape((x.shape[0] // k, k) + x.shape[1:])
    x = jnp.swapaxes(x, 0, 1)
    spec = PartitionSpec(None, DATA_AXIS)
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))

  return jax.tree.map(split, batch)


def check_batch_size(global_batch: int, n_devices: int, grad_accum: int = 1) -> None:
  """One-line InputError unless the global batch divides by devices x micro-batches."""
  if global_batch % (n_devices * grad_accum):
    what = f"{n_devices} devices" + (f" x train.grad_accum={grad_accum}" if grad_accum > 1 else "")
    raise InputError("train.batch_size", f"global batch size {global_batch} does not divide "
                     f"by {what}; use a multiple of {n_devices * grad_accum}")


def make_train_step(task: Task, optimizer: optax.GradientTransformation, mesh: Mesh, *,
                    learning_rate_fn: Callable[[Any], jax.Array] | None = None,
                    grad_accum: int = 1) -> Callable:
  """Returns `train_step(state, batch) -> (state, metrics)`.

  `batch`: a global Batch (from `shard_batch`, or host numpy arrays in a single-process
  run), global batch size divisible by `mesh.size * grad_accum`. The update's key is
  `fold_in(state.rng, state.step)`, drawn inside the jitted step: the host never computes
  (or waits for) a key, so an accelerator can run ahead of it. `metrics`: replicated float32 scalars
  `loss`, every aux term of `task.loss_fn`, `grad_norm` (global norm of the averaged
  gradient, before clipping) and `learning_rate` (of this update, from
  `learning_rate_fn(state.step)`; 0-filled if not given). The input state is donated.
  The jitted function is exposed as `train_step.jitted`.
  """
  n_dev = mesh.size
  k = int(grad_accum)
  if k < 1:
    raise InputError("train.grad_accum", f"{grad_accum} must be >= 1")
  rep, data = replicated(mesh), batch_sharded(mesh)

  def grads_of(params, variables, batch, rng):
    def f(p):
      loss, aux = task.loss_fn(p, variables, batch, rng)
      return loss, dict(aux)

    (loss, aux), grads = jax.value_and_grad(f, has_aux=True)(params)
    new_vars = aux.pop(UPDATED_VARIABLES, variables)
    return loss, aux, grads, new_vars

  def _step(state: TrainState, batch: Any):
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
      return _step_in_mesh(state, batch)

  def _step_in_mesh(state: TrainState, batch: Any):
    rng = jax.random.fold_in(state.rng, state.step)
    if k == 1:
      loss, aux, grads, new_vars = grads_of(state.params, state.variables, batch, rng)
    else:
      micro = _split_micro(batch, k, mesh)

      def body(carry, xs):
        g_sum, variables = carry
        j, mb = xs
        loss, aux, g, variables = grads_of(state.params, variables, mb,
                                           jax.random.fold_in(rng, j))
        return (jax.tree.map(jnp.add, g_sum, g), variables), (loss, aux)

      zeros = jax.tree.map(jnp.zeros_like, state.params)
      (g_sum, new_vars), (losses, auxes) = jax.lax.scan(
          body, (zeros, state.variables), (jnp.arange(k), micro))
      grads = jax.tree.map(lambda g: g / k, g_sum)
      loss = jnp.mean(losses)
      aux = jax.tree.map(jnp.mean, auxes)

    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss}
    for name, v in aux.items():
      metrics[name] = v
    metrics["grad_norm"] = optax.tree.norm(grads)
    metrics["learning_rate"] = (learning_rate_fn(state.step) if learning_rate_fn is not None
                                else jnp.zeros(()))
    metrics = {n: jnp.asarray(v, jnp.float32) for n, v in metrics.items()}
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              variables=new_vars)
    return new_state, metrics

  jitted = jax.jit(_step, in_shardings=(rep, data), out_shardings=(rep, rep),
                   donate_argnums=(0,))

  def train_step(state: TrainState, batch: Any):
    check_batch_size(jax.tree.leaves(batch)[0].shape[0], n_dev, k)
    return jitted(state, batch)

  train_step.jitted = jitted
  return train_step
