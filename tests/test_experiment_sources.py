"""Several training sources in one run: comma-separated data.source, the seeded validation
carve (data.val_fraction / val_sources / val_seed), duplicate ids, per-source repeats, and
the size normalisation's effect on the median-nucleus anchor."""

from __future__ import annotations

import collections
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from pa_jax import experiment, fileio
from pa_jax.data import coco, pipeline, splits, synthetic
from pa_jax.errors import InputError
from pa_jax.partial.targets import median_nucleus_size

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))
from configs import base  # noqa: E402


def _dataset(root: Path, prefix: str, n: int, groups: int = 2, side: int = 8,
             test: int = 0) -> Path:
  """A dataset folder of n 32 x 32 images `{prefix}{i}`, one square nucleus of `side` px
  each; the last `test` images in split 'test'; group g{i % groups}."""
  rows = []
  for i in range(n):
    rid = f"{prefix}{i}"
    lab = np.zeros((32, 32), np.int32)
    lab[4:4 + side, 6:6 + side] = 1
    fileio.write_png(root / "images" / f"{rid}.png", np.where(lab > 0, 200, 20).astype(np.uint8))
    fileio.write_label_map(root / "labels" / f"{rid}.png", lab)
    rows.append({"id": rid, "split": "test" if i >= n - test else "train",
                 "group": f"g{i % groups}", "modality": "fluorescence"})
  fileio.write_csv(root / "index.csv", rows)
  return root


def _config(source: str, **data):
  c = base.toy_sized(base.get_config())
  c.data.source = source
  c.data.workers = 0
  c.data.prefetch = 0
  c.train.batch_size = 2
  c.data.update(data)
  return c


@pytest.fixture(scope="module")
def two_sources(tmp_path_factory):
  root = tmp_path_factory.mktemp("sources")
  kumar = _dataset(root / "kumar", "k", 8, groups=2, side=8)
  tnbc = _dataset(root / "tnbc", "t", 6, groups=3, side=12, test=2)
  return kumar, tnbc


def test_source_paths():
  assert experiment.source_paths("a") == ["a"]
  assert experiment.source_paths(" a , b/c ,, d/ ") == ["a", "b/c", "d/"]
  assert experiment.source_paths("") == [] and experiment.source_paths(None) == []


def test_comma_separated_sources_are_read_as_one(two_sources):
  kumar, tnbc = two_sources
  cfg = _config(f"{kumar}, {tnbc}")
  train = experiment.source_records(cfg, "train")
  assert [r.id for r in train] == [f"k{i}" for i in range(8)] + [f"t{i}" for i in range(4)]
  assert [r.id for r in experiment.source_records(cfg, "test")] == ["t4", "t5"]
  # '' = every split of every source
  assert len(experiment.source_records(cfg, "")) == 14
  # each source alone gives its own part, in the same order
  alone = (experiment.source_records(_config(str(kumar)), "train")
           + experiment.source_records(_config(str(tnbc)), "train"))
  assert [r.id for r in alone] == [r.id for r in train]


def test_val_carve_only_on_the_listed_sources_by_folder_name(two_sources):
  kumar, tnbc = two_sources
  # a trailing slash still names the folder 'kumar'
  cfg = _config(f"{kumar}/,{tnbc}", val_fraction=0.25, val_sources=("kumar",), val_seed=3)
  val = experiment.source_records(cfg, "val")
  train = experiment.source_records(cfg, "train")
  # kumar: 2 groups of 4 images, 0.25 -> one per group; tnbc: nothing carved
  assert len(val) == 2 and all(r.id.startswith("k") for r in val)
  assert collections.Counter(r.group for r in val) == {"g0": 1, "g1": 1}
  assert sorted(r.id for r in train if r.id.startswith("t")) == ["t0", "t1", "t2", "t3"]
  assert len(train) == 6 + 4
  # the carve is exactly splits.carve_validation of that source's records
  ref = splits.carve_validation(experiment.source_records(_config(str(kumar)), ""), 0.25, 3)
  assert [r.id for r in val] == [r.id for r in ref if r.split == "val"]
  assert {r.id for r in val}.isdisjoint(r.id for r in train)
  # the test split is never carved
  assert [r.id for r in experiment.source_records(cfg, "test")] == ["t4", "t5"]


def test_val_carve_on_every_source_when_none_is_listed(two_sources):
  kumar, tnbc = two_sources
  cfg = _config(f"{kumar},{tnbc}", val_fraction=0.25)
  val = experiment.source_records(cfg, "val")
  # kumar: 1 + 1; tnbc train: t0 (g0), t1 (g1), t2 (g2), t3 (g0): only g0 has 2 images
  assert collections.Counter(r.id[0] for r in val) == {"k": 2, "t": 1}
  assert next(r.id for r in val if r.id.startswith("t")) in ("t0", "t3")
  # another seed, another carve (the same counts)
  other = experiment.source_records(_config(f"{kumar},{tnbc}", val_fraction=0.25,
                                            val_seed=1), "val")
  seeds = {frozenset(r.id for r in experiment.source_records(
      _config(f"{kumar},{tnbc}", val_fraction=0.25, val_seed=s), "val")) for s in range(6)}
  assert len(other) == 3 and len(seeds) > 1
  # a name that matches no source folder carves nothing
  with pytest.raises(InputError, match="no images in split 'val'"):
    experiment.source_records(_config(f"{kumar},{tnbc}", val_fraction=0.25,
                                      val_sources=("kum",)), "val")


def test_a_source_without_splits_serves_every_split(two_sources, tmp_path):
  """A plain image folder has no splits (every record 'train'): it is read whole for any
  split, as one source always was; a dataset folder without the split is an error."""
  kumar, tnbc = two_sources
  plain = tmp_path / "plain"
  for i in range(3):
    lab = np.zeros((16, 16), np.int32)
    lab[2:8, 3:9] = 1
    fileio.write_png(plain / "images" / f"p{i}.png", np.where(lab > 0, 200, 20).astype(np.uint8))
    fileio.write_label_map(plain / "labels" / f"p{i}.png", lab)
  for split in ("train", "test", "val"):
    assert [r.id for r in experiment.source_records(_config(str(plain)), split)] == [
        "p0", "p1", "p2"]
  # beside a dataset folder: its own split only, the plain folder whole
  assert [r.id for r in experiment.source_records(_config(f"{tnbc},{plain}"), "test")] == [
      "t4", "t5", "p0", "p1", "p2"]
  # carved, the plain folder has splits: train and val part it
  cfg = _config(str(plain), val_fraction=0.34)
  val = [r.id for r in experiment.source_records(cfg, "val")]
  train = [r.id for r in experiment.source_records(cfg, "train")]
  assert len(val) == 1 and sorted(val + train) == ["p0", "p1", "p2"]
  # kumar has no test images, and nothing is carved without val_fraction
  with pytest.raises(InputError, match="no images in split 'test'"):
    experiment.source_records(_config(str(kumar)), "test")
  with pytest.raises(InputError, match="no images in split 'val'"):
    experiment.source_records(_config(f"{kumar},{tnbc}"), "val")
  # one source with the split is enough
  assert len(experiment.source_records(_config(f"{kumar},{tnbc}"), "test")) == 2


def test_duplicate_ids_across_sources_are_an_input_error(tmp_path):
  a, b = tmp_path / "a", tmp_path / "b"
  synthetic.synthetic_dataset(a, 3, seed=0, height=32, width=32, n_nuclei=2, test_fraction=0)
  synthetic.synthetic_dataset(b, 2, seed=1, height=32, width=32, n_nuclei=2, test_fraction=0)
  with pytest.raises(InputError, match=r"syn_0000.*syn_0001.*more than one source"):
    experiment.source_records(_config(f"{a},{b}"), "train")
  # the same folder twice as well
  with pytest.raises(InputError, match="more than one source"):
    experiment.source_records(_config(f"{a},{a}"), "train")


def test_repeat_by_source(two_sources):
  kumar, tnbc = two_sources
  cfg = _config(f"{kumar},{tnbc}", source_repeats=(1, 3))
  records = experiment.source_records(cfg, "train")
  examples = [r.id for r in records]  # stand-ins: only their order and count matter
  out = experiment.repeat_by_source(cfg, examples, records)
  assert out == [f"k{i}" for i in range(8)] + [f"t{i}" for i in range(4) for _ in range(3)]
  # () = once each, the list itself
  plain = _config(f"{kumar},{tnbc}")
  assert experiment.repeat_by_source(plain, examples, records) is examples
  for bad in ((1,), (1, 2, 3), (1, 0)):
    with pytest.raises(InputError, match="source_repeats"):
      experiment.repeat_by_source(_config(f"{kumar},{tnbc}", source_repeats=bad), examples,
                                  records)


def test_repeat_by_source_with_coco_sources(tmp_path):
  """A COCO source is a JSON file: its images are not below the path itself."""
  srcs = []
  for name, n in (("a", 2), ("b", 3)):
    d = tmp_path / name
    entries = []
    for i in range(n):
      lab = np.zeros((16, 16), np.int32)
      lab[2:8, 3:9] = 1
      fileio.write_png(d / "images" / f"{name}{i}.png", np.where(lab > 0, 200, 20).astype(np.uint8))
      entries.append((i + 1, f"images/{name}{i}.png", 16, 16, lab, None))
    coco.write_coco(d / "ann.json", entries)
    srcs.append(str(d / "ann.json"))
  cfg = _config(",".join(srcs), source_repeats=(1, 4))
  records = experiment.source_records(cfg, "train")
  assert [r.id for r in records] == ["a0", "a1", "b0", "b1", "b2"]
  out = experiment.repeat_by_source(cfg, [r.id for r in records], records)
  assert collections.Counter(out) == {"a0": 1, "a1": 1, "b0": 4, "b1": 4, "b2": 4}


def test_training_data_repeats_after_the_statistics(two_sources):
  kumar, tnbc = two_sources
  cfg = _config(f"{kumar},{tnbc}", source_repeats=(2, 1))
  src, stats = experiment.training_data(cfg, progress=False)
  assert stats["images"] == 12 and stats["annotated_nuclei"] == 12  # before repeating
  assert len(src.examples) == 2 * 8 + 4
  assert [ex.id for ex in src.examples[:4]] == ["k0", "k0", "k1", "k1"]
  assert src.examples[0] is src.examples[1]  # repeated, not copied


# ------------------------------------------------------------------ size normalisation


def _ex(labels, zoom=1.0):
  return pipeline.TrainExample("x", np.zeros(labels.shape + (3,), np.float32), labels, None,
                               zoom=zoom)


def test_median_nucleus_size_with_zooms():
  a = np.zeros((32, 32), np.int32)
  a[0:6, 0:8] = 1  # 8 x 6
  b = np.zeros((32, 32), np.int32)
  b[10:14, 10:12] = 3  # 2 x 4
  b[20:30, 20:30] = 4  # 10 x 10
  assert median_nucleus_size([a, b]) == (8.0, 6.0)  # widths 8, 2, 10; heights 6, 4, 10
  assert median_nucleus_size([a, b], [2.0, 1.0]) == (10.0, 10.0)  # widths 16, 2, 10
  assert median_nucleus_size([a, b], [1.0, 0.5]) == (5.0, 5.0)  # widths 8, 1, 5
  with pytest.raises(ValueError):
    median_nucleus_size([a, b], [1.0])


def test_dataset_statistics_scales_the_median_anchor_with_the_zoom():
  a = np.zeros((32, 32), np.int32)
  a[0:6, 0:8] = 1
  assert experiment.dataset_statistics([_ex(a)])["median_width"] == 8.0
  stats = experiment.dataset_statistics([_ex(a, 2.5), _ex(a, 2.5)])
  assert (stats["median_width"], stats["median_height"]) == (20.0, 15.0)
  assert stats["annotated_nuclei"] == 2


def test_training_data_with_diameter_sets_zoom_and_anchor(two_sources):
  kumar, tnbc = two_sources
  d_k, d_t = 2 * math.sqrt(64 / math.pi), 2 * math.sqrt(144 / math.pi)  # squares 8, 12
  cfg = _config(f"{kumar},{tnbc}", diameter=20.0)
  src, stats = experiment.training_data(cfg, progress=False)
  zooms = {ex.id: ex.zoom for ex in src.examples}
  np.testing.assert_allclose([zooms["k0"], zooms["t0"]], [20 / d_k, 20 / d_t], rtol=1e-12)
  # every nucleus becomes 20 px in equivalent diameter: its square side sqrt(pi) * 10
  side = 20 * math.sqrt(math.pi) / 2
  assert stats["median_width"] == pytest.approx(side) and stats["median_height"] == pytest.approx(side)
  assert src.augmentation == experiment.augmentation(cfg)


def test_augmentation_from_config():
  cfg = _config("x", rotate90=True, scale_jitter=(0.8, 1.25), intensity_jitter=0.2,
                stain_jitter=0.05, flip_vertical=False)
  assert experiment.augmentation(cfg) == pipeline.Augmentation(
      flip_h=True, flip_v=False, rotate90=True, scale_jitter=(0.8, 1.25), intensity=0.2,
      stain=0.05)
  assert experiment.augmentation(base.get_config()) == pipeline.Augmentation()


@pytest.mark.parametrize("field", [{"diameter": 30.0}, {"val_fraction": 0.2}, {"source": "a,b"},
                                   {"source_repeats": (3,)}])
def test_tfds_reader_refuses_what_a_build_cannot_hold(field):
  cfg = _config("a", reader="tfds")
  cfg.data.update(field)
  with pytest.raises(InputError, match="data.reader"):
    experiment.training_data(cfg, progress=False)
