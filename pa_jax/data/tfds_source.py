"""Training examples read at random from a tfds array_record build (data/tfds_nuclei.py).

The folder reader (`pipeline.load_training_examples`) decodes a whole split into the
memory of every host. For pods this module reads a build instead: `BuildExamples` is a
lazy `Sequence[TrainExample]` over tfds' TF-free data source, so `pipeline.BatchSource`
(unchanged arithmetic: `global_indices`, `host_slice`, `canvas_example`) fetches only the
rows of each global batch that its process builds, and decodes them in its worker threads.

Why batches equal the folder reader's for the same seed:
* **Same order.** Builds keep index.csv order (`disable_shuffling`, key = position), so
  record i of a split is row i of `readers.open_dataset(folder, split, group)`.
* **Same view.** The build stored the partial labels of its config's view, made by the
  same `partial_views.apply_view` with the same seed; `check_view` refuses a config whose
  view or group differs from the build's.
* **Same decoding.** `decode_record` undoes the storage format (uint16 with a channel
  axis) so that `normalize_image` sees the dtype and shape the folder reader gives.
* **Same statistics.** The centerness anchor needs the median nucleus size of the whole
  split; the build computed it while writing (`split_statistics`, stored in
  metadata.json), so no host reads the whole split to start.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from pa_jax.data import partial_views, pipeline, readers
from pa_jax.errors import InputError

METADATA = "metadata.json"  # what tfds' MetadataDict writes beside dataset_info.json


# ---------------------------------------------------------------------- one record


def decode_record(ex: Mapping[str, Any]) -> dict:
  """A stored example → numpy arrays as the folder reader gives them.

  In: `image` uint16 (H, W, C), `labels`/`full_labels` int32 (H, W), `bit_depth`, text
  fields as bytes or str. Out: `image` uint8 when bit_depth is 8 else uint16, (H, W) for
  one channel else (H, W, C); text fields as str; other fields unchanged.
  """
  out = dict(ex)
  for k in ("id", "group", "modality"):
    if isinstance(out.get(k), bytes):
      out[k] = out[k].decode()
  img = np.asarray(out["image"])
  img = img[..., 0] if img.shape[-1] == 1 else img
  out["image"] = img.astype(np.uint8) if int(out["bit_depth"]) == 8 else img
  return out


@dataclasses.dataclass(frozen=True)
class BuildExamples(Sequence):
  """A split of a build as a lazy `Sequence[TrainExample]`: item i is read and decoded
  when asked for, so a process touches only the rows it builds.

  records: random access to stored examples (`len`, `[i]` → dict), e.g. a tfds data
    source; where: names the build and split in errors; normalize: `normalize_image` mode.
  """

  records: Sequence[Mapping[str, Any]]
  where: str
  normalize: str = "percentile"
  keep_integers: bool = False  # as `pipeline.load_training_examples`

  def __len__(self) -> int:
    return len(self.records)

  def __getitem__(self, i) -> pipeline.TrainExample:
    i = int(i)  # global_indices gives numpy integers
    try:
      ex = decode_record(self.records[i])
      image, rng = pipeline.training_pixels(ex["image"], self.normalize, self.keep_integers)
    except Exception as e:  # noqa: BLE001 - any failure of one record becomes one line
      raise InputError(f"{self.where} record {i}", f"cannot be read ({type(e).__name__}: "
                       f"{e}); rebuild it with data/tfds_nuclei.py") from e
    return pipeline.TrainExample(ex["id"], image, np.asarray(ex["labels"], np.int32),
                                 np.asarray(ex["full_labels"], np.int32),
                                 intensity=rng)


# ------------------------------------------------------------------- split statistics


def example_statistics(labels: np.ndarray, full_labels: np.ndarray) -> dict:
  """What one example adds to its split's statistics: instance counts of the partial and
  full maps and the box widths/heights (float32 [N]) of the partial map's instances."""
  _, boxes = pipeline.instance_boxes(labels)
  return {"annotated": readers.count_instances(labels),
          "full": readers.count_instances(full_labels),
          "widths": boxes[:, 2] - boxes[:, 0], "heights": boxes[:, 3] - boxes[:, 1]}


def split_statistics(parts: Iterable[dict]) -> dict:
  """`experiment.dataset_statistics` of a split from its `example_statistics` (JSON-able):
  images, annotated_nuclei, full_nuclei, median_width/height (None without a nucleus)."""
  parts = list(parts)
  widths = np.concatenate([p["widths"] for p in parts] or [np.zeros(0)])
  heights = np.concatenate([p["heights"] for p in parts] or [np.zeros(0)])
  return {"images": len(parts), "annotated_nuclei": int(sum(p["annotated"] for p in parts)),
          "full_nuclei": int(sum(p["full"] for p in parts)),
          "median_width": float(np.median(widths)) if widths.size else None,
          "median_height": float(np.median(heights)) if heights.size else None}


# ------------------------------------------------------------------------ the build


def build_dir(tfds_dir: str, name: str) -> Path:
  """Folder of build `name` ('dataset/config' or 'dataset/config/version'; the newest
  version when none is given) under the tfds data dir `tfds_dir`."""
  root = Path(tfds_dir).expanduser() / name
  if (root / "dataset_info.json").is_file():
    return root
  versions = [p for p in root.glob("*") if (p / "dataset_info.json").is_file()]
  if not versions:
    raise InputError(root, "no tfds build here (data.tfds_dir / data.tfds_name): build it "
                     "first with data/tfds_nuclei.py")
  return max(versions, key=lambda p: tuple(int(x) if x.isdigit() else -1
                                           for x in p.name.split(".")))


def read_metadata(path: Path) -> dict:
  """The build's view, group and split statistics (written by data/tfds_nuclei.py)."""
  meta = {}
  if (path / METADATA).is_file():
    meta = json.loads((path / METADATA).read_text())
  if not {"view", "group", "splits"} <= set(meta):
    raise InputError(path, "build has no view/order/statistics metadata (made by an older "
                     "data/tfds_nuclei.py): rebuild it")
  return meta


def check_view(meta: dict, spec: partial_views.ViewSpec, group: str, where: str) -> None:
  """Refuses a config whose partial view or group is not the build's: the run would
  record one view and train on another."""
  v = meta["view"]
  built = partial_views.ViewSpec(v["kind"], float(v["fraction"]), int(v["seed"]))
  # A full view ignores fraction and seed: any full config matches a full build.
  if built != spec and not built.kind == spec.kind == "full":
    raise InputError("data.view", f"the build {where} holds view {built.name} (kind "
                     f"{built.kind}, fraction {built.fraction}, seed {built.seed}) but the "
                     f"config asks for {spec.name} (kind {spec.kind}, fraction "
                     f"{spec.fraction}, seed {spec.seed})")
  if str(meta["group"] or "") != str(group or ""):
    raise InputError("data.group", f"the build {where} holds group {meta['group']!r} but "
                     f"the config asks for {group!r}")


def open_split(tfds_dir: str, name: str, split: str, normalize: str = "percentile",
               keep_integers: bool = False) -> tuple[BuildExamples, dict]:
  """(lazy examples, metadata) of one split of a build; nothing is decoded yet."""
  import tensorflow_datasets as tfds  # heavy import: only runs that read a build pay it

  path = build_dir(tfds_dir, name)
  meta = read_metadata(path)
  if split not in meta["splits"]:
    raise InputError("data.train_split", f"{split!r} is not a split of the build {path} "
                     f"({', '.join(sorted(meta['splits']))})")
  source = tfds.builder_from_directory(str(path)).as_data_source()[split]
  return BuildExamples(source, f"{path}[{split}]", normalize, keep_integers), meta


def open_training_split(cfg, keep_integers: bool = False) -> tuple[BuildExamples, dict]:
  """(lazy training examples, dataset statistics) of `config.data`'s build, checked
  against the config's partial view and group. `keep_integers`: as
  `pipeline.load_training_examples`."""
  d = cfg.data
  if not d.tfds_dir or not d.tfds_name:
    raise InputError("data.tfds_name", "data.reader='tfds' needs data.tfds_dir and "
                     "data.tfds_name (e.g. 'dsb2018/dh25_seed0')")
  examples, meta = open_split(d.tfds_dir, d.tfds_name, d.train_split, d.normalize,
                              keep_integers)
  check_view(meta, partial_views.ViewSpec(d.view, d.view_fraction, d.view_seed), d.group,
             examples.where)
  stats = dict(meta["splits"][d.train_split])
  if not stats["annotated_nuclei"]:
    raise InputError(examples.where, "no annotated nucleus in the training images")
  return examples, stats
