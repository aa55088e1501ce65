"""Inputs are read as what they are (issue 13, part 4 and its "silently wrong" cases).

* TIFF stacks and multi-channel TIFFs are recognised from their metadata (tifffile series
  axes, ImageJ / OME / tifffile descriptions, the photometric tag) and refused in one line
  naming the file, its axes and the parameter (`plane`, `channel`), or read one plane /
  channel when asked; RGB stays RGB; (3, H, W) without metadata is not guessed.
* Float and >16-bit images: finite ones are stretched to uint16 between their 0.1 and 99.9
  percentiles; NaN/Inf are refused with their count.
* Self-intersecting polygons (GeoJSON, COCO, ImageJ ROI) become one nucleus, the larger
  lobe, and are counted as repaired; shapes that are not usable polygons are counted and
  named, by file and by feature, in one warning line per file.

The tests of the cases the issue lists under "Found" fail on the code before the change
(checked on a copy of the old tree): z-stack / time series / channels / ambiguous TIFFs
read as RGB, bow-ties in two pieces, unusable GeoJSON features dropped without a word.
New names (`ShapeReport`, keyword arguments) are only used after the assertions that
already fail on the old code, so the old code fails with assertion errors.
"""

from __future__ import annotations

import json
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from scipy import ndimage

from pa_jax.data import coco, readers
from pa_jax.errors import InputError

from .conftest import error_line, run_cli


def _stack(n=3, h=16, w=20, seed=0):
  """(n, h, w) uint16 with planes that differ (plane k ≈ 1000 * k + noise)."""
  rng = np.random.default_rng(seed)
  base = rng.integers(0, 500, size=(n, h, w), dtype=np.uint16)
  return base + (1000 * np.arange(n, dtype=np.uint16))[:, None, None]


def _one_line_error(excinfo, *names):
  msg = str(excinfo.value)
  assert isinstance(excinfo.value, InputError), type(excinfo.value)
  assert "\n" not in msg, msg
  for name in names:
    assert str(name) in msg, (name, msg)
  return msg


def _refused(path, *names, **kw):
  with pytest.raises(InputError) as e:
    readers.read_image(path, **kw)
  return _one_line_error(e, Path(path).name, *names)


# ------------------------------------------------------------------ stacks, channels


def test_imagej_zstack_refused_naming_axes_and_plane(tmp_path):
  # The issue's case: a 3-slice uint16 z-stack used to come back as (H, W, 3) "RGB".
  a = _stack()
  tifffile.imwrite(tmp_path / "z.tif", a, imagej=True, metadata={"axes": "ZYX"})
  msg = _refused(tmp_path / "z.tif", "ZYX", "3x16x20", "`plane` 0..2")
  assert "z-stack" in msg


def test_zstack_plane_picks_that_slice(tmp_path):
  a = _stack()
  tifffile.imwrite(tmp_path / "z.tif", a, imagej=True, metadata={"axes": "ZYX"})
  out = readers.read_image(tmp_path / "z.tif", plane=2)
  assert out.dtype == np.uint16 and out.shape == (16, 20)
  np.testing.assert_array_equal(out, a[2])


def test_plane_out_of_range_names_the_range(tmp_path):
  tifffile.imwrite(tmp_path / "z.tif", _stack(), imagej=True, metadata={"axes": "ZYX"})
  msg = _refused(tmp_path / "z.tif", "`plane` 3", "0..2", plane=3)
  assert "out of range" in msg
  _refused(tmp_path / "z.tif", "plane", plane=-1)


def test_time_series_refused_and_plane_picks(tmp_path):
  a = _stack(4)
  tifffile.imwrite(tmp_path / "t.tif", a, imagej=True, metadata={"axes": "TYX"})
  msg = _refused(tmp_path / "t.tif", "TYX", "4x16x20", "`plane` 0..3")
  assert "time series" in msg
  np.testing.assert_array_equal(readers.read_image(tmp_path / "t.tif", plane=1), a[1])


def test_multichannel_cyx_refused_and_channel_picks(tmp_path):
  # Three fluorescence channels are not red, green and blue.
  a = _stack()
  tifffile.imwrite(tmp_path / "c.tif", a, imagej=True, metadata={"axes": "CYX"})
  _refused(tmp_path / "c.tif", "CYX", "3 channels", "`channel` 0..2")
  np.testing.assert_array_equal(readers.read_image(tmp_path / "c.tif", channel=1), a[1])
  _refused(tmp_path / "c.tif", "`channel` 3", "0..2", channel=3)


def test_imagej_hyperstack_needs_plane_and_channel(tmp_path):
  a = np.stack([_stack(2, seed=z) + 10 * z for z in range(3)])  # (Z=3, C=2, Y, X)
  tifffile.imwrite(tmp_path / "h.tif", a, imagej=True, metadata={"axes": "ZCYX"})
  _refused(tmp_path / "h.tif", "ZCYX", "`plane` 0..2")
  _refused(tmp_path / "h.tif", "ZCYX", "`channel` 0..1", plane=1)
  np.testing.assert_array_equal(readers.read_image(tmp_path / "h.tif", plane=2, channel=1),
                                a[2, 1])


def test_imagej_hyperstack_with_two_stack_axes_refused(tmp_path):
  a = np.zeros((2, 3, 16, 20), np.uint16)
  tifffile.imwrite(tmp_path / "tz.tif", a, imagej=True, metadata={"axes": "TZYX"})
  _refused(tmp_path / "tz.tif", "T=2", "Z=3", plane=0)


@pytest.mark.parametrize("axes,param", [("ZYX", "plane"), ("TYX", "plane"),
                                        ("CYX", "channel")])
def test_ome_tiff_axes(tmp_path, axes, param):
  a = _stack()
  tifffile.imwrite(tmp_path / "o.ome.tif", a, ome=True, metadata={"axes": axes})
  _refused(tmp_path / "o.ome.tif", axes, f"`{param}` 0..2")
  np.testing.assert_array_equal(readers.read_image(tmp_path / "o.ome.tif", **{param: 1}),
                                a[1])


def test_tifffile_axes_description(tmp_path):
  # tifffile's own JSON description ({"shape": ..., "axes": "ZYX"}) states the axes too.
  a = _stack()
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    tifffile.imwrite(tmp_path / "s.tif", a, metadata={"axes": "ZYX"})
  _refused(tmp_path / "s.tif", "ZYX", "`plane` 0..2")


def test_rgb_tiff_still_rgb(tmp_path):
  a = _stack().transpose(1, 2, 0)  # (16, 20, 3) 16-bit colour, samples interleaved
  tifffile.imwrite(tmp_path / "rgb.tif", a, photometric="rgb")
  out = readers.read_image(tmp_path / "rgb.tif")
  assert out.shape == (16, 20, 3)
  np.testing.assert_array_equal(out, a)
  # channel picks one colour as a gray image; plane 0 is the image's only plane
  np.testing.assert_array_equal(readers.read_image(tmp_path / "rgb.tif", channel=2), a[..., 2])
  np.testing.assert_array_equal(readers.read_image(tmp_path / "rgb.tif", plane=0), a)


def test_rgb_planar_8bit_tiff_and_rgb_png_still_rgb(tmp_path):
  a = (_stack() // 16).astype(np.uint8)  # (3, H, W): 8-bit colour planes, stated RGB
  tifffile.imwrite(tmp_path / "planar.tif", a, photometric="rgb")
  np.testing.assert_array_equal(readers.read_image(tmp_path / "planar.tif"),
                                a.transpose(1, 2, 0))
  Image.fromarray(a.transpose(1, 2, 0), "RGB").save(tmp_path / "rgb.png")
  np.testing.assert_array_equal(readers.read_image(tmp_path / "rgb.png"),
                                a.transpose(1, 2, 0))


def test_ambiguous_three_pages_without_metadata_refused(tmp_path):
  # 3 gray pages and nothing saying what they are: planes or channels? Not guessed.
  a = _stack()
  tifffile.imwrite(tmp_path / "q.tif", a, photometric="minisblack")
  msg = _refused(tmp_path / "q.tif", "3x16x20", "`channel` 0..2", "plane")
  assert "metadata" in msg
  np.testing.assert_array_equal(readers.read_image(tmp_path / "q.tif", plane=0), a[0])
  np.testing.assert_array_equal(readers.read_image(tmp_path / "q.tif", channel=2), a[2])


def test_tifffile_default_16bit_3hw_is_ambiguous(tmp_path):
  # `tifffile.imwrite(path, zstack)` stores any (3, H, W) array as colour planes; for 16 bits
  # with no stated axes that is a stack saved with defaults far more often than a photo.
  a = _stack()
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    tifffile.imwrite(tmp_path / "d.tif", a)
  _refused(tmp_path / "d.tif", "3x16x20", "`channel` 0..2")


def test_single_plane_indices(tmp_path):
  a = _stack(1)[0]
  tifffile.imwrite(tmp_path / "g.tif", a)
  np.testing.assert_array_equal(readers.read_image(tmp_path / "g.tif", plane=0, channel=0), a)
  _refused(tmp_path / "g.tif", "`plane` 1", "a single plane", plane=1)
  _refused(tmp_path / "g.tif", "`channel` 1", "a single channel", channel=1)


# ------------------------------------------------------------------ float, wide integers


def _reference_stretch(a):
  """numpy reference of the documented rule: 0.1–99.9 percentile stretch to uint16."""
  a = a.astype(np.float64)
  lo, hi = np.percentile(a, 0.1), np.percentile(a, 99.9)
  return np.round(np.clip((a - lo) / (hi - lo), 0, 1) * 65535).astype(np.uint16)


def test_finite_float_image_stretched_like_16bit(tmp_path):
  rng = np.random.default_rng(3)
  a = rng.normal(0.3, 0.05, size=(40, 50)).astype(np.float32)
  a[0, 0], a[0, 1] = -50.0, 80.0  # hot/cold pixels: clipped, not the scale
  tifffile.imwrite(tmp_path / "f.tif", a)
  out = readers.read_image(tmp_path / "f.tif")
  assert out.dtype == np.uint16 and out.shape == (40, 50)
  np.testing.assert_array_equal(out, _reference_stretch(a))
  assert out[0, 0] == 0 and out[0, 1] == 65535
  assert 20000 < int(np.median(out)) < 45000  # the signal uses the range
  # order is kept
  flat_a, flat_o = a.ravel().astype(np.float64), out.ravel()
  assert np.all(np.diff(flat_o[np.argsort(flat_a, kind="stable")].astype(int)) >= 0)


def test_float_image_with_nan_and_inf_refused_with_count(tmp_path):
  a = np.ones((10, 10), np.float32)
  a.flat[:10] = np.nan
  a.flat[20:22] = np.inf
  tifffile.imwrite(tmp_path / "a.tif", a)
  msg = _refused(tmp_path / "a.tif", "float image has 12 NaN/Inf pixels")
  assert msg == f"{tmp_path / 'a.tif'}: float image has 12 NaN/Inf pixels"


def test_int32_beyond_16bit_stretched_small_values_exact(tmp_path):
  a = (np.arange(400, dtype=np.int32).reshape(20, 20) * 1000)  # up to 399000
  tifffile.imwrite(tmp_path / "w.tif", a)
  out = readers.read_image(tmp_path / "w.tif")
  assert out.dtype == np.uint16
  np.testing.assert_array_equal(out, _reference_stretch(a))
  small = np.arange(400, dtype=np.int32).reshape(20, 20)  # fits 16 bits: kept exactly
  tifffile.imwrite(tmp_path / "s.tif", small)
  np.testing.assert_array_equal(readers.read_image(tmp_path / "s.tif"), small)


# ------------------------------------------------------------------------- polygons

# A bow-tie: its edges A-B and C-D cross at (17.5, 17.5); the lobe at B-C is the larger.
BOWTIE = [[10, 10], [40, 40], [40, 10], [10, 20]]
BIG_LOBE = [[17.5, 17.5], [40, 40], [40, 10]]
SHAPE = (50, 50)


def _big_lobe_mask():
  m = np.zeros(SHAPE, bool)
  rr, cc = coco.polygon_pixels(np.asarray(BIG_LOBE, float), *SHAPE)
  m[rr, cc] = True
  return m


def _square(x0, y0, x1, y1):
  return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


def _feature(geom):
  return {"type": "Feature", "geometry": geom, "properties": {}}


def _assert_one_component_big_lobe(labels):
  ids = [k for k in np.unique(labels) if k]
  assert len(ids) == 1, ids
  assert ndimage.label(labels == ids[0])[1] == 1, "nucleus in several pieces"
  np.testing.assert_array_equal(labels > 0, _big_lobe_mask())


def _warning_lines(err: str) -> list[str]:
  return [l for l in err.splitlines() if l.startswith("warning:")]


def test_geojson_bowtie_becomes_larger_lobe_counted_repaired(tmp_path, capsys):
  from pa_jax.annotate.geojson_read import read_geojson

  path = tmp_path / "bow.geojson"
  ring = BOWTIE + BOWTIE[:1]
  path.write_text(json.dumps({"type": "FeatureCollection", "features": [
      _feature({"type": "Polygon", "coordinates": [ring]})]}))
  labels, nuclei = read_geojson(path, SHAPE)
  _assert_one_component_big_lobe(labels)
  assert len(nuclei) == 1
  lines = _warning_lines(capsys.readouterr().err)
  assert lines == [f"warning: {path}: 1 polygon repaired (feature 0: self-intersecting)"]
  reports = []
  read_geojson(path, SHAPE, reports=reports)
  assert reports[0].repaired == [("feature 0", "self-intersecting")] and not reports[0].unused


def test_coco_bowtie_becomes_larger_lobe_counted_repaired(tmp_path, capsys):
  Image.fromarray(np.zeros(SHAPE, np.uint8)).save(tmp_path / "a.png")
  flat = [v for p in BOWTIE for v in p]
  path = tmp_path / "c.json"
  path.write_text(json.dumps({
      "images": [{"id": 1, "file_name": "a.png", "height": 50, "width": 50}],
      "annotations": [{"id": 7, "image_id": 1, "segmentation": [flat], "iscrowd": 0}]}))
  records = coco.read_coco_dataset(path)
  _assert_one_component_big_lobe(readers.load_example(records[0]).labels)
  lines = _warning_lines(capsys.readouterr().err)
  assert lines == [f"warning: {path}: 1 polygon repaired (annotation 7: self-intersecting)"]
  # the annotation loop's reader (pa_jax.annotate.coco_io) repairs the same way
  from pa_jax.annotate.coco_io import read_coco_annotations

  labels, _ = read_coco_annotations(path, "a", SHAPE)
  _assert_one_component_big_lobe(labels)
  assert "image a: 1 polygon repaired (annotation 7" in capsys.readouterr().err


def test_roi_bowtie_becomes_larger_lobe(tmp_path, capsys):
  import roifile

  from pa_jax.annotate.roi_io import read_roi_zip

  roi = roifile.ImagejRoi.frompoints(np.asarray(BOWTIE, np.float32), name="bow")
  roi.roitype = roifile.ROI_TYPE.POLYGON
  roi.options = roifile.ROI_OPTIONS.SUB_PIXEL_RESOLUTION
  line = roifile.ImagejRoi.frompoints(np.asarray([[1, 1], [30, 30]], np.float32), name="ln")
  line.roitype = roifile.ROI_TYPE.LINE
  with zipfile.ZipFile(tmp_path / "r.zip", "w") as zf:
    zf.writestr("bow.roi", roi.tobytes())
    zf.writestr("ln.roi", line.tobytes())
  labels, _ = read_roi_zip(tmp_path / "r.zip", SHAPE)
  _assert_one_component_big_lobe(labels)
  (line_,) = _warning_lines(capsys.readouterr().err)
  assert "r.zip: 1 of 2 ROIs not used (ROI 'ln': line ROI)" in line_
  assert "1 polygon repaired (ROI 'bow': self-intersecting)" in line_


def test_geojson_unusable_features_counted_by_feature(tmp_path, capsys):
  from pa_jax.annotate.geojson_read import read_geojson

  feats = [
      _feature({"type": "Polygon", "coordinates": [_square(5, 5, 15, 15)]}),     # 0 used
      _feature({"type": "Point", "coordinates": [3, 3]}),                        # 1
      _feature({"type": "LineString", "coordinates": [[1, 1], [9, 9]]}),         # 2
      _feature(None),                                                            # 3
      _feature({"type": "Polygon", "coordinates": [[[1, 1], [2, 2], [1, 1]]]}),  # 4
      _feature({"type": "Polygon",                                               # 5
                "coordinates": [[[0, 0], [5, 5], [10, 10], [0, 0]]]}),
      _feature({"type": "Polygon", "coordinates": [_square(100, 100, 110, 110)]}),  # 6
      _feature({"type": "Polygon", "coordinates": [_square(20, 20, 30, 30)]}),   # 7 used
      _feature({"type": "MultiPoint", "coordinates": [[1, 1], [2, 2]]}),         # 8
  ]
  path = tmp_path / "a.geojson"
  path.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
  labels, nuclei = read_geojson(path, SHAPE)
  assert len(nuclei) == 2 and len(np.unique(labels)) == 3  # the valid ones still read
  lines = _warning_lines(capsys.readouterr().err)
  assert lines == [
      f"warning: {path}: 7 of 9 features not used (feature 1: Point, feature 2: LineString, "
      "feature 3: no geometry, feature 4: fewer than 3 distinct points, feature 5: zero "
      "area, feature 6: outside the image, feature 8: MultiPoint)"]
  reports = []
  read_geojson(path, SHAPE, reports=reports)
  (rep,) = reports
  assert rep.total == 9 and rep.noun == "features" and not rep.repaired
  assert [u[0] for u in rep.unused] == [f"feature {i}" for i in (1, 2, 3, 4, 5, 6, 8)]


def test_geojson_feature_hidden_by_overlap_counted(tmp_path, capsys):
  from pa_jax.annotate.geojson_read import read_geojson

  feats = [_feature({"type": "Polygon", "coordinates": [_square(5, 5, 15, 15)]}),
           _feature({"type": "Polygon", "coordinates": [_square(5, 5, 15, 15)]})]
  path = tmp_path / "dup.geojson"
  path.write_text(json.dumps(feats))
  labels, nuclei = read_geojson(path, SHAPE)
  assert len(nuclei) == 1
  assert "1 of 2 features not used (feature 0: hidden under smaller overlapping features)" \
      in capsys.readouterr().err


def test_clean_geojson_prints_nothing(tmp_path, capsys):
  from pa_jax.annotate.geojson_read import read_geojson

  path = tmp_path / "ok.geojson"
  path.write_text(json.dumps([_feature({"type": "Polygon",
                                        "coordinates": [_square(5, 5, 15, 15)]})]))
  read_geojson(path, SHAPE)
  assert capsys.readouterr().err == ""


def test_coco_unusable_annotations_counted_per_file(tmp_path, capsys):
  Image.fromarray(np.zeros(SHAPE, np.uint8)).save(tmp_path / "a.png")
  anns = [
      {"id": 1, "image_id": 1, "segmentation": [[5, 5, 15, 5, 15, 15, 5, 15]]},
      {"id": 2, "image_id": 1, "segmentation": [[5, 5, 15, 5, 15, 15, 5, 15]], "iscrowd": 1},
      {"id": 3, "image_id": 1, "segmentation": [[1, 1, 2, 2]]},
      {"id": 4, "image_id": 1, "segmentation": [[0, 0, 5, 5, 10, 10]]},
      {"id": 5, "image_id": 1, "segmentation": {"size": [50, 50], "counts": [2500]}},
      {"id": 6, "image_id": 1, "segmentation": [[20.1, 20.1, 20.4, 20.1, 20.4, 20.4]]},
  ]
  path = tmp_path / "c.json"
  path.write_text(json.dumps({
      "images": [{"id": 1, "file_name": "a.png", "height": 50, "width": 50}],
      "annotations": anns}))
  records = coco.read_coco_dataset(path)
  assert readers.count_instances(readers.load_example(records[0]).labels) == 1
  lines = _warning_lines(capsys.readouterr().err)
  assert lines == [
      f"warning: {path}: 5 of 6 annotations not used (annotation 2: crowd region, "
      "annotation 3: fewer than 3 distinct points, annotation 4: zero area, annotation 5: "
      "empty mask, annotation 6: covers no pixel centre)"]


def test_report_line_lists_at_most_eight_then_counts():
  from pa_jax.data.shape_report import ShapeReport

  rep = ShapeReport("a.geojson", total=20,
                    unused=[(f"feature {i}", "Point") for i in range(11)])
  assert rep.line().endswith("feature 7: Point, and 3 more)")
  assert rep.line().startswith("a.geojson: 11 of 20 features not used (feature 0: Point")


# ------------------------------------------------------------------------------ CLI


def test_cli_predict_zstack_one_line_naming_axes(tmp_path):
  tifffile.imwrite(tmp_path / "zstack.tif", _stack(3, 32, 32), imagej=True,
                   metadata={"axes": "ZYX"})
  proc = run_cli("predict", "--method", "classical", "--input", tmp_path / "zstack.tif",
                 "--output", tmp_path / "out")
  line = error_line(proc, 2, "zstack.tif", "ZYX", "3x32x32", "--plane 0..2")
  assert line.startswith("error:")


def test_cli_predict_plane_flag_reads_one_plane(tmp_path):
  tifffile.imwrite(tmp_path / "zstack.tif", _stack(3, 32, 32), imagej=True,
                   metadata={"axes": "ZYX"})
  proc = run_cli("predict", "--method", "classical", "--input", tmp_path / "zstack.tif",
                 "--output", tmp_path / "out", "--plane", "1")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert (tmp_path / "out" / "zstack.png").is_file() or any((tmp_path / "out").iterdir())
