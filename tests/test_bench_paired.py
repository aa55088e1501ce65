"""bench/paired_compare.py: the sign test and the per-image pairing behind docs/results.md."""

import csv
from pathlib import Path

import pytest
from scipy import stats

import paired_compare as pc  # bench/ is on sys.path: tests/conftest.py


def test_sign_test_hand_computed():
  assert pc.sign_test_p(5, 0) == pytest.approx(2 / 32)  # both tails of 1/32
  assert pc.sign_test_p(0, 0) == 1.0
  assert pc.sign_test_p(3, 3) == 1.0  # clipped, never above 1


@pytest.mark.parametrize("wins,losses", [(15, 4), (18, 4), (22, 0), (1, 7), (10, 12)])
def test_sign_test_matches_scipy_binomtest(wins, losses):
  want = stats.binomtest(wins, wins + losses, 0.5, alternative="two-sided").pvalue
  assert pc.sign_test_p(wins, losses) == pytest.approx(want, rel=1e-9)


def _write(folder: Path, rows):
  folder.mkdir(parents=True)
  with open(folder / "per_image.csv", "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=["id", *pc.METRICS])
    w.writeheader()
    for img, v in rows:
      w.writerow({"id": img, **{m: v for m in pc.METRICS}})


def test_compare_pairs_images_by_id_and_reads_latest_eval(tmp_path):
  # A run's latest eval folder wins over older ones; an evaluation folder is read directly.
  _write(tmp_path / "runA" / "eval_test_step100", [("x", 0.0), ("y", 0.0), ("z", 0.0)])
  _write(tmp_path / "runA" / "eval_test_step900", [("x", 0.5), ("y", 0.5), ("z", 0.5)])
  _write(tmp_path / "evalB", [("z", 0.5), ("y", 0.9), ("x", 0.1), ("only_b", 1.0)])
  a = pc.latest_per_image(tmp_path / "runA")
  b = pc.latest_per_image(tmp_path / "evalB")
  wins, losses, ties, mean_diff, p = pc.compare(a, b, "map")
  assert (wins, losses, ties) == (1, 1, 1)
  assert mean_diff == pytest.approx((0.4 - 0.4 + 0.0) / 3)
  assert p == 1.0
  # Asymmetric values, listed in another order: pairing by id gives 2 wins / 1 loss (by
  # row position it would be 1 / 2), and the mean is B - A (A - B would be +0.033).
  _write(tmp_path / "evalC", [("z", 0.9), ("x", 0.4), ("y", 0.8)])
  _write(tmp_path / "evalD", [("x", 0.5), ("y", 0.9), ("z", 0.6)])
  c, d = pc.latest_per_image(tmp_path / "evalC"), pc.latest_per_image(tmp_path / "evalD")
  wins, losses, ties, mean_diff, _ = pc.compare(c, d, "map")
  assert (wins, losses, ties) == (2, 1, 0)
  assert mean_diff == pytest.approx((0.1 + 0.1 - 0.3) / 3)


def test_missing_evaluation_is_one_line_error(tmp_path):
  with pytest.raises(SystemExit, match="no evaluation; run: python run.py evaluate"):
    pc.latest_per_image(tmp_path)
