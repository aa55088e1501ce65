"""Exporters/importers: label map, COCO, GeoJSON, ROI zip, CSV — round trips and errors."""

from __future__ import annotations

import json
import os
import zipfile

import geojson
import numpy as np
import pytest
import roifile
import shapely.geometry

from pa_jax.annotate import formats as F
from pa_jax.annotate.coco_io import read_coco_annotations
from pa_jax.annotate.geojson_io import write_geojson
from pa_jax.annotate.geojson_read import read_geojson
from pa_jax.annotate.label_io import read_label_map_annotations
from pa_jax.annotate.measurements import read_measurements_csv, write_measurements_csv
from pa_jax.annotate.nuclei import Nucleus, make_table
from pa_jax.annotate.roi_io import read_roi_zip, write_roi_zip
from pa_jax.data.synthetic import synthetic_image
from pa_jax.errors import InputError


@pytest.fixture(scope="module")
def example():
  _, labels = synthetic_image(7, 96, 112, 18)
  # sparse label values: ids must survive the round trip, not only the partition
  labels = np.where(labels > 0, labels * 3 + 10, 0).astype(np.int32)
  ids = [int(k) for k in np.unique(labels) if k]
  nuclei = make_table(labels, "proposed", "pa_jax round 2",
                      scores={k: 0.5 + i / 100 for i, k in enumerate(ids)})
  nuclei[ids[0]] = Nucleus(ids[0], "confirmed", None, "human")
  nuclei[ids[1]] = Nucleus(ids[1], "rejected", 0.25, "classical")
  return labels, nuclei


def _one_line(excinfo, name):
  msg = str(excinfo.value)
  assert name in msg and "\n" not in msg, msg


def _check_ious(labels, got, minimum):
  for k in np.unique(labels):
    if k:
      a, b = labels == k, got == k
      assert np.count_nonzero(a & b) / np.count_nonzero(a | b) >= minimum, k


@pytest.mark.parametrize("contours", ["polygon", "spline"])
def test_export_all_round_trips(tmp_path, example, contours):
  labels, nuclei = example
  coco = F.CocoCollector(tmp_path / "annotations.json")
  written = F.export_all(tmp_path, "img", labels, nuclei, F.FORMATS, contours, coco=coco)
  coco.write()
  names = sorted(p.name for p in written)
  assert names == ["img.csv", "img.geojson", "img.nuclei.json", "img.png", "img_rois.zip"]
  shape = labels.shape
  for got, tab in (read_label_map_annotations(tmp_path / "img.png", shape),
                   read_coco_annotations(tmp_path / "annotations.json", "img", shape)):
    assert np.array_equal(got, labels) and tab == nuclei
  minimum = 0.95 if contours == "polygon" else 0.9
  for got, tab in (read_geojson(tmp_path / "img.geojson", shape),
                   read_roi_zip(tmp_path / "img_rois.zip", shape)):
    assert tab == nuclei
    _check_ious(labels, got, minimum)
    if contours == "polygon":  # the exact outline of one-piece nuclei: exact
      assert np.array_equal(got, labels)
  table = read_measurements_csv(tmp_path / "img.csv")
  assert table == nuclei


def test_roi_zip_spline_flag_and_properties(tmp_path, example):
  labels, nuclei = example
  for contours, flag in (("spline", True), ("polygon", False)):
    path = write_roi_zip(tmp_path / f"{contours}.zip", labels, nuclei, contours=contours)
    rois = roifile.roiread(path)
    assert len(rois) == len(nuclei)
    for roi in rois:
      assert bool(roi.options & roifile.ROI_OPTIONS.SPLINE_FIT) is flag
      assert roi.roitype == roifile.ROI_TYPE.POLYGON
      props = roi.properties
      n = nuclei[props["label"]]
      assert roi.name == f"{n.state}-{n.id:05d}" and props["state"] == n.state
      assert props["source"] == n.source
      if contours == "spline":
        assert 4 <= len(roi.coordinates()) <= 32  # the anchors, not a dense outline


def test_geojson_is_valid_and_qupath_shaped(tmp_path, example):
  labels, nuclei = example
  for contours in ("polygon", "spline"):
    path = write_geojson(tmp_path / "a.geojson", labels, nuclei, contours=contours,
                         image_id="a")
    text = path.read_text()
    obj = geojson.loads(text)
    assert obj.is_valid, obj.errors()
    feats = json.loads(text)["features"]
    assert len(feats) == len(nuclei)
    for f in feats:
      assert f["type"] == "Feature" and isinstance(f["id"], str)
      assert shapely.geometry.shape(f["geometry"]).is_valid
      p = f["properties"]
      state = nuclei[p["pa_jax"]["label"]].state
      # QuPath convention: machine proposals are detections, reviewed nuclei annotations.
      want = "detection" if state == "proposed" else "annotation"
      assert p["objectType"] == want and p["isLocked"] is False
      assert p["classification"]["name"] == state and len(p["classification"]["color"]) == 3
      assert (p["pa_jax"].get("control_points") is not None) == (contours == "spline")


def test_geojson_user_edits(tmp_path, example):
  """QuPath-style edits: delete, reclassify, add a bare polygon, old measurement lists."""
  labels, nuclei = example
  path = write_geojson(tmp_path / "e.geojson", labels, nuclei)
  data = json.loads(path.read_text())
  feats = data["features"]
  deleted = feats.pop(0)["properties"]["pa_jax"]["label"]
  feats[0]["properties"]["classification"] = {"name": "Confirmed"}
  relabelled = feats[0]["properties"]["pa_jax"]["label"]
  feats[1]["properties"] = {"name": feats[1]["properties"]["name"],
                            "measurements": [{"name": "score", "value": 0.75}]}
  renamed = feats[1]["properties"]["name"]
  feats.append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates":
                [[[1, 1], [5, 1], [5, 4], [1, 4], [1, 1]]]}, "properties": {}})
  feats.append({"type": "Feature", "geometry": {"type": "Point", "coordinates": [3, 3]},
                "properties": {}})
  feats.append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates":
                [[[500, 500], [510, 500], [510, 510], [500, 500]]]}, "properties": {}})
  path.write_text(json.dumps(feats))  # a bare array of features, as QuPath may write
  got, tab = read_geojson(path, labels.shape)
  assert deleted not in tab and not (got == deleted).any()
  assert tab[relabelled].state == "confirmed"
  k = int(renamed.split("-")[1])
  assert tab[k].score == 0.75 and tab[k].source == "human"
  new = max(tab)
  assert new > labels.max() and tab[new] == Nucleus(new, "confirmed", None, "human")
  assert np.count_nonzero(got == new) == 12  # 4x3 pixels, outside one clipped away
  assert len(tab) == len(nuclei)  # -1 deleted, +1 polygon; point and far polygon skipped


def test_roi_zip_from_fiji_shapes(tmp_path):
  oval = roifile.ImagejRoi(roitype=roifile.ROI_TYPE.OVAL, left=10, top=20, right=30, bottom=30,
                           name="0001-0002")
  rect = roifile.ImagejRoi(roitype=roifile.ROI_TYPE.RECT, left=40, top=5, right=46, bottom=9)
  line = roifile.ImagejRoi(roitype=roifile.ROI_TYPE.LINE, x1=1, y1=1, x2=20, y2=20)
  free = roifile.ImagejRoi.frompoints(np.array([[60, 60], [70, 60], [70, 66], [60, 66]]),
                                      name="rejected-00007")
  outside = roifile.ImagejRoi(roitype=roifile.ROI_TYPE.RECT, left=200, top=200, right=210,
                              bottom=210)
  path = tmp_path / "RoiSet.zip"
  roifile.roiwrite(path, [oval, rect, line, outside])
  got, tab = read_roi_zip(path, (50, 50))
  assert len(tab) == 2 and set(np.unique(got)) == {0, 1, 2}
  assert all(n.state == "confirmed" and n.source == "human" for n in tab.values())
  rect_label = got[5, 40]
  assert np.count_nonzero(got == rect_label) == 24 and (got[5:9, 40:46] == rect_label).all()
  oval_px = np.count_nonzero((got > 0) & (got != rect_label))
  assert abs(oval_px - np.pi * 10 * 5) < 12
  roifile.roiwrite(path, [free], mode="a")
  got, tab = read_roi_zip(path, (80, 80))
  assert tab[7].state == "rejected" and np.count_nonzero(got == 7) == 60


def test_malformed_files_one_line_errors(tmp_path):
  bad_json = tmp_path / "bad.geojson"
  bad_json.write_text('{"type": "FeatureCollection", "features": [')
  with pytest.raises(InputError) as e:
    read_geojson(bad_json, (10, 10))
  _one_line(e, "bad.geojson")
  bad_geom = tmp_path / "geom.geojson"
  bad_geom.write_text(json.dumps({"type": "FeatureCollection", "features": [
      {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [["x", 1]]}}]}))
  with pytest.raises(InputError) as e:
    read_geojson(bad_geom, (10, 10))
  _one_line(e, "geom.geojson")
  not_zip = tmp_path / "rois.zip"
  not_zip.write_bytes(b"PK\x03\x04 this is not really a zip")
  with pytest.raises(InputError) as e:
    read_roi_zip(not_zip, (10, 10))
  _one_line(e, "rois.zip")
  bad_entry = tmp_path / "entry.zip"
  with zipfile.ZipFile(bad_entry, "w") as zf:
    zf.writestr("a.roi", b"garbage bytes, not Iout")
  with pytest.raises(InputError) as e:
    read_roi_zip(bad_entry, (10, 10))
  _one_line(e, "entry.zip")
  with pytest.raises(InputError) as e:
    F.parse_formats("label,png")
  _one_line(e, "--format")


def test_read_annotations_picks_the_edited_file(tmp_path, example):
  labels, nuclei = example
  coco = F.CocoCollector(tmp_path / "annotations.json")
  F.export_all(tmp_path, "img", labels, nuclei, ("label", "coco", "geojson", "roi"),
               "spline", coco=coco)
  coco.write()
  got, tab = F.read_annotations(tmp_path, "img", labels.shape)
  assert np.array_equal(got, labels) and tab == nuclei  # one export: the label map wins
  # the user edits the ROI zip later: keep only the first two nuclei
  zpath = tmp_path / "img_rois.zip"
  with zipfile.ZipFile(zpath) as zf:
    entries = [(n, zf.read(n)) for n in zf.namelist()[:2]]
  with zipfile.ZipFile(zpath, "w") as zf:
    for n, b in entries:
      zf.writestr(n, b)
  t = os.path.getmtime(tmp_path / "img.png") + 60
  os.utime(zpath, (t, t))
  got, tab = F.read_annotations(tmp_path, "img", labels.shape)
  assert len(tab) == 2 and len(np.unique(got)) == 3
  assert F.read_annotations(tmp_path, "other", labels.shape) is None
  assert F.parse_formats("csv, label") == ("label", "csv")
  with pytest.raises(ValueError):
    F.export_all(tmp_path, "x", labels, None, ("coco",))


def test_csv_columns_and_empty(tmp_path):
  labels = np.zeros((6, 8), np.int32)
  labels[1:3, 2:5] = 4
  path = write_measurements_csv(tmp_path / "m.csv", labels, None, image_id="m")
  lines = path.read_text().splitlines()
  assert lines[0].split(",")[:4] == ["image", "id", "state", "score"]
  row = dict(zip(lines[0].split(","), lines[1].split(",")))
  assert row["area"] == "6" and row["centroid_x"] == "3.5" and row["centroid_y"] == "2"
  assert row["bbox_width"] == "3" and row["state"] == "confirmed" and row["score"] == ""
  empty = write_measurements_csv(tmp_path / "e.csv", np.zeros((4, 4), np.int32))
  assert len(empty.read_text().splitlines()) == 1
  assert read_measurements_csv(empty) == {}


def test_edited_coco_file_is_read_again(tmp_path, example):
  labels, nuclei = example
  path = tmp_path / "annotations.json"
  coco = F.CocoCollector(path)
  coco.add("img", labels, nuclei)
  coco.write()
  got, _ = read_coco_annotations(path, "img", labels.shape)
  assert np.array_equal(got > 0, labels > 0)
  # The user deletes every annotation but the first (same path, new content).
  data = json.loads(path.read_text())
  data["annotations"] = data["annotations"][:1]
  path.write_text(json.dumps(data))
  got, tab = read_coco_annotations(path, "img", labels.shape)
  assert len(tab) == 1 and len(np.unique(got)) == 2
