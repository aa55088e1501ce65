"""Test-split metrics during training, several runs side by side (the paper's Fig. 4).

  python bench/eval_curves.py runs/dh100_baseline_cpu runs/dh25_baseline_cpu runs/dh25_pa_cpu \
      [--metrics map,recall,aji] [--png docs/figures/dh360_curves.png]

Reads the periodic evaluations (`train.eval_every`) that training logs to each run's
`metrics.jsonl` as `eval/<metric>` records. A resumed run may log a step twice; the last
record of a step wins. Only higher-is-better metrics (map, aji, ncs, recall, ...) make
sense for the "best" row. Prints one markdown table per metric (rows: steps, columns: runs) and
the best value of each run with its step (the paper's Table 1 reports each model's best).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def eval_records(workdir: Path) -> dict[int, dict[str, float]]:
  """{step: {metric: value}} of the periodic evaluations logged by one run."""
  path = workdir / "metrics.jsonl"
  if not path.is_file():
    raise SystemExit(f"{path}: no metrics.jsonl (not a pa_jax training run)")
  out: dict[int, dict[str, float]] = {}
  for line in path.read_text().splitlines():
    try:
      rec = json.loads(line)
    except json.JSONDecodeError:  # a killed run's half-written last line
      continue
    evals = {k[len("eval/"):]: v for k, v in rec.items() if k.startswith("eval/")}
    if evals:
      out[int(rec["step"])] = evals
  if not out:
    raise SystemExit(f"{path}: no periodic evaluation logged (train with train.eval_every > 0)")
  return out


def table(runs: dict[str, dict[int, dict[str, float]]], metric: str) -> str:
  steps = sorted({s for recs in runs.values() for s in recs})
  lines = ["| step | " + " | ".join(runs) + " |", "|---:|" + "---:|" * len(runs)]
  for s in steps:
    cells = [f"{recs[s][metric]:.3f}" if s in recs and metric in recs[s] else "—"
             for recs in runs.values()]
    lines.append(f"| {s} | " + " | ".join(cells) + " |")
  best = []
  for recs in runs.values():
    vals = [(v[metric], s) for s, v in recs.items() if metric in v]
    best.append(f"{max(vals)[0]:.3f} (step {max(vals)[1]})" if vals else "—")
  lines.append("| best | " + " | ".join(best) + " |")
  return "\n".join(lines)


def plot(runs: dict[str, dict[int, dict[str, float]]], metrics: list[str], path: Path) -> None:
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  fig = Figure(figsize=(4 * len(metrics), 3.4))
  FigureCanvasAgg(fig)
  for i, metric in enumerate(metrics):
    ax = fig.add_subplot(1, len(metrics), i + 1)
    for name, recs in runs.items():
      steps = sorted(s for s in recs if metric in recs[s])
      ax.plot(steps, [recs[s][metric] for s in steps], marker="o", ms=3, label=name)
    ax.set_xlabel("training step")
    ax.set_title(metric)
    ax.grid(alpha=0.3)
  fig.axes[0].legend(fontsize=7)
  fig.tight_layout()
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=110)


def main(argv: list[str]) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("workdirs", nargs="+", type=Path)
  p.add_argument("--metrics", default="map,recall,aji")
  p.add_argument("--png", type=Path, default=None)
  a = p.parse_args(argv)
  names = [w.name for w in a.workdirs]
  # Column names: the workdir's name, or its whole path where two names collide.
  runs = {(w.name if names.count(w.name) == 1 else str(w)): eval_records(w) for w in a.workdirs}
  metrics = [m for m in a.metrics.split(",") if m]
  for metric in metrics:
    print(f"\n{metric}\n")
    print(table(runs, metric))
  if a.png:
    plot(runs, metrics, a.png)
    print(f"\nwrote {a.png}")


if __name__ == "__main__":
  main(sys.argv[1:])
