"""`project.edited_file`: which changed file of an image the next round reads.

A GUI's save (`Session.save_edits`) rewrites every format of an image at once. Reading
its GeoJSON back would rasterise smoothed outlines, which can swallow a neighbour's pixels
or a small rejected region (a napari save lost one that way); the label map of the same
export holds the nuclei exactly, so it is read. A file edited later (QuPath, Fiji) wins.
"""

import hashlib
import os

import numpy as np

from pa_jax.annotate import formats as F
from pa_jax.annotate import project
from pa_jax.annotate.nuclei import Nucleus

FORMATS = ("label", "geojson", "roi")


def _notched() -> tuple[np.ndarray, dict]:
  """A nucleus with a notch that a spline outline cuts across, and a neighbour."""
  lab = np.zeros((32, 32), np.int32)
  lab[4:16, 4:20] = 6
  lab[4:8, 18:20] = 0
  lab[20:26, 20:26] = 9
  return lab, {k: Nucleus(k, "confirmed", 0.9, "x") for k in (6, 9)}


def _written(folder, image_id) -> dict:
  return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
          for p in folder.iterdir() if p.name.startswith(image_id)}


def test_one_export_reads_the_exact_label_map_a_later_edit_wins(tmp_path):
  lab, nuclei = _notched()
  # What the loop wrote (a round's files), then a GUI save of the edited state over them.
  F.export_all(tmp_path, "im", np.zeros_like(lab), {}, FORMATS, "spline")
  written = _written(tmp_path, "im")
  assert project.edited_file(tmp_path, "im", written) is None  # nothing changed yet
  F.export_all(tmp_path, "im", lab, nuclei, FORMATS, "spline")
  geo, _ = F.read_annotations(tmp_path / "im.geojson", "im", lab.shape)
  assert (geo != lab).sum() > 0  # the premise: the smoothed outline does not read back
  f = project.edited_file(tmp_path, "im", written)
  assert f.name == "im.png"
  got, tab = project.read_image_annotation(f, "im", lab.shape)
  np.testing.assert_array_equal(got, lab)
  assert tab == nuclei
  # Later, someone edits the GeoJSON in QuPath: that edit is the one read.
  t = os.path.getmtime(tmp_path / "im.png") + 60
  os.utime(tmp_path / "im.geojson", (t, t))
  assert project.edited_file(tmp_path, "im", written).name == "im.geojson"


def test_a_state_table_edit_alone_reads_its_label_map(tmp_path):
  lab, nuclei = _notched()
  F.export_all(tmp_path, "im", lab, nuclei, FORMATS, "spline")
  written = _written(tmp_path, "im")
  side = tmp_path / "im.nuclei.json"
  side.write_text(side.read_text().replace('"confirmed"', '"proposed"', 1))
  assert project.edited_file(tmp_path, "im", written).name == "im.png"
