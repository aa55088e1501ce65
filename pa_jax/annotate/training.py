"""One annotation round's training: round 1 from scratch or a zoo model, later rounds
fine-tune the previous round.

Round 1 starts from the zoo model `model.init` names, if any (docs/zoo.md). When that is
the shipped default (`zoo:nuclei_cpu_v2`) and it cannot start this config's model (not in
the checkout yet, damaged, another architecture), the round trains from scratch and one
log line says why; any other `model.init` fails as `run.py train` does.

A round's workdir is resumed when it was started on the same data (a fingerprint of the
training labels, negatives and step count), so rerunning a round after a crash continues
its checkpoints; a workdir started on other data is cleared first.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

from pa_jax import experiment, fileio
from pa_jax.data.pipeline import TrainExample
from pa_jax.train import loop as train_loop
from pa_jax.zoo import init as zoo_init
from pa_jax.zoo.registry import DEFAULT_MODEL, ZOO_PREFIX

log = logging.getLogger("pa_jax.annotate")


class RoundTraining(NamedTuple):
  """What `train_round` returns (a tuple, so callers and test doubles may unpack it)."""

  model: Any       # the MaskRCNN module
  variables: Any   # its trained flax variables (params included)
  seconds: float   # wall time of the training itself
  steps: int       # steps this round trained for
  start: str = ""  # model.init a round that is not fine-tuned started from; '' = scratch


def _fingerprint(examples: Sequence[TrainExample], steps: int, prev_round: int | None,
                 start: str = "") -> str:
  # `start` only when set: the workdirs of rounds trained before model.init existed resume.
  h = hashlib.sha256(f"{steps}:{prev_round}{':' + start if start else ''}".encode())
  for ex in examples:
    h.update(ex.id.encode())
    h.update(np.ascontiguousarray(ex.labels).tobytes())
    if ex.negatives is not None:
      h.update(np.ascontiguousarray(ex.negatives).tobytes())
  return h.hexdigest()


def train_round(cfg, examples: Sequence[TrainExample], stats: Mapping, workdir: Path,
                round_: int, prev_variables=None, progress: bool = True) -> RoundTraining:
  """Trains round 1 from `model.init` or scratch (train.steps, see the module docstring)
  or fine-tunes `prev_variables` (annotate.finetune_steps). Resumes `workdir` when its
  data fingerprint matches, otherwise starts it afresh. `progress` shows the training's
  progress bar."""
  cfg = copy.deepcopy(cfg)
  with cfg.unlocked():
    cfg.seed = int(cfg.seed) + round_ - 1
    if prev_variables is not None:
      cfg.train.steps = int(cfg.annotate.finetune_steps)
      cfg.train.warmup_steps = min(int(cfg.annotate.finetune_warmup_steps), cfg.train.steps)
    cfg.train.checkpoint_every = min(int(cfg.train.checkpoint_every), int(cfg.train.steps))
    cfg.train.eval_every = 0
  model = experiment.build_model(cfg, stats)
  start = _first_start(cfg, model, round_) if prev_variables is None else ""
  # Round 1 as `run.py train` would (zoo model or pretrained import, backbone checks);
  # later rounds start from the previous round's variables. Both keep the frozen-stage
  # decay mask.
  task = experiment.training_task(cfg, model, start_variables=prev_variables)
  base_round = round_ - 1 if prev_variables is not None else None
  fp = _fingerprint(examples, int(cfg.train.steps), base_round, start)
  marker = workdir / "annotate_round.json"
  if workdir.exists():
    try:
      old = json.loads(marker.read_text()).get("fingerprint")
    except (OSError, json.JSONDecodeError):
      old = None
    if old != fp:
      shutil.rmtree(workdir)
  fileio.write_json(marker, {"round": round_, "fingerprint": fp})
  batches = experiment.batch_source(cfg, examples)
  t0 = time.time()
  state = train_loop.train(task, batches, cfg, workdir, run_metadata={
      "dataset": dict(stats), "annotate_round": round_}, progress=progress)
  seconds = time.time() - t0
  return RoundTraining(model, {**state.variables, "params": state.params}, seconds,
                       int(cfg.train.steps), start)


def _first_start(cfg, model, round_: int) -> str:
  """The `model.init` a round without a previous one starts from ('' = scratch); clears
  the shipped default in `cfg` (an unlocked copy) when it cannot start this model."""
  init = cfg.model.init
  if init == f"{ZOO_PREFIX}{DEFAULT_MODEL}":
    why = zoo_init.problem_with(cfg, experiment.make_task(model).init,
                                experiment.example_batch(cfg))
    if why:
      log.info("annotate round %d: not starting from the shipped model (%s); training from "
               "scratch", round_, why)
      cfg.model.init = init = ""
  if init:
    log.info("annotate round %d: starting from %s", round_, init)
  return init
