"""QuPath conventions of the GeoJSON export: object types, ids, classification,
measurements, the conventions checker and the review round trip through QuPath."""

from __future__ import annotations

import copy
import json
import uuid

import numpy as np
import pytest

from pa_jax.annotate.geojson_io import geojson_features, write_geojson
from pa_jax.annotate.geojson_read import read_geojson
from pa_jax.annotate.nuclei import STATE_COLORS, Nucleus, make_table
from pa_jax.annotate.qupath_check import check_geojson
from pa_jax.data.synthetic import synthetic_image
from pa_jax.errors import InputError

# What QuPath keeps of a Feature on import and writes back on export (PathObjectTypeAdapters):
# unknown properties such as `pa_jax` are dropped; metadata is kept on annotations only.
_QUPATH_KEEPS = ("objectType", "name", "classification", "isLocked", "measurements")


@pytest.fixture(scope="module")
def example():
  image, labels = synthetic_image(3, 80, 96, 12)
  labels = np.where(labels > 0, labels * 2 + 5, 0).astype(np.int32)
  ids = [int(k) for k in np.unique(labels) if k]
  nuclei = make_table(labels, "proposed", "pa_jax run step 9",
                      scores={k: 0.4 + i / 50 for i, k in enumerate(ids)})
  nuclei[ids[0]] = Nucleus(ids[0], "confirmed", None, "human")
  nuclei[ids[1]] = Nucleus(ids[1], "rejected", 0.3, "pa_jax run step 9")
  rgb = np.stack([image, 255 - image, image // 2], axis=-1).astype(np.uint8)
  return labels, nuclei, rgb


def _through_qupath(feature):
  """The feature as QuPath would export it again after importing it unchanged."""
  props = feature["properties"]
  kept = {k: props[k] for k in _QUPATH_KEEPS if k in props}
  if props.get("objectType") == "annotation" and "metadata" in props:
    kept["metadata"] = props["metadata"]
  return {"type": "Feature", "id": feature["id"], "geometry": feature["geometry"],
          "properties": kept}


@pytest.mark.parametrize("contours", ["polygon", "spline"])
def test_export_passes_the_conventions_check(tmp_path, example, contours):
  labels, nuclei, rgb = example
  path = write_geojson(tmp_path / "a.geojson", labels, nuclei, contours=contours,
                       image_id="a", image=rgb, pixel_size_um=0.5)
  assert check_geojson(path, image_size=labels.shape, pa_jax=True) == []
  feats = json.loads(path.read_text())["features"]
  assert len(feats) == len(nuclei)
  for f in feats:
    p = f["properties"]
    n = nuclei[p["pa_jax"]["label"]]
    assert p["objectType"] == ("detection" if n.state == "proposed" else "annotation")
    assert p["classification"] == {"name": n.state, "color": list(STATE_COLORS[n.state])}
    assert uuid.UUID(f["id"]).version == 5


def test_measurements_match_numpy(example):
  labels, nuclei, rgb = example
  feats = geojson_features(labels, nuclei, image_id="a", image=rgb, pixel_size_um=(0.25, 0.5))
  for f in feats:
    m = f["properties"]["measurements"]
    k = f["properties"]["pa_jax"]["label"]
    sel = labels == k
    assert m["area_px"] == int(sel.sum())
    assert m["area_um2"] == pytest.approx(sel.sum() * 0.125)
    for c in range(3):
      assert m[f"mean_intensity_c{c}"] == pytest.approx(rgb[..., c][sel].mean(), abs=1e-6)
    if nuclei[k].score is None:
      assert "score" not in m
    else:
      assert m["score"] == nuclei[k].score


def test_measurements_without_image_or_pixel_size(example):
  labels, nuclei, _ = example
  m = geojson_features(labels, nuclei, image_id="a")[2]["properties"]["measurements"]
  assert set(m) == {"score", "area_px"}


def test_ids_are_reproducible_per_image_and_unique(example):
  labels, nuclei, _ = example
  a1 = [f["id"] for f in geojson_features(labels, nuclei, image_id="a")]
  a2 = [f["id"] for f in geojson_features(labels, nuclei, image_id="a")]
  b = [f["id"] for f in geojson_features(labels, nuclei, image_id="b")]
  assert a1 == a2 and len(set(a1)) == len(a1) and not set(a1) & set(b)
  assert a1[0] == str(uuid.uuid5(uuid.UUID("5d0b8f7e-3c1a-4f5e-9a47-6a1f0b2c9d11"),
                                 f"a/{min(nuclei)}"))


def test_qupath_round_trip_of_review_decisions(tmp_path, example):
  labels, nuclei, _ = example
  path = write_geojson(tmp_path / "r.geojson", labels, nuclei, image_id="r")
  feats = [_through_qupath(f) for f in json.loads(path.read_text())["features"]]
  proposed = [i for i, f in enumerate(feats)
              if f["properties"]["classification"]["name"] == "proposed"]
  kept, converted, confirmed, rejected = proposed[:4]
  # convert a detection to an annotation (QuPath makes a new object: metadata is gone)
  feats[converted]["properties"]["objectType"] = "annotation"
  feats[confirmed]["properties"]["classification"] = {"name": "confirmed"}
  feats[rejected]["properties"]["classification"] = {"name": "Rejected"}
  path.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
  got, tab = read_geojson(path, labels.shape)
  assert np.array_equal(got, labels)  # labels come back from the names
  label = lambda i: int(feats[i]["properties"]["name"].split("-")[1])  # noqa: E731
  assert tab[label(kept)].state == "proposed"
  assert tab[label(converted)].state == "confirmed"
  assert tab[label(confirmed)].state == "confirmed"
  assert tab[label(rejected)].state == "rejected"
  assert tab[label(kept)].score == nuclei[label(kept)].score  # from the measurements
  for k, n in nuclei.items():  # the reviewed ones keep their state
    if n.state != "proposed":
      assert tab[k].state == n.state


def test_unchanged_file_reads_back_as_written(tmp_path, example):
  labels, nuclei, _ = example
  path = write_geojson(tmp_path / "u.geojson", labels, nuclei)
  got, tab = read_geojson(path, labels.shape)
  assert np.array_equal(got, labels) and tab == nuclei


def test_files_of_older_versions_keep_their_proposals(tmp_path, example):
  """Older pa_jax wrote every nucleus as an annotation, without an object type record."""
  labels, nuclei, _ = example
  path = write_geojson(tmp_path / "old.geojson", labels, nuclei)
  doc = json.loads(path.read_text())
  for f in doc["features"]:
    p = f["properties"]
    p["objectType"] = "annotation"
    del p["pa_jax"]["object_type"], p["metadata"]["pa_jax_object_type"]
  path.write_text(json.dumps(doc))
  assert read_geojson(path, labels.shape)[1] == nuclei
  doc["features"] = [_through_qupath(f) for f in doc["features"]]  # and after QuPath
  path.write_text(json.dumps(doc))
  assert {k: n.state for k, n in read_geojson(path, labels.shape)[1].items()} == \
      {k: n.state for k, n in nuclei.items()}


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), "abc", (1.0, 2.0, 3.0), True])
def test_bad_pixel_size_is_one_line(tmp_path, example, bad):
  labels, nuclei, _ = example
  with pytest.raises(InputError) as e:
    write_geojson(tmp_path / "p.geojson", labels, nuclei, pixel_size_um=bad)
  assert "pixel_size_um" in str(e.value) and "\n" not in str(e.value)
  assert not (tmp_path / "p.geojson").exists()


def test_image_of_another_size_is_one_line(tmp_path, example):
  labels, nuclei, rgb = example
  with pytest.raises(InputError) as e:
    write_geojson(tmp_path / "i.geojson", labels, nuclei, image=rgb[:-1])
  assert str(e.value).startswith("image:") and "\n" not in str(e.value)


# ------------------------------------------------------------------ the checker itself

def _good_doc(example):
  labels, nuclei, _ = example
  return {"type": "FeatureCollection",
          "features": geojson_features(labels, nuclei, image_id="c")}


def _break_ring(f):
  f["geometry"]["coordinates"][0].pop()


def _bowtie(f):
  f["geometry"]["coordinates"] = [[[0, 0], [4, 4], [4, 0], [0, 4], [0, 0]]]


def _shift(f):  # a region's level coordinates written without the offset / downsample
  f["geometry"]["coordinates"] = [[[x + 1000, y] for x, y in f["geometry"]["coordinates"][0]]]


@pytest.mark.parametrize("edit, expected", [
    (_break_ring, "not closed"),
    (_bowtie, "invalid polygon"),
    (_shift, "outside the full-resolution image"),
    (lambda f: f["properties"].update(objectType="nucleus"), "objectType"),
    (lambda f: f["properties"].update(measurements={"score": None}), "measurements"),
    (lambda f: f["properties"].update(measurements={"area": "12"}), "measurements"),
    (lambda f: f["properties"]["classification"].update(color=[255, 0]), "color"),
    (lambda f: f["properties"]["classification"].update(color=[1.5, 0, 0]), "color"),
    (lambda f: f.update(id="nucleus-12"), "UUID"),
    (lambda f: f.update(geometry={"type": "Point", "coordinates": [1, 2]}), "Point"),
    (lambda f: f["properties"].update(metadata={"n": 3}), "metadata"),
    (lambda f: f["properties"].update(objectType="annotation"), "must be a detection"),
])
def test_checker_catches_each_rule(example, edit, expected):
  doc = _good_doc(example)
  assert check_geojson(doc, image_size=example[0].shape, pa_jax=True) == []
  i = next(i for i, f in enumerate(doc["features"])
           if f["properties"]["classification"]["name"] == "proposed")
  edit(doc["features"][i])
  problems = check_geojson(doc, image_size=example[0].shape, pa_jax=True)
  assert problems and all(p.startswith(f"feature {i}:") for p in problems), problems
  assert any(expected in p for p in problems), problems


def test_checker_document_level(example):
  doc = _good_doc(example)
  assert check_geojson(doc["features"]) == ["not a GeoJSON FeatureCollection"]
  dup = copy.deepcopy(doc)
  dup["features"][1]["id"] = dup["features"][0]["id"]
  assert check_geojson(dup) == [f"feature 1: id {dup['features'][0]['id']} is used twice"]
  assert check_geojson({"type": "FeatureCollection", "features": None}) == \
      ["FeatureCollection 'features' is not a list"]


def test_checker_reads_files_and_names_bad_ones(tmp_path):
  bad = tmp_path / "bad.geojson"
  bad.write_text("{not json")
  with pytest.raises(InputError) as e:
    check_geojson(bad)
  assert "bad.geojson" in str(e.value) and "\n" not in str(e.value)


def test_export_all_passes_image_and_pixel_size(tmp_path, example):
  from pa_jax.annotate import formats as F

  labels, nuclei, rgb = example
  F.export_all(tmp_path, "x", labels, nuclei, ("geojson", "csv"), image=rgb,
               pixel_size_um=0.5)
  m = json.loads((tmp_path / "x.geojson").read_text())["features"][0]["properties"][
      "measurements"]
  assert {"area_um2", "mean_intensity_c0", "mean_intensity_c2"} <= set(m)
  header = (tmp_path / "x.csv").read_text().splitlines()[0].split(",")
  assert header[-4:] == ["area_um2", "mean_intensity_c0", "mean_intensity_c1",
                         "mean_intensity_c2"]
