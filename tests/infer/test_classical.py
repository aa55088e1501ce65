"""Classical Otsu + distance-transform watershed segmentation."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from pa_jax import fileio
from pa_jax.data.readers import read_label_map
from pa_jax.evaluation.metrics import image_metrics
from pa_jax.infer import classical


def scene(seed=0):
  """Bright disks of radius 9 on a dark noisy background, two of them touching."""
  rng = np.random.default_rng(seed)
  h, w = 96, 128
  centres = [(20, 20), (20, 37), (60, 30), (70, 90), (25, 100)]  # first two touch
  yy, xx = np.mgrid[0:h, 0:w]
  gt = np.zeros((h, w), np.int32)
  for k, (cy, cx) in enumerate(centres, start=1):
    gt[((yy - cy) ** 2 + (xx - cx) ** 2 <= 81) & (gt == 0)] = k
  img = np.where(gt > 0, 160.0, 30.0) + rng.normal(0, 8, (h, w))
  return np.clip(img, 0, 255).astype(np.uint8), gt


def test_bright_nuclei_and_touching_pair():
  img, gt = scene()
  labels = classical.segment_classical(img)
  assert labels.dtype == np.int32 and labels.shape == img.shape
  m = image_metrics(gt, labels)
  assert m["n_pred"] == 5  # the touching pair is split by the watershed
  assert m["f1"] == 1.0 and m["map"] > 0.7
  assert set(np.unique(labels)) == set(range(6))  # renumbered 1..N


def test_dark_nuclei_rgb_and_uint16():
  # Otsu's histogram bins differ slightly between these inputs, so compare by the metrics.
  img, gt = scene(1)
  dark_rgb = np.repeat((255 - img)[..., None], 3, axis=-1)
  for image, params in ((img, {}), (dark_rgb, {}), (255 - img, {"polarity": "dark"}),
                        (img.astype(np.uint16) * 257, {})):
    m = image_metrics(gt, classical.segment_classical(image, **params))
    assert m["f1"] == 1.0 and m["map"] > 0.7, (image.dtype, image.shape, params)
  # Forcing the wrong polarity segments the background instead.
  wrong = classical.segment_classical(img, polarity="dark")
  assert image_metrics(gt, wrong)["f1"] < 0.5


def test_flat_and_empty_images():
  assert not classical.segment_classical(np.zeros((32, 32), np.uint8)).any()
  assert not classical.segment_classical(np.full((32, 32), 7, np.uint16)).any()
  speck = np.zeros((32, 32), np.uint8)
  speck[5, 5] = 255  # a single bright pixel is below min_size
  assert not classical.segment_classical(speck).any()


def test_bad_parameters():
  img, _ = scene()
  with pytest.raises(ValueError, match="unknown classical parameter"):
    classical.segment_classical(img, sigmaa=2)
  with pytest.raises(ValueError, match="polarity"):
    classical.segment_classical(img, polarity="up")
  with pytest.raises(ValueError, match="image"):
    classical.segment_classical(np.zeros((4, 4, 4, 4), np.uint8))


def test_predict_command_classical_folder(tmp_path):
  from pa_jax.predict import predict_command

  for i in range(2):
    img, _ = scene(i)
    fileio.write_png(tmp_path / "in" / f"im{i}.png", img)
  n = predict_command(str(tmp_path / "in"), str(tmp_path / "out"), method="classical",
                      classical_params="sigma=1.5", progress=False)
  paths = sorted((tmp_path / "out").glob("im*.png"))
  assert n == 2
  assert [p.name for p in paths] == ["im0.png", "im1.png"]
  for i, p in enumerate(paths):
    img, _ = scene(i)
    assert np.array_equal(read_label_map(p), classical.segment_classical(img, sigma=1.5))
  params = json.loads((tmp_path / "out" / "classical_params.json").read_text())
  assert params["sigma"] == 1.5 and params["min_distance"] == "auto"


def test_parse_params_types_and_errors():
  got = classical.parse_params("min_distance=5, distance_sigma=0,fill_holes=false,min_size=0,"
                               "polarity=bright,sigma=1.5")
  assert got == {"min_distance": 5, "distance_sigma": 0.0, "fill_holes": False, "min_size": 0,
                 "polarity": "bright", "sigma": 1.5}
  # dict == treats 0 == 0.0 == False: the types are checked separately.
  assert {k: type(v) for k, v in got.items()} == {
      "min_distance": int, "distance_sigma": float, "fill_holes": bool, "min_size": int,
      "polarity": str, "sigma": float}
  assert classical.parse_params("") == {}
  assert classical.parse_params("min_distance=auto") == {"min_distance": "auto"}
  assert classical.parse_params("stain=hed") == {"stain": "hed"}
  for bad, msg in [("sigmaa=1", "unknown classical parameter 'sigmaa'"),
                   ("sigma", "not key=value"), ("sigma=", "not key=value"),
                   ("fill_holes=maybe", "fill_holes='maybe'"), ("min_size=3.5", "min_size='3.5'"),
                   ("polarity=up", "polarity='up'"), ("stain=dab", "stain='dab'")]:
    with pytest.raises(ValueError, match=re.escape(msg)):
      classical.parse_params(bad)
  # The parsed overrides are what segment_classical accepts.
  img, _ = scene()
  parsed = classical.segment_classical(
      img, **classical.parse_params("min_distance=5,fill_holes=false"))
  np.testing.assert_array_equal(parsed,
                                classical.segment_classical(img, min_distance=5, fill_holes=False))


# ------------------------------------------------------------------ H&E: haematoxylin path

# Ruifrok & Johnston's stain optical densities (rows: haematoxylin, eosin) per RGB channel.
H_OD, E_OD = np.array([0.65, 0.70, 0.29]), np.array([0.07, 0.99, 0.11])


def he_scene():
  """H&E-like uint8 image by Beer-Lambert (rgb = 10^-OD): pink background (eosin 0.25),
  the five nuclei of `scene` in purple (haematoxylin 0.9, eosin 0.1) and three eosin-dense
  blobs (eosin 1.4, no haematoxylin: stroma / red cells), darker in grey than the
  background but not nuclei. Returns (image, nuclei labels, haematoxylin map)."""
  _, gt = scene()
  h, w = gt.shape
  yy, xx = np.mgrid[0:h, 0:w]
  hema = np.where(gt > 0, 0.9, 0.0)
  eosin = np.where(gt > 0, 0.1, 0.25)
  for cy, cx in [(75, 15), (50, 65), (80, 120)]:
    eosin = np.where((yy - cy) ** 2 + (xx - cx) ** 2 <= 100, 1.4, eosin)
  od = hema[..., None] * H_OD + eosin[..., None] * E_OD
  img = np.round(255 * 10.0 ** (-od)).clip(0, 255).astype(np.uint8)
  return img, gt, hema


def test_haematoxylin_channel_is_the_deconvolved_stain():
  img, _, hema = he_scene()
  got = classical.haematoxylin(img)
  assert got.dtype == np.float32 and got.shape == hema.shape
  # rgb2hed reports OD * ln(10) / -ln(1e-6) = OD / 6 per stain; uint8 rounding aside.
  np.testing.assert_allclose(got, hema / 6.0, atol=0.004)
  # The same image as float in [0, 1] and as uint16 gives the same channel.
  np.testing.assert_allclose(classical.haematoxylin(img / 255.0), got, atol=1e-6)
  np.testing.assert_allclose(classical.haematoxylin(img.astype(np.uint16) * 257), got,
                             atol=1e-6)


def test_auto_stain_picks_hed_for_he_only():
  he, _, _ = he_scene()
  grey, _ = scene()
  assert classical.resolve_stain(he) == "hed"
  assert classical.resolve_stain(grey) == "none"
  assert classical.resolve_stain(np.repeat(grey[..., None], 3, -1)) == "none"  # grey as RGB
  blue = np.zeros(grey.shape + (3,), np.uint8)  # coloured fluorescence: dark background
  blue[..., 2] = grey
  assert classical.resolve_stain(blue) == "none"
  assert classical.resolve_stain(he, "none") == "none"
  with pytest.raises(ValueError, match="RGB"):
    classical.resolve_stain(grey, "hed")
  with pytest.raises(ValueError, match="stain"):
    classical.segment_classical(he, stain="dab")


def test_he_path_ignores_eosin_dense_regions():
  img, gt, _ = he_scene()
  m = image_metrics(gt, classical.segment_classical(img))  # auto -> hed
  assert m["n_pred"] == 5 and m["f1"] == 1.0 and m["map"] > 0.7
  np.testing.assert_array_equal(classical.segment_classical(img),
                                classical.segment_classical(img, stain="hed"))
  # In grey the three eosin blobs are as dark as nuclei: they are segmented too.
  grey = image_metrics(gt, classical.segment_classical(img, stain="none"))
  assert grey["n_pred"] >= 7 and grey["precision"] <= 5 / 7


SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "datasets"


@pytest.mark.parametrize("dataset,image_id", [("kumar", "Breast_TCGA-A7-A13F-01Z-00-DX1"),
                                              ("tnbc", "01_1")])
def test_he_path_beats_grey_on_real_tiles(dataset, image_id):
  """Real H&E tiles (../shared/datasets): the haematoxylin path is clearly better (AJI or
  F1@0.5 up by 0.1 or more; bench/classical_he.py has all 53 tiles)."""
  from pa_jax.data import readers

  root = SHARED / dataset
  if not (root / "index.csv").is_file():
    pytest.skip(f"{root} not present")
  rec = next(r for r in readers.read_dataset_folder(root) if r.id == image_id)
  ex = readers.load_example(rec)
  assert classical.resolve_stain(ex.image) == "hed"
  he = image_metrics(ex.labels, classical.segment_classical(ex.image))
  grey = image_metrics(ex.labels, classical.segment_classical(ex.image, stain="none"))
  assert he["aji"] >= grey["aji"] + 0.1 or he["f1"] >= grey["f1"] + 0.1, (he, grey)
