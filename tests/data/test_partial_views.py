"""Partial views: counts, bit-identity of kept nuclei, determinism, the CLI summary."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pa_jax import fileio
from pa_jax.data import partial_views as pv
from pa_jax.data import readers

ROOT = Path(__file__).resolve().parents[2]


def _grid_labels(n, shape=(64, 64)):
  lab = np.zeros(shape, np.int32)
  for i in range(n):
    y, x = divmod(i, 8)
    lab[y * 8:y * 8 + 5, x * 8:x * 8 + 5] = 100 + 3 * i  # non-sequential ids on purpose
  return lab


@pytest.mark.parametrize("n,f,expected", [(0, 0.25, 0), (1, 0.25, 1), (2, 0.25, 1), (3, 0.25, 1),
                                          (4, 0.25, 1), (6, 0.25, 2), (10, 0.25, 3),
                                          (22, 0.25, 6), (7, 1.0, 7), (5, 0.5, 3)])
def test_num_kept_is_round_half_up_with_at_least_one(n, f, expected):
  assert pv.num_kept(n, f) == expected


@pytest.mark.parametrize("n", [0, 1, 5, 22, 64])
def test_keep_instances_keeps_bit_identical_subset(n):
  lab = _grid_labels(n)
  out = pv.keep_instances(lab, 0.25, pv.image_rng(0, "img", "keep"))
  kept = set(np.unique(out)) - {0}
  assert len(kept) == pv.num_kept(n, 0.25)
  assert kept <= set(np.unique(lab)) - {0}
  for k in kept:  # kept nuclei unchanged, pixel for pixel
    np.testing.assert_array_equal(out == k, lab == k)
  removed = np.isin(lab, list(kept), invert=True) & (lab > 0)
  assert np.all(out[removed] == 0)
  assert out.dtype == lab.dtype


def test_views_are_seeded_per_image_and_order_free():
  lab = _grid_labels(40)
  a = pv.keep_instances(lab, 0.25, pv.image_rng(3, "x", "keep"))
  b = pv.keep_instances(lab, 0.25, pv.image_rng(3, "x", "keep"))
  c = pv.keep_instances(lab, 0.25, pv.image_rng(4, "x", "keep"))
  d = pv.keep_instances(lab, 0.25, pv.image_rng(3, "y", "keep"))
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c) and not np.array_equal(a, d)  # seed and image id both matter


def test_crop_view_is_a_quarter_and_keeps_every_nucleus_inside():
  img = np.arange(100 * 60, dtype=np.uint16).reshape(100, 60)
  lab = _grid_labels(40, (100, 60))
  ci, cl, (y0, x0, h, w) = pv.crop_view(img, lab, 0.25, pv.image_rng(0, "a", "crop"))
  assert (h, w) == (50, 30)
  np.testing.assert_array_equal(ci, img[y0:y0 + h, x0:x0 + w])
  np.testing.assert_array_equal(cl, lab[y0:y0 + h, x0:x0 + w])


def test_bad_fractions_raise():
  with pytest.raises(ValueError):
    pv.keep_instances(_grid_labels(3), 0.0, np.random.default_rng(0))
  with pytest.raises(ValueError):
    pv.ViewSpec("half", 0.5)


def _dataset(tmp_path, n_images=3):
  root = tmp_path / "ds"
  rows = []
  for i in range(n_images):
    img = (np.random.default_rng(i).random((64, 64)) * 255).astype(np.uint8)
    lab = _grid_labels(10 + i)
    fileio.write_png(root / "images" / f"im{i}.png", img)
    fileio.write_label_map(root / "labels" / f"im{i}.png", lab)
    rows.append(dict(id=f"im{i}", split="train" if i < 2 else "test", group="g", modality="fluorescence",
                     height=64, width=64, channels=1, nuclei=10 + i))
  fileio.write_csv(root / "index.csv", rows)
  return root


@pytest.mark.parametrize("kind", ["keep", "crop"])
def test_write_partial_dataset_summary_matches_recount(tmp_path, kind):
  root = _dataset(tmp_path)
  spec = pv.ViewSpec(kind, 0.25, 0)
  s = pv.write_partial_dataset(root, tmp_path / "out", spec, split="train", progress=False)
  assert s["images"] == 2
  assert s["nuclei_before"] == 10 + 11
  assert (s["images"], s["nuclei_after"]) == pv.recount(tmp_path / "out")
  # the written dataset reads back as a dataset folder
  recs = readers.read_dataset_folder(tmp_path / "out")
  assert [r.id for r in recs] == ["im0", "im1"]
  if kind == "keep":
    assert (tmp_path / "out/images/im0.png").read_bytes() == (root / "images/im0.png").read_bytes()


def test_write_partial_dataset_refuses_nonempty_output(tmp_path):
  root = _dataset(tmp_path)
  out = tmp_path / "out"
  out.mkdir()
  (out / "keep.txt").write_text("precious")
  with pytest.raises(Exception, match="not empty"):
    pv.write_partial_dataset(root, out, pv.ViewSpec("keep", 0.25), progress=False)
  assert (out / "keep.txt").read_text() == "precious"


def test_cli_partial_twice_gives_identical_output(tmp_path):
  root = _dataset(tmp_path)
  outs = []
  for name in ("a", "b"):
    out = tmp_path / name
    r = subprocess.run([sys.executable, "run.py", "partial", "--dataset", str(root), "--keep", "0.25",
                        "--seed", "0", "--output", str(out)], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "annotated nuclei 21 -> " in r.stdout
    outs.append(out)
  files = sorted(p.relative_to(outs[0]) for p in outs[0].rglob("*") if p.is_file())
  assert files
  for f in files:
    assert (outs[0] / f).read_bytes() == (outs[1] / f).read_bytes(), f


def test_cli_partial_bad_input_is_one_line(tmp_path):
  r = subprocess.run([sys.executable, "run.py", "partial", "--dataset", str(tmp_path / "missing"),
                      "--keep", "0.25", "--output", str(tmp_path / "o")], cwd=ROOT,
                     capture_output=True, text=True)
  assert r.returncode == 2
  assert r.stderr.strip().count("\n") == 0 and "missing" in r.stderr
