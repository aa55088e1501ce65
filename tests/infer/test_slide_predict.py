"""`predict` on slides: streamed outputs equal the in-memory stitcher, regions, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from pa_jax import predict
from pa_jax.data.synthetic import synthetic_image
from pa_jax.errors import InputError
from pa_jax.infer import classical, tiling
from pa_jax.infer.label_writers import read_ome_zarr_labels


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
  """A 2-level tiled OME-TIFF (gray, 900 x 1300 px, 0.5 µm) and its pixels."""
  image, _ = synthetic_image(21, 900, 1300, n_nuclei=700, touching=0.2)
  path = tmp_path_factory.mktemp("slide") / "s.ome.tif"
  with tifffile.TiffWriter(path, bigtiff=True, ome=True) as tw:
    tw.write(image, tile=(256, 256), compression="zlib", subifds=1,
             metadata={"axes": "YX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})
    tw.write(image[::2, ::2], tile=(256, 256), compression="zlib", subfiletype=1)
  return path, image


def in_memory(image):
  return tiling.predict_tiled(image, lambda ts: [classical.segment_classical(t) for t in ts],
                              tile_size=predict.CLASSICAL_TILE,
                              overlap=predict.CLASSICAL_OVERLAP, batch_size=1, progress=False)


def test_streamed_outputs_equal_in_memory(tmp_path, slide):
  path, image = slide
  out = tmp_path / "out"
  predict.predict_folder(str(path), str(out), method="classical", progress=False,
                         formats="label,ome-zarr,geojson,csv")
  ref = in_memory(image)
  assert int(ref.max()) > 300
  assert np.array_equal(tifffile.imread(out / "s.ome_labels.ome.tif"), ref)
  assert np.array_equal(read_ome_zarr_labels(out / "s.ome.ome.zarr"), ref)
  info = json.loads((out / "s.ome.slide.json").read_text())
  assert info["nuclei"] == int(ref.max()) and info["pixel_size_um"] == [0.5, 0.5]
  gj = json.loads((out / "s.ome.geojson").read_text())
  assert len(gj["features"]) == int(ref.max())


def test_region_and_level(tmp_path, slide):
  path, image = slide
  out = tmp_path / "r"
  predict.predict_folder(str(path), str(out), method="classical", progress=False,
                         formats="ome-tiff,geojson", region="200,100,700,500", level=1)
  half = image[::2, ::2][50:300, 100:450]
  assert np.array_equal(tifffile.imread(out / "s.ome_labels.ome.tif"), in_memory(half))
  info = json.loads((out / "s.ome.slide.json").read_text())
  assert info["region_level0"] == {"y": 100.0, "x": 200.0, "height": 500.0, "width": 700.0}
  # GeoJSON coordinates are full-resolution pixels: inside the region, level-1 scaled.
  gj = json.loads((out / "s.ome.geojson").read_text())
  xy = np.concatenate([np.asarray(f["geometry"]["coordinates"][0]) for f in gj["features"]])
  assert 200 <= xy[:, 0].min() and xy[:, 0].max() <= 900
  assert 100 <= xy[:, 1].min() and xy[:, 1].max() <= 600


@pytest.mark.parametrize("kw,match", [
    (dict(level=2), "s.ome.tif: level 2 is out of range: the file has 2 levels"),
    (dict(region="0,0,5000,10"), "s.ome.tif: region .* reaches past the image"),
    (dict(region="1,2,3"), "region: '1,2,3' is not x,y,w,h"),
    (dict(formats="coco", stream=True), "format: coco need the whole label map"),
    (dict(region="0,0,10,10", stream=False), "stream: .* need streaming")])
def test_bad_slide_options_are_one_line_and_keep_old_output(tmp_path, slide, kw, match):
  path, _ = slide
  out = tmp_path / "o"
  out.mkdir()
  (out / "old.txt").write_text("earlier result")
  kw = {"formats": "label", **kw}
  with pytest.raises(InputError, match=match) as e:
    predict.predict_folder(str(path), str(out), method="classical", progress=False,
                           overwrite=True, **kw)
  assert "\n" not in str(e.value)
  assert [p.name for p in out.iterdir()] == ["old.txt"]  # nothing corrupted
