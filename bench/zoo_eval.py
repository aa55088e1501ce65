"""A nucleus model against the classical floor, per dataset and modality (issue #14).

Scores a shipped model (`--model`, default the shipped default) or a trained run
(`--workdir`) on the images its training never read: dsb2018's test split (one row per
`modality`) and the validation tiles carved from Kumar and TNBC (`data.val_*` of the
model's own config, so exactly the images held out from its training). Next to it, on the
same images, the classical floor (`infer.classical.segment_classical`, stain='auto':
haematoxylin channel on H&E). Metrics as ../shared/DESIGN.md defines them, means over
images; AJI also pooled over a set (Kumar's convention) and per image.

    python bench/zoo_eval.py [--model nuclei_cpu_v2 | --workdir runs/zoo_nuclei_cpu [--best]]
        [--splits test,val] [--modality M] [--max-images N] [--dilate model|on|off]
        [--images-of configs/zoo_nuclei.py:cpu] [--out bench/results/zoo_eval.json]

`--dilate on|off` overrides the model's post-process dilation (`eval.dilate`), the
comparison docs/zoo.md reports; `--modality` keeps only images of that index.csv modality.
`--images-of CONFIG` scores on that config's splits instead of the model's own: a model
trained without Kumar and TNBC (`configs/zoo_nuclei.py:cpu_dsb2018`) carves no validation
tiles of its own, and `--images-of configs/zoo_nuclei.py:cpu` gives it the shipped model's.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench_config import load_config, write_result  # noqa: E402
from pa_jax import experiment  # noqa: E402
from pa_jax.data import readers  # noqa: E402
from pa_jax.evaluation.metrics import image_metrics  # noqa: E402
from pa_jax.evaluation.report import summarize  # noqa: E402
from pa_jax.infer import classical  # noqa: E402
from pa_jax.infer.predictor import predictor_for  # noqa: E402
from pa_jax.zoo.registry import DEFAULT_MODEL  # noqa: E402

ROW_KEYS = ("map", "aji", "ncs", "precision", "recall", "f1", "pq", "n_gt", "n_pred",
            "aji_c", "aji_u")
TABLE = (("map", "mAP"), ("aji", "AJI"), ("aji_pooled", "AJI pooled"), ("precision", "P@0.5"),
         ("recall", "R@0.5"), ("f1", "F1@0.5"))


def add_model_arguments(ap) -> None:
  """--model NAME | --workdir RUN [--best]: the model `open_model` opens."""
  ap.add_argument("--model", default=DEFAULT_MODEL, help="a shipped model (docs/zoo.md)")
  ap.add_argument("--workdir", default="", help="a trained run instead of --model")
  ap.add_argument("--best", action="store_true", help="the run's best checkpoint")


def open_model(args):
  """(config, model, variables, label) of --workdir or --model."""
  if args.workdir:
    cfg, model, variables, step = experiment.load_run(args.workdir, best=args.best)
    return cfg, model, variables, f"{Path(args.workdir).name} step {step}"
  from pa_jax.zoo.load import open_model as open_zoo

  zm = open_zoo(args.model)
  return zm.cfg, zm.model, zm.variables, f"{zm.meta.get('name', zm.path.stem)}"


def set_name(rec: readers.Record, split: str) -> str:
  dataset = Path(rec.image_path).resolve().parent.parent.name
  return f"{dataset} {split}" + (f" {rec.modality}" if dataset == "dsb2018" else "")


# The fields of `data` that say which images a split holds (not how they are prepared).
SPLIT_FIELDS = ("source", "group", "train_split", "eval_split", "val_fraction", "val_seed",
                "val_sources")


def with_images_of(cfg, spec: str):
  """A copy of `cfg` whose splits are those of the config `spec` ('configs/x.py[:arg]')."""
  other, cfg = load_config(spec), cfg.copy_and_resolve_references()
  for name in SPLIT_FIELDS:
    cfg.data[name] = other.data[name]
  return cfg


def score(cfg, model, variables, splits, max_images: int = 0, modality: str = "",
          images_cfg=None) -> dict[str, list[dict]]:
  """Per set name, one row per image of `splits` (of `images_cfg`, default `cfg`)."""
  predictor = predictor_for(cfg, model, variables)
  rows: dict[str, list[dict]] = defaultdict(list)
  for split in splits:
    records = [r for r in experiment.source_records(images_cfg or cfg, split)
               if not modality or r.modality == modality]
    if max_images:
      records = records[:max_images]
    for rec in records:
      ex = readers.load_example(rec)
      t = time.perf_counter()
      pred = predictor(ex.image)
      seconds = time.perf_counter() - t
      m = image_metrics(ex.labels, pred)
      f = image_metrics(ex.labels, classical.segment_classical(ex.image))
      name = set_name(rec, split)
      rows[name].append({"id": rec.id, "seconds": round(seconds, 2),
                         "diameter": predictor.last_diameter,
                         "model": {k: m[k] for k in ROW_KEYS},
                         "floor": {k: f[k] for k in ROW_KEYS}})
      print(f"{name} {rec.id[:20]}: AJI model {m['aji']:.3f} floor {f['aji']:.3f}, "
            f"mAP {m['map']:.3f} / {f['map']:.3f}  ({seconds:.1f}s)", flush=True)
  return dict(rows)


def markdown(results: dict, label: str) -> str:
  head = "| set | images | method | " + " | ".join(t for _, t in TABLE) + " |"
  lines = [head, "|" + "|".join(["---"] * 3 + ["---:"] * len(TABLE)) + "|"]
  for name, res in results.items():
    for who, text in (("model", label), ("floor", "classical floor")):
      s = res["summary"][who]
      lines.append("| " + " | ".join([name, str(s["n_images"]), text]
                                     + [f"{s[k]:.3f}" for k, _ in TABLE]) + " |")
  return "\n".join(lines)


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  add_model_arguments(ap)
  ap.add_argument("--splits", default="test,val")
  ap.add_argument("--max-images", type=int, default=0)
  ap.add_argument("--modality", default="")
  ap.add_argument("--dilate", choices=("model", "on", "off"), default="model")
  ap.add_argument("--images-of", default="", help="score on this config's splits")
  ap.add_argument("--out", default="bench/results/zoo_eval.json")
  args = ap.parse_args(argv)
  cfg, model, variables, label = open_model(args)
  if args.dilate != "model":
    cfg.eval.dilate = args.dilate == "on"
    label += f" dilate {args.dilate}"
  t0 = time.time()
  images_cfg = with_images_of(cfg, args.images_of) if args.images_of else None
  per_set = score(cfg, model, variables, args.splits.split(","), args.max_images, args.modality,
                  images_cfg)
  results = {name: {"summary": {who: summarize([r[who] for r in rows], who)
                                for who in ("model", "floor")},
                    "per_image_aji": {r["id"]: (r["model"]["aji"], r["floor"]["aji"])
                                      for r in rows},
                    "rows": rows}
             for name, rows in sorted(per_set.items())}
  table = markdown(results, label)
  print(table)
  write_result(args.out, {"model": label, "command": " ".join(sys.argv),
                          "machine": platform.platform(), "seconds": round(time.time() - t0),
                          "results": results, "markdown": table})


if __name__ == "__main__":
  main()
