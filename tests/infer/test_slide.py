"""Lazy slide reading: windows equal `read_image`, levels, regions, pixel size, errors."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from pa_jax.data import images as image_io
from pa_jax.data.slide import open_slide, parse_region
from pa_jax.errors import InputError

RNG = np.random.default_rng(0)


def pyramid(path, image, levels=3, tile=128, **meta):
  """A tiled pyramidal OME-TIFF (sub-IFDs), each level half the previous."""
  kw = dict(tile=(tile, tile), compression="zlib", photometric="rgb")
  with tifffile.TiffWriter(path, bigtiff=True, ome=True) as tw:
    tw.write(image, subifds=levels - 1, metadata={"axes": "YXS", **meta}, **kw)
    for k in range(1, levels):
      tw.write(image[::2 ** k, ::2 ** k], subfiletype=1, **kw)


@pytest.fixture(scope="module")
def rgb():
  return RNG.integers(0, 256, (600, 750, 3), dtype=np.uint8)


def windows(h, w):
  return [(0, 0, h, w), (0, 0, 1, 1), (h - 37, w - 50, h, w),
          (13, min(200, w // 2), min(140, h), min(333, w))]


def test_pyramid_levels_windows_and_pixel_size(tmp_path, rgb):
  path = tmp_path / "s.ome.tif"
  pyramid(path, rgb, PhysicalSizeX=0.25, PhysicalSizeY=0.25)
  for level in range(3):
    want = rgb[::2 ** level, ::2 ** level]
    with open_slide(path, level=level) as s:
      assert s.shape == want.shape[:2] and s.channels == 3 and s.dtype == np.uint8
      assert s.levels == 3 and s.pixel_size_um == (0.25, 0.25)
      assert s.downsample == (600 / want.shape[0], 750 / want.shape[1])
      for y0, x0, y1, x1 in windows(*want.shape[:2]):
        assert np.array_equal(s.read(y0, x0, y1, x1), want[y0:y1, x0:x1])
  with pytest.raises(InputError, match=r"s.ome.tif: level 3 is out of range: the file has "
                                       r"3 levels \(0..2\)"):
    open_slide(path, level=3)


def test_region_in_level0_pixels(tmp_path, rgb):
  path = tmp_path / "s.ome.tif"
  pyramid(path, rgb)
  with open_slide(path, region=(100, 50, 301, 200)) as s:
    assert s.shape == (200, 301) and s.offset_level0 == (50, 100)
    assert np.array_equal(s.read(0, 0, 200, 301), rgb[50:250, 100:401])
    assert s.pixel_size_um is None
  with open_slide(path, level=1, region=(101, 51, 300, 200)) as s:
    # Outward to whole level-1 pixels: rows 25..125, columns 50..201.
    assert s.shape == (101, 151) and s.offset_level0 == (50.0, 100.0)
    assert np.array_equal(s.read(0, 0, 101, 151), rgb[::2, ::2][25:126, 50:201])
  with pytest.raises(InputError, match="s.ome.tif: region .* reaches past the image "
                                       r"\(750 x 600"):
    open_slide(path, region=(700, 0, 51, 10))


@pytest.mark.parametrize("text,msg", [("1,2,3", "not x,y,w,h"), ("a,1,2,3", "not x,y,w,h"),
                                      ("-1,0,5,5", ">= 0"), ("0,0,0,5", ">= 1")])
def test_parse_region(text, msg):
  assert parse_region("1, 2,30,40") == (1, 2, 30, 40) and parse_region(None) is None
  with pytest.raises(InputError, match=msg) as e:
    parse_region(text)
  assert e.value.where == "region"


@pytest.mark.parametrize("kind", ["contiguous", "strips", "tiles"])
def test_plain_tiffs_equal_read_image(tmp_path, kind):
  image = RNG.integers(0, 4000, (333, 517), dtype=np.uint16)
  path = tmp_path / f"{kind}.tif"
  kw = {"contiguous": {}, "strips": dict(compression="zlib", rowsperstrip=16),
        "tiles": dict(compression="zlib", tile=(64, 64))}[kind]
  tifffile.imwrite(path, image, **kw)
  with open_slide(path) as s:
    assert s.channels == 1 and s.dtype == np.uint16
    for y0, x0, y1, x1 in windows(333, 517):
      assert np.array_equal(s.read(y0, x0, y1, x1), image[y0:y1, x0:x1])
  assert np.array_equal(image_io.read_image(path), image)


def test_channels_and_planes_follow_read_image(tmp_path):
  stack = RNG.integers(0, 255, (4, 3, 90, 120), dtype=np.uint8)  # Z, C, Y, X
  path = tmp_path / "zc.ome.tif"
  tifffile.imwrite(path, stack, metadata={"axes": "ZCYX"}, tile=(32, 32))
  for kw in ({}, {"plane": 1}, {"channel": 2}):
    with pytest.raises(InputError) as lazy:
      open_slide(path, **kw)
    with pytest.raises(InputError) as whole:
      image_io.read_image(path, **kw)
    assert str(lazy.value) == str(whole.value)  # same one-line message, real shape
  with open_slide(path, plane=2, channel=1) as s:
    assert s.channels == 1 and np.array_equal(s.read(0, 0, 90, 120), stack[2, 1])
    assert np.array_equal(s.read(5, 7, 60, 99), image_io.read_image(path, plane=2,
                                                                    channel=1)[5:60, 7:99])


def test_rgba_and_one_colour(tmp_path):
  rgba = RNG.integers(0, 255, (50, 60, 4), dtype=np.uint8)
  path = tmp_path / "rgba.tif"
  tifffile.imwrite(path, rgba, photometric="rgb", extrasamples=[2])
  with open_slide(path) as s:
    assert np.array_equal(s.read(0, 0, 50, 60), rgba[..., :3])
  with open_slide(path, channel=1) as s:
    assert s.channels == 1 and np.array_equal(s.read(0, 0, 50, 60), rgba[..., 1])


@pytest.mark.parametrize("resolution,unit,want", [
    ((40000, 40000), "CENTIMETER", (0.25, 0.25)),
    ((101600, 50800), "INCH", (0.5, 0.25)),  # (x, y) pixels per inch
    ((72, 72), "INCH", None),                 # a screen default, not a microscope
    ((4, 4), "NONE", None)])                  # no unit: could mean anything
def test_pixel_size_from_resolution_tags(tmp_path, resolution, unit, want):
  path = tmp_path / "r.tif"
  tifffile.imwrite(path, np.zeros((8, 8), np.uint8), resolution=resolution,
                   resolutionunit=unit)
  with open_slide(path) as s:
    assert s.pixel_size_um == (pytest.approx(want) if want else None)


def test_png_float_and_missing(tmp_path, rgb):
  path = tmp_path / "a.png"
  Image.fromarray(rgb).save(path)
  with open_slide(path, region=(10, 20, 30, 40)) as s:
    assert s.levels == 1 and np.array_equal(s.read(0, 0, 40, 30), rgb[20:60, 10:40])
  with pytest.raises(InputError, match="level 1 is out of range"):
    open_slide(path, level=1)
  fpath = tmp_path / "f.tif"
  tifffile.imwrite(fpath, np.zeros((8, 8), np.float32))
  with pytest.raises(InputError, match="f.tif: float32 pixels cannot be read window by"):
    open_slide(fpath)
  with pytest.raises(InputError, match="file not found"):
    open_slide(tmp_path / "nope.tif")
  bad = tmp_path / "bad.tif"
  bad.write_bytes(b"II*\x00garbage")
  with pytest.raises(InputError, match="bad.tif: unreadable"):
    open_slide(bad)
