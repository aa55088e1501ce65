"""bench/sampling_agreement.py: foreground candidates counted against hand-made boxes."""

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import sampling_agreement as sa  # noqa: E402


def test_foreground_candidates_count_proposals_and_ground_truth():
  gt = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], np.float32)
  props = np.array([
      [0, 0, 10, 9],      # IoU 0.9 with the first nucleus: a candidate
      [0, 0, 5, 10],      # IoU 0.5 exactly: a candidate (>= threshold)
      [0, 0, 4, 10],      # IoU 0.4: not
      [40, 40, 50, 50],   # on nothing
  ], np.float32)
  # Every ground-truth box is its own candidate (IoU 1), plus two proposals.
  assert sa.foreground_candidates(props, gt, 0.5) == (4, 2)
  assert sa.foreground_candidates(props, gt, 0.95) == (2, 0)
  assert sa.foreground_candidates(np.zeros((0, 4), np.float32), gt, 0.5) == (2, 0)
  assert sa.foreground_candidates(props, np.zeros((0, 4), np.float32), 0.5) == (0, 0)
