"""The annotation assistant on a live (headless) viewer over a real round-1 project: state
colours, paint / delete / confirm / reject round trips through `Session`, saving to
current/, and the next-round button."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from pa_jax.annotate.nuclei import STATE_COLORS
from pa_jax.annotate.session import Session
from pa_jax.napari import annotate_widget as aw
from pa_jax.napari.annotate_widget import AnnotateWidget


@pytest.fixture
def project(tiny_project, tmp_path):
  """A private copy of the session's round-1 project (the tests edit it)."""
  images, project, truths = tiny_project
  copy = tmp_path / "project"
  shutil.copytree(project, copy, symlinks=True)
  return images, copy, truths


def _open(viewer, images, project):
  widget = AnnotateWidget(viewer)
  widget.images_dir.value, widget.project_dir.value = images, project
  assert widget.open() is not None, widget.status.value
  return widget


def _colour(layer, k):
  return tuple(np.round(np.asarray(layer.colormap.color_dict[k])[:3] * 255).astype(int))


def _ids(session, image_id, state):
  return sorted(k for k, n in session.nuclei(image_id).items() if n.state == state)


def test_open_shows_the_review_map_in_state_colours(make_napari_viewer, project):
  images, folder, _ = project
  viewer = make_napari_viewer()
  widget = _open(viewer, images, folder)
  s = widget.session
  assert widget.image.choices == ("im0", "im1") and widget.shown == "im0"
  layer = viewer.layers[aw.REVIEW_LAYER]
  np.testing.assert_array_equal(layer.data, s.review_map("im0"))
  np.testing.assert_array_equal(viewer.layers[aw.IMAGE_LAYER].data, s.image("im0"))
  confirmed, proposed = _ids(s, "im0", "confirmed"), _ids(s, "im0", "proposed")
  assert confirmed and proposed  # round 1: the person's nuclei and the model's proposals
  assert _colour(layer, confirmed[0]) == STATE_COLORS["confirmed"]
  assert _colour(layer, proposed[0]) == STATE_COLORS["proposed"]
  assert layer.selected_label > layer.data.max()  # painting draws a new nucleus
  assert widget.status.value == aw.summary(s.status())
  widget.image.value = "im1"  # switching images shows the other one
  np.testing.assert_array_equal(layer.data, s.review_map("im1"))


def test_paint_delete_and_buttons_round_trip_through_the_session(make_napari_viewer, project):
  images, folder, _ = project
  viewer = make_napari_viewer()
  widget = _open(viewer, images, folder)
  s, layer = widget.session, viewer.layers[aw.REVIEW_LAYER]
  proposed = _ids(s, "im0", "proposed")
  erased, touched = proposed[0], proposed[1]
  # Draw a new nucleus on background with the brush (napari's own paint path).
  new = int(layer.selected_label)
  free = np.argwhere(np.pad(s.review_map("im0") == 0, 0))
  layer.brush_size = 3
  spot = next(p for p in free if (s.review_map("im0")[max(p[0] - 2, 0):p[0] + 3,
                                                       max(p[1] - 2, 0):p[1] + 3] == 0).all())
  layer.paint(tuple(spot), new)
  drawn = layer.data == new
  # Delete a proposal: fill it with the background label.
  gone = layer.data == erased
  layer.fill(tuple(np.argwhere(gone)[0]), 0)
  # Paint on another proposal with its own label beyond its outline: confirmed.
  rr, cc = np.nonzero(layer.data == touched)
  box = (slice(max(rr.min() - 1, 0), rr.max() + 2), slice(max(cc.min() - 1, 0), cc.max() + 2))
  grown = layer.data.copy()
  grown[box][grown[box] == 0] = touched
  layer.data = grown
  counts = widget.apply_edits()
  assert (counts.added, counts.rejected) == (1, 1)
  n, shown = s.nuclei("im0"), s.review_map("im0")
  np.testing.assert_array_equal(layer.data, shown)
  # The session numbers new nuclei and rejected regions itself (ids only grow).
  [drawn_id] = np.unique(shown[drawn])
  assert n[drawn_id].state == "confirmed" and n[drawn_id].source == "human"
  [rejected_id] = np.unique(shown[gone])
  assert n[rejected_id].state == "rejected" and erased not in n
  assert n[touched].state == "confirmed" and (shown == touched).sum() > len(rr)  # grown
  assert _colour(layer, rejected_id) == STATE_COLORS["rejected"]  # shown again, in red
  assert _colour(layer, touched) == STATE_COLORS["confirmed"]
  assert _colour(layer, drawn_id) == STATE_COLORS["confirmed"]
  # Buttons: reject and confirm the selected label.
  left = [k for k in _ids(s, "im0", "proposed") if k != touched]
  layer.selected_label = left[0]
  was = layer.data == left[0]
  widget.reject_button.clicked.emit()
  layer.selected_label = left[1]
  widget.confirm_button.clicked.emit()
  [rejected_id] = np.unique(layer.data[was])  # a rejected region gets a new id
  assert s.nuclei("im0")[rejected_id].state == "rejected" and left[0] not in s.nuclei("im0")
  assert s.nuclei("im0")[left[1]].state == "confirmed"
  assert _colour(layer, left[1]) == STATE_COLORS["confirmed"]
  layer.selected_label = 10_000
  assert widget.set_selected("confirmed") is None
  assert widget.status.value.startswith("label 10000 is no nucleus of im0")
  # Saved into current/ and read back by a fresh session, as the CLI would.
  assert widget.save()
  states = {k: v.state for k, v in s.nuclei("im0").items()}
  again = Session.open(images, folder)
  assert {k: v.state for k, v in again.nuclei("im0").items()} == states
  widget.confirm_all_proposed()
  assert not _ids(s, "im0", "proposed")


def test_next_round_button_runs_a_round_in_a_worker(make_napari_viewer, qtbot, project,
                                                    monkeypatch):
  """The button runs `Session.next_round` (predict, merge, write: the CLI's code). Only
  the training compute is replaced, by round 1's variables, to keep the test fast; real
  training through the same Session made the fixture's round 1."""
  from pa_jax import experiment
  from pa_jax.annotate import training

  def no_training(cfg, examples, stats, workdir, round_, prev_variables=None, progress=True):
    return experiment.build_model(cfg, stats), prev_variables, 0.0, 0

  monkeypatch.setattr(training, "train_round", no_training)
  images, folder, _ = project
  viewer = make_napari_viewer()
  widget = _open(viewer, images, folder)
  layer = viewer.layers[aw.REVIEW_LAYER]
  layer.selected_label = _ids(widget.session, "im0", "proposed")[0]
  widget.confirm_button.clicked.emit()  # an edit before the round is part of it
  # The worker starts inside next_round: a signal connected after it (worker.yielded,
  # worker.finished) can miss emissions made before the connect. So the stages are taken
  # from the widget's own handler (bound when next_round connects it), and the end is the
  # state _on_finished leaves.
  stages = []
  on_progress = widget._on_progress
  widget._on_progress = lambda r: (stages.append(r[0]), on_progress(r))
  widget.next_round()
  assert not layer.editable and not widget.round_button.enabled
  qtbot.waitUntil(lambda: widget.open_button.enabled, timeout=300_000)
  assert widget.session.round == 2, widget.status.value
  assert widget.status.value.startswith("round 2: ")
  assert stages[0] == "train" and stages[-1] == "write" and "predict" in stages
  assert layer.editable and widget.round_button.enabled
  np.testing.assert_array_equal(layer.data, widget.session.review_map("im0"))
  assert (folder / "round_2" / "report.json").is_file()
  assert Session.open(images, folder).round == 2


def test_bad_folders_are_one_line(make_napari_viewer, tmp_path):
  viewer = make_napari_viewer()
  widget = AnnotateWidget(viewer)
  assert widget.open() is None and widget.status.value.startswith("choose the images folder")
  widget.images_dir.value, widget.project_dir.value = tmp_path / "nope", tmp_path / "p"
  assert widget.open() is None
  assert "\n" not in widget.status.value and str(tmp_path / "nope") in widget.status.value
  assert not widget.round_button.enabled
