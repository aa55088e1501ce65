"""TensorFlow Datasets builders for nucleus datasets and their partial views.

One builder per shared dataset (`dsb2018`, `kumar`, `tnbc`) and `nuclei_folder` for any
dataset folder (`images/`, `labels/`, `index.csv`). Each builder's configs are the partial
views of DESIGN.md, e.g. `dsb2018/dh25_seed0` (dh360 group, 25 % of the nuclei kept,
seed 0), `dsb2018/dh25crop_seed0`, `kumar/keep25_seed0`, `tnbc/full`.

Format: tfds `array_record` with zlib-compressed numpy tensors (no PNG features). Writing
and reading therefore need tensorflow-datasets and array_record but **not TensorFlow**:
`builder.as_data_source()` gives random access to decoded numpy examples, which is what a
step-indexed, resumable input pipeline wants (see pa_jax/data/pipeline.py).

Examples keep index.csv order (record i of a split is row i of the folder's split, after
the group filter), and `metadata.json` beside the build records its view, group and, per
split, the dataset statistics a training run needs (nuclei counts, median nucleus size),
so `run.py train --config.data.reader=tfds` reads only the rows of its batches
(pa_jax/data/tfds_source.py).

Every example: `image` uint16 (H, W, C) with C = 1 or 3 (8-bit images are stored
losslessly as uint16 values 0..255 plus `bit_depth`), `labels` int32 (H, W) partial label
map of the view, `full_labels` int32 (H, W) the complete map (for diagnostics and
evaluation), `id`, `group`, `modality`, `bit_depth`.

Build from the command line (writes under --data_dir, default ~/tensorflow_datasets):

  python data/tfds_nuclei.py --dataset dsb2018 --config dh25_seed0 --data_dir /tmp/tfds
  python data/tfds_nuclei.py --folder my_dataset/ --config keep25_seed0 --data_dir /tmp/tfds
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

if __package__ in (None, ""):  # run as a script: make `pa_jax` importable
  sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pa_jax.data import partial_views, readers, tfds_source  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"

# 1.1.0: index.csv order kept and metadata.json (view, group, statistics) written, which
# the training reader needs; 1.0.0 builds are refused there with "rebuild it".
VERSION = tfds.core.Version("1.1.0")
RELEASE_NOTES = {"1.1.0": "index.csv order; metadata.json with view, group, statistics",
                 "1.0.0": "first release"}


class ViewConfig(tfds.core.BuilderConfig):
  """A partial view (kind, fraction, seed) restricted to an optional index.csv group."""

  def __init__(self, *, name: str, view: str = "full", fraction: float = 1.0, seed: int = 0,
               group: str = "", description: str = ""):
    super().__init__(name=name, version=VERSION, release_notes=RELEASE_NOTES,
                     description=description)
    self.view = partial_views.ViewSpec(view, fraction, seed)
    self.group = group


def standard_views(seeds=(0, 1, 2), group: str = "", prefix: str = "") -> list[ViewConfig]:
  cfgs = [ViewConfig(name=f"{prefix}full" if not prefix else f"{prefix}100", group=group,
                     description="every annotation")]
  for s in seeds:
    k = f"{prefix}25_seed{s}" if prefix else f"keep25_seed{s}"
    c = f"{prefix}25crop_seed{s}" if prefix else f"crop25_seed{s}"
    cfgs.append(ViewConfig(name=k, view="keep", fraction=0.25, seed=s, group=group,
                           description="25 % of the nuclei of each image kept"))
    cfgs.append(ViewConfig(name=c, view="crop", fraction=0.25, seed=s, group=group,
                           description="one random quarter-area crop per image"))
  return cfgs


class NucleusFolderBuilder(tfds.core.GeneratorBasedBuilder):
  """Builds any dataset folder into array_record; set `source_dir` before building."""

  VERSION = VERSION
  RELEASE_NOTES = RELEASE_NOTES
  BUILDER_CONFIGS = standard_views()
  source_dir: Path | None = None

  def __init__(self, *, source_dir: os.PathLike | str | None = None, **kwargs):
    if source_dir is not None:
      self.source_dir = Path(source_dir)
    kwargs.setdefault("file_format", "array_record")
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    # DatasetInfo is built directly (not dataset_info_from_configs) because these builders
    # live in one module rather than the tfds per-dataset package layout.
    zlib = tfds.features.Encoding.ZLIB
    view = self.builder_config.view
    return tfds.core.DatasetInfo(
        builder=self,
        description=f"Nucleus instance label maps, view {self.builder_config.name}.",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(None, None, None), dtype=np.uint16, encoding=zlib),
            "labels": tfds.features.Tensor(shape=(None, None), dtype=np.int32, encoding=zlib),
            "full_labels": tfds.features.Tensor(shape=(None, None), dtype=np.int32, encoding=zlib),
            "id": tfds.features.Text(),
            "group": tfds.features.Text(),
            "modality": tfds.features.Text(),
            "bit_depth": tfds.features.Scalar(dtype=np.int32),
        }),
        supervised_keys=None,
        # Generation order (index.csv) instead of tfds' key-hash shuffle: record i of a
        # build is example i of the folder reader, so both give the same batches.
        disable_shuffling=True,
        # Filled while writing (`_generate_examples`), saved as metadata.json.
        metadata=tfds.core.MetadataDict(
            view={"kind": view.kind, "fraction": view.fraction, "seed": view.seed},
            group=self.builder_config.group, splits={}),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # local files only: nothing is ever downloaded
    if self.source_dir is None or not Path(self.source_dir).is_dir():
      raise FileNotFoundError(f"{self.source_dir}: dataset folder not found")
    records = readers.read_dataset_folder(self.source_dir, group=self.builder_config.group or None)
    splits = sorted({r.split for r in records})
    return {s: self._generate_examples([r for r in records if r.split == s], s) for s in splits}

  def _generate_examples(self, records, split):
    # Partial views apply to the training split only; other splits keep every annotation
    # (evaluation is always against full labels).
    spec = self.builder_config.view if split == "train" else partial_views.ViewSpec()
    parts = []
    for i, rec in enumerate(records):
      ex = readers.load_example(rec)
      image, labels, full = partial_views.apply_view(ex.image, ex.labels, rec.id, spec)
      parts.append(tfds_source.example_statistics(labels, full))
      img = image if image.ndim == 3 else image[..., None]
      # Integer keys in index.csv order: with disable_shuffling tfds writes by key.
      yield i, {
          "image": img.astype(np.uint16), "labels": labels.astype(np.int32),
          "full_labels": full.astype(np.int32), "id": rec.id, "group": rec.group,
          "modality": rec.modality, "bit_depth": 8 if image.dtype == np.uint8 else 16,
      }
    # Runs once tfds has consumed every example, before it writes metadata.json.
    self.info.metadata["splits"][split] = tfds_source.split_statistics(parts)


class Dsb2018(NucleusFolderBuilder):
  """dsb2018 (BBBC038, CC0). Configs: full, dh100, dh25_seed{0,1,2}, dh25crop_seed{0,1,2}
  (the `dh*` ones are the 82-image dh360 group: the paper's DH100 / DH25 / DH25crop)."""

  BUILDER_CONFIGS = [ViewConfig(name="full", description="all 610 images")] + \
      standard_views(group="dh360", prefix="dh")
  source_dir = SHARED / "dsb2018"


class Kumar(NucleusFolderBuilder):
  """Kumar/MoNuSeg 16 H&E training tiles (CC BY-NC-SA 4.0)."""

  source_dir = SHARED / "kumar"


class Tnbc(NucleusFolderBuilder):
  """TNBC H&E crops of slides 01-08 (CC BY 4.0)."""

  source_dir = SHARED / "tnbc"


BUILDERS = {"dsb2018": Dsb2018, "kumar": Kumar, "tnbc": Tnbc, "nuclei_folder": NucleusFolderBuilder}


def build(dataset: str, config: str, data_dir: os.PathLike | str,
          source_dir: os.PathLike | str | None = None) -> tfds.core.DatasetBuilder:
  """Builds (if needed) and returns the builder of `dataset/config` under `data_dir`."""
  cls = BUILDERS[dataset]
  builder = cls(config=config, data_dir=str(data_dir), source_dir=source_dir)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      verify_ssl=False, download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS))
  return builder


def read_split(builder: tfds.core.DatasetBuilder, split: str) -> list[dict]:
  """All examples of a split as numpy dicts, through the TF-free array_record source."""
  source = builder.as_data_source()[split]
  return [tfds_source.decode_record(source[i]) for i in range(len(source))]


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  g = p.add_mutually_exclusive_group(required=True)
  g.add_argument("--dataset", choices=[k for k in BUILDERS if k != "nuclei_folder"])
  g.add_argument("--folder", help="any dataset folder (images/, labels/, index.csv)")
  p.add_argument("--config", default="full")
  p.add_argument("--data_dir", default=os.path.expanduser("~/tensorflow_datasets"))
  a = p.parse_args(argv)
  name = a.dataset or "nuclei_folder"
  b = build(name, a.config, a.data_dir, source_dir=a.folder)
  for split, info in b.info.splits.items():
    print(f"{name}/{a.config} {split}: {info.num_examples} examples")
  print(f"written to {b.data_dir}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
