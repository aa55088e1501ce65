"""Synthetic nuclei: determinism, a valid partition, modalities, speed, dataset folders."""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import ndimage

from pa_jax.data import readers
from pa_jax.data.synthetic import synthetic_dataset, synthetic_image, synthetic_labels


def _touching_pairs(labels: np.ndarray) -> set[tuple[int, int]]:
  pairs = set()
  for a, b in ((labels[:, :-1], labels[:, 1:]), (labels[:-1, :], labels[1:, :])):
    m = (a != b) & (a > 0) & (b > 0)
    pairs |= {(int(min(x, y)), int(max(x, y))) for x, y in zip(a[m], b[m])}
  return pairs


def test_deterministic_for_a_seed():
  for mod in ("fluorescence", "histology"):
    i1, l1 = synthetic_image(5, modality=mod)
    i2, l2 = synthetic_image(5, modality=mod)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_array_equal(l1, l2)
    i3, l3 = synthetic_image(6, modality=mod)
    assert not np.array_equal(l1, l3)
  # a Generator works too and is consumed
  g = np.random.default_rng(5)
  a, _ = synthetic_image(g)
  b, _ = synthetic_image(g)
  assert not np.array_equal(a, b)
  np.testing.assert_array_equal(a, synthetic_image(np.random.default_rng(5))[0])


def test_label_map_is_a_partition_of_connected_nuclei():
  img, lab = synthetic_image(0, 128, 160, n_nuclei=25, touching=0.5)
  assert img.shape == (128, 160) and img.dtype == np.uint8
  assert lab.shape == (128, 160) and lab.dtype == np.int32
  ids = np.unique(lab)
  np.testing.assert_array_equal(ids, np.arange(ids.size))  # 0..N, no gaps
  assert ids.size - 1 == 25
  objects = ndimage.find_objects(lab)
  for k, sl in enumerate(objects, start=1):
    _, n = ndimage.label(lab[sl] == k)
    assert n == 1, f"nucleus {k} is in {n} pieces"
    assert (lab == k).sum() >= 10


def test_touching_clusters_exist():
  _, lab = synthetic_image(1, n_nuclei=30, touching=1.0)
  assert len(_touching_pairs(lab)) >= 5
  _, lab = synthetic_image(1, n_nuclei=10, touching=0.0, radius=(3, 4), height=256, width=256)
  assert len(_touching_pairs(lab)) <= 2


def test_radius_range():
  _, lab = synthetic_image(2, n_nuclei=20, radius=(4, 6), touching=0.0)
  areas = np.bincount(lab.ravel())[1:]
  assert areas.max() <= np.pi * 6.5 ** 2 and areas.min() >= 8


def test_fluorescence_nuclei_brighter_than_background():
  img, lab = synthetic_image(3, modality="fluorescence")
  assert img.ndim == 2
  assert img[lab > 0].mean() > img[lab == 0].mean() + 60


def test_histology_purple_on_pink():
  img, lab = synthetic_image(3, modality="histology")
  assert img.shape == (128, 128, 3) and img.dtype == np.uint8
  bg = img[lab == 0].astype(float).mean(0)
  nu = img[lab > 0].astype(float).mean(0)
  assert bg[0] > bg[1] + 40 and bg[2] > bg[1] + 40  # pink: red and blue above green
  assert nu.sum() < bg.sum() - 150  # nuclei much darker
  assert nu[2] > nu[1] and nu[0] > nu[1] - 10  # purple-ish: blue above green


def test_no_nuclei():
  img, lab = synthetic_image(0, 64, 48, n_nuclei=0)
  assert img.shape == (64, 48) and lab.max() == 0 and lab.dtype == np.int32


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_dtypes(dtype):
  img, _ = synthetic_image(0, 32, 32, n_nuclei=3, dtype=dtype)
  assert img.dtype == dtype
  if dtype == np.float32:
    assert 0 <= img.min() and img.max() <= 1
  else:
    assert img.max() > 255


def test_bad_arguments():
  with pytest.raises(ValueError):
    synthetic_image(0, modality="brightfield")
  with pytest.raises(ValueError):
    synthetic_labels(0, n_nuclei=-1)
  with pytest.raises(ValueError):
    synthetic_labels(0, radius=(5, 2))


def test_dense_1024_with_2000_nuclei_is_fast():
  t = time.perf_counter()
  img, lab = synthetic_image(0, 1024, 1024, n_nuclei=2000, modality="histology")
  elapsed = time.perf_counter() - t
  assert elapsed < 10, elapsed
  assert img.shape == (1024, 1024, 3)
  assert int(lab.max()) >= 1900


def test_dataset_folder(tmp_path):
  rows = synthetic_dataset(tmp_path / "ds", n_images=6, seed=4, height=48, width=64,
                           n_nuclei=(0, 8), modality="mixed")
  assert [r["id"] for r in rows] == [f"syn_{i:04d}" for i in range(6)]
  splits = [r["split"] for r in rows]
  assert splits.count("test") == 2 and splits.count("train") == 4
  assert {r["modality"] for r in rows} == {"fluorescence", "histology"}
  assert [r["group"] for r in rows[:3]] == ["g0", "g1", "g0"]
  header = (tmp_path / "ds" / "index.csv").read_text().splitlines()[0]
  assert header == ",".join(readers.INDEX_COLUMNS)
  recs = readers.open_dataset(tmp_path / "ds")
  assert len(recs) == 6
  for rec, row in zip(recs, rows):
    ex = readers.load_example(rec)
    assert ex.image.shape[:2] == (48, 64)
    assert (ex.image.ndim == 3) == (row["channels"] == 3) == (row["modality"] == "histology")
    assert readers.count_instances(ex.labels) == row["nuclei"]
    assert rec.split == row["split"]
  assert len(readers.open_dataset(tmp_path / "ds", split="test")) == 2
  assert not list((tmp_path / "ds").rglob(".*"))  # no temp files left


def test_dataset_deterministic_and_prefix_stable(tmp_path):
  synthetic_dataset(tmp_path / "a", n_images=3, seed=9, height=32, width=32)
  synthetic_dataset(tmp_path / "b", n_images=3, seed=9, height=32, width=32)
  synthetic_dataset(tmp_path / "c", n_images=5, seed=9, height=32, width=32)
  for sub in ("images", "labels"):
    for i in range(3):
      name = f"syn_{i:04d}.png"
      a = (tmp_path / "a" / sub / name).read_bytes()
      assert a == (tmp_path / "b" / sub / name).read_bytes()
      assert a == (tmp_path / "c" / sub / name).read_bytes()  # independent of n_images
  assert (tmp_path / "a" / "index.csv").read_bytes() == (tmp_path / "b" / "index.csv").read_bytes()


def test_dataset_single_image_is_train(tmp_path):
  (row,) = synthetic_dataset(tmp_path, n_images=1, seed=0, height=32, width=32)
  assert row["split"] == "train"
