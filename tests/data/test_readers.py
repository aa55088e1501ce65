"""Readers: every image format, the three folder layouts, and one-line errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from pa_jax import fileio
from pa_jax.data import readers
from pa_jax.errors import InputError


def _noise(shape, dtype=np.uint8, seed=0):
  rng = np.random.default_rng(seed)
  return rng.integers(0, np.iinfo(dtype).max, size=shape, dtype=dtype, endpoint=True)


def _labels(h=16, w=20):
  lab = np.zeros((h, w), np.int32)
  lab[2:6, 3:8] = 1
  lab[8:12, 10:15] = 2
  return lab


def _assert_one_line_error(excinfo, name):
  msg = str(excinfo.value)
  assert name in msg, msg
  assert "\n" not in msg
  assert isinstance(excinfo.value, InputError)


# ------------------------------------------------------------------------- images


def test_png_8bit_gray(tmp_path):
  a = _noise((10, 12))
  Image.fromarray(a).save(tmp_path / "g8.png")
  out = readers.read_image(tmp_path / "g8.png")
  assert out.dtype == np.uint8 and out.shape == (10, 12)
  np.testing.assert_array_equal(out, a)


def test_png_16bit_gray(tmp_path):
  a = _noise((10, 12), np.uint16)
  fileio.write_png(tmp_path / "g16.png", a)
  out = readers.read_image(tmp_path / "g16.png")
  assert out.dtype == np.uint16 and out.shape == (10, 12)
  np.testing.assert_array_equal(out, a)


def test_png_rgb(tmp_path):
  a = _noise((10, 12, 3))
  Image.fromarray(a, "RGB").save(tmp_path / "rgb.png")
  out = readers.read_image(tmp_path / "rgb.png")
  assert out.dtype == np.uint8 and out.shape == (10, 12, 3)
  np.testing.assert_array_equal(out, a)


def test_png_rgba_drops_alpha(tmp_path):
  a = _noise((10, 12, 4))
  Image.fromarray(a, "RGBA").save(tmp_path / "rgba.png")
  out = readers.read_image(tmp_path / "rgba.png")
  assert out.shape == (10, 12, 3)
  np.testing.assert_array_equal(out, a[..., :3])


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_tiff_gray(tmp_path, dtype):
  a = _noise((9, 7), dtype)
  tifffile.imwrite(tmp_path / "a.tif", a)
  out = readers.read_image(tmp_path / "a.tif")
  assert out.dtype == dtype and out.shape == (9, 7)
  np.testing.assert_array_equal(out, a)


def test_tiff_rgb_16bit(tmp_path):
  a = _noise((9, 7, 3), np.uint16)
  tifffile.imwrite(tmp_path / "a.tiff", a, photometric="rgb")
  out = readers.read_image(tmp_path / "a.tiff")
  assert out.dtype == np.uint16 and out.shape == (9, 7, 3)
  np.testing.assert_array_equal(out, a)


def test_jpeg_image(tmp_path):
  yy, xx = np.mgrid[0:32, 0:40]
  a = np.stack([yy * 6, xx * 5, 128 + 0 * xx], -1).astype(np.uint8)  # smooth: JPEG-friendly
  Image.fromarray(a).save(tmp_path / "a.jpg", quality=95)
  out = readers.read_image(tmp_path / "a.jpg")
  assert out.dtype == np.uint8 and out.shape == (32, 40, 3)
  assert np.abs(out.astype(int) - a).mean() < 4


def test_label_map_png16_and_tiff(tmp_path):
  lab = _labels()
  lab[0, 0] = 700  # needs 16 bits
  fileio.write_label_map(tmp_path / "l.png", lab)
  fileio.write_label_map(tmp_path / "l.tif", lab)
  for name in ("l.png", "l.tif"):
    out = readers.read_label_map(tmp_path / name, image_shape=lab.shape)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, lab)


def test_label_map_palette_png_keeps_indices(tmp_path):
  lab = _labels().astype(np.uint8)
  im = Image.fromarray(lab, "P")
  im.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (253 * 3))
  im.save(tmp_path / "p.png")
  np.testing.assert_array_equal(readers.read_label_map(tmp_path / "p.png"), lab)


def test_all_zero_label_map_is_valid(tmp_path):
  Image.fromarray(_noise((16, 20))).save(tmp_path / "e.png")
  fileio.write_label_map(tmp_path / "labels" / "e.png", np.zeros((16, 20), np.int32))
  (rec,) = readers.read_image_folder(tmp_path)
  ex = readers.load_example(rec)
  assert ex.labels.shape == (16, 20) and ex.labels.max() == 0
  assert readers.count_instances(ex.labels) == 0


# ----------------------------------------------------------------- bad image files


def test_unreadable_random_bytes(tmp_path):
  (tmp_path / "junk.png").write_bytes(np.random.default_rng(1).bytes(300))
  with pytest.raises(InputError) as e:
    readers.read_image(tmp_path / "junk.png")
  _assert_one_line_error(e, "junk.png")


def test_truncated_png(tmp_path):
  Image.fromarray(_noise((64, 64, 3))).save(tmp_path / "full.png")
  data = (tmp_path / "full.png").read_bytes()
  (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
  with pytest.raises(InputError) as e:
    readers.read_image(tmp_path / "cut.png")
  _assert_one_line_error(e, "cut.png")


def test_missing_file(tmp_path):
  with pytest.raises(InputError) as e:
    readers.read_image(tmp_path / "nope.png")
  _assert_one_line_error(e, "nope.png")


def test_float_image_with_nan_rejected(tmp_path):
  # A finite float image is read (stretched to uint16, tests/faults/test_inputs.py); one
  # with NaN/Inf is refused, naming how many pixels are bad.
  a = np.zeros((4, 4), np.float32)
  a[0, :3] = np.nan
  tifffile.imwrite(tmp_path / "f.tif", a)
  with pytest.raises(InputError) as e:
    readers.read_image(tmp_path / "f.tif")
  _assert_one_line_error(e, "f.tif")
  assert "3 NaN/Inf pixels" in str(e.value)


def test_constant_float_image_is_zeros(tmp_path):
  tifffile.imwrite(tmp_path / "f.tif", np.full((4, 4), 7.5, np.float32))
  out = readers.read_image(tmp_path / "f.tif")
  assert out.dtype == np.uint16 and out.shape == (4, 4) and not out.any()


# --------------------------------------------------------------- bad label maps


def test_label_shape_differs_from_image(tmp_path):
  Image.fromarray(_noise((16, 20))).save(tmp_path / "a.png")
  fileio.write_label_map(tmp_path / "labels" / "a.png", np.zeros((16, 21), np.int32))
  (rec,) = readers.read_image_folder(tmp_path)
  with pytest.raises(InputError) as e:
    readers.load_example(rec)
  _assert_one_line_error(e, "a.png")
  assert "16x21" in str(e.value) and "16x20" in str(e.value)
  assert e.value.where.endswith(str(Path("labels") / "a.png"))


def test_float_label_map(tmp_path):
  tifffile.imwrite(tmp_path / "f_labels.tif", _labels().astype(np.float32))
  with pytest.raises(InputError) as e:
    readers.read_label_map(tmp_path / "f_labels.tif")
  _assert_one_line_error(e, "f_labels.tif")
  assert "float" in str(e.value)


def test_negative_label_map(tmp_path):
  lab = _labels().astype(np.int16)
  lab[0, 0] = -1
  tifffile.imwrite(tmp_path / "neg.tif", lab)
  with pytest.raises(InputError) as e:
    readers.read_label_map(tmp_path / "neg.tif")
  _assert_one_line_error(e, "neg.tif")
  assert "negative" in str(e.value)


def test_colour_label_map(tmp_path):
  Image.fromarray(_noise((8, 8, 3))).save(tmp_path / "c.png")
  with pytest.raises(InputError) as e:
    readers.read_label_map(tmp_path / "c.png")
  _assert_one_line_error(e, "c.png")


# ------------------------------------------------------------------ dataset folder


def _write_dataset(root: Path, rows):
  (root / "images").mkdir(parents=True, exist_ok=True)
  for r in rows:
    h, w = int(r["height"]), int(r["width"])
    Image.fromarray(_noise((h, w))).save(root / "images" / f"{r['id']}.png")
    fileio.write_label_map(root / "labels" / f"{r['id']}.png", _labels(h, w))
  fileio.write_csv(root / "index.csv", rows, readers.INDEX_COLUMNS)


def _rows():
  base = dict(modality="fluorescence", height=16, width=20, channels=1, nuclei=2)
  return [dict(base, id="a", split="train", group="g1"),
          dict(base, id="b", split="train", group="g2"),
          dict(base, id="c", split="test", group="g1"),
          dict(base, id="d", split="", group="")]


def test_dataset_folder_and_filters(tmp_path):
  _write_dataset(tmp_path, _rows())
  recs = readers.open_dataset(tmp_path)
  assert [r.id for r in recs] == ["a", "b", "c", "d"]
  assert recs[3].split == "train"  # empty split cell means train
  assert [r.id for r in readers.open_dataset(tmp_path, split="train")] == ["a", "b", "d"]
  assert [r.id for r in readers.open_dataset(tmp_path, split="test")] == ["c"]
  assert [r.id for r in readers.open_dataset(tmp_path, group="g1")] == ["a", "c"]
  assert [r.id for r in readers.open_dataset(tmp_path, split="train", group="g1,g2")] == ["a", "b"]
  assert [r.id for r in readers.open_dataset(tmp_path, split="train,test")] == ["a", "b", "c", "d"]
  ex = readers.load_example(recs[0])
  assert ex.image.shape == (16, 20) and ex.labels.max() == 2
  assert recs[0].group == "g1" and recs[0].modality == "fluorescence"


def test_dataset_filter_matching_nothing(tmp_path):
  _write_dataset(tmp_path, _rows())
  with pytest.raises(InputError) as e:
    readers.read_dataset_folder(tmp_path, split="val")
  _assert_one_line_error(e, "index.csv")


def test_dataset_missing_image_of_index_row(tmp_path):
  _write_dataset(tmp_path, _rows())
  (tmp_path / "images" / "b.png").unlink()
  with pytest.raises(InputError) as e:
    readers.read_dataset_folder(tmp_path)
  _assert_one_line_error(e, "b.png")


def test_dataset_missing_label_of_index_row(tmp_path):
  _write_dataset(tmp_path, _rows())
  (tmp_path / "labels" / "c.png").unlink()
  with pytest.raises(InputError) as e:
    readers.read_dataset_folder(tmp_path)
  _assert_one_line_error(e, "c.png")


def test_index_without_id_column(tmp_path):
  (tmp_path / "images").mkdir()
  (tmp_path / "index.csv").write_text("name,split\na,train\n")
  with pytest.raises(InputError) as e:
    readers.open_dataset(tmp_path)
  _assert_one_line_error(e, "index.csv")


def test_index_duplicate_id(tmp_path):
  with open(tmp_path / "index.csv", "w", newline="") as f:
    csv.writer(f).writerows([["id", "split"], ["a", "train"], ["a", "test"]])
  with pytest.raises(InputError) as e:
    readers.read_dataset_folder(tmp_path)
  _assert_one_line_error(e, "index.csv")


# -------------------------------------------------------------------- plain folder


def test_plain_folder_labels_subfolder(tmp_path):
  for n in ("x", "y"):
    Image.fromarray(_noise((16, 20))).save(tmp_path / f"{n}.png")
  fileio.write_label_map(tmp_path / "labels" / "x.tif", _labels())
  recs = readers.open_dataset(tmp_path)
  assert [r.id for r in recs] == ["x", "y"]
  assert recs[0].label_path == tmp_path / "labels" / "x.tif"
  assert recs[1].label_path is None and not recs[1].has_labels
  assert readers.load_example(recs[1]).labels is None
  with pytest.raises(InputError) as e:
    readers.open_dataset(tmp_path, require_labels=True)
  _assert_one_line_error(e, "y.png")


def test_plain_folder_mask_suffix(tmp_path):
  Image.fromarray(_noise((16, 20, 3))).save(tmp_path / "cell.png")
  fileio.write_label_map(tmp_path / "cell_mask.tif", _labels())
  recs = readers.open_dataset(tmp_path)
  assert [r.id for r in recs] == ["cell"]  # the mask is not listed as an image
  assert recs[0].label_path == tmp_path / "cell_mask.tif"
  ex = readers.load_example(recs[0])
  assert ex.image.shape == (16, 20, 3)
  np.testing.assert_array_equal(ex.labels, _labels())


def test_plain_folder_separate_label_folder(tmp_path):
  (tmp_path / "imgs").mkdir()
  tifffile.imwrite(tmp_path / "imgs" / "s1.tif", _noise((16, 20), np.uint16))
  Image.fromarray(_noise((16, 20))).save(tmp_path / "imgs" / "s2.jpg")
  fileio.write_label_map(tmp_path / "gt" / "s1.png", _labels())
  fileio.write_label_map(tmp_path / "gt" / "s2.png", _labels())
  recs = readers.open_dataset(tmp_path / "imgs", labels=tmp_path / "gt", require_labels=True)
  assert [r.label_path.name for r in recs] == ["s1.png", "s2.png"]
  ex = readers.load_example(recs[0])
  assert ex.image.dtype == np.uint16 and ex.labels.max() == 2


def test_images_subfolder_without_labels(tmp_path):
  (tmp_path / "images").mkdir()
  Image.fromarray(_noise((8, 8))).save(tmp_path / "images" / "only.png")
  (rec,) = readers.open_dataset(tmp_path)
  assert rec.id == "only" and rec.label_path is None


def test_images_and_labels_subfolders(tmp_path):
  (tmp_path / "images").mkdir()
  Image.fromarray(_noise((16, 20))).save(tmp_path / "images" / "k.png")
  fileio.write_label_map(tmp_path / "labels" / "k.png", _labels())
  (rec,) = readers.open_dataset(tmp_path)
  assert rec.label_path == tmp_path / "labels" / "k.png"


def test_single_image_file(tmp_path):
  Image.fromarray(_noise((8, 8))).save(tmp_path / "one.png")
  (rec,) = readers.open_dataset(tmp_path / "one.png")
  assert rec.id == "one" and readers.load_example(rec).image.shape == (8, 8)


def test_empty_folder(tmp_path):
  (tmp_path / "empty").mkdir()
  with pytest.raises(InputError) as e:
    readers.open_dataset(tmp_path / "empty")
  _assert_one_line_error(e, "empty")


def test_missing_path(tmp_path):
  with pytest.raises(InputError) as e:
    readers.open_dataset(tmp_path / "ghost")
  _assert_one_line_error(e, "ghost")


def test_missing_label_folder(tmp_path):
  Image.fromarray(_noise((8, 8))).save(tmp_path / "one.png")
  with pytest.raises(InputError) as e:
    readers.open_dataset(tmp_path, labels=tmp_path / "nolabels")
  _assert_one_line_error(e, "nolabels")


def test_open_dataset_dispatches_json(tmp_path):
  Image.fromarray(_noise((8, 8))).save(tmp_path / "im.png")
  (tmp_path / "ann.json").write_text(json.dumps({
      "images": [{"id": 1, "file_name": "im.png", "height": 8, "width": 8}],
      "annotations": []}))
  (rec,) = readers.open_dataset(tmp_path / "ann.json")
  assert readers.load_example(rec).labels.max() == 0


# ------------------------------------------------------------------------ helpers


def test_relabel_sequential_and_count():
  lab = np.array([[0, 7, 7], [3, 0, 100]])
  out = readers.relabel_sequential(lab)
  np.testing.assert_array_equal(out, [[0, 2, 2], [1, 0, 3]])
  assert out.dtype == np.int32
  assert readers.count_instances(lab) == 3


def test_cmyk_jpeg_read_as_rgb(tmp_path):
  # Its 4th band is black ink, not alpha: converted, not cut off.
  Image.new("CMYK", (12, 10), (0, 255, 255, 0)).save(tmp_path / "c.jpg", quality=95)
  out = readers.read_image(tmp_path / "c.jpg")
  assert out.shape == (10, 12, 3)
  assert out[..., 0].mean() > 200 and out[..., 1:].mean() < 60  # red, as printed


def test_load_example_passes_plane(tmp_path):
  stack = np.stack([np.full((16, 20), 10 * k, np.uint16) for k in range(3)])
  tifffile.imwrite(tmp_path / "z.tif", stack, imagej=True, metadata={"axes": "ZYX"})
  fileio.write_label_map(tmp_path / "z_labels.png", _labels())
  (rec,) = readers.read_image_folder(tmp_path)
  with pytest.raises(InputError) as e:
    readers.load_example(rec)
  _assert_one_line_error(e, "z.tif")
  ex = readers.load_example(rec, plane=2)
  assert ex.image.shape == (16, 20) and (ex.image == 20).all() and ex.labels.max() == 2
