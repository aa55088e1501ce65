"""Classical Otsu + distance-transform watershed segmentation."""

from __future__ import annotations

import json
import re

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
  for bad, msg in [("sigmaa=1", "unknown classical parameter 'sigmaa'"),
                   ("sigma", "not key=value"), ("sigma=", "not key=value"),
                   ("fill_holes=maybe", "fill_holes='maybe'"), ("min_size=3.5", "min_size='3.5'"),
                   ("polarity=up", "polarity='up'")]:
    with pytest.raises(ValueError, match=re.escape(msg)):
      classical.parse_params(bad)
  # The parsed overrides are what segment_classical accepts.
  img, _ = scene()
  parsed = classical.segment_classical(
      img, **classical.parse_params("min_distance=5,fill_holes=false"))
  np.testing.assert_array_equal(parsed,
                                classical.segment_classical(img, min_distance=5, fill_holes=False))
