"""Streamed OME-TIFF / OME-Zarr label images reopen equal to the in-memory label map."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import tifffile
import zarr

from pa_jax.data.synthetic import synthetic_image
from pa_jax.infer import classical, streaming, tiling
from pa_jax.infer.label_writers import OmeTiffLabelWriter, OmeZarrWriter, read_ome_zarr_labels


def classical_tiles(tiles):
  return [classical.segment_classical(t) for t in tiles]


@pytest.fixture(scope="module")
def mosaic():
  """A 700 x 900 RGB image, its in-memory tiled labels and a streamed run's bands."""
  image, _ = synthetic_image(11, 700, 900, n_nuclei=500, touching=0.2)
  image = np.stack([image, image // 2, 255 - image], axis=-1).astype(np.uint8)
  ref = tiling.predict_tiled(image, classical_tiles, tile_size=256, overlap=64,
                             progress=False)
  bands = []
  streaming.stream_segment(lambda *w: image[w[0]:w[2], w[1]:w[3]], 700, 900, classical_tiles,
                           tile_size=256, overlap=64, on_band=bands.append)
  # Ids beyond 16 bits must survive: uint32, not uint16.
  big = np.where(ref > 0, ref + 70_000, 0)
  return image, ref, big, bands


def rebanded(bands, labels):
  """The bands' row ranges with other label values (same streaming order)."""
  return [streaming.Band(b.y0, labels[b.y0:b.y0 + b.labels.shape[0]], b.image) for b in bands]


@pytest.mark.parametrize("tile", [128, 256])
def test_ome_tiff_equals_in_memory(tmp_path, mosaic, tile):
  image, ref, big, bands = mosaic
  assert len(bands) > 2 and int(ref.max()) > 100
  path = tmp_path / "labels.ome.tif"
  with OmeTiffLabelWriter(path, ref.shape, tile=tile, pixel_size_um=(0.5, 0.25)) as w:
    for b in rebanded(bands, big):
      w.write(b)
  with tifffile.TiffFile(path) as tif:
    page = tif.pages.first
    assert tif.is_ome and tif.is_bigtiff and page.is_tiled
    assert (page.tilelength, page.tilewidth) == (tile, tile)
    assert page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
    out = tif.asarray()
    px = next(e for e in ET.fromstring(tif.ome_metadata).iter() if e.tag.endswith("Pixels"))
  assert out.dtype == np.uint32 and np.array_equal(out, big)
  assert float(px.get("PhysicalSizeY")) == 0.5 and float(px.get("PhysicalSizeX")) == 0.25


def test_ome_tiff_incomplete_or_failed_leaves_no_file(tmp_path, mosaic):
  _, ref, _, bands = mosaic
  path = tmp_path / "l.ome.tif"
  w = OmeTiffLabelWriter(path, ref.shape, tile=128)
  w.write(bands[0])
  with pytest.raises(ValueError, match="rows written"):
    w.close()
  assert not path.exists()
  with pytest.raises(RuntimeError, match="boom"):
    with OmeTiffLabelWriter(path, ref.shape, tile=128) as w:
      w.write(bands[0])
      raise RuntimeError("boom")
  assert not path.exists()
  w = OmeTiffLabelWriter(path, ref.shape, tile=128)
  with pytest.raises(ValueError, match="in order"):
    w.write(bands[1])
  w.abort()


def test_ome_zarr_equals_in_memory_with_ngff_metadata(tmp_path, mosaic):
  image, ref, big, bands = mosaic
  path = tmp_path / "slide.ome.zarr"
  with OmeZarrWriter(path, ref.shape, channels=3, dtype=np.uint8, pixel_size_um=(0.5, 0.5),
                     chunk=200) as w:
    for b in rebanded(bands, big):
      w.write(b)
  assert np.array_equal(read_ome_zarr_labels(path), big)
  root = zarr.open_group(path, mode="r")
  assert np.array_equal(np.moveaxis(np.asarray(root["0"]), 0, -1), image)
  # NGFF 0.4 metadata, as plain JSON files (what other readers see).
  attrs = json.loads((path / ".zattrs").read_text())
  ms = attrs["multiscales"][0]
  assert ms["version"] == "0.4" and [a["name"] for a in ms["axes"]] == ["c", "y", "x"]
  assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == [1.0, 0.5, 0.5]
  assert json.loads((path / "labels" / ".zattrs").read_text()) == {"labels": ["nuclei"]}
  lab = json.loads((path / "labels" / "nuclei" / ".zattrs").read_text())
  assert lab["image-label"]["source"]["image"] == "../../"
  assert lab["multiscales"][0]["datasets"][0]["path"] == "0"
  meta = json.loads((path / "labels" / "nuclei" / "0" / ".zarray").read_text())
  assert meta["dtype"] == "<u4" and meta["dimension_separator"] == "/"


def test_ome_zarr_gray_and_no_pixel_size(tmp_path):
  labels = np.zeros((70, 50), np.int32)
  labels[10:20, 5:9] = 3
  image = np.arange(70 * 50, dtype=np.uint16).reshape(70, 50)
  path = tmp_path / "g.ome.zarr"
  with OmeZarrWriter(path, labels.shape, channels=1, dtype=np.uint16, chunk=32) as w:
    for y in (0, 33, 64):
      y1 = {0: 33, 33: 64, 64: 70}[y]
      w.write(streaming.Band(y, labels[y:y1], image[y:y1]))
  assert np.array_equal(read_ome_zarr_labels(path), labels)
  assert np.array_equal(zarr.open_group(path, mode="r")["0"][0], image)
  ms = json.loads((path / ".zattrs").read_text())["multiscales"][0]
  assert "unit" not in ms["axes"][1]
