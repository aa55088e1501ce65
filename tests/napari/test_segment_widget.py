"""The segment widget on a live (headless) viewer: classical floor, a trained run with its
attention map, and bad input as one line."""

from __future__ import annotations

import numpy as np
import pytest

from pa_jax.data.readers import read_image
from pa_jax.infer.classical import segment_classical
from pa_jax.napari import engines
from pa_jax.napari.segment_widget import SegmentWidget


def _run(widget, qtbot, timeout=120_000):
  worker = widget.start()
  assert worker is not None, widget.status.value
  # Not qtbot.waitSignal(worker.finished): a worker that fails at once (a folder that is no
  # run) can finish before the test connects to it, and the signal is lost (a 120 s timeout
  # in a loaded CI run). The widget disables its button before the worker starts and its
  # own `finished` handler, connected before the start, enables it again.
  qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=timeout)
  return worker


def test_classical_floor_adds_labels_equal_to_the_library(make_napari_viewer, qtbot,
                                                          tiny_folders):
  images, _, _ = tiny_folders
  image = read_image(images / "im0.png")
  viewer = make_napari_viewer()
  viewer.add_image(image, name="im0")
  widget = SegmentWidget(viewer)
  assert widget.image.value is viewer.layers["im0"]
  assert widget.model.value == engines.CLASSICAL and widget.folder.native.isHidden()
  _run(widget, qtbot)
  out = viewer.layers["im0 nuclei"]
  np.testing.assert_array_equal(out.data, segment_classical(image))
  n = len(np.unique(out.data)) - 1
  assert n > 0 and widget.status.value == f"{n} nuclei (classical)"
  assert list(out.features["state"]) == ["proposed"] * n
  assert widget.progress.value == widget.progress.max == 2
  assert "im0 attention" not in viewer.layers
  # A rerun updates the same layer rather than adding another.
  _run(widget, qtbot)
  assert [layer.name for layer in viewer.layers] == ["im0", "im0 nuclei"]


def test_trained_run_with_attention(make_napari_viewer, qtbot, tiny_project):
  images, project, _ = tiny_project
  run = project / "train" / "round_1"
  image = read_image(images / "im1.png")
  viewer = make_napari_viewer()
  viewer.add_image(image, name="im1")
  widget = SegmentWidget(viewer)
  widget.model.value = engines.TRAINED_RUN
  assert not widget.folder.native.isHidden() and not widget.attention.native.isHidden()
  widget.folder.value = run
  widget.attention.value = True
  _run(widget, qtbot)
  assert "error" not in widget.status.value.lower(), widget.status.value
  seg = engines.load_run(run)
  want, scores = seg.segment(image)
  labels = viewer.layers["im1 nuclei"]
  np.testing.assert_array_equal(labels.data, want)
  feats = labels.features.set_index("index")
  for k, s in scores.items():
    assert feats.loc[k, "score"] == pytest.approx(s)
    assert feats.loc[k, "source"] == "pa_jax round_1 step 2"
  att = viewer.layers["im1 attention"]
  assert att.data.shape == image.shape[:2] and np.isfinite(att.data).all()
  np.testing.assert_allclose(att.data, seg.attention(image, want), rtol=1e-5, atol=1e-9)
  assert widget.progress.value == widget.progress.max == 3


def test_bad_input_is_one_line_and_starts_nothing(make_napari_viewer, qtbot, tmp_path):
  viewer = make_napari_viewer()
  widget = SegmentWidget(viewer)
  assert widget.start() is None and widget.status.value.startswith("no image layer")
  viewer.add_image(np.zeros((3, 16, 16), np.uint8), name="stack")
  assert widget.start() is None
  assert widget.status.value.startswith("layer 'stack': has shape (3, 16, 16)")
  viewer.add_image(np.zeros((16, 16), np.uint8), name="flat")
  widget.model.value = engines.TRAINED_RUN
  widget.folder.value = tmp_path  # exists, but is no run: the worker reports it
  worker = _run(widget, qtbot)
  assert widget.status.value == f"{tmp_path}: no config.json: not a pa_jax training run"
  assert "\n" not in widget.status.value and worker is widget.worker
