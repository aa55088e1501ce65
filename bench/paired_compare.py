"""Per-image paired comparison of two evaluated runs on the same test images.

  python bench/paired_compare.py runs/dh25_baseline_cpu runs/dh25_pa_cpu

Mean metrics over images hide whether a gain is broad or comes from a few images. For each
metric this prints how many images B beats A on, loses on and ties, the mean per-image
difference, and an exact two-sided sign test (binomial, ties dropped) — the test that needs
no assumption about how the per-image differences are distributed. Reads the latest
`eval_<split>_step<k>/per_image.csv` of each workdir (`python run.py evaluate --workdir W`),
or an evaluation folder's own per_image.csv (`run.py evaluate --predictions ... --output DIR`):

  python bench/paired_compare.py runs/classical_dh360/eval runs/dh100_baseline_cpu
"""

import csv
import math
import sys
from pathlib import Path

METRICS = ("map", "aji", "ncs", "precision", "recall", "f1")


def latest_evaluation(workdir: Path) -> Path:
  """The evaluation folder of WORKDIR: WORKDIR itself when it holds per_image.csv (e.g. the
  classical floor's `runs/classical_dh360/eval`), else a run's latest eval_<split>_step<k>."""
  if (workdir / "per_image.csv").is_file():
    return workdir
  evals = sorted(workdir.glob("eval_*_step*/per_image.csv"),
                 key=lambda p: int(p.parent.name.rsplit("step", 1)[1]))
  if not evals:
    raise SystemExit(f"{workdir}: no evaluation; run: python run.py evaluate --workdir {workdir}")
  return evals[-1].parent


def latest_per_image(workdir: Path) -> dict[str, dict[str, str]]:
  """Rows of the latest evaluation's per_image.csv, by image id."""
  with open(latest_evaluation(workdir) / "per_image.csv") as f:
    return {r["id"]: r for r in csv.DictReader(f)}


def sign_test_p(wins: int, losses: int) -> float:
  """Exact two-sided binomial p-value of `wins` vs `losses` under p = 1/2."""
  n = wins + losses
  if n == 0:
    return 1.0
  k = min(wins, losses)
  tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0 ** n
  return min(1.0, 2.0 * tail)


def compare(a: dict, b: dict, metric: str, eps: float = 1e-9) -> tuple[int, int, int, float, float]:
  """(B wins, B losses, ties, mean of B − A, sign-test p) over the images both runs scored."""
  diffs = [float(b[k][metric]) - float(a[k][metric]) for k in sorted(a.keys() & b.keys())]
  wins = sum(d > eps for d in diffs)
  losses = sum(d < -eps for d in diffs)
  return wins, losses, len(diffs) - wins - losses, sum(diffs) / max(len(diffs), 1), sign_test_p(wins, losses)


def main(argv):
  if len(argv) != 2:
    raise SystemExit("usage: python bench/paired_compare.py WORKDIR_A WORKDIR_B")
  wa, wb = Path(argv[0]), Path(argv[1])
  a, b = latest_per_image(wa), latest_per_image(wb)
  common = a.keys() & b.keys()
  if not common:
    raise SystemExit(f"{wa} and {wb}: no test image in common")
  print(f"B = {wb} vs A = {wa}, {len(common)} images in common")
  print("| metric | B better | B worse | tie | mean(B − A) | sign-test p |")
  print("|---|---:|---:|---:|---:|---:|")
  for m in METRICS:
    w, l, t, d, p = compare(a, b, m)
    print(f"| {m} | {w} | {l} | {t} | {d:+.3f} | {p:.3g} |")


if __name__ == "__main__":
  main(sys.argv[1:])
