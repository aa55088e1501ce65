"""The Session API without the CLI: a round equals what `run.py annotate` writes, and GUI
edits (paint = confirm/draw, erase = reject) follow the rules of file edits.

Training and prediction are replaced by a fake (prediction = the image's true labels), as
in test_annotate_loop.py; a real round through the same Session code runs there, via
`annotate_main`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from pa_jax.annotate import loop, training
from pa_jax.annotate.nuclei import STATE_COLORS
from pa_jax.annotate.session import Session
from pa_jax.data import readers
from pa_jax.data.synthetic import partial_annotation_folders
from pa_jax.errors import InputError

FORMATS = "label,geojson,coco"


def _toy_config():
  from configs import annotate, base

  return base.toy_sized(annotate.get_config())


@pytest.fixture
def fake(monkeypatch, tmp_path):
  """A dataset; training skipped; prediction returns the image's true label map."""
  images, annots, truths = partial_annotation_folders(tmp_path)
  table = {readers.read_image(images / f"{i}.png").tobytes(): t for i, t in truths.items()}

  class P:
    def predict_scored(self, image):
      lab = table[image.tobytes()]
      return lab, {int(k): 0.9 for k in np.unique(lab) if k}

  import pa_jax.infer.predictor as predictor_mod

  monkeypatch.setattr(training, "train_round", lambda *a, **k: (None, None, 0.0, 3))
  monkeypatch.setattr(predictor_mod, "predictor_for", lambda cfg, model, variables: P())
  monkeypatch.setattr("pa_jax.experiment.load_run", lambda w: (None, None, None, 0))
  return images, annots, truths


def _drop(obj, keys):
  if isinstance(obj, dict):
    return {k: _drop(v, keys) for k, v in obj.items() if k not in keys}
  if isinstance(obj, list):
    return [_drop(v, keys) for v in obj]
  return obj


def _tree(out: Path) -> dict:
  """Every file of a project: its bytes, or for JSON the parsed content without the
  timings (the only thing that differs between two runs)."""
  got = {"current": os.readlink(out / "current")}
  for p in sorted(out.rglob("*")):
    if not p.is_file() or p.is_symlink() or "current" == p.relative_to(out).parts[0]:
      continue
    rel = str(p.relative_to(out))
    if p.suffix == ".json":
      got[rel] = _drop(json.loads(p.read_text()), {"seconds", "prediction_seconds"})
    else:
      got[rel] = p.read_bytes()
  return got


def test_session_rounds_write_what_the_cli_writes(fake, tmp_path):
  images, annots, _ = fake
  cli, api = tmp_path / "cli", tmp_path / "api"
  loop.annotate_main(images, annots, cli, rounds=2, config=_toy_config(), formats=FORMATS,
                     progress=False)
  events = []
  s = Session.open(images, api, annots, config=_toy_config(), formats=FORMATS)
  assert (s.round, s.image_ids) == (0, ["im0", "im1"])
  report = s.next_round(on_progress=lambda *e: events.append(e))
  assert report["round"] == 1 and s.round == 1
  planned = _toy_config().train.steps  # the fake then reports 3 steps done
  assert events == [("train", 0, planned), ("train", 3, 3), ("predict", 1, 2), ("predict", 2, 2),
                    ("write", 1, 2), ("write", 2, 2)]
  assert json.loads((cli / "round_1" / "report.json").read_text())["totals"] == report["totals"]
  s.write_round(s.run_round())  # round 2 from the session's memory, as the CLI's loop does
  assert s.round == 2 and _tree(api) == _tree(cli)
  # A third round after reopening the folder, as a second command would.
  loop.annotate_main(images, None, cli, rounds=1, config=_toy_config(), formats=FORMATS,
                     progress=False)
  Session.open(images, api, config=_toy_config()).next_round()
  assert _tree(api) == _tree(cli)
  # Opening an existing project takes its formats from state.json.
  assert set(Session.open(images, api, config=_toy_config()).formats) == set(FORMATS.split(","))


def _empty_square(shown: np.ndarray, size: int = 5) -> tuple[int, int]:
  """Top-left corner of a size x size block of background at least 2 pixels from any
  label, so a nucleus painted there overlaps nothing."""
  grown = np.zeros_like(shown, bool)
  for dy in range(-2, 3):
    for dx in range(-2, 3):
      grown |= np.roll(shown > 0, (dy, dx), axis=(0, 1))
  for y in range(2, shown.shape[0] - size - 2):
    for x in range(2, shown.shape[1] - size - 2):
      if not grown[y:y + size, x:x + size].any():
        return y, x
  raise AssertionError("no free square in the test image")


def test_paint_confirms_and_draws_erase_rejects_and_the_files_round_trip(fake, tmp_path):
  images, annots, truths = fake
  s = Session.open(images, tmp_path / "out", annots, config=_toy_config())
  s.next_round()
  shown = s.review_map("im0")
  nuc = s.nuclei("im0")
  assert set(np.unique(shown)) - {0} == set(nuc)
  proposals = sorted(k for k, n in nuc.items() if n.state == "proposed")
  confirmed = sorted(k for k, n in nuc.items() if n.state == "confirmed")
  assert len(proposals) >= 2 and s.colors("im0")[proposals[0]] == STATE_COLORS["proposed"]
  erased, accepted = proposals[0], proposals[1]

  # Unchanged map: nothing changes.
  before = s.states["im0"]
  c = s.apply_edit("im0", shown.copy())
  assert sum(c.as_dict().values()) == 0
  assert np.array_equal(s.labels("im0"), before.labels) and s.nuclei("im0") == nuc

  edited = shown.copy()
  y, x = _empty_square(shown)
  edited[y:y + 5, x:x + 5] = 999                   # paint a new nucleus
  edited[edited == erased] = 0                    # erase a proposal
  c = s.apply_edit("im0", edited)
  assert (c.added, c.rejected, c.accepted, c.deleted) == (1, 1, 0, 0)
  after = s.nuclei("im0")
  new = [k for k in after if k not in nuc]
  drawn = [k for k in new if after[k].state == "confirmed"]
  rejected = [k for k in new if after[k].state == "rejected"]
  assert len(drawn) == 1 and len(rejected) == 1 and erased not in after
  assert after[drawn[0]].source == "human" and min(new) >= before.next_id
  painted = np.zeros_like(shown, bool)
  painted[y:y + 5, x:x + 5] = True
  assert np.array_equal(s.labels("im0") == drawn[0], painted)
  assert np.array_equal(s.review_map("im0") == rejected[0], shown == erased)
  assert s.colors("im0")[rejected[0]] == STATE_COLORS["rejected"]
  assert s.colors("im0")[drawn[0]] == STATE_COLORS["confirmed"]

  # A confirm button: the outline stays, the state changes.
  c = s.set_state("im0", [accepted], "confirmed")
  assert c.accepted == 1 and s.nuclei("im0")[accepted].state == "confirmed"
  assert np.array_equal(s.labels("im0") == accepted, shown == accepted)
  assert sorted(k for k, n in s.nuclei("im0").items() if n.state == "confirmed") == \
      sorted(confirmed + [accepted, drawn[0]])
  assert s.edits["im0"]["added"] == 1 and s.edits["im0"]["accepted"] == 1

  # Saved into current/ as a QuPath edit would be: reopening reads the same state.
  assert s.save_edits() and (tmp_path / "out" / "current" / "im0.geojson").is_file()
  again = Session.open(images, tmp_path / "out")
  st, st2 = s.states["im0"], again.states["im0"]
  assert np.array_equal(st.labels, st2.labels) and np.array_equal(st.rejected, st2.rejected)
  assert st.nuclei == st2.nuclei and st.rejected_nuclei == st2.rejected_nuclei
  assert np.array_equal(again.labels("im1"), s.labels("im1"))

  # The next round never proposes the rejected place again (the fake predicts it again).
  report = again.next_round()
  row = next(r for r in report["images"] if r["id"] == "im0")
  assert row["merge"]["dropped_rejected"] == 1 and row["edits"]["rejected"] == 1
  assert report["edits"]["added"] == 1


def test_bad_input_is_one_line(fake, tmp_path):
  images, annots, _ = fake
  with pytest.raises(InputError, match="is also the input"):
    Session.open(images, images, annots)
  s = Session.open(images, tmp_path / "out", annots, config=_toy_config())
  with pytest.raises(InputError, match=r"im0: edited label map is int32 \(3, 3\)"):
    s.apply_edit("im0", np.zeros((3, 3), np.int32))
  with pytest.raises(InputError, match="expected integer labels"):
    s.apply_edit("im0", np.zeros((64, 64), np.float32))
  with pytest.raises(InputError, match=r"im0: edited label map holds -1\.\.0"):
    s.apply_edit("im0", np.full((64, 64), -1, np.int32) * (np.arange(64) < 3)[:, None])
  with pytest.raises(InputError, match="'nope' is not an image of this project"):
    s.labels("nope")
  with pytest.raises(InputError, match="must be 'confirmed' or 'rejected'"):
    s.set_state("im0", [1], "proposed")
