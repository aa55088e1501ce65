"""Run with XLA_FLAGS=--xla_force_host_platform_device_count=8: one train_step on an
8-device mesh vs a 1-device sub-mesh (same global batch), grad_accum=2 on 8 devices, and
the error for a batch that does not divide by 8. Prints one JSON line."""

import json
import sys

import jax
import numpy as np

import train_toy as T
from pa_jax.data.pipeline import shard_batch
from pa_jax.errors import InputError
from pa_jax.train.optimizer import learning_rate_fn, make_optimizer
from pa_jax.train.state import create_train_state, make_data_mesh
from pa_jax.train.step import make_train_step


def one_step(mesh, batch, grad_accum=1, steps=1, noise=True):
  c = T.toy_config(warmup_steps=0, learning_rate=0.5, clip_grad_norm=1.0, weight_decay=0.01,
                   grad_accum=grad_accum)
  tx = make_optimizer(c.train)
  task = T.toy_task(noise=noise)
  state = create_train_state(task, c, jax.random.PRNGKey(0), batch, mesh, tx)
  step = make_train_step(task, tx, mesh, learning_rate_fn=learning_rate_fn(c.train),
                         grad_accum=grad_accum)
  for i in range(steps):
    state, metrics = step(state, shard_batch(batch, mesh))
  return T.flat_params(state.params), {k: float(v) for k, v in jax.device_get(metrics).items()}, step


def main():
  devices = jax.devices()
  out = {"n_devices": len(devices)}
  batch = T.toy_source(global_batch=16, n=16).batch(0)
  p8, m8, step8 = one_step(make_data_mesh(), batch, steps=2)
  p1, m1, _ = one_step(make_data_mesh(devices[:1]), batch, steps=2)
  # micro-batches draw their own keys (fold_in(rng, j)): compare accumulation without noise
  pn, _, _ = one_step(make_data_mesh(), batch, steps=2, noise=False)
  pa, ma, _ = one_step(make_data_mesh(), batch, grad_accum=2, steps=2, noise=False)
  out["max_abs_diff_8_vs_1"] = max(float(np.max(np.abs(p8[k] - p1[k]))) for k in p8)
  out["max_abs_diff_accum"] = max(float(np.max(np.abs(pn[k] - pa[k]))) for k in p8)
  out["loss_8"], out["loss_1"], out["loss_accum"] = m8["loss"], m1["loss"], ma["loss"]
  out["param_change"] = max(
      float(np.max(np.abs(p8[k] - v))) for k, v in
      T.flat_params(create_train_state(T.toy_task(), T.toy_config(), jax.random.PRNGKey(0),
                                       batch, make_data_mesh(devices[:1])).params).items())
  out["batch_sharding"] = str(shard_batch(batch, make_data_mesh()).image.sharding.spec)
  bad = T.toy_source(global_batch=6).batch(0)  # host numpy batch straight into train_step
  try:
    step8(None, bad)
    out["error"] = None
  except InputError as e:
    out["error"] = str(e)
  try:  # and through the loop: config checked before anything is built
    from pa_jax.train.loop import train
    import tempfile
    train(T.toy_task(), T.toy_source(global_batch=8), T.toy_config(batch_size=6),
          tempfile.mkdtemp(), progress=False)
    out["loop_error"] = None
  except InputError as e:
    out["loop_error"] = str(e)
  print(json.dumps(out))


if __name__ == "__main__":
  sys.exit(main())
