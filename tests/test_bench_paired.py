"""bench/paired_compare.py: the sign test and the per-image pairing behind docs/results.md."""

import csv
import importlib.util
from pathlib import Path

import pytest
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]


def _module():
  spec = importlib.util.spec_from_file_location("paired_compare", ROOT / "bench" / "paired_compare.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


pc = _module()


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


def test_missing_evaluation_is_one_line_error(tmp_path):
  with pytest.raises(SystemExit, match="no evaluation; run: python run.py evaluate"):
    pc.latest_per_image(tmp_path)
