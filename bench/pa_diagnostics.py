"""The partial-annotation module's training diagnostics of a run, averaged over windows.

  python bench/pa_diagnostics.py runs/dh25_pa_cpu [--window 150]

Reads WORKDIR/metrics.jsonl (one record per logged step) and prints, per window of
training steps, the unweighted mean over the logged records of: PA boxes per image, the
fraction of unannotated ground-truth nuclei they cover (box IoU >= 0.5; known when the
training labels are a partial view of full labels), the same over the unannotated nuclei
that no crop edge cuts (logged since 2026-12-01; "—" in older runs), unannotated nuclei
per image, and the anchors / RoIs the PA boxes turned from negative into ignored. The first step with at
least one PA box per image is printed too. This is where docs/results.md's coverage
figures come from.
"""

import argparse
import json
from pathlib import Path

FIELDS = (("pa_boxes_per_image", "PA boxes/img"), ("pa_unannotated_covered", "covered"),
          ("pa_unannotated_whole_covered", "covered, uncut nuclei"),
          ("pa_unannotated_per_image", "unannotated/img"),
          ("pa_unannotated_whole_per_image", "uncut unannotated/img"),
          ("pa_ignored_anchors_per_image", "ignored anchors/img"),
          ("pa_ignored_rois_per_image", "ignored RoIs/img"))


def windows(records: list[dict], width: int) -> list[tuple[int, int, dict]]:
  """[(first step, last step, {field: mean})] over consecutive `width`-step windows."""
  out = []
  by_window: dict[int, list[dict]] = {}
  for r in records:
    by_window.setdefault((int(r["step"]) - 1) // width, []).append(r)
  for k in sorted(by_window):
    rows = by_window[k]
    means = {}
    for f, _ in FIELDS:
      vals = [float(r[f]) for r in rows if f in r]
      means[f] = sum(vals) / len(vals) if vals else float("nan")
    out.append((k * width + 1, (k + 1) * width, means))
  return out


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("workdir")
  ap.add_argument("--window", type=int, default=150)
  a = ap.parse_args()
  path = Path(a.workdir) / "metrics.jsonl"
  if not path.is_file():
    raise SystemExit(f"{path}: not found (a training run writes it)")
  records = [r for r in map(json.loads, path.read_text().splitlines())
             if "pa_boxes_per_image" in r]
  if not records:
    raise SystemExit(f"{path}: no partial-annotation diagnostics (module off?)")
  first = next((r["step"] for r in records if r["pa_boxes_per_image"] >= 1), None)
  print(f"{path}: {len(records)} logged steps; first step with >= 1 PA box per image: {first}")
  print("| steps | " + " | ".join(t for _, t in FIELDS) + " |")
  print("|---|" + "---:|" * len(FIELDS))
  for lo, hi, m in windows(records, a.window):
    cells = ["—" if m[f] != m[f] else f"{m[f]:.0%}" if f.endswith("_covered")
             else f"{m[f]:.1f}" for f, _ in FIELDS]  # — : not logged in that window
    print(f"| {lo}–{hi} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
  main()
