"""The interface between the training system and a model: a `Task`.

The training loop knows nothing about Mask R-CNN. A model is plugged in as three
functions:

* `init(rng, example_batch) -> variables`: flax variables, e.g. the result of
  `module.init(rng, batch.image, ...)`: `{'params': ..., 'batch_stats': ..., ...}`.
  Only `'params'` is trained; every other collection (frozen BatchNorm statistics,
  constants, ...) is carried unchanged in `TrainState.variables`.
* `loss_fn(params, variables, batch, rng) -> (loss, aux)`: jittable; `variables` are
  the non-trained collections (without 'params'), `batch` is the device part of a
  `pa_jax.structures.Batch` (inside jit: a global array sharded over the batch axis),
  `rng` a fresh key per step (and per micro-batch). `loss` is a float32 scalar that
  must be the MEAN over the images of the batch (so that averaging over devices and
  micro-batches gives the global-batch gradient); `aux` is a flat dict of scalars: each
  loss term and diagnostics, all logged as is.
  Optional: if `aux` holds the key `UPDATED_VARIABLES` ('__variables__'), its value (a
  dict of collections, same structure as `variables`) replaces `TrainState.variables`
  after the step (e.g. running BatchNorm statistics from
  `module.apply(..., mutable=['batch_stats'])`). Frozen models simply do not return it.
* `evaluate(state) -> {name: float}` (optional): host-side evaluation run every
  `train.eval_every` steps and at the end; logged as `eval/<name>`; the metric named by
  `train(..., best_metric='map')` selects the best checkpoint.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional

import jax

UPDATED_VARIABLES = "__variables__"

Params = Any
Variables = Mapping[str, Any]


@dataclasses.dataclass
class Task:
  """A trainable model: init + loss (+ optional evaluation). See the module docstring."""

  init: Callable[[jax.Array, Any], dict]
  loss_fn: Callable[[Params, Variables, Any, jax.Array], tuple[jax.Array, dict]]
  evaluate: Optional[Callable[[Any], dict]] = None
  # params -> pytree of bools, False for frozen leaves (e.g. the stages below a
  # pretrained backbone's `freeze_at`). Their gradient is already cut inside the model;
  # this keeps the optimiser's weight decay off them too, which would otherwise shrink
  # pretrained weights every step. None = everything trains.
  trainable: Optional[Callable[[Params], Any]] = None
