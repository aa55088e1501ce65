"""The classical floor on H&E: grey level vs the haematoxylin channel (`stain`), per image.

Runs `pa_jax.infer.classical.segment_classical` twice on every image of the shared H&E sets
(all 16 Kumar tiles and all 37 TNBC crops, every split in the folder), once with
`stain='none'` (the grey-level floor used before) and once with `stain='hed'` (rgb2hed
haematoxylin channel), all other parameters at their defaults, and scores both against
the full labels (`pa_jax.evaluation.metrics.image_metrics`). Also records what
`stain='auto'` picks for each image. Writes JSON and prints a Markdown table.
A dataset given as `FOLDER:MODALITY` keeps only the index rows of that modality (e.g. the
dsb2018 histology images, whose floor `stain='auto'` now also changes).

    python bench/classical_he.py [--datasets ../shared/datasets/kumar ../shared/datasets/tnbc
        ../shared/datasets/dsb2018:histology] [--out bench/results/classical_he.json]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench_config import write_result  # noqa: E402
from pa_jax.data import readers  # noqa: E402
from pa_jax.evaluation.metrics import image_metrics  # noqa: E402
from pa_jax.evaluation.report import summarize  # noqa: E402
from pa_jax.infer import classical  # noqa: E402

STAINS = ("none", "hed")
KEYS = ("map", "aji", "ncs", "precision", "recall", "f1", "pq", "n_gt", "n_pred", "aji_c",
        "aji_u")
TABLE = (("aji", "AJI"), ("aji_pooled", "AJI pooled"), ("f1", "F1@0.5"),
         ("precision", "P@0.5"), ("recall", "R@0.5"), ("map", "mAP"))


def score_dataset(root: Path, modality: str = "") -> list[dict]:
  """One row per image: id and, per stain, the metrics of the floor with it."""
  rows = []
  for rec in readers.read_dataset_folder(root):
    if modality and rec.modality != modality:
      continue
    ex = readers.load_example(rec)
    row = {"id": rec.id, "auto": classical.resolve_stain(ex.image)}
    for stain in STAINS:
      t = time.perf_counter()
      m = image_metrics(ex.labels, classical.segment_classical(ex.image, stain=stain))
      row[stain] = {k: m[k] for k in KEYS} | {"seconds": round(time.perf_counter() - t, 2)}
    rows.append(row)
    print(f"{root.name}/{rec.id}: AJI {row['none']['aji']:.3f} -> {row['hed']['aji']:.3f}, "
          f"F1 {row['none']['f1']:.3f} -> {row['hed']['f1']:.3f}", flush=True)
  return rows


def summary(rows: list[dict]) -> dict:
  """Per stain: mean over images (`report.summarize`), pooled AJI, and the number of
  images where the H channel is better on AJI."""
  out = {s: summarize([r[s] for r in rows], s) for s in STAINS}
  out["images_hed_better_aji"] = sum(r["hed"]["aji"] > r["none"]["aji"] for r in rows)
  out["auto_picks_hed"] = sum(r["auto"] == "hed" for r in rows)
  out["n_images"] = len(rows)
  return out


def markdown(results: dict) -> str:
  head = "| set | images | channel | " + " | ".join(t for _, t in TABLE) + " |"
  lines = [head, "|" + "|".join(["---"] * 3 + ["---:"] * len(TABLE)) + "|"]
  for name, res in results.items():
    s = res["summary"]
    for stain, label in (("none", "grey (before)"), ("hed", "haematoxylin")):
      cells = [name, str(s["n_images"]), label] + [f"{s[stain][k]:.3f}" for k, _ in TABLE]
      lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--datasets", nargs="+", default=["../shared/datasets/kumar",
                                                    "../shared/datasets/tnbc",
                                                    "../shared/datasets/dsb2018:histology"])
  ap.add_argument("--out", default="bench/results/classical_he.json")
  a = ap.parse_args(argv)
  results = {}
  for d in a.datasets:
    folder, _, modality = d.partition(":")
    rows = score_dataset(Path(folder), modality)
    name = Path(folder).name + (f" {modality}" if modality else "")
    results[name] = {"summary": summary(rows), "images": rows}
  write_result(a.out, {"command": "python bench/classical_he.py", "machine": platform.node(),
                       "params": {k: v for k, v in classical.DEFAULT_PARAMS.items()
                                  if k != "stain"},
                       "datasets": results})
  print(markdown(results))


if __name__ == "__main__":
  main()
