"""Markdown tables of the H&E partial-label runs (docs/results.md, "Kumar and TNBC").

  python bench/he_table.py --set "kumar val" \
      --row "shipped model, as it is=bench/results/zoo_eval_nuclei_cpu_v2.json" \
      --row "25 % labels + PA, from the shipped model=bench/results/he_kumar25_pa_cpu.json@runs/he/kumar25_pa_cpu" ...

Each `--row LABEL=JSON[@WORKDIR]` is one `bench/zoo_eval.py` result file (its `--set` entry:
the same held-out tiles for every row); the classical floor's row is taken from the first
file. With `@WORKDIR`, the run's training log (metrics.jsonl) adds the fraction of the
unannotated nuclei of its training crops that PA boxes covered (box IoU >= 0.5), averaged
over its first and last 100 steps. Prints the summary table (means over images; AJI also
pooled over the set, sum C / sum U) and a per-image AJI table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

COLUMNS = (("map", "mAP"), ("aji", "AJI"), ("aji_pooled", "AJI pooled"), ("precision", "P@0.5"),
           ("recall", "R@0.5"), ("f1", "F1@0.5"))


def coverage(workdir: Path, steps: int = 100) -> tuple[float, float]:
  """Mean `pa_unannotated_covered` over the first and the last `steps` logged steps."""
  recs = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()
          if line.strip()]
  recs = [r for r in recs if "pa_unannotated_covered" in r and r.get("pa_unannotated_per_image", 0) > 0]
  if not recs:
    return float("nan"), float("nan")
  last = max(int(r["step"]) for r in recs)

  def mean(rows):
    return sum(float(r["pa_unannotated_covered"]) for r in rows) / max(len(rows), 1)

  return (mean([r for r in recs if int(r["step"]) <= steps]),
          mean([r for r in recs if int(r["step"]) > last - steps]))


def parse_row(spec: str) -> tuple[str, Path, Path | None]:
  label, _, rest = spec.partition("=")
  path, _, workdir = rest.partition("@")
  if not label or not path:
    raise SystemExit(f"--row {spec!r}: expected LABEL=JSON[@WORKDIR]")
  return label, Path(path), Path(workdir) if workdir else None


def tables(set_name: str, rows: list[tuple[str, Path, Path | None]]) -> str:
  head = "| method | " + " | ".join(t for _, t in COLUMNS) + " | PA coverage, first → last 100 steps |"
  lines = [head, "|---|" + "---:|" * (len(COLUMNS) + 1)]
  per_image: dict[str, dict[str, float]] = {}
  floor = None
  for label, path, workdir in rows:
    res = json.loads(path.read_text())["results"][set_name]
    floor = floor or res["summary"]["floor"]
    cov = ""
    if workdir is not None:
      first, last = coverage(workdir)
      cov = f"{first:.0%} → {last:.0%}"
    m = res["summary"]["model"]
    lines.append(f"| {label} | " + " | ".join(f"{m[k]:.3f}" for k, _ in COLUMNS) + f" | {cov} |")
    for image_id, (model_aji, floor_aji) in res["per_image_aji"].items():
      per_image.setdefault(image_id, {})[label] = model_aji
      per_image[image_id]["classical floor"] = floor_aji
  lines.append("| classical floor (haematoxylin Otsu + watershed) | "
               + " | ".join(f"{floor[k]:.3f}" for k, _ in COLUMNS) + " |  |")
  labels = [r[0] for r in rows] + ["classical floor"]
  lines += ["", "AJI per image:", "", "| image | " + " | ".join(labels) + " |",
            "|---|" + "---:|" * len(labels)]
  for image_id in sorted(per_image):
    lines.append(f"| {image_id} | " + " | ".join(
        f"{per_image[image_id][k]:.3f}" if k in per_image[image_id] else "" for k in labels) + " |")
  return "\n".join(lines)


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--set", required=True, help="a key of the zoo_eval results, e.g. 'kumar val'")
  ap.add_argument("--row", action="append", required=True, help="LABEL=JSON[@WORKDIR]")
  a = ap.parse_args(argv)
  print(tables(a.set, [parse_row(r) for r in a.row]))


if __name__ == "__main__":
  main()
