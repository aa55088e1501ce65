"""Markdown table of evaluated runs (the numbers in docs/results.md come from here).

  python bench/results_table.py runs/dh100_baseline_cpu runs/dh25_baseline_cpu runs/dh25_pa_cpu

For each workdir: the latest `eval_<split>_step<k>/summary.csv` written by
`python run.py evaluate --workdir W`, the training view and annotated-nuclei count from
`run.json`, and the steps from that evaluation folder's name (`..._step<k>`).
"""

import csv
import json
import sys
from pathlib import Path

from paired_compare import latest_evaluation  # bench/ is on sys.path when run as a script


def row(workdir: Path) -> str:
  latest = latest_evaluation(workdir)
  with open(latest / "summary.csv") as f:
    overall = next(r for r in csv.DictReader(f) if r["scope"] == "all")
  meta = json.loads((workdir / "run.json").read_text())
  cfg = json.loads((workdir / "config.json").read_text())
  ds = meta.get("dataset", meta.get("run_metadata", {}).get("dataset", {}))
  view = meta.get("view", {}).get("name", "")
  cells = [workdir.name, view, str(ds.get("annotated_nuclei", "")),
           "yes" if cfg["model"]["partial"]["enabled"] else "no",
           latest.name.rsplit("step", 1)[1], overall["n_images"]]
  cells += [f"{float(overall[k]):.3f}" for k in ("map", "aji", "ncs", "precision", "recall", "f1")]
  return "| " + " | ".join(cells) + " |"


def main(argv):
  print("| run | training labels | annotated nuclei | PA module | steps | test images | mAP | AJI | NCS | P@0.5 | R@0.5 | F1@0.5 |")
  print("|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
  for w in argv:
    print(row(Path(w)))


if __name__ == "__main__":
  main(sys.argv[1:])
