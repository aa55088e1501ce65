"""One experiment from a config: data → model → training → evaluation → prediction.

`run.py train|evaluate|predict|benchmark` call these functions; everything a later command
needs is stored in the workdir by `train`:

  workdir/config.json        the full config (ml_collections → JSON)
  workdir/run.json           dataset statistics (median nucleus size = the centerness
                             anchor), partial-view name/seed and counts, devices, params
  workdir/checkpoints/       orbax checkpoints (latest N) and checkpoints_best/ (by mAP)
  workdir/metrics.jsonl      one JSON object per logged step; tensorboard/ event files

so `evaluate --workdir W` and `predict --workdir W` need nothing else.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from pa_jax import fileio
from pa_jax.data import pipeline, readers
# The data side of an experiment (pa_jax/data/sources.py), re-exported: run.py, bench/ and
# the tests call these as experiment.<name>.
from pa_jax.data.sources import (augmentation, batch_source, dataset_statistics,  # noqa: F401
                                 repeat_by_source, source_paths, source_records,
                                 training_data, training_examples, view_spec)
from pa_jax.errors import InputError
from pa_jax.models.mask_rcnn import MaskRCNN, ModelSpec
from pa_jax.structures import Batch
from pa_jax.zoo import init as zoo_init


# -------------------------------------------------------------------------------- model


def build_model(cfg, stats: dict | None = None) -> MaskRCNN:
  anchor_wh = None if stats is None else (stats["median_width"], stats["median_height"])
  return MaskRCNN(ModelSpec.from_config(cfg.model, anchor_wh=anchor_wh))


def make_task(model: MaskRCNN, evaluate=None, pretrained: str = ""):
  """The model-agnostic trainer's view of the detector.

  `pretrained`: a torchvision ResNet / Mask R-CNN state dict (.pth needs torch, or .npz)
  imported over the random initialisation (name map and shape checks:
  pa_jax/models/weights.py). Import happens inside `init`, which runs only for a new run,
  never on resume.
  """
  from pa_jax.train.task import Task

  def init(rng, batch):
    k_init, k_loss = jax.random.split(rng)
    variables = model.init(k_init, batch, k_loss)
    if pretrained:
      from pa_jax.models.weights import import_pretrained

      # Runs under jit (create_train_state): only shapes are needed; file tensors become
      # constants of the init program.
      variables, report = import_pretrained(variables, pretrained)
      print(f"imported {report['loaded']} tensors from {pretrained}"
            + (f"; not in the file: {len(report['missing'])}" if report["missing"] else ""))
    return variables

  def loss_fn(params, variables, batch, rng):
    return model.apply({**variables, "params": params}, batch, rng)

  def trainable(params):
    # The backbone's frozen stages (weights.py imports into params['backbone']).
    from pa_jax.models.resnet import trainable_mask

    out = jax.tree.map(lambda _: True, params)
    if model.spec.freeze_at > 0 and "backbone" in params:
      out = {**out, "backbone": trainable_mask(params["backbone"], model.spec.freeze_at)}
    return out

  return Task(init=init, loss_fn=loss_fn, evaluate=evaluate, trainable=trainable)


def training_task(cfg, model: MaskRCNN, evaluate=None, start_variables=None):
  """The Task a training run uses: the backbone-init check, the pretrained import and the
  frozen-stage mask of `make_task`; `start_variables` (fine-tuning, e.g. an annotation
  round) replaces the initialisation and keeps everything else. Without them, a
  `model.init` zoo model (pa_jax/zoo/init.py) is laid over the fresh initialisation."""
  check_backbone_init(cfg.model)
  task = make_task(model, evaluate, cfg.model.pretrained)
  if start_variables is not None:
    start = jax.device_get(start_variables)
    task = dataclasses.replace(task, init=lambda rng, batch: start)
  elif cfg.model.init:
    task = dataclasses.replace(task, init=zoo_init.finetune_init(task.init, cfg))
  return task


# --------------------------------------------------------------------------- evaluation


def evaluate_variables(cfg, model: MaskRCNN, variables, split: str, output_dir=None,
                       max_images: int = 0, progress: bool = True, title: str = "",
                       score_threshold: float | None = None) -> dict:
  """Predicts every image of `split` and scores it against the full labels.

  `score_threshold`: draw detections scoring at least this into the label maps instead of
  the run's `predict.score_threshold` (0.5); DESIGN.md's 0.05 is the paper's Table 1 setting.
  """
  from pa_jax.evaluation import report
  from pa_jax.infer.predictor import predictor_for

  records = source_records(cfg, split)
  if max_images:
    records = records[:max_images]
  predictor = predictor_for(cfg, model, variables)
  if score_threshold is not None:
    predictor.min_score = float(score_threshold)
  items = []
  for rec in records:
    ex = readers.load_example(rec)
    items.append((rec.id, ex.labels, predictor(ex.image),
                  {"group": rec.group, "modality": rec.modality}, ex.image))
  if output_dir is None:
    from pa_jax.evaluation import metrics

    rows = [metrics.image_metrics(gt, pred) for _, gt, pred, _, _ in items]
    keys = ("map", "aji", "ncs", "precision", "recall", "f1", "pq")
    return {k: float(np.mean([r[k] for r in rows])) for k in keys}
  return report.evaluate_pairs(items, output_dir, title=title or f"{split} split",
                               progress=progress)


# -------------------------------------------------------------------------------- train


def check_backbone_init(m) -> None:
  """Refuses configs that freeze what was never trained.

  Frozen BatchNorm and `freeze_at` exist for a backbone with pretrained weights (the
  paper's configs). Without `model.pretrained` they would freeze a random stem and
  normalise with identity statistics: a silently crippled run, not a from-scratch one.
  A zoo model (`model.init`) brings trained weights too; it and `model.pretrained`
  exclude each other.
  """
  zoo_init.check_init(m)
  if m.pretrained or m.init:
    return
  if m.norm == "frozen_bn":
    raise InputError("model.norm", "'frozen_bn' freezes pretrained statistics but "
                     "model.pretrained is empty: pass --config.model.pretrained=FILE.pth "
                     "or train from scratch with --config.model.norm=group_norm "
                     "--config.model.freeze_at=0")
  if int(m.freeze_at) > 0:
    raise InputError("model.freeze_at", f"{m.freeze_at} freezes random weights because "
                     "model.pretrained is empty: pass --config.model.pretrained=FILE.pth "
                     "or --config.model.freeze_at=0")


def train(cfg, workdir: os.PathLike | str) -> Any:
  """Trains (or resumes) the experiment of `cfg` in `workdir`; returns the final state."""
  from pa_jax.train import checkpoint as ckpt
  from pa_jax.train import loop, run_config
  from pa_jax.train.distributed import maybe_initialize_distributed

  check_backbone_init(cfg.model)  # before reading any data: a config error is instant
  for change in zoo_init.adopt_model_frame(cfg):
    print(f"{cfg.model.init}: {change} (the model's own; set it to override)")
  maybe_initialize_distributed()
  workdir = Path(workdir)
  ckpt.check_workdir_writable(workdir)
  # A resumed run must be the run that was trained; refused before any data is read, and
  # before config.json / run.json could change (loop.train writes them once started).
  run_config.check_same_config(workdir, cfg)
  batches, stats = training_data(cfg, jax.process_index(), jax.process_count(),
                                 progress=jax.process_index() == 0)
  prior = fileio.read_json(workdir / "run.json")
  if prior and "dataset" in prior:  # resume: reuse the recorded anchor, never recompute
    stats = prior["dataset"]
  model = build_model(cfg, stats)

  def periodic_eval(state):
    variables = {**state.variables, "params": state.params}
    return evaluate_variables(cfg, model, variables, cfg.data.eval_split,
                              max_images=cfg.eval.max_images, progress=False)

  task = training_task(cfg, model, periodic_eval if cfg.train.eval_every else None)
  spec = view_spec(cfg)
  metadata = {"dataset": stats, "view": {"name": spec.name, "kind": spec.kind,
                                         "fraction": spec.fraction, "seed": spec.seed},
              "source": _absolute(cfg.data.source), "group": cfg.data.group}
  if jax.process_index() == 0:
    print(f"training data: {stats['images']} images, {stats['annotated_nuclei']} annotated "
          f"nuclei ({spec.name}; {stats['full_nuclei']} in the full labels); centerness "
          f"anchor {stats['median_width']:.1f}x{stats['median_height']:.1f} px")
  return loop.train(task, batches, cfg, workdir, run_metadata=metadata)


def _absolute(source: str) -> str:
  """`source` (each comma-separated entry) as an absolute path, so a later command run from
  any folder finds it (config.json keeps the path as given: it is compared on resume)."""
  return ",".join(os.path.abspath(p) for p in source_paths(source))


# ------------------------------------------------------------------- restoring a run


def resolve_source(cfg, meta: dict) -> None:
  """Points a loaded run's `data.source` at the data it was trained on when the stored
  path is relative to the folder the run was launched from and not found from here."""
  source = source_paths(cfg.data.source)
  recorded = source_paths(meta.get("source") or "")
  if len(source) != len(recorded):
    return
  fixed = [r if (not os.path.isabs(s) and not os.path.exists(s) and os.path.isabs(r)
                 and os.path.exists(r)) else s for s, r in zip(source, recorded)]
  if fixed != source:
    cfg.data.source = ",".join(fixed)


def load_config(workdir: os.PathLike | str) -> ml_collections.ConfigDict:
  path = Path(workdir) / "config.json"
  data = fileio.read_json(path)
  if data is None:
    raise InputError(workdir, "no config.json: not a pa_jax training run (train it first)")
  return config_from_stored(data)


def config_from_stored(data: dict) -> ml_collections.ConfigDict:
  """A stored config.json (parsed JSON: a run's, or a zoo model's) as the config it ran
  with: fields added since filled in (`run_config.upgrade_stored`), lists back to tuples."""
  from pa_jax.train.run_config import upgrade_stored  # as train() imports it: CLI start-up

  return ml_collections.ConfigDict(_tuples(upgrade_stored(data)))


def _tuples(obj):
  """JSON lists back to tuples (configs use tuples for static sequences)."""
  if isinstance(obj, dict):
    return {k: _tuples(v) for k, v in obj.items()}
  if isinstance(obj, list):
    return tuple(_tuples(v) for v in obj)
  return obj


def load_run(workdir: os.PathLike | str, best: bool = False):
  """(config, model, variables, step) of a trained run, from its workdir alone."""
  from pa_jax.train import checkpoint as ckpt
  from pa_jax.train import faults
  from pa_jax.train.state import create_train_state, make_data_mesh

  workdir = Path(workdir)
  cfg = load_config(workdir)
  meta = fileio.read_json(workdir / "run.json") or {}
  resolve_source(cfg, meta)
  try:
    model = build_model(cfg, meta.get("dataset"))
  except ValueError as e:
    raise InputError(workdir / "run.json", str(e)) from None
  task = make_task(model)
  mesh = make_data_mesh(jax.devices()[:1])
  example = example_batch(cfg)
  template = create_train_state(task, cfg, jax.random.PRNGKey(cfg.seed), example, mesh,
                                abstract=True)
  faults.ignore_late_read_callbacks()
  with faults.quiet_library_logs():  # Orbax warns on every read-only open
    store = ckpt.CheckpointStore(workdir, keep=cfg.train.keep_checkpoints, read_only=True)
    try:
      # The newest checkpoint that restores; a damaged newer one is named in one line on
      # stderr (read-only: it stays where it is; a resumed `train` moves it aside).
      state, step, _ = store.restore_readable(
          template, best=best, warn=lambda text: print(text, file=sys.stderr, flush=True))
    finally:
      store.close()
  if step is None:
    raise InputError(workdir / (ckpt.CHECKPOINTS_BEST if best else ckpt.CHECKPOINTS),
                     "no checkpoint: train this run first")
  return cfg, model, {**state.variables, "params": state.params}, int(step)


def example_batch(cfg) -> Batch:
  """A one-image batch of the config's training shapes (all zeros, nothing valid): what
  initialising a model (or tracing its init for shapes) needs."""
  return pipeline.stack_batch([_empty_example(cfg.data.canvas_size, cfg.data.max_instances)])


def _empty_example(canvas: int, max_instances: int) -> dict:
  return dict(image=np.zeros((canvas, canvas, 3), np.float32),
              labels=np.zeros((canvas, canvas), np.int32),
              boxes=np.zeros((max_instances, 4), np.float32),
              valid=np.zeros((max_instances,), bool),
              negative_boxes=np.zeros((max_instances, 4), np.float32),
              negative_valid=np.zeros((max_instances,), bool), image_size=np.array([canvas, canvas], np.int32),
              unannotated_boxes=np.zeros((max_instances, 4), np.float32),
              unannotated_valid=np.zeros((max_instances,), bool), has_full=np.bool_(False))


def evaluate_run(workdir: os.PathLike | str, split: str | None = None,
                 output_dir: os.PathLike | str | None = None, best: bool = False,
                 overwrite: bool = False, score_threshold: float | None = None) -> dict:
  """Scores the run's checkpoint on `split` against the full labels.

  `score_threshold` (in [0, 1]) replaces the run's `predict.score_threshold` for the label
  maps; the default report folder then says so (`eval_<split>_step<k>_score<t>/`).

  The report goes to `output_dir`, which follows pa_jax.outputs (never the run's data or
  the run itself, nor a folder holding them; it may lie inside the run; a non-empty folder
  only with `overwrite`), or by default to the run's own `eval_<split>_step<k>/`, which
  is replaced as a whole. Either way it is staged, so an earlier report never mixes with
  this one and a failure leaves it as it was."""
  from pa_jax import outputs

  if score_threshold is not None and not 0.0 <= score_threshold <= 1.0:
    raise InputError("score_threshold", f"{score_threshold} is not in [0, 1]")
  if output_dir:  # a refused folder costs nothing: checked before the run is loaded
    outputs.check_output(output_dir, [workdir], overwrite=overwrite, nest_ok=[workdir])
  cfg, model, variables, step = load_run(workdir, best=best)
  split = split or cfg.eval.split
  title = f"{Path(workdir).name} step {step}, {split}"
  suffix = ""
  if score_threshold is not None:
    title += f", score >= {score_threshold:g}"
    suffix = f"_score{score_threshold:g}"
  t0 = time.time()
  out = Path(output_dir) if output_dir else Path(workdir) / f"eval_{split}_step{step}{suffix}"
  # The ground truth is read from the run's data: an output that is or holds it would be
  # swapped away with the old report.
  with outputs.staged_output(out, [workdir, *source_paths(cfg.data.source)], nest_ok=[workdir],
                             overwrite=overwrite or not output_dir) as tmp:
    result = evaluate_variables(cfg, model, variables, split, tmp, title=title,
                                score_threshold=score_threshold)
  summary = report_summary(result)
  summary["seconds"] = time.time() - t0
  summary["output"] = str(out)
  return summary


def report_summary(result: dict) -> dict:
  return dict(result.get("overall", result))
