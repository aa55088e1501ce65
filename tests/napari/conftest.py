"""Headless napari tests: Qt's offscreen platform, an X server for OpenGL, one tiny run.

The folder is skipped when napari is not installed (`requirements-napari.txt`), so the
core suite runs without it; CI installs it and sets PA_JAX_REQUIRE_NAPARI=1, which turns
that skip, and a missing X server, into a failure. napari's canvas needs OpenGL, which
Qt's offscreen platform only gets from an X server: pytest-xvfb starts Xvfb for the
session when it is installed (apt `xvfb`), which sets DISPLAY.
"""

from __future__ import annotations

import os

import pytest

from pa_jax.data.synthetic import partial_annotation_folders

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
if os.environ.get("PA_JAX_REQUIRE_NAPARI") == "1":
  import napari  # noqa: F401 - CI: a missing napari is a failure, not a skip
else:
  pytest.importorskip("napari")


@pytest.fixture(autouse=True)
def _needs_display():
  if not os.environ.get("DISPLAY"):
    msg = ("no X server for napari's OpenGL canvas: install xvfb (apt) and pytest-xvfb "
           "(requirements-napari.txt)")
    if os.environ.get("PA_JAX_REQUIRE_NAPARI") == "1":
      pytest.fail(msg)
    pytest.skip(msg)


def tiny_config():
  """The smallest partial-annotation model (configs/base.py toy_sized), 2 training steps."""
  from configs import annotate, base

  c = base.toy_sized(annotate.get_config())
  c.annotate.finetune_steps = 1
  c.predict.score_threshold = 0.0  # an untrained net: draw whatever it finds
  return c


@pytest.fixture(scope="session")
def tiny_project(tmp_path_factory):
  """An annotation project after one real round (2 steps of the tiny model) on two 64x64
  synthetic images: (images, project folder, truths). Its `train/round_1` is the tiny
  trained partial-annotation run the segment widget tests load."""
  import jax

  from pa_jax.annotate.session import Session

  root = tmp_path_factory.mktemp("napari_project")
  images, annots, truths = partial_annotation_folders(root)
  # Compiling the training step dominates this fixture; XLA's optimisations buy nothing
  # for 2 steps of a toy model (flax's train_test.py does the same).
  old = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", True)
  try:
    session = Session.open(images, root / "project", annots, config=tiny_config())
    session.next_round()
  finally:
    jax.config.update("jax_disable_most_optimizations", old)
  return images, root / "project", truths


@pytest.fixture(scope="session")
def tiny_folders(tmp_path_factory):
  """images/ and annots/ of two synthetic images, no training: (images, annots, truths)."""
  return partial_annotation_folders(tmp_path_factory.mktemp("napari_images"))
