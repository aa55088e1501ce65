"""`run.py annotate`: the annotation loop's command, over `pa_jax.annotate.session.Session`.

A person annotates some nuclei; each round trains (round 1) or fine-tunes (later rounds)
the partial-annotation model on what is confirmed, predicts every image and merges the
predictions into the annotation as *proposals*. The person reviews the files in
`OUTPUT/current/` (Fiji, QuPath, any editor of the chosen formats) and runs the same
command again; the loop picks up the edits. See docs/annotate.md for the whole story.

Where the pieces live: the review rules in `review`, the project folder and its crash-safe
commit in `project`, overlays and report.md in `report`, a round's training in
`training`, the API a GUI shares with this command in `session`. This module only checks
the output folder, runs the rounds and prints what the session logs.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path
from typing import Iterator, Sequence

from pa_jax import outputs
from pa_jax.annotate.project import DEFAULT_FORMATS, check_annotations_matched
from pa_jax.annotate.session import Session
from pa_jax.errors import InputError

__all__ = ["DEFAULT_FORMATS", "annotate_main"]


@contextlib.contextmanager
def _printing(enabled: bool) -> Iterator[None]:
  """Prints the session's `pa_jax.annotate` log lines on stdout, bare, while enabled.

  Not propagated: absl (run.py) puts a handler on the root logger that would print each
  line a second time, with a prefix, on stderr.
  """
  logger = logging.getLogger("pa_jax.annotate")
  if not enabled:
    yield
    return
  handler = logging.StreamHandler(sys.stdout)  # sys.stdout now: pytest may have swapped it
  handler.setFormatter(logging.Formatter("%(message)s"))
  saved = logger.level, logger.propagate
  logger.addHandler(handler)
  logger.setLevel(logging.INFO)
  logger.propagate = False
  try:
    yield
  finally:
    logger.removeHandler(handler)
    logger.setLevel(saved[0])
    logger.propagate = saved[1]


def annotate_main(images, annotations, output, rounds: int = 1,
                  target_recall: float | None = None, formats: Sequence[str] = DEFAULT_FORMATS,
                  contours: str = "polygon", config=None, holdout_fraction: float | None = None,
                  seed: int = 0, steps: int | None = None, accept_proposals: bool = False,
                  progress: bool = True, overwrite: bool = False,
                  from_scratch: bool = False) -> dict:
  """Runs `rounds` rounds of the annotation loop in `output` (`_annotate`, which documents
  the other arguments); returns the last report.

  The output is a persistent project updated round after round, so it is checked rather
  than staged (pa_jax.outputs.check_output): never `images` or `annotations` or inside
  them, and a non-empty folder must be an annotation project (state.json) unless
  `overwrite`. `overwrite` replaces a non-empty folder that is no project: its old
  contents come back if the command fails. An existing project is always continued,
  never replaced, `overwrite` or not: it holds the person's edits (delete the folder to
  start afresh).
  """
  if rounds < 0:
    raise InputError("rounds", f"{rounds} must be >= 0")
  out = Path(output).absolute()
  project = (out / "state.json").is_file()
  outputs.check_output(out, [images, annotations], overwrite=overwrite, is_own=project)
  if rounds == 0 and not project:
    raise InputError(output, "no annotation project here yet (no state.json), so there is "
                     "nothing to report; run at least one round (`rounds` >= 1) to start one")

  def run() -> dict:
    with _printing(progress):
      return _annotate(images, annotations, output, rounds, target_recall=target_recall,
                       formats=formats, contours=contours, config=config,
                       holdout_fraction=holdout_fraction, seed=seed, steps=steps,
                       accept_proposals=accept_proposals, progress=progress,
                       from_scratch=from_scratch)

  if project:
    return run()
  # A first round, into a new or empty folder (or one `overwrite` replaces): staged in place,
  # so a crash or Ctrl-C before its state.json leaves the folder as it was, not half a
  # project that the next run would refuse as "not empty".
  created = [p for p in (out, *out.parents) if not p.exists()]
  try:
    out.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise outputs.write_error(e, out) from None
  try:
    with outputs.replaced_in_place(out):
      return run()
  except BaseException:
    for p in created:  # innermost first; a failed first run leaves no folder behind
      with contextlib.suppress(OSError):
        p.rmdir()
    raise


def _annotate(images, annotations, output, rounds: int = 1,
              target_recall: float | None = None, formats: Sequence[str] = DEFAULT_FORMATS,
              contours: str = "polygon", config=None, holdout_fraction: float | None = None,
              seed: int = 0, steps: int | None = None, accept_proposals: bool = False,
              progress: bool = True, from_scratch: bool = False) -> dict:
  """`annotate_main` once its output is checked.

  images: folder of images (or a dataset folder). annotations: the person's partial
    annotation (folder of label maps / GeoJSON / ROI zips / CSV, any supported format),
    read only on the first invocation; later invocations read the edited `output/current/`.
  rounds: rounds to run now (0 = only pick up the edits and report, nothing written).
  target_recall: stop once the hold-out recall reaches it.
  formats/contours: what `current/` and `round_k/annotations/` hold.
  config: ml_collections config (default: the project's newest round's, else
    `configs/annotate.py`); holdout_fraction
    (default config.annotate.holdout_fraction), seed, steps (round-1 training steps;
    fine-tuning rounds use steps // 2) override it.
  accept_proposals: every proposal still present in the files counts as confirmed.
  from_scratch: round 1 trains from random weights, not from the config's `model.init`.
  progress: the training's progress bar (the session's log lines are printed by the caller).
  Returns the report dict of the last round (see docs/annotate.md), with `stopped`.
  """
  session = Session.open(images, output, annotations, config=config, seed=seed, steps=steps,
                         holdout_fraction=holdout_fraction, formats=formats, contours=contours,
                         accept_proposals=accept_proposals, from_scratch=from_scratch)
  if not session.round and annotations is not None:
    check_annotations_matched(images, annotations, session.states)
  if rounds <= 0:
    return dict(session.status(), stopped="rounds=0")
  report = {}
  for _ in range(rounds):
    report = session.write_round(session.run_round(target_recall=target_recall,
                                                   progress_bar=progress))
    if report["stopped"]:
      break
  return report
