"""`run.py evaluate --workdir RUN --score_threshold T`: label maps drawn at another score
threshold than the run's (DESIGN.md's 0.05 for the paper's Table 1), in a folder that says so."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from pa_jax import experiment
from pa_jax.errors import InputError


def _n_predicted(report_dir) -> int:
  with open(report_dir / "per_image.csv") as f:
    return sum(int(r["n_pred"]) for r in csv.DictReader(f))


def test_score_threshold_changes_what_is_drawn(toy_run):
  # The toy config draws every detection (predict.score_threshold 0): an untrained net's
  # scores sit near 0.5, so threshold 1.0 must draw none of them.
  low = experiment.evaluate_run(toy_run, score_threshold=0.0)
  high = experiment.evaluate_run(toy_run, score_threshold=1.0)
  assert low["output"].endswith("_score0") and high["output"].endswith("_score1")
  assert _n_predicted(Path(low["output"])) > 0
  assert _n_predicted(Path(high["output"])) == 0
  assert high["recall"] == 0.0
  # The run's own threshold still gives the plain folder name.
  plain = experiment.evaluate_run(toy_run)
  assert Path(plain["output"]).name.startswith("eval_") and "_score" not in plain["output"]
  assert _n_predicted(Path(plain["output"])) == _n_predicted(Path(low["output"]))


@pytest.mark.parametrize("bad", [-0.1, 1.5])
def test_score_threshold_out_of_range_is_refused_before_loading(tmp_path, bad):
  with pytest.raises(InputError) as err:
    experiment.evaluate_run(tmp_path / "no_run", score_threshold=bad)
  assert err.value.where == "score_threshold" and "not in [0, 1]" in str(err.value)
