"""Training from a tfds build: same batches as the folder reader, each row read once."""

from __future__ import annotations

import collections
import csv
import shutil
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from pa_jax import experiment, fileio
from pa_jax.data import pipeline, readers, tfds_source
from pa_jax.errors import InputError

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from configs import base  # noqa: E402
from data import tfds_nuclei  # noqa: E402

SAMPLE = ROOT / "data/sample"
NAME = "nucleus_folder_builder"  # tfds' name of tfds_nuclei.NucleusFolderBuilder


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
  """data/sample with its index.csv rows reversed: index order is then neither id order
  nor tfds' key-hash order, so equal batches need the build to keep index order."""
  root = tmp_path_factory.mktemp("ds")
  shutil.copytree(SAMPLE / "images", root / "images")
  shutil.copytree(SAMPLE / "labels", root / "labels")
  with open(SAMPLE / "index.csv", newline="") as f:
    rows = list(csv.DictReader(f))[::-1]
  fileio.write_csv(root / "index.csv", rows)
  return root


@pytest.fixture(scope="module")
def builds(folder, tmp_path_factory):
  """tfds data dir, building a view of `folder` on first use (a few seconds each)."""
  data_dir = tmp_path_factory.mktemp("tfds")
  done = set()

  def get(view: str) -> Path:
    if view not in done:
      tfds_nuclei.build("nuclei_folder", view, data_dir, source_dir=folder)
      done.add(view)
    return data_dir

  return get


def _config(folder: Path, view: str, fraction: float, seed: int, **data):
  c = base.get_config()
  c.data.source = str(folder)
  c.data.view, c.data.view_fraction, c.data.view_seed = view, fraction, seed
  c.data.canvas_size, c.data.max_instances = 128, 64
  c.train.batch_size = 4
  c.data.update(data)
  return c


class Counting:
  """A data source that counts the reads of each record (thread-safe) and can fail one."""

  def __init__(self, records, fail_at: int | None = None):
    self.records, self.fail_at = records, fail_at
    self.reads = collections.Counter()
    self._lock = threading.Lock()

  def __len__(self):
    return len(self.records)

  def __getitem__(self, i):
    with self._lock:
      self.reads[int(i)] += 1
    if i == self.fail_at:
      raise OSError("array_record: corrupted chunk at offset 4096")
    return self.records[i]


def _assert_same_batch(a, b):
  for field in a.__dataclass_fields__:
    np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)


@pytest.mark.parametrize("build_view,view", [("keep25_seed0", ("keep", 0.25, 0)),
                                             ("crop25_seed1", ("crop", 0.25, 1))])
def test_tfds_and_folder_readers_give_identical_batches(folder, builds, build_view, view):
  data_dir = builds(build_view)
  cfg_folder = _config(folder, *view, workers=0)
  cfg_tfds = _config(folder, *view, workers=3, reader="tfds", tfds_dir=str(data_dir),
                     tfds_name=f"{NAME}/{build_view}")
  src_f, stats_f = experiment.training_data(cfg_folder, progress=False)
  src_t, stats_t = experiment.training_data(cfg_tfds, progress=False)
  assert stats_t == stats_f  # same nuclei, same centerness anchor
  assert isinstance(src_t.examples, tfds_source.BuildExamples)
  ids = [r.id for r in readers.open_dataset(folder, split="train")]
  assert [src_t.examples.records[i]["id"].decode() for i in range(6)] == ids  # index order
  # Prefetched batches are built concurrently by the row threads; they arrive in step order.
  it = src_t.iterate(0, prefetch=3)
  for step in range(4):  # 6 images, batch 4: step 1 straddles two epochs
    _assert_same_batch(next(it), src_f.batch(step))
  # Two processes of the same config: their rows make up the one-process batch.
  halves = [experiment.training_data(cfg_tfds, p, 2)[0].batch(2) for p in (0, 1)]
  np.testing.assert_array_equal(np.concatenate([h.labels for h in halves]),
                                src_f.batch(2).labels)


@pytest.mark.parametrize("global_batch,steps,epochs", [(2, 3, 1), (4, 3, 2)])
def test_two_processes_read_each_example_once_per_epoch(folder, builds, global_batch, steps,
                                                        epochs):
  data_dir = builds("keep25_seed0")
  examples, _ = tfds_source.open_split(data_dir, f"{NAME}/keep25_seed0", "train")
  n = len(examples)
  counters = []
  for p in (0, 1):
    counted = Counting(examples.records)
    counters.append(counted)
    src = pipeline.BatchSource(tfds_source.BuildExamples(counted, examples.where), global_batch,
                               128, 64, seed=3, process_index=p, process_count=2, workers=2)
    for step in range(steps):  # steps·global_batch = epochs·n rows
      src.batch(step)
    # This process read exactly its rows of each global batch, nothing else.
    rows = np.concatenate([pipeline.global_indices(s, global_batch, n, 3)[
        pipeline.host_slice(global_batch, p, 2)] for s in range(steps)])
    assert counted.reads == collections.Counter(rows.tolist())
  total = counters[0].reads + counters[1].reads
  assert total == collections.Counter({i: epochs for i in range(n)})


def test_unreadable_record_is_one_line_naming_it(folder, builds):
  data_dir = builds("keep25_seed0")
  examples, _ = tfds_source.open_split(data_dir, f"{NAME}/keep25_seed0", "train")
  bad = tfds_source.BuildExamples(Counting(examples.records, fail_at=4), examples.where)
  src = pipeline.BatchSource(bad, 2, 128, 64, workers=2)
  with pytest.raises(InputError) as err:
    it = src.iterate(0, prefetch=1)
    for _ in range(3):  # one epoch: record 4 is read in one of these steps
      next(it)
  text = str(err.value)
  assert "\n" not in text and f"{NAME}/keep25_seed0" in text and "[train] record 4" in text
  assert "corrupted chunk" in text


def test_config_errors_name_the_field(folder, builds, tmp_path):
  data_dir = str(builds("keep25_seed0"))
  good = dict(reader="tfds", tfds_dir=data_dir, tfds_name=f"{NAME}/keep25_seed0")
  with pytest.raises(InputError, match=r"^data\.view: .*keep25_seed0.*keep25_seed1"):
    experiment.training_data(_config(folder, "keep", 0.25, 1, **good), progress=False)
  with pytest.raises(InputError, match=r"^data\.group: "):
    experiment.training_data(_config(folder, "keep", 0.25, 0, group="dh360", **good),
                             progress=False)
  with pytest.raises(InputError, match=r"no tfds build here"):
    experiment.training_data(_config(folder, "keep", 0.25, 0, **{**good, "tfds_name": "x/y"}),
                             progress=False)
  with pytest.raises(InputError, match=r"^data\.reader: 'lmdb'"):
    experiment.training_data(_config(folder, "full", 1.0, 0, reader="lmdb"), progress=False)
  # A 1.0.0 build (no metadata.json) is refused rather than read in the wrong order.
  old = tmp_path / NAME / "keep25_seed0"
  shutil.copytree(Path(data_dir) / NAME / "keep25_seed0", old)
  for meta in old.glob("*/metadata.json"):
    meta.unlink()
  with pytest.raises(InputError, match="rebuild it"):
    tfds_source.open_split(tmp_path, f"{NAME}/keep25_seed0", "train")


def test_split_statistics_match_the_library_median():
  from pa_jax.partial.targets import median_nucleus_size

  rng = np.random.default_rng(0)
  maps = []
  for _ in range(3):
    lab = np.zeros((40, 40), np.int32)
    for k in range(1, 5):
      y, x, h, w = rng.integers(0, 30, 2).tolist() + rng.integers(1, 10, 2).tolist()
      lab[y:y + h, x:x + w] = k
    maps.append(lab)
  maps.append(np.zeros((8, 8), np.int32))  # an image without nuclei counts as an image
  s = tfds_source.split_statistics(tfds_source.example_statistics(m, m) for m in maps)
  assert (s["median_width"], s["median_height"]) == median_nucleus_size(maps)
  assert s["images"] == 4 and s["annotated_nuclei"] == sum(readers.count_instances(m) for m in maps)
  assert tfds_source.split_statistics([])["median_width"] is None
