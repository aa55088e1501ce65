"""tfds builders: partial views as builder configs, array_record written and read TF-free."""

import subprocess
import sys
from pathlib import Path

import numpy as np

from pa_jax import fileio
from pa_jax.data import partial_views as pv

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from data import tfds_nuclei  # noqa: E402


def test_folder_builder_keep_view_matches_library(tmp_path):
  b = tfds_nuclei.build("nuclei_folder", "keep25_seed0", tmp_path / "tfds", source_dir=ROOT / "data/sample")
  train = tfds_nuclei.read_split(b, "train")
  test = tfds_nuclei.read_split(b, "test")
  assert len(train) == 6 and len(test) == 2
  from pa_jax.data import readers

  for ex in train:
    src = readers.load_example(readers.Record(ex["id"], ROOT / f"data/sample/images/{ex['id']}.png",
                                              ROOT / f"data/sample/labels/{ex['id']}.png"))
    np.testing.assert_array_equal(ex["image"], src.image)
    np.testing.assert_array_equal(ex["full_labels"], src.labels)
    want = pv.keep_instances(src.labels, 0.25, pv.image_rng(0, ex["id"], "keep"))
    np.testing.assert_array_equal(ex["labels"], want)
  for ex in test:  # evaluation splits keep every annotation
    np.testing.assert_array_equal(ex["labels"], ex["full_labels"])


def test_reading_does_not_import_tensorflow(tmp_path):
  # A stand-in `tensorflow` package first on the path: any attempt to import it leaves a
  # marker file (then fails like a broken install). So the test fails wherever building
  # or reading would import TensorFlow, whether or not the real one is installed.
  fake = tmp_path / "fake_tf" / "tensorflow"
  fake.mkdir(parents=True)
  marker = tmp_path / "tensorflow_was_imported"
  (fake / "__init__.py").write_text(f"open(r'{marker}', 'w').close()\n"
                                    "raise ImportError('tensorflow blocked by the test')\n")
  code = (f"import sys; sys.path.insert(0, r'{fake.parent}'); sys.path.insert(1, '.');"
          "from data import tfds_nuclei as t;"
          f"b = t.build('nuclei_folder', 'crop25_seed1', r'{tmp_path / 'tfds'}', source_dir='data/sample');"
          "ex = t.read_split(b, 'train'); assert ex[0]['image'].shape == (180, 180), ex[0]['image'].shape;"
          "print(any(m.split('.')[0] == 'tensorflow' for m, v in sys.modules.items() if v is not None))")
  r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
  assert r.returncode == 0, r.stderr[-2000:]
  assert r.stdout.strip().splitlines()[-1] == "False"
  assert not marker.exists()


def test_dsb2018_configs_are_the_paper_views():
  names = [c.name for c in tfds_nuclei.Dsb2018.BUILDER_CONFIGS]
  assert {"full", "dh100", "dh25_seed0", "dh25crop_seed0"} <= set(names)
  cfg = {c.name: c for c in tfds_nuclei.Dsb2018.BUILDER_CONFIGS}
  assert cfg["dh25_seed0"].group == "dh360" and cfg["dh25_seed0"].view == pv.ViewSpec("keep", 0.25, 0)
  assert cfg["dh25crop_seed0"].view == pv.ViewSpec("crop", 0.25, 0)


def test_builder_on_a_written_dataset_folder(tmp_path):
  root = tmp_path / "ds"
  lab = np.zeros((32, 32), np.int32)
  lab[2:6, 2:6], lab[10:14, 10:14] = 1, 2
  fileio.write_png(root / "images/a.png", np.zeros((32, 32), np.uint16) + 1000)
  fileio.write_label_map(root / "labels/a.png", lab)
  fileio.write_csv(root / "index.csv", [dict(id="a", split="train", group="", modality="", height=32,
                                             width=32, channels=1, nuclei=2)])
  b = tfds_nuclei.build("nuclei_folder", "full", tmp_path / "tfds", source_dir=root)
  (ex,) = tfds_nuclei.read_split(b, "train")
  assert ex["image"].dtype == np.uint16 and int(ex["image"][0, 0]) == 1000
  np.testing.assert_array_equal(ex["labels"], lab)
