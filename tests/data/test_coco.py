"""COCO JSON: RLE codec, polygons, dataset reading with its errors, label-map export."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pa_jax.data import coco, readers, rle
from pa_jax.data.synthetic import synthetic_labels
from pa_jax.errors import InputError


def _assert_one_line_error(excinfo, name):
  msg = str(excinfo.value)
  assert name in msg, msg
  assert "\n" not in msg


def _same_up_to_relabelling(a: np.ndarray, b: np.ndarray) -> bool:
  """True when a and b are the same partition (0 ↔ 0, and a bijection between labels)."""
  if a.shape != b.shape or not np.array_equal(a == 0, b == 0):
    return False
  pairs = np.unique(np.stack([a.ravel(), b.ravel()], 1), axis=0)
  return len(np.unique(pairs[:, 0])) == len(pairs) == len(np.unique(pairs[:, 1]))


# ----------------------------------------------------------------------------- RLE


def test_rle_decode_uncompressed():
  # column-major: 1 zero, 2 ones, 3 zeros over a 2x3 image
  m = coco.rle_decode({"size": [2, 3], "counts": [1, 2, 3]})
  np.testing.assert_array_equal(m, [[0, 1, 0], [1, 0, 0]])
  assert m.dtype == bool


def test_rle_decode_compressed_hand_written():
  # counts [1, 2, 5, 3, 1]; from the 4th count on the delta to two back is stored:
  # '1' '2' '5' then 3-2=1 → '1', then 1-5=-4 → 0b11100 (sign bit set, no continuation)
  # → chr(28 + 48) = 'L'.
  m = coco.rle_decode({"size": [4, 3], "counts": "1251L"})
  np.testing.assert_array_equal(m, [[0, 0, 1], [1, 0, 1], [1, 0, 1], [0, 0, 0]])
  assert coco.rle_encode(m) == {"size": [4, 3], "counts": "1251L"}


def test_rle_compressed_multi_character_counts():
  # counts [0, 40, 60, 0]: 40 → 'X1' (8|0x20, then 1), 60 → 'l1' (28|0x20, then 1),
  # 0-40 = -40 → 'h' (24|0x20) 'N' (30, sign bit).
  m = coco.rle_decode({"size": [10, 10], "counts": "0X1l1hN"})
  expected = np.zeros((10, 10), bool)
  expected[:, :4] = True  # first 40 pixels in column-major order = 4 columns
  np.testing.assert_array_equal(m, expected)
  # a 100-pixel run: 100 = 3*32 + 4 → 'T' (4|0x20) '3'
  np.testing.assert_array_equal(coco.rle_decode({"size": [10, 10], "counts": "0T3"}),
                                np.ones((10, 10), bool))
  assert coco.rle_encode(np.ones((10, 10), bool))["counts"] == "0T3"
  assert coco.rle_decode({"size": [10, 10], "counts": b"0T3"}).all()  # bytes accepted


def test_rle_round_trip_random_masks():
  rng = np.random.default_rng(0)
  shapes = [(1, 1), (1, 17), (17, 1), (5, 7), (64, 48), (200, 3)]
  for h, w in shapes:
    for p in (0.0, 0.05, 0.5, 0.97, 1.0):
      m = rng.random((h, w)) < p
      r = coco.rle_encode(m)
      assert r["size"] == [h, w] and isinstance(r["counts"], str)
      np.testing.assert_array_equal(coco.rle_decode(r), m)
  # blobby masks (long runs → multi-character and negative deltas)
  yy, xx = np.mgrid[0:300, 0:300]
  m = ((yy - 150) ** 2 + (xx - 120) ** 2 < 90 ** 2) | ((yy - 20) ** 2 + (xx - 280) ** 2 < 15 ** 2)
  np.testing.assert_array_equal(coco.rle_decode(coco.rle_encode(m)), m)


@pytest.mark.parametrize("rle", [
    {"size": [2, 2], "counts": [1, 2]},        # covers 3 of 4 pixels
    {"size": [2, 2], "counts": "1 1"},          # invalid character
    {"size": [2, 2], "counts": "W"},            # ends inside a count
    {"size": [2, 2], "counts": [2, -1, 3]},     # negative run
    {"size": [2], "counts": [4]},
    {"counts": [4]},
])
def test_rle_decode_malformed(rle):
  with pytest.raises(ValueError):
    coco.rle_decode(rle)


# ------------------------------------------------------------------------ polygons


def test_polygon_square_pixels():
  # pixel (r, c) covers [c, c+1) x [r, r+1): this square covers exactly rows/cols 2..5
  m = coco.polygons_to_mask([[2, 2, 6, 2, 6, 6, 2, 6]], 10, 10)
  expected = np.zeros((10, 10), bool)
  expected[2:6, 2:6] = True
  np.testing.assert_array_equal(m, expected)
  assert m.sum() == 16  # equals the polygon's area


def test_polygons_union_clip_and_degenerate():
  m = coco.polygons_to_mask([[0, 0, 2, 0, 2, 2, 0, 2], [8, 8, 12, 8, 12, 12, 8, 12], [1, 1, 2, 2]],
                            10, 10)
  assert m[:2, :2].all() and m[8:, 8:].all() and m.sum() == 8


# ---------------------------------------------------------- annotations → label map


def test_overlap_small_nucleus_keeps_its_pixels():
  big = {"segmentation": [[0, 0, 10, 0, 10, 10, 0, 10]]}
  small = {"segmentation": [[4, 4, 6, 4, 6, 6, 4, 6]]}
  crowd = {"segmentation": [[0, 0, 10, 0, 10, 10, 0, 10]], "iscrowd": 1}
  for anns in ([small, big, crowd], [crowd, big, small]):
    lab = coco.annotations_to_label_map(anns, 12, 12)
    assert lab.dtype == np.int32
    assert readers.count_instances(lab) == 2
    assert len(np.unique(lab[4:6, 4:6])) == 1 and lab[4, 4] != lab[0, 0]
    assert (lab == lab[0, 0]).sum() == 100 - 4
  # labels follow annotation order
  lab = coco.annotations_to_label_map([small, big], 12, 12)
  assert lab[4, 4] == 1 and lab[0, 0] == 2


def test_annotation_rle_and_polygon_mix():
  m = np.zeros((6, 5), bool)
  m[1:3, 1:4] = True
  anns = [{"segmentation": coco.rle_encode(m)},
          {"segmentation": {"size": [6, 5], "counts": rle.string_to_counts(
              coco.rle_encode(np.eye(6, 5, dtype=bool)[::-1])["counts"])}},
          {"segmentation": [[0, 5, 1, 5, 1, 6, 0, 6]]}]
  lab = coco.annotations_to_label_map(anns, 6, 5)
  # block (6 px) < anti-diagonal (5 px) < square (1 px): each smaller one wins its overlap
  np.testing.assert_array_equal(lab, [[0, 0, 0, 0, 0],
                                      [0, 1, 1, 1, 2],
                                      [0, 1, 1, 2, 0],
                                      [0, 0, 2, 0, 0],
                                      [0, 2, 0, 0, 0],
                                      [3, 0, 0, 0, 0]])


# ------------------------------------------------------------------------- datasets


def _write_images(folder: Path, names_shapes):
  folder.mkdir(parents=True, exist_ok=True)
  for name, shape in names_shapes:
    Image.fromarray(np.full(shape, 100, np.uint8)).save(folder / name)


def _coco_json(tmp_path, data, name="ann.json"):
  p = tmp_path / name
  p.write_text(json.dumps(data))
  return p


def _two_image_coco():
  sq = np.zeros((20, 30), bool)
  sq[5:10, 5:12] = True
  return {
      "images": [{"id": 7, "file_name": "a.png", "height": 20, "width": 30},
                 {"id": 8, "file_name": "b.png", "height": 16, "width": 16}],
      "annotations": [
          {"id": 1, "image_id": 7, "category_id": 1, "segmentation": [[20, 2, 26, 2, 26, 8, 20, 8]]},
          {"id": 2, "image_id": 7, "category_id": 1, "segmentation": coco.rle_encode(sq)},
          {"id": 3, "image_id": 7, "category_id": 1, "iscrowd": 1,
           "segmentation": {"size": [20, 30], "counts": [0, 600]}},
      ],
      "categories": [{"id": 1, "name": "nucleus"}],
  }


def test_read_dataset_two_images_one_empty(tmp_path):
  _write_images(tmp_path / "images", [("a.png", (20, 30)), ("b.png", (16, 16))])
  p = _coco_json(tmp_path, _two_image_coco())
  recs = coco.read_coco_dataset(p)
  assert [r.id for r in recs] == ["a", "b"]
  assert recs[0].image_path == tmp_path / "images" / "a.png"
  assert recs[0].label_path == p and recs[0].has_labels
  ex = readers.load_example(recs[0])
  assert ex.labels.shape == (20, 30) and readers.count_instances(ex.labels) == 2  # crowd skipped
  assert (ex.labels == ex.labels[7, 7]).sum() == 35
  assert (ex.labels == ex.labels[4, 22]).sum() == 36
  ex_b = readers.load_example(recs[1])
  assert ex_b.labels.shape == (16, 16) and ex_b.labels.max() == 0
  # the loader survives pickling (multiprocess input pipelines)
  np.testing.assert_array_equal(pickle.loads(pickle.dumps(recs[0])).load_labels(), ex.labels)
  # open_dataset dispatches on the suffix
  assert [r.id for r in readers.open_dataset(p)] == ["a", "b"]


def test_image_lookup_places(tmp_path):
  data = _two_image_coco()
  data["images"][0]["file_name"] = "sub/a.png"
  _write_images(tmp_path / "sub", [("a.png", (20, 30))])
  _write_images(tmp_path / "images", [("b.png", (16, 16))])
  recs = coco.read_coco_dataset(_coco_json(tmp_path, data))
  assert recs[0].image_path == tmp_path / "sub" / "a.png"
  assert recs[1].image_path == tmp_path / "images" / "b.png"
  other = tmp_path / "elsewhere"
  _write_images(other, [("a.png", (20, 30)), ("b.png", (16, 16))])
  recs = coco.read_coco_dataset(tmp_path / "ann.json", images_dir=other)
  assert [r.image_path for r in recs] == [other / "a.png", other / "b.png"]


def _expect_error(tmp_path, data_or_text, *fragments):
  _write_images(tmp_path / "images", [("a.png", (20, 30)), ("b.png", (16, 16))])
  p = tmp_path / "bad.json"
  p.write_text(data_or_text if isinstance(data_or_text, str) else json.dumps(data_or_text))
  with pytest.raises(InputError) as e:
    coco.read_coco_dataset(p)
  _assert_one_line_error(e, "bad.json")
  for f in fragments:
    assert f in str(e.value), str(e.value)


def test_invalid_json(tmp_path):
  _expect_error(tmp_path, '{"images": [', "invalid JSON")


def test_not_an_object(tmp_path):
  _expect_error(tmp_path, "[1, 2]")


@pytest.mark.parametrize("key", ["images", "annotations"])
def test_missing_top_level_key(tmp_path, key):
  data = _two_image_coco()
  del data[key]
  _expect_error(tmp_path, data, key)


def test_missing_image_key(tmp_path):
  data = _two_image_coco()
  del data["images"][1]["height"]
  _expect_error(tmp_path, data, "height")


def test_missing_segmentation(tmp_path):
  data = _two_image_coco()
  del data["annotations"][0]["segmentation"]
  _expect_error(tmp_path, data, "segmentation", "annotation 1")


def test_unknown_image_id(tmp_path):
  data = _two_image_coco()
  data["annotations"][1]["image_id"] = 99
  _expect_error(tmp_path, data, "99", "annotation 2")


def test_duplicate_image_id(tmp_path):
  data = _two_image_coco()
  data["images"][1]["id"] = 7
  _expect_error(tmp_path, data, "twice")


def test_polygon_outside_image(tmp_path):
  data = _two_image_coco()
  data["annotations"][0]["segmentation"] = [[20, 2, 40, 2, 40, 8, 20, 8]]
  _expect_error(tmp_path, data, "outside")


def test_rle_of_other_size(tmp_path):
  data = _two_image_coco()
  data["annotations"][1]["segmentation"] = coco.rle_encode(np.zeros((16, 16), bool))
  _expect_error(tmp_path, data, "16x16", "20x30")


def test_malformed_rle(tmp_path):
  data = _two_image_coco()
  data["annotations"][1]["segmentation"] = {"size": [20, 30], "counts": [5, 5]}
  _expect_error(tmp_path, data, "annotation 2")


def test_missing_image_file(tmp_path):
  data = _two_image_coco()
  data["images"][1]["file_name"] = "zzz.png"
  _expect_error(tmp_path, data, "zzz.png")


def test_json_size_differs_from_image_file(tmp_path):
  _write_images(tmp_path / "images", [("a.png", (20, 31)), ("b.png", (16, 16))])
  p = _coco_json(tmp_path, _two_image_coco(), "sizes.json")
  recs = coco.read_coco_dataset(p)
  with pytest.raises(InputError) as e:
    readers.load_example(recs[0])
  _assert_one_line_error(e, "sizes.json")
  assert "20x30" in str(e.value) and "20x31" in str(e.value)
  readers.load_example(recs[1])  # the other image is fine


def test_missing_json_file(tmp_path):
  with pytest.raises(InputError) as e:
    coco.read_coco_dataset(tmp_path / "none.json")
  _assert_one_line_error(e, "none.json")


# ------------------------------------------------------------------ label map → COCO


def test_label_map_to_coco_fields():
  lab = np.zeros((10, 12), np.int32)
  lab[2:5, 3:9] = 4
  lab[7, 0] = 9
  anns = coco.label_map_to_coco(lab, image_id=3, start_ann_id=10, scores={4: 0.5, 9: 0.25})
  assert [a["id"] for a in anns] == [10, 11]
  assert all(a["image_id"] == 3 and a["iscrowd"] == 0 for a in anns)
  assert anns[0]["bbox"] == [3, 2, 6, 3] and anns[0]["area"] == 18
  assert anns[1]["bbox"] == [0, 7, 1, 1] and anns[1]["area"] == 1
  assert [a["score"] for a in anns] == [0.5, 0.25]
  np.testing.assert_array_equal(coco.rle_decode(anns[0]["segmentation"]), lab == 4)
  # sequence scores: scores[k - 1] belongs to label k
  s = np.linspace(0, 1, 9)
  assert [a["score"] for a in coco.label_map_to_coco(lab, 3, 1, s)] == [s[3], s[8]]
  assert coco.label_map_to_coco(np.zeros((4, 4), np.int32), 1, 1) == []


def test_label_map_coco_round_trip_synthetic():
  lab, _ = synthetic_labels(3, 96, 80, n_nuclei=40, touching=0.6)
  anns = coco.label_map_to_coco(lab, 1, 1)
  assert len(anns) == readers.count_instances(lab)
  back = coco.annotations_to_label_map(anns, 96, 80)
  assert _same_up_to_relabelling(back, lab)
  # also through uncompressed counts
  for a in anns:
    a["segmentation"]["counts"] = rle.string_to_counts(a["segmentation"]["counts"])
  assert _same_up_to_relabelling(coco.annotations_to_label_map(anns, 96, 80), lab)


def test_write_coco_then_read(tmp_path):
  la, _ = synthetic_labels(0, 40, 50, n_nuclei=12)
  lb = np.zeros((30, 30), np.int32)
  _write_images(tmp_path / "images", [("a.png", (40, 50)), ("b.png", (30, 30))])
  data = coco.write_coco(tmp_path / "out.json", [
      (1, "a.png", 40, 50, la, np.arange(la.max()) / 10.0),
      (2, "b.png", 30, 30, lb, None)])
  assert [a["id"] for a in data["annotations"]] == list(range(1, la.max() + 1))
  assert json.loads((tmp_path / "out.json").read_text()) == data
  assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left
  recs = readers.open_dataset(tmp_path / "out.json")
  assert _same_up_to_relabelling(readers.load_example(recs[0]).labels, la)
  assert readers.load_example(recs[1]).labels.max() == 0


def test_write_coco_shape_mismatch(tmp_path):
  with pytest.raises(ValueError):
    coco.write_coco(tmp_path / "x.json", [(1, "a.png", 4, 5, np.zeros((5, 4), np.int32), None)])
  assert not (tmp_path / "x.json").exists()


def test_label_map_to_coco_dense_is_fast():
  import time

  lab, _ = synthetic_labels(0, 1024, 1024, n_nuclei=2000)
  t = time.perf_counter()
  anns = coco.label_map_to_coco(lab, 1, 1)
  back = coco.annotations_to_label_map(anns, 1024, 1024)
  assert time.perf_counter() - t < 10
  assert _same_up_to_relabelling(back, lab)


# ------------------------------------------------------------------ polygon repair


def test_repair_polygon_rules():
  square = np.array([[0, 0], [4, 0], [4, 4], [0, 4]], float)
  rings, note = coco.repair_polygon(square)
  assert note == "" and len(rings) == 1 and rings[0] is not None
  np.testing.assert_array_equal(rings[0], square)  # valid: untouched
  # bow-tie crossing at (17.5, 17.5): the larger lobe (area 337.5 vs 37.5) is kept
  rings, note = coco.repair_polygon([[10, 10], [40, 40], [40, 10], [10, 20]])
  assert note == "self-intersecting" and len(rings) == 1
  from shapely.geometry import Polygon

  assert Polygon(rings[0]).area == pytest.approx(0.5 * 22.5 * 30)
  assert coco.repair_polygon([[0, 0], [5, 5], [10, 10]]) == ([], "zero area")
  assert coco.repair_polygon([[1, 1], [2, 2], [1, 1]]) == ([], "fewer than 3 distinct points")


def test_polygons_to_mask_repairs_bowtie():
  m = coco.polygons_to_mask([[10, 10, 40, 40, 40, 10, 10, 20]], 50, 50)
  from scipy import ndimage

  assert ndimage.label(m)[1] == 1 and m[25, 35] and not m[15, 11]
