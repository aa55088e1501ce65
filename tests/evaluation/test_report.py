"""Dataset evaluation reports: evaluate_pairs and evaluate_folders."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from pa_jax import fileio
from pa_jax.errors import InputError
from pa_jax.evaluation import metrics, report


def disks(shape, centres, radius):
  yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
  out = np.zeros(shape, np.int32)
  for k, (cy, cx) in enumerate(centres, start=1):
    out[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2] = k
  return out


def read_rows(path):
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def make_items(n=6, calls=None):
  rng = np.random.default_rng(0)
  items = []
  for i in range(n):
    centres = [(int(y), int(x)) for y, x in rng.integers(8, 40, size=(4, 2))]
    gt = disks((48, 48), centres, 5)
    pred = disks((48, 48), [(y + i % 3, x) for y, x in centres[: 4 - i % 2]], 5)
    meta = {"group": "a" if i < 3 else "b", "modality": "fluorescence"}

    def image(i=i):
      if calls is not None:
        calls.append(i)
      return (gt > 0).astype(np.uint8) * 200

    items.append((f"img{i}", gt, pred, meta, image))
  return items


def test_evaluate_pairs_writes_tables_and_figure(tmp_path):
  calls = []
  items = make_items(calls=calls)
  out = tmp_path / "eval"
  s = report.evaluate_pairs(iter(items), out, title="unit", worst_k=2, progress=False)
  for name in ("per_image.csv", "summary.csv", "summary.md", "metrics.png"):
    assert (out / name).is_file()
  assert (out / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  rows = read_rows(out / "per_image.csv")
  assert [r["id"] for r in rows] == [f"img{i}" for i in range(6)]
  per = [metrics.image_metrics(gt, pred) for _, gt, pred, _, _ in items]
  for r, m in zip(rows, per):
    assert float(r["map"]) == pytest.approx(m["map"], abs=1e-5)
    assert int(r["aji_u"]) == m["aji_u"]
  assert s["n_images"] == 6
  assert s["map"] == pytest.approx(np.mean([m["map"] for m in per]))
  assert s["aji"] == pytest.approx(np.mean([m["aji"] for m in per]))
  assert s["aji_pooled"] == pytest.approx(sum(m["aji_c"] for m in per)
                                          / sum(m["aji_u"] for m in per))
  # One modality for every image: no repeated row; two groups: one row each.
  assert [r["scope"] for r in s["by"]] == ["all", "group=a", "group=b"]
  assert [r["scope"] for r in read_rows(out / "summary.csv")] == ["all", "group=a", "group=b"]
  group_a = s["by"][1]
  assert group_a["map"] == pytest.approx(np.mean([m["map"] for m in per[:3]]))
  # The figure loaded images only for the two worst ones.
  assert len(calls) == 2 and len(s["worst"]) == 2
  worst_maps = sorted(m["map"] for m in per)[:2]
  assert sorted(per[int(w[3:])]["map"] for w in s["worst"]) == worst_maps
  md = (out / "summary.md").read_text()
  assert md.startswith("# unit") and "| all | 6 |" in md


def test_evaluate_pairs_errors(tmp_path):
  with pytest.raises(InputError, match="nothing to evaluate"):
    report.evaluate_pairs([], tmp_path, progress=False)
  bad = [("x1", np.zeros((4, 4), np.int32), np.zeros((4, 5), np.int32), {}, None)]
  with pytest.raises(ValueError, match="x1: .*shape"):
    report.evaluate_pairs(bad, tmp_path, progress=False)


def test_evaluate_pairs_all_empty_images(tmp_path):
  z = np.zeros((8, 8), np.int32)
  s = report.evaluate_pairs([("e", z, z, {}, None)], tmp_path, progress=False)
  assert s["map"] == 1.0 and s["aji_pooled"] == 1.0


# --------------------------------------------------------------------- folders


def make_dataset(root: Path, n=4):
  rng = np.random.default_rng(1)
  rows = []
  gts = {}
  for i in range(n):
    centres = [(int(y), int(x)) for y, x in rng.integers(8, 40, size=(3, 2))]
    gt = disks((48, 56), centres, 6)
    gts[f"s{i}"] = gt
    fileio.write_label_map(root / "labels" / f"s{i}.png", gt)
    fileio.write_png(root / "images" / f"s{i}.png", ((gt > 0) * 180 + 20).astype(np.uint8))
    rows.append({"id": f"s{i}", "split": "test" if i < 2 else "train",
                 "group": "g1" if i % 2 else "g0", "modality": "fluorescence",
                 "height": 48, "width": 56, "channels": 1, "nuclei": 3})
  fileio.write_csv(root / "index.csv", rows)
  return gts


def test_evaluate_folders_dataset(tmp_path):
  gts = make_dataset(tmp_path / "ds")
  preds = tmp_path / "preds"
  fileio.write_label_map(preds / "s0.png", gts["s0"])  # perfect
  fileio.write_label_map(preds / "s1_labels.png", np.zeros_like(gts["s1"]))  # suffixed, empty
  (preds / "notes.txt").write_text("ignored")
  s = report.evaluate_folders(preds, tmp_path / "ds", tmp_path / "out", progress=False)
  assert s["n_images"] == 2  # other dataset images are not required
  assert s["map"] == pytest.approx(0.5)
  assert [r["scope"] for r in s["by"]] == ["all", "group=g0", "group=g1"]
  rows = {r["id"]: r for r in read_rows(tmp_path / "out" / "per_image.csv")}
  assert float(rows["s0"]["map"]) == 1.0 and float(rows["s1"]["recall"]) == 0.0
  assert rows["s1"]["group"] == "g1"
  # With a split, every image of it must be predicted ...
  fileio.write_label_map(preds / "s0.png", gts["s0"])
  s = report.evaluate_folders(preds, tmp_path / "ds", tmp_path / "out", split="test",
                              progress=False, overwrite=True)
  assert s["n_images"] == 2
  with pytest.raises(InputError, match="2 ground-truth images have no prediction: s2, s3"):
    report.evaluate_folders(preds, tmp_path / "ds", tmp_path / "out", split="test,train",
                            progress=False, overwrite=True)
  # ... and a prediction outside the selection has no ground truth.
  fileio.write_label_map(preds / "s2.png", gts["s2"])
  with pytest.raises(InputError, match="s0.png: no ground truth .*split=train.*2 predictions without"):
    report.evaluate_folders(preds, tmp_path / "ds", tmp_path / "out", split="train",
                            allow_missing=True, progress=False, overwrite=True)


def test_evaluate_folders_errors(tmp_path):
  gts = make_dataset(tmp_path / "ds")
  preds = tmp_path / "preds"
  fileio.write_label_map(preds / "s0.png", gts["s0"])
  fileio.write_label_map(preds / "zzz.png", gts["s0"])
  with pytest.raises(InputError, match="zzz.png: no ground truth for this prediction"):
    report.evaluate_folders(preds, tmp_path / "ds", tmp_path / "out", progress=False)
  (preds / "zzz.png").unlink()
  fileio.write_label_map(preds / "s1.png", np.zeros((10, 10), np.int32))
  with pytest.raises(InputError, match="s1.png: prediction is 10x10 but"):
    report.evaluate_folders(preds, tmp_path / "ds", tmp_path / "out", progress=False)
  other = tmp_path / "other"
  fileio.write_label_map(other / "q.png", gts["s0"])
  with pytest.raises(InputError, match="no prediction matches a ground-truth file"):
    report.evaluate_folders(other, tmp_path / "ds", tmp_path / "out", progress=False)
  with pytest.raises(InputError, match="predictions folder not found"):
    report.evaluate_folders(tmp_path / "nope", tmp_path / "ds", tmp_path / "out")
  (preds / "s1.png").write_bytes(b"not a png")
  with pytest.raises(InputError, match="s1.png"):
    report.evaluate_folders(preds, tmp_path / "ds", tmp_path / "out", progress=False)
  assert not (tmp_path / "out").exists()  # nothing half-written


def test_evaluate_folders_plain_folders(tmp_path):
  gt_dir, pred_dir = tmp_path / "gt", tmp_path / "cellpose"
  a = disks((40, 40), [(10, 10), (28, 28)], 6)
  b = disks((40, 40), [(20, 20)], 8)
  fileio.write_label_map(gt_dir / "a_mask.png", a)
  fileio.write_label_map(gt_dir / "b.tif", b)
  # Cellpose-style output: image and masks side by side.
  fileio.write_png(pred_dir / "a.png", (a > 0).astype(np.uint8) * 255)
  fileio.write_label_map(pred_dir / "a_cp_masks.png", a * 5)
  with pytest.raises(InputError, match="1 ground-truth images have no prediction: b"):
    report.evaluate_folders(pred_dir, gt_dir, tmp_path / "out", progress=False)
  index = tmp_path / "meta.csv"
  fileio.write_csv(index, [{"id": "a", "group": "x", "modality": "m"}])
  s = report.evaluate_folders(pred_dir, gt_dir, tmp_path / "out", index_csv=index,
                              allow_missing=True, progress=False)
  assert s["missing"] == ["b"]
  assert s["n_images"] == 1 and s["map"] == 1.0 and s["aji"] == 1.0
  assert read_rows(tmp_path / "out" / "per_image.csv")[0]["group"] == "x"


def test_scan_label_folder_ambiguous(tmp_path):
  fileio.write_label_map(tmp_path / "a_labels.png", np.ones((4, 4), np.int32))
  fileio.write_label_map(tmp_path / "a_mask.png", np.ones((4, 4), np.int32))
  with pytest.raises(InputError, match="two label maps for 'a'"):
    report.scan_label_folder(tmp_path)
