"""Outputs never destroy inputs or earlier results (issue 13, part 1 and 3), through the
real CLI: predict / evaluate / partial / annotate refuse an output that is, contains or lies
in an input, that is a file, or that holds an earlier result (unless --overwrite, which
replaces it as a whole); a failed command leaves the old output byte-identical and no
temporary folder; --on-error stop writes nothing, skip lists the bad files.

Toy sizes only: 64x64 PNGs with a few bright disks, the classical method, no training."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np

from .conftest import ROOT, error_line, run_cli, snapshot

SAMPLE = ROOT / "data" / "sample"
# A tqdm progress line ('predict:  50%|...', 'evaluate: 0image [00:00, ...]'): not a message.
_BAR = re.compile(r"^\s*[\w ]+: .*(\d+%\||\[\d\d:\d\d)")


def _quiet(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
  """`proc` with tqdm progress lines dropped from stderr (a bar is not an error line)."""
  lines = [l for l in proc.stderr.splitlines() if l.strip() and not _BAR.match(l)]
  return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout,
                                     "\n".join(lines) + ("\n" if lines else ""))


def _disks(shift: int = 0) -> np.ndarray:
  """uint8 (64, 64): three bright disks on a dark background."""
  yy, xx = np.mgrid[:64, :64]
  img = np.full((64, 64), 10, np.uint8)
  for cy, cx in ((16, 16), (42, 20), (30 + shift, 46)):
    img[(yy - cy) ** 2 + (xx - cx) ** 2 < 60] = 200
  return img


def _images(folder: Path, names=("im0", "im1"), bad: str | None = None) -> Path:
  """Writes `names` as 64x64 PNGs into `folder` (and a corrupt `bad` PNG); returns it."""
  from PIL import Image

  folder.mkdir(parents=True, exist_ok=True)
  for k, name in enumerate(names):
    Image.fromarray(_disks(k)).save(folder / f"{name}.png")
  if bad:
    (folder / f"{bad}.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated, not an image")
  return folder


def _predict(inp: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
  return _quiet(run_cli("predict", "--method", "classical", "--input", inp, "--output", out,
                        *extra))


def _no_temp_siblings(out: Path) -> None:
  left = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
  assert not left, left


# ------------------------------------------------------------------------ predict


def test_predict_output_is_input_keeps_the_images(tmp_path):
  imgs = _images(tmp_path / "imgs")
  before = snapshot(imgs)
  p = _predict(imgs, imgs)
  error_line(p, 2, str(imgs), "input")
  assert snapshot(imgs) == before


def test_predict_output_inside_input_is_refused(tmp_path):
  imgs = _images(tmp_path / "imgs")
  before = snapshot(imgs)
  p = _predict(imgs, imgs / "labels")
  error_line(p, 2, str(imgs / "labels"), "inside")
  assert snapshot(imgs) == before and not (imgs / "labels").exists()


def test_predict_output_containing_input_is_refused_even_with_overwrite(tmp_path):
  imgs = _images(tmp_path / "data" / "imgs")
  before = snapshot(tmp_path / "data")
  p = _predict(imgs, tmp_path / "data", "--overwrite")
  error_line(p, 2, str(tmp_path / "data"), "contains")
  assert snapshot(tmp_path / "data") == before


def test_predict_output_an_existing_file(tmp_path):
  imgs = _images(tmp_path / "imgs")
  target = tmp_path / "some.png"
  target.write_bytes(b"precious")
  p = _predict(imgs, target)
  error_line(p, 2, str(target), "file")
  assert target.read_bytes() == b"precious"


def test_predict_output_under_a_file(tmp_path):
  imgs = _images(tmp_path / "imgs")
  target = tmp_path / "some.png"
  target.write_bytes(b"precious")
  p = _predict(imgs, target / "x")
  error_line(p, 2, str(target))
  assert target.read_bytes() == b"precious"


def test_predict_into_earlier_output_without_overwrite_is_refused(tmp_path):
  out = tmp_path / "out"
  assert _predict(_images(tmp_path / "a"), out, "--format", "label,coco").returncode == 0
  before = snapshot(out)
  p = _predict(_images(tmp_path / "b", names=("new0",)), out, "--format", "label,coco")
  line = error_line(p, 2, str(out), "--overwrite")
  assert re.search(r"\d+ files", line), line
  assert snapshot(out) == before


def test_predict_overwrite_replaces_the_output_as_a_whole(tmp_path):
  out = tmp_path / "out"
  assert _predict(_images(tmp_path / "a"), out, "--format", "label,coco").returncode == 0
  assert (out / "im1.png").is_file()
  p = _predict(_images(tmp_path / "b", names=("new0",)), out, "--format", "label,coco",
               "--overwrite")
  assert p.returncode == 0, p.stderr
  # Only the new results: no old label map beside them, COCO lists exactly them.
  maps = sorted(q.name for q in out.glob("*.png"))
  assert maps == ["new0.png"]
  coco = json.loads((out / "annotations.json").read_text())
  assert sorted(Path(im["file_name"]).stem for im in coco["images"]) == ["new0"]
  _no_temp_siblings(out)


def test_failed_overwrite_keeps_the_old_output(tmp_path):
  out = tmp_path / "out"
  assert _predict(_images(tmp_path / "a"), out).returncode == 0
  before = snapshot(out)
  bad_input = _images(tmp_path / "b", names=("new0",), bad="zz_bad")
  p = _predict(bad_input, out, "--overwrite")
  error_line(p, 2, "zz_bad.png")
  assert snapshot(out) == before
  _no_temp_siblings(out)


def test_on_error_stop_writes_nothing(tmp_path):
  out = tmp_path / "out"
  p = _predict(_images(tmp_path / "a", bad="zz_bad"), out)  # the bad file comes last
  error_line(p, 2, "zz_bad.png")
  assert not out.exists()
  _no_temp_siblings(out)


def test_on_error_skip_writes_skipped_csv_and_counts(tmp_path):
  out = tmp_path / "out"
  p = _predict(_images(tmp_path / "a", bad="bad"), out, "--on-error", "skip")
  assert p.returncode == 0, p.stderr
  assert "2 images segmented, 1 skipped" in p.stdout and "skipped.csv" in p.stdout
  with open(out / "skipped.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  assert [Path(r["file"]).name for r in rows] == ["bad.png"] and rows[0]["reason"]
  assert (out / "im0.png").is_file() and (out / "im1.png").is_file()


def test_disk_full_is_one_line_and_leaves_no_temp_folder(tmp_path, small_disk):
  disk = small_disk(256)
  # Fill the disk but a few KiB: the outputs then cannot all be written.
  with open(disk / "filler", "wb") as f:
    try:
      f.write(b"\0" * (256 * 1024))
    except OSError:
      pass
  (disk / "filler").write_bytes((disk / "filler").read_bytes()[:-6 * 1024])
  out = disk / "out"
  p = _predict(_images(tmp_path / "a", names=[f"im{i}" for i in range(4)]), out,
               "--format", "label,coco,geojson,csv")
  error_line(p, 2, str(out))
  assert not out.exists()
  _no_temp_siblings(out)


def test_read_only_output_is_one_line(tmp_path, small_disk):
  disk = small_disk(64)
  if subprocess.run(["mount", "-o", "remount,ro", str(disk)]).returncode != 0:
    return  # cannot remount here; the disk-full case covers the write path
  out = disk / "sub" / "out"
  p = _predict(_images(tmp_path / "a"), out)
  error_line(p, 2, str(disk))
  assert sorted(disk.iterdir()) == []


# ----------------------------------------------------------------------- evaluate


def _gt_and_predictions(tmp_path: Path) -> tuple[Path, Path]:
  """(predictions, ground truth): classical label maps of two images, and a copy."""
  preds = tmp_path / "preds"
  assert _predict(_images(tmp_path / "imgs"), preds).returncode == 0
  gt = tmp_path / "gt"
  gt.mkdir()
  for name in ("im0.png", "im1.png"):
    shutil.copy(preds / name, gt / name)
  return preds, gt


def _evaluate(preds: Path, gt: Path, *extra: str) -> subprocess.CompletedProcess:
  return _quiet(run_cli("evaluate", "--predictions", preds, "--ground-truth", gt, *extra))


def test_evaluate_output_refusals_keep_inputs_and_earlier_reports(tmp_path):
  preds, gt = _gt_and_predictions(tmp_path)
  before_gt, before_preds = snapshot(gt), snapshot(preds)
  error_line(_evaluate(preds, gt, "--output", gt), 2, str(gt), "input")
  error_line(_evaluate(preds, gt, "--output", gt / "report"), 2, str(gt / "report"))
  error_line(_evaluate(preds, gt, "--output", gt / "im0.png"), 2, "im0.png", "file")
  assert snapshot(gt) == before_gt and snapshot(preds) == before_preds
  # The documented default, <predictions>/evaluation, is allowed (evaluate never reads
  # the predictions' sub-folders) ...
  p = _evaluate(preds, gt)
  assert p.returncode == 0, p.stderr
  assert (preds / "evaluation" / "summary.md").is_file()
  # ... once: a second report into it needs --overwrite, and then replaces it whole.
  before = snapshot(preds)
  error_line(_evaluate(preds, gt), 2, str(preds / "evaluation"), "--overwrite")
  assert snapshot(preds) == before
  (preds / "evaluation" / "stale.txt").write_text("old")
  p = _evaluate(preds, gt, "--overwrite")
  assert p.returncode == 0, p.stderr
  assert not (preds / "evaluation" / "stale.txt").exists()
  assert "2 images" in p.stdout


def test_evaluate_on_error_stop_and_skip(tmp_path):
  preds, gt = _gt_and_predictions(tmp_path)
  (preds / "im1.png").write_bytes(b"not a png at all")
  out = tmp_path / "report"
  error_line(_evaluate(preds, gt, "--output", out), 2, "im1.png")
  assert not out.exists()
  p = _evaluate(preds, gt, "--output", out, "--on-error", "skip")
  assert p.returncode == 0, p.stderr
  assert "1 images, 1 skipped" in p.stdout
  with open(out / "skipped.csv", newline="") as f:
    assert [Path(r["file"]).name for r in csv.DictReader(f)] == ["im1.png"]


def test_evaluate_workdir_output_refusals(tmp_path):
  run = tmp_path / "run"
  run.mkdir()
  (run / "config.json").write_text("{}")
  before = snapshot(run)
  # Checked before the run is loaded: the run folder itself, or a file, is no report folder.
  p = _quiet(run_cli("evaluate", "--workdir", run, "--output", run))
  error_line(p, 2, str(run), "input")
  p = _quiet(run_cli("evaluate", "--workdir", run, "--output", run / "config.json"))
  error_line(p, 2, "config.json", "file")
  assert snapshot(run) == before


# ------------------------------------------------------------------------ partial


def _dataset(tmp_path: Path) -> Path:
  """A copy of the 8-image sample dataset."""
  ds = tmp_path / "ds"
  shutil.copytree(SAMPLE, ds)
  return ds


def test_partial_output_refusals(tmp_path):
  ds = _dataset(tmp_path)
  before = snapshot(ds)
  for out, names in ((ds, ("input",)), (ds / "view", ("inside",)),
                     (ds / "index.csv", ("file",)), (ds / "index.csv" / "x", ())):
    p = _quiet(run_cli("partial", "--dataset", ds, "--keep", "0.5", "--output", out))
    error_line(p, 2, str(out if names else ds / "index.csv"), *names)
  assert snapshot(ds) == before
  out = tmp_path / "view"
  args = ("partial", "--dataset", ds, "--keep", "0.5", "--output", out)
  assert _quiet(run_cli(*args)).returncode == 0
  first = snapshot(out)
  error_line(_quiet(run_cli(*args[:-1], tmp_path / "view")), 2, str(out), "--overwrite")
  assert snapshot(out) == first
  (out / "stale.txt").write_text("old")
  assert _quiet(run_cli(*args, "--overwrite")).returncode == 0
  assert snapshot(out) == first  # same view again, the stale file gone


# ----------------------------------------------------------------------- annotate


def test_annotate_output_is_images_or_holds_other_files(tmp_path):
  imgs = _images(tmp_path / "imgs")
  before = snapshot(imgs)
  # --rounds 0 keeps this cheap: the output is checked before anything is trained.
  p = _quiet(run_cli("annotate", "--images", imgs, "--output", imgs, "--rounds", "0"))
  error_line(p, 2, str(imgs), "input")
  p = _quiet(run_cli("annotate", "--images", imgs, "--output", imgs / "ann", "--rounds", "0"))
  error_line(p, 2, str(imgs / "ann"), "inside")
  other = tmp_path / "other"
  other.mkdir()
  (other / "notes.txt").write_text("not an annotation project")
  p = _quiet(run_cli("annotate", "--images", imgs, "--output", other, "--rounds", "0"))
  error_line(p, 2, str(other), "--overwrite")
  assert snapshot(imgs) == before and (other / "notes.txt").read_text().startswith("not")
