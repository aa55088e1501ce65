"""Model-agnostic training: Task interface, TrainState, optimiser, jitted data-parallel
step, multi-host start-up, Orbax checkpoints, metrics logging and the resumable loop.

Plugging a model in::

  task = Task(init=lambda rng, batch: module.init(rng, batch.image),
              loss_fn=my_loss,                 # (params, variables, batch, rng) -> (loss, aux)
              evaluate=my_eval)                # TrainState -> {'map': ..., 'aji': ...}
  state = train(task, batch_source, config, workdir, run_metadata={...})

Submodules are imported lazily by the caller (`from pa_jax.train.loop import train`);
`metrics_log` is named so to avoid shadowing the standard library's `logging`.
"""
