"""pa_jax command line: one entry point for every use.

  python run.py                     # the embedded demo (data/sample, CPU, minutes)
  python run.py train    --config configs/dh25_pa.py[:cpu] --workdir runs/dh25_pa [--config.x=y]
  python run.py evaluate --workdir runs/dh25_pa [--split test]
  python run.py evaluate --predictions DIR --ground-truth DIR [--output DIR]
  python run.py predict  --workdir W --input DIR_OR_FILE --output DIR [--format ...]
  python run.py predict  [--model NAME_OR_FILE] --input DIR_OR_FILE --output DIR  (zoo model)
  python run.py predict  --method classical --input DIR_OR_FILE --output DIR
  python run.py annotate --images DIR --annotations DIR --output DIR [--rounds N]
  python run.py partial  --dataset DIR --keep 0.25 --seed 0 --output DIR   (or --crop 0.25)
  python run.py benchmark --config configs/... [--steps N]
  python run.py export-model --workdir W --name NAME [--output pa_jax/zoo/models] [--best]

This file only parses flags and dispatches; the work lives in importable modules of
`pa_jax` (flax examples style: thin main). Bad input ends with one line on stderr naming
the file or field and exit code 2, never a traceback.

Every error path goes through one handler (`_run`): a `PaJaxError` prints
`error: <where>: <problem>` and exits with its `exit_code` (2 bad input, 3 a failed
training run), parameter names turned into flags (`cli_errors.FLAG_OF`: the error's `where`, and any
`name` in backquotes in its text); a config file that is missing, does not parse or
raises is one line naming it; anything unexpected is one line
`error: <Type>: <message> (run with --debug for the traceback)`, exit 1. `--debug`
re-raises instead, for the full traceback.
"""

from __future__ import annotations

import os
import sys

# Quieten TF-less tfds / absl chatter before anything imports them.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from pa_jax import cli_errors  # noqa: E402

COMMANDS = ("demo", "train", "evaluate", "predict", "annotate", "partial", "benchmark",
            "export-model")

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, e.g. configs/dh25_pa.py or configs/dh25_pa.py:cpu.",
    lock_config=True)
flags.DEFINE_string("workdir", None, "Run folder (checkpoints, logs, config, predictions).")
# partial
flags.DEFINE_string("dataset", None, "partial: source dataset folder (images/, labels/, index.csv).")
flags.DEFINE_float("keep", None, "partial: fraction of the nuclei kept per image (DH25: 0.25).")
flags.DEFINE_float("crop", None, "partial: area fraction of one random crop per image (DH25crop: 0.25).")
flags.DEFINE_integer("seed", 0, "partial: seed of the view.")
flags.DEFINE_string("split", None, "Split (index.csv 'split' column) to use; partial: default train.")
flags.DEFINE_string("group", None, "Keep only index.csv rows of this group (e.g. dh360).")
flags.DEFINE_string("output", None, "Output folder (export-model: default pa_jax/zoo/models).")
flags.DEFINE_bool("overwrite", False, "predict/evaluate/partial/annotate: replace a non-empty "
                  "output folder as a whole (never an input folder); export-model: replace "
                  "a model of the same name.")
flags.DEFINE_enum("on_error", "stop", ["stop", "skip"], "predict/evaluate: on a bad file, stop "
                  "before writing anything, or skip it and list it in OUTPUT/skipped.csv.")
flags.DEFINE_bool("debug", False, "Show the full traceback of an error.")
# evaluate
flags.DEFINE_string("predictions", None, "evaluate: folder of predicted label maps.")
flags.DEFINE_string("ground_truth", None, "evaluate: folder of ground-truth label maps or a dataset folder.")
flags.DEFINE_bool("best", False, "evaluate/predict/export-model: use the best-by-mAP checkpoint "
                  "instead of the latest.")
flags.DEFINE_bool("allow_missing", False, "evaluate: ground-truth images without a prediction are skipped, not an error.")
# predict
flags.DEFINE_string("input", None, "predict: an image file, a folder of images or a dataset folder.")
flags.DEFINE_string("method", "model", "predict: 'model' (a trained --workdir, a --model, or the "
                    "shipped default) or 'classical' (Otsu + watershed).")
flags.DEFINE_string("model", None, "predict: a shipped model's name or a .npz model file "
                    "(docs/zoo.md); default: the shipped nuclei model.")
flags.DEFINE_string("classical_params", None, "predict --method classical: overrides 'key=value,...' "
                    "(sigma, polarity, min_size, fill_holes, distance_sigma, min_distance, min_distance_factor).")
flags.DEFINE_list("format", ["label"], "predict/annotate: output formats, any of label,coco,geojson,roi,csv "
                  "(predict on whole slides: label,ome-tiff,ome-zarr,geojson,csv).")
flags.DEFINE_string("contours", "polygon", "predict: 'polygon' or 'spline' contours in vector exports.")
flags.DEFINE_integer("channel", None, "predict: the channel (0-based) of multi-channel images "
                     "(axes C, or non-colour samples); they are refused without it.")
flags.DEFINE_integer("plane", None, "predict: the z-slice or time point (0-based) of image "
                     "stacks (axes Z, T); they are refused without it.")
flags.DEFINE_float("diameter", None, "predict: median nucleus diameter (px) of the input "
                   "images, for models trained at a set nucleus size (the shipped ones); "
                   "default: estimated per image. What each image was segmented at is in "
                   "OUTPUT/predict.json and report.html.")
flags.DEFINE_float("mask_overlap", None, "predict: in (0, 1], overrides the model's "
                   "predict.mask_overlap: a detection with at least this fraction of its mask "
                   "under higher-scoring ones is not drawn (1 = off); default: the model's.")
flags.DEFINE_float("score_threshold", None, "evaluate --workdir: draw detections scoring at least "
                   "this into the label maps (default: the run's predict.score_threshold, 0.5; "
                   "DESIGN.md's 0.05 gives mAP comparable with the paper's Table 1).")
flags.DEFINE_bool("attention", False, "predict: also write attention maps (partial-annotation model).")
flags.DEFINE_integer("level", 0, "predict: pyramid level of whole-slide TIFFs (0 = full resolution).")
flags.DEFINE_string("region", None, "predict: segment only x,y,w,h (level-0 pixels) of a slide.")
flags.DEFINE_bool("stream", None, "predict: read and stitch tile by tile with bounded memory (default: "
                  "TIFFs over 4096x4096 pixels, or with --level/--region/ome formats); --nostream: never.")
# annotate
flags.DEFINE_string("images", None, "annotate: folder of images to annotate.")
flags.DEFINE_string("annotations", None, "annotate: the user's partial annotations.")
flags.DEFINE_integer("rounds", 1, "annotate: rounds of train → predict → merge.")
flags.DEFINE_float("target_recall", None, "annotate: stop when the held-out recall reaches this.")
flags.DEFINE_bool("accept_proposals", False, "annotate: every proposal still in the edited files counts as confirmed.")
flags.DEFINE_bool("from_scratch", False, "annotate: the first round trains from random weights, "
                  "not from the config's model.init zoo model (same as --config.model.init='').")
# export-model
flags.DEFINE_string("name", None, "export-model: the model's name (file names <name>.npz/.json).")
# benchmark
flags.DEFINE_integer("steps", None, "benchmark: timed steps; annotate: first-round training steps.")


def _require(**named) -> None:
  from pa_jax.errors import InputError

  for name, value in named.items():
    if value is None:
      raise InputError(f"--{name}", "this flag is required here")


def cmd_partial() -> int:
  from pa_jax.data import partial_views
  from pa_jax.errors import InputError

  _require(dataset=FLAGS.dataset, output=FLAGS.output)
  if (FLAGS.keep is None) == (FLAGS.crop is None):
    raise InputError("--keep/--crop", "give exactly one of --keep F or --crop F")
  kind, frac = ("keep", FLAGS.keep) if FLAGS.keep is not None else ("crop", FLAGS.crop)
  if not 0.0 < frac <= 1.0:
    raise InputError(f"--{kind}", f"{frac} is not in (0, 1]")
  spec = partial_views.ViewSpec(kind, frac, FLAGS.seed)
  split = FLAGS.split if FLAGS.split is not None else "train"
  summary = partial_views.write_partial_dataset(FLAGS.dataset, FLAGS.output, spec,
                                                split=None if split == "all" else split,
                                                group=FLAGS.group, overwrite=FLAGS.overwrite)
  print(f"{spec.name} of {FLAGS.dataset} (split {split}"
        f"{', group ' + FLAGS.group if FLAGS.group else ''}): {summary['images']} images, "
        f"annotated nuclei {summary['nuclei_before']} -> {summary['nuclei_after']}")
  print(f"written to {FLAGS.output} (summary: {os.path.join(FLAGS.output, 'partial.json')})")
  return 0


def cmd_evaluate() -> int:
  if FLAGS.predictions or FLAGS.ground_truth:
    _require(predictions=FLAGS.predictions, ground_truth=FLAGS.ground_truth)
    if FLAGS.score_threshold is not None:
      from pa_jax.errors import InputError

      raise InputError("score_threshold", "only applies to --workdir (label maps in "
                       "--predictions are already drawn)")
    from pa_jax.evaluation import report

    out = FLAGS.output or os.path.join(FLAGS.predictions, "evaluation")
    summary = report.evaluate_folders(FLAGS.predictions, FLAGS.ground_truth, out,
                                      split=FLAGS.split, group=FLAGS.group,
                                      allow_missing=FLAGS.allow_missing,
                                      overwrite=FLAGS.overwrite, on_error=FLAGS.on_error,
                                      progress=sys.stderr.isatty())
    _print_summary(summary, out)
    return 0
  _require(workdir=FLAGS.workdir)
  from pa_jax import experiment

  summary = experiment.evaluate_run(FLAGS.workdir, FLAGS.split, FLAGS.output, best=FLAGS.best,
                                    overwrite=FLAGS.overwrite,
                                    score_threshold=FLAGS.score_threshold)
  _print_summary(summary, summary["output"])
  return 0


def _print_summary(summary: dict, out: str) -> None:
  keys = ("map", "aji", "aji_pooled", "ncs", "precision", "recall", "f1", "pq")
  row = summary.get("overall", summary)
  vals = [f"{k}={row[k]:.4f}" for k in keys if k in row and isinstance(row[k], (int, float))]
  skipped = summary.get("skipped") or []
  extra = f", {len(skipped)} skipped (see {summary['skipped_csv']})" if skipped else ""
  print(f"{row.get('n_images', '?')} images{extra}: " + "  ".join(vals))
  print(f"report: {out}")


def cmd_predict() -> int:
  _require(input=FLAGS.input, output=FLAGS.output)
  from pa_jax import predict

  if FLAGS.method == "model" and not (FLAGS.workdir or FLAGS.model):
    from pa_jax.zoo import choose, registry

    path = choose.model_path(None, None, FLAGS.best)  # a missing default: its one error line
    print(f"using the shipped model {registry.DEFAULT_MODEL} ({registry.shown(path)}); "
          "--model NAME_OR_PATH or --workdir RUN picks another")
  result = predict.predict_folder(FLAGS.input, FLAGS.output, method=FLAGS.method,
                                  workdir=FLAGS.workdir, model=FLAGS.model,
                                  formats=FLAGS.format,
                                  contours=FLAGS.contours, attention=FLAGS.attention,
                                  split=FLAGS.split, group=FLAGS.group, best=FLAGS.best,
                                  classical_params=FLAGS.classical_params,
                                  overwrite=FLAGS.overwrite, on_error=FLAGS.on_error,
                                  channel=FLAGS.channel, plane=FLAGS.plane,
                                  level=FLAGS.level, region=FLAGS.region, stream=FLAGS.stream,
                                  diameter=FLAGS.diameter, mask_overlap=FLAGS.mask_overlap,
                                  progress=sys.stderr.isatty())
  skipped = result["skipped"]
  extra = f", {len(skipped)} skipped (see {result['skipped_csv']})" if skipped else ""
  print(f"{result['images']} images segmented{extra}; outputs in {FLAGS.output}")
  return 0


def _config(required: bool = True):
  """The loaded --config; a file ml_collections failed to load (it defers that error to
  the first attribute access) is one line naming the file."""
  from pa_jax.errors import InputError

  cfg = FLAGS.config
  if cfg is None:
    if not required:
      return None
    raise InputError("--config", "this flag is required here (e.g. configs/dh25_pa.py:cpu)")
  if type(cfg).__name__ == "_ErrorConfig":
    raise cli_errors.config_load_error(cli_errors.config_file_arg(sys.argv),
                                       object.__getattribute__(cfg, "_error"))
  return cfg


def cmd_train() -> int:
  _require(workdir=FLAGS.workdir)
  cfg = _config()
  from pa_jax import experiment
  from pa_jax.train.loop import TrainingInterrupted

  try:
    state = experiment.train(cfg, FLAGS.workdir)
  except TrainingInterrupted as e:
    print(str(e), file=sys.stderr)
    return e.exit_code
  import jax

  print(f"trained to step {int(jax.device_get(state.step))}; evaluate with: python run.py "
        f"evaluate --workdir {FLAGS.workdir}")
  return 0


def _config_overrides(argv: list[str]) -> list[str]:
  """The `--config.<field>` overrides of a command line, each as one `--config.x=y` string
  (absl also accepts `--config.x y`), so a result file says which config it measured."""
  out = []
  for i, a in enumerate(argv):
    if a.startswith("--config."):
      out.append(a if "=" in a or i + 1 == len(argv) else f"{a}={argv[i + 1]}")
  return out


def cmd_benchmark() -> int:
  cfg = _config()
  from pa_jax import benchmark

  steps = FLAGS.steps if FLAGS.steps is not None else 10
  out = FLAGS.output or os.path.join("bench", "results", "benchmark.json")
  name = config_flags.get_config_filename(flags.FLAGS["config"])
  result = benchmark.run(cfg, steps=steps, output=out, config_name=name,
                         overrides=_config_overrides(sys.argv[1:]))
  for k, v in result.items():
    print(f"{k}: {v}")
  print(f"written to {out}")
  return 0


def cmd_annotate() -> int:
  _require(images=FLAGS.images, output=FLAGS.output)
  from pa_jax.annotate.loop import DEFAULT_FORMATS, annotate_main

  formats = FLAGS.format if FLAGS["format"].present else DEFAULT_FORMATS
  report = annotate_main(FLAGS.images, FLAGS.annotations, FLAGS.output, rounds=FLAGS.rounds,
                         target_recall=FLAGS.target_recall, formats=formats,
                         contours=FLAGS.contours, config=_config(required=False),
                         seed=FLAGS.seed, steps=FLAGS.steps,
                         accept_proposals=FLAGS.accept_proposals, overwrite=FLAGS.overwrite,
                         from_scratch=FLAGS.from_scratch)
  totals = report.get("totals", {})
  counts = ", ".join(f"{k} {v}" for k, v in totals.items() if isinstance(v, (int, float)))
  print(f"round {report.get('round')}: {counts}")
  hold = report.get("holdout") or {}
  if hold:
    print("hold-out: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                   for k, v in hold.items()))
  if report.get("stopped"):
    print(f"stopped: {report['stopped']}")
  if report.get("round"):
    print(f"edit the files in {os.path.join(FLAGS.output, 'current')} (QuPath/Fiji), then "
          "run the same command again")
  return 0


def cmd_export_model() -> int:
  _require(workdir=FLAGS.workdir, name=FLAGS.name)
  from pa_jax.zoo import registry
  from pa_jax.zoo.export import export_run

  npz, card = export_run(FLAGS.workdir, FLAGS.output, FLAGS.name, best=FLAGS.best,
                         overwrite=FLAGS.overwrite)
  shipped = npz.parent.resolve() == registry.MODELS_DIR
  print(f"model written: {registry.shown(npz)} and {registry.shown(card)} (fill in its "
        f"'card'); use it with: python run.py predict --model "
        f"{FLAGS.name if shipped else registry.shown(npz)} --input DIR --output DIR")
  return 0


def cmd_demo() -> int:
  from pa_jax import demo

  return demo.run(FLAGS.workdir or os.path.join("runs", "demo"))


def main(argv) -> int:
  args = argv[1:]
  command = args[0] if args else "demo"
  if command not in COMMANDS:
    print(f"run.py: unknown command {command!r}; use one of {', '.join(COMMANDS)}",
          file=sys.stderr)
    return 2
  if len(args) > 1:
    print(f"run.py {command}: unexpected arguments {' '.join(args[1:])!r}", file=sys.stderr)
    return 2
  handlers = {
      "demo": cmd_demo,
      "partial": cmd_partial,
      "evaluate": cmd_evaluate,
      "predict": cmd_predict,
      "train": cmd_train,
      "annotate": cmd_annotate,
      "benchmark": cmd_benchmark,
      "export-model": cmd_export_model,
  }
  return handlers[command]()


def _normalize_flag_names(argv: list[str]) -> list[str]:
  """Accepts `--ground-truth` as well as absl's `--ground_truth` (not inside --config.*)."""
  out = []
  for a in argv:
    if a.startswith("--") and not a.startswith("--config"):
      name, eq, value = a[2:].partition("=")
      a = "--" + name.replace("-", "_") + eq + value
    out.append(a)
  return out


def _parse(argv: list[str]) -> list[str]:
  """FLAGS(argv), every failure as one line on stderr and exit code 2."""
  try:
    return FLAGS(argv)
  except Exception as e:  # noqa: BLE001 - every parse failure is reported in one line
    if cli_errors.debug_requested(argv):
      raise
    own = cli_errors.pajax_error_in_chain(e)
    if own is not None:  # a config check raised InputError("model.x", ...) in get_config
      print(cli_errors.error_line(own), file=sys.stderr)
      sys.exit(own.exit_code)
    if cli_errors.is_config_load_failure(argv, e):
      path = cli_errors.config_file_arg(argv)
      line = cli_errors.error_line(cli_errors.config_load_error(path, e))
    elif isinstance(e, flags.Error):
      line = cli_errors.flag_error(e)
    elif isinstance(e, (AttributeError, KeyError, TypeError, ValueError, OSError)):
      # ml_collections raises these while applying --config / --config.x=y flags.
      line = cli_errors.config_override_error(argv, e)
    else:
      line = cli_errors.unexpected_line(e)
    print(line, file=sys.stderr)
    sys.exit(2)


def _run() -> None:
  from pa_jax.errors import PaJaxError

  argv = _normalize_flag_names(sys.argv)
  remaining = _parse(argv)
  try:
    code = main(remaining)
  except PaJaxError as e:
    if FLAGS.debug:
      raise
    print(cli_errors.error_line(e), file=sys.stderr)
    code = e.exit_code
    # The error is said; leave now, before interpreter teardown lets callbacks that
    # libraries (Orbax, TensorStore, asyncio) left in flight print their own tracebacks.
    # Every file of ours is written atomically and already closed on this path.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
  except KeyboardInterrupt:
    if FLAGS.debug:
      raise
    print("interrupted", file=sys.stderr)
    code = 130
  except Exception as e:  # noqa: BLE001 - a bug or an unforeseen fault: one line, exit 1
    if FLAGS.debug:
      raise
    print(cli_errors.unexpected_line(e), file=sys.stderr)
    code = 1
  sys.exit(code)


if __name__ == "__main__":
  _run()
