"""Streaming GeoJSON / CSV writers: same output as the in-memory exporters, full-resolution
coordinates for a region read at a pyramid level, nothing complete-looking on a crash."""

from __future__ import annotations

import json

import numpy as np
import pytest
import shapely.geometry
from scipy import ndimage

from pa_jax.annotate.contours import polygon_to_mask
from pa_jax.annotate.geojson_io import geojson_features
from pa_jax.annotate.geojson_read import read_geojson
from pa_jax.annotate.measurements import label_mean_intensity, write_measurements_csv
from pa_jax.annotate.nuclei import Nucleus, make_table
from pa_jax.annotate.qupath_check import check_geojson
from pa_jax.annotate.stream_export import CSVStreamWriter, GeoJSONStreamWriter, NucleusRecord
from pa_jax.data.synthetic import synthetic_image


@pytest.fixture(scope="module")
def example():
  image, labels = synthetic_image(5, 72, 88, 14)
  labels = labels.astype(np.int32)
  ids = [int(k) for k in np.unique(labels) if k]
  nuclei = make_table(labels, "proposed", "classical",
                      scores={k: 0.3 + i / 40 for i, k in enumerate(ids)})
  nuclei[ids[0]] = Nucleus(ids[0], "confirmed", None, "human")
  rgb = np.stack([image, image // 3, 255 - image], axis=-1).astype(np.uint8)
  return labels, nuclei, rgb


def _records(labels, nuclei, image=None, pad=0):
  """One record per label, box = its bounding box (grown by `pad`, clipped)."""
  means = label_mean_intensity(labels, image) if image is not None else {}
  h, w = labels.shape
  for k, sl in enumerate(ndimage.find_objects(labels), start=1):
    if sl is None:
      continue
    y0, x0 = max(sl[0].start - pad, 0), max(sl[1].start - pad, 0)
    y1, x1 = min(sl[0].stop + pad, h), min(sl[1].stop + pad, w)
    n = nuclei[k]
    yield NucleusRecord(k, (y0, x0, y1, x1), labels[y0:y1, x0:x1] == k, n.score, n.state,
                        n.source, means.get(k, ()))


@pytest.mark.parametrize("contours", ["polygon", "spline"])
def test_streamed_geojson_equals_in_memory(tmp_path, example, contours):
  labels, nuclei, rgb = example
  path = tmp_path / "s.geojson"
  with GeoJSONStreamWriter(path, contours=contours, pixel_size_um=0.4, image_id="s",
                           image_size=labels.shape) as w:
    for rec in _records(labels, nuclei, rgb, pad=3):
      w.add(rec)
  doc = json.loads(path.read_text())
  ref = geojson_features(labels, nuclei, contours=contours, image_id="s", image=rgb,
                         pixel_size_um=0.4)
  assert doc["features"] == ref and w.count == len(nuclei)
  assert doc["pa_jax"] == {"image": "s", "height": 72, "width": 88,
                           "pixel_size_um": [0.4, 0.4]}
  assert check_geojson(doc, image_size=labels.shape, pa_jax=True) == []
  if contours == "polygon":
    got, tab = read_geojson(path, labels.shape)
    assert np.array_equal(got, labels) and tab == nuclei


@pytest.mark.parametrize("pixel_size, channels", [(None, False), ((0.25, 0.5), True)])
def test_streamed_csv_equals_in_memory(tmp_path, example, pixel_size, channels):
  labels, nuclei, rgb = example
  image = rgb if channels else None
  with CSVStreamWriter(tmp_path / "s.csv", pixel_size_um=pixel_size, image_id="s") as w:
    for rec in _records(labels, nuclei, image, pad=2):
      w.add(rec)
  write_measurements_csv(tmp_path / "m.csv", labels, nuclei, image_id="s", image=image,
                         pixel_size_um=pixel_size)
  text = (tmp_path / "s.csv").read_text()
  assert text == (tmp_path / "m.csv").read_text()
  header = text.splitlines()[0].split(",")
  assert header[:6] == ["image", "id", "state", "score", "source", "area"]
  assert ("area_um2" in header) is (pixel_size is not None)
  assert [c for c in header if c.startswith("mean_intensity")] == \
      (["mean_intensity_c0", "mean_intensity_c1", "mean_intensity_c2"] if channels else [])


def test_pixel_size_units(tmp_path):
  mask = np.ones((4, 5), bool)  # 20 level pixels
  rec = NucleusRecord(1, (0, 0, 4, 5), mask, 0.5, "proposed", "x", (10.0,))
  with GeoJSONStreamWriter(tmp_path / "u.geojson", downsample=2.0,
                           pixel_size_um=(0.25, 0.5)) as g, \
      CSVStreamWriter(tmp_path / "u.csv", downsample=2.0, pixel_size_um=(0.25, 0.5)) as c:
    g.add(rec)
    c.add(rec)
  m = json.loads((tmp_path / "u.geojson").read_text())["features"][0]["properties"][
      "measurements"]
  assert m == {"score": 0.5, "area_px": 80, "area_um2": 10.0, "mean_intensity_c0": 10.0}
  row = dict(zip(*[line.split(",") for line in (tmp_path / "u.csv").read_text().split()]))
  assert row["area"] == "80" and row["area_um2"] == "10"


def test_downsample_and_offset_give_full_resolution_coordinates(tmp_path):
  """A region read at level 2 (downsample 2) at (y, x) = (30, 50) of the slide: the
  streamed nuclei land where the same nuclei are in the full-resolution slide."""
  rng = np.random.default_rng(1)
  small = np.zeros((20, 24), np.int32)
  small[2:9, 3:10] = 1
  small[11:18, 12:21] = 2
  small[12:14, 13:15] = 0  # a notch: not a rectangle
  oy, ox, d = 30, 50, 2
  big = np.zeros((100, 120), np.int32)
  big[oy:oy + 40, ox:ox + 48] = np.kron(small, np.ones((d, d), np.int32))
  nuclei = {k: Nucleus(k, "proposed", float(rng.random()), "m") for k in (1, 2)}
  with GeoJSONStreamWriter(tmp_path / "r.geojson", downsample=d, offset=(oy, ox),
                           image_size=big.shape) as g, \
      CSVStreamWriter(tmp_path / "r.csv", downsample=d, offset=(oy, ox)) as c:
    for rec in _records(small, nuclei):
      g.add(rec)
      c.add(rec)
  doc = json.loads((tmp_path / "r.geojson").read_text())
  assert check_geojson(doc, image_size=big.shape, pa_jax=True) == []
  for f in doc["features"]:
    k = f["properties"]["pa_jax"]["label"]
    poly = np.asarray(f["geometry"]["coordinates"][0][:-1])
    got = polygon_to_mask(poly, *big.shape)
    want = big == k
    assert np.count_nonzero(got & want) / np.count_nonzero(got | want) > 0.9
    x0, y0, x1, y1 = shapely.geometry.shape(f["geometry"]).bounds
    rows, cols = np.nonzero(want)
    assert x0 >= cols.min() and x1 <= cols.max() + 1 and y0 >= rows.min() and \
        y1 <= rows.max() + 1
    assert f["properties"]["measurements"]["area_px"] == int(want.sum())
  ref = {r[0]: r for r in (line.split(",") for line in
                           (tmp_path / "r.csv").read_text().split()[1:])}
  write_measurements_csv(tmp_path / "big.csv", big, nuclei)
  for line in (tmp_path / "big.csv").read_text().split()[1:]:
    r = line.split(",")
    s = ref[r[0]]
    # id, state, score, source, area, centroid x/y, bbox: exact; perimeter differs by level
    assert s[:11] == r[:11], (s, r)


def test_nothing_in_place_until_close_and_nothing_after_a_crash(tmp_path, example):
  labels, nuclei, _ = example
  recs = list(_records(labels, nuclei))
  path = tmp_path / "c.geojson"
  w = GeoJSONStreamWriter(path)
  w.add(recs[0])
  assert not path.exists()  # a half-written collection never has the final name
  w.close()
  w.close()  # idempotent
  assert len(json.loads(path.read_text())["features"]) == 1
  before = path.read_bytes()
  for writer in (GeoJSONStreamWriter, CSVStreamWriter):
    target = path if writer is GeoJSONStreamWriter else tmp_path / "c.csv"
    with pytest.raises(RuntimeError):
      with writer(target) as w:
        w.add(recs[0])
        raise RuntimeError("slide reader died")
  assert path.read_bytes() == before  # the earlier complete file is untouched
  assert sorted(p.name for p in tmp_path.iterdir()) == ["c.geojson"]  # no temporaries


def test_empty_outputs_are_valid(tmp_path):
  with GeoJSONStreamWriter(tmp_path / "e.geojson") as g, CSVStreamWriter(tmp_path / "e.csv") as c:
    assert not g.add(NucleusRecord(1, (0, 0, 2, 2), np.zeros((2, 2), bool), None,
                                   "proposed", "x"))
    assert not c.add(NucleusRecord(1, (0, 0, 2, 2), np.zeros((2, 2), bool), None,
                                   "proposed", "x"))
  doc = json.loads((tmp_path / "e.geojson").read_text())
  assert doc["type"] == "FeatureCollection" and doc["features"] == []
  assert (tmp_path / "e.csv").read_text().splitlines() == [
      "id,state,score,source,area,centroid_x,centroid_y,bbox_x,bbox_y,bbox_width,"
      "bbox_height,perimeter,eccentricity"]


@pytest.mark.parametrize("rec, message", [
    (NucleusRecord(0, (0, 0, 2, 2), np.ones((2, 2), bool), None, "proposed", "x"), ">= 1"),
    (NucleusRecord(1, (0, 0, 2, 3), np.ones((2, 2), bool), None, "proposed", "x"), "box"),
    (NucleusRecord(1, (0, 0, 2, 2), np.ones((2, 2), bool), None, "maybe", "x"), "state"),
])
def test_inconsistent_records_are_refused(tmp_path, rec, message):
  with GeoJSONStreamWriter(tmp_path / "b.geojson") as w:
    with pytest.raises(ValueError, match=message):
      w.add(rec)
  assert json.loads((tmp_path / "b.geojson").read_text())["features"] == []


def test_channel_count_must_not_change(tmp_path):
  m = np.ones((2, 2), bool)
  with CSVStreamWriter(tmp_path / "ch.csv") as w:
    w.add(NucleusRecord(1, (0, 0, 2, 2), m, None, "proposed", "x", (1.0, 2.0)))
    with pytest.raises(ValueError, match="channels"):
      w.add(NucleusRecord(2, (0, 0, 2, 2), m, None, "proposed", "x", (1.0,)))
