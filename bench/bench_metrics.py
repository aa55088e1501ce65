"""Times `pa_jax.evaluation.metrics.image_metrics` on a dense synthetic image.

A 1024 x 1024 ground truth with 2,000 nuclei (random centres, each pixel within 11 px of a
centre belongs to the nearest one, so neighbours touch like in a crowded field) and a
prediction of 2,000 nuclei built the same way from jittered centres plus some unrelated
ones, with shuffled label values. Prints the median wall time of several calls.

    python bench/bench_metrics.py [--size 1024] [--nuclei 2000] [--repeats 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np
from scipy import ndimage

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pa_jax.evaluation import metrics  # noqa: E402


def synthetic_labels(centres: np.ndarray, size: int, radius: float,
                     rng: np.random.Generator) -> np.ndarray:
  """Nearest-centre (Voronoi) cells clipped to `radius`, with shuffled label values."""
  seeds = np.zeros((size, size), np.int32)
  seeds[centres[:, 0], centres[:, 1]] = np.arange(1, len(centres) + 1)
  dist, (iy, ix) = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
  labels = seeds[iy, ix]
  labels[dist > radius] = 0
  perm = np.concatenate([[0], rng.permutation(len(centres)) + 1])
  return perm[labels].astype(np.int32)


def make_pair(size: int = 1024, n: int = 2000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(seed)
  centres = np.unique(rng.integers(4, size - 4, size=(n * 2, 2)), axis=0)
  centres = centres[rng.permutation(len(centres))[:n]]
  gt = synthetic_labels(centres, size, 11.0, rng)
  moved = np.clip(centres + rng.integers(-3, 4, size=centres.shape), 0, size - 1)
  k = n // 10  # 10 % of the predictions are unrelated to the ground truth
  moved[:k] = rng.integers(0, size, size=(k, 2))
  moved = np.unique(moved, axis=0)
  pred = synthetic_labels(moved, size, 10.0, rng)
  return gt, pred


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--size", type=int, default=1024)
  ap.add_argument("--nuclei", type=int, default=2000)
  ap.add_argument("--repeats", type=int, default=7)
  args = ap.parse_args()
  gt, pred = make_pair(args.size, args.nuclei)
  n_gt = len(np.unique(gt)) - 1
  n_pred = len(np.unique(pred)) - 1
  metrics.image_metrics(gt, pred)  # warm-up (imports, page faults)
  times = []
  for _ in range(args.repeats):
    t0 = time.perf_counter()
    m = metrics.image_metrics(gt, pred)
    times.append(time.perf_counter() - t0)
  print(f"image {args.size}x{args.size}, {n_gt} ground-truth / {n_pred} predicted nuclei")
  print("metrics: " + ", ".join(f"{k}={m[k]:.4f}" for k in metrics.METRIC_KEYS))
  print(f"image_metrics: median {statistics.median(times):.4f} s, "
        f"min {min(times):.4f} s over {args.repeats} runs")


if __name__ == "__main__":
  main()
