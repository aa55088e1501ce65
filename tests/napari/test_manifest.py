"""The npe2 manifest validates (what `npe2 validate --imports` checks), its entry point
is the one pyproject.toml declares, and napari finds the plugin's contributions."""

from __future__ import annotations

import os
import tomllib
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

npe2 = pytest.importorskip("npe2")

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "pa_jax" / "napari" / "napari.yaml"


def test_manifest_validates_with_imports():
  manifest = npe2.PluginManifest.from_file(MANIFEST)  # schema: raises on any error
  manifest.validate_imports()  # every python_name imports and exists
  assert manifest.name == "pa_jax"
  assert {c.id for c in manifest.contributions.commands} == {
      "pa_jax.read_label_maps", "pa_jax.segment", "pa_jax.annotate"}
  assert [w.display_name for w in manifest.contributions.widgets] == [
      "Segment nuclei", "Annotation assistant"]


def test_entry_point_names_the_manifest():
  project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
  value = project["project"]["entry-points"]["napari.manifest"]["pa_jax"]
  module, _, resource = value.partition(":")
  assert ROOT.joinpath(*module.split("."), resource) == MANIFEST
  assert project["tool"]["setuptools"]["package-data"]["pa_jax.napari"] == ["napari.yaml"]
  installed = [e.value for e in metadata.entry_points(group="napari.manifest")
               if e.name == "pa_jax"]
  if os.environ.get("PA_JAX_REQUIRE_NAPARI") == "1":  # CI ran `pip install -e . --no-deps`
    assert installed == [value]
  elif not installed:
    pytest.skip("pa_jax is not pip-installed here (pip install -e . --no-deps)")


def test_viewer_docks_the_widgets_from_the_manifest(make_napari_viewer):
  from pa_jax.napari.annotate_widget import AnnotateWidget
  from pa_jax.napari.segment_widget import SegmentWidget

  pm = npe2.PluginManager.instance()
  if "pa_jax" not in pm:  # not pip-installed: register the manifest by hand
    pm.register(npe2.PluginManifest.from_file(MANIFEST))
  viewer = make_napari_viewer()
  _, seg = viewer.window.add_plugin_dock_widget("pa_jax", "Segment nuclei")
  _, ann = viewer.window.add_plugin_dock_widget("pa_jax", "Annotation assistant")
  assert isinstance(seg, SegmentWidget) and isinstance(ann, AnnotateWidget)
  # napari injects the viewer (behind its public-only proxy): the widget sees its layers.
  viewer.add_image(np.zeros((8, 8), np.uint8), name="img")
  assert [layer.name for _, layer in seg._image_layers()] == ["img"]
  assert seg.image.value.name == "img"
