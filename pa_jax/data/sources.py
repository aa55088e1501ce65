"""Training and evaluation data from a config: which images (`data.source`, its splits
and the seeded validation carve), the partial view, the augmentation and the batch source.

`pa_jax.experiment` re-exports these names; everything here needs only `cfg.data`,
`cfg.train.batch_size` and `cfg.seed`, never a model.
"""

from __future__ import annotations

import os
from pathlib import Path

from pa_jax.data import partial_views, pipeline, readers, tfds_source
from pa_jax.errors import InputError


def view_spec(cfg) -> partial_views.ViewSpec:
  return partial_views.ViewSpec(cfg.data.view, cfg.data.view_fraction, cfg.data.view_seed)


def source_paths(source: str) -> list[str]:
  """The entries of a `data.source` value: one path, or several separated by commas."""
  return [p.strip() for p in str(source or "").split(",") if p.strip()]


def source_records(cfg, split: str) -> list[readers.Record]:
  """Records of a split of `config.data.source` (every comma-separated entry; group filter
  applied; the seeded 'val' split carved from the train split where `data.val_fraction` asks)."""
  from pa_jax.data import splits

  d = cfg.data
  out: list[readers.Record] = []
  for path in source_paths(d.source):
    records = readers.open_dataset(path, split=None, group=d.group or None,
                                   require_labels=True)
    carve = not d.val_sources or os.path.basename(os.path.normpath(path)) in d.val_sources
    if d.val_fraction and carve:
      records = splits.carve_validation(records, float(d.val_fraction), int(d.val_seed),
                                        split=d.train_split)
    # A source without splits (plain image folder, COCO JSON without 'split' keys: every
    # record 'train') serves any split, as a single source always did.
    has_splits = (Path(path) / "index.csv").is_file() or any(r.split != "train" for r in records)
    out += [r for r in records if not split or not has_splits or r.split == split]
  if split and not out:  # as read_dataset_folder said for one source, not nan metrics later
    raise InputError(d.source, f"no images in split {split!r}")
  ids = [r.id for r in out]
  if len(set(ids)) != len(ids):
    dup = sorted({i for i in ids if ids.count(i) > 1})[:3]
    raise InputError(d.source, f"image ids {dup} occur in more than one source")
  return out


def repeat_by_source(cfg, examples: list[pipeline.TrainExample],
                     records: list[readers.Record]) -> list[pipeline.TrainExample]:
  """`examples` (one per record, same order) with each source's entries repeated
  `data.source_repeats[i]` times: small sets sampled more often without copying arrays."""
  repeats = tuple(int(r) for r in cfg.data.source_repeats)
  if not repeats:
    return examples
  paths = [Path(p).resolve() for p in source_paths(cfg.data.source)]
  if len(repeats) != len(paths) or min(repeats) < 1:
    raise InputError("data.source_repeats", f"{repeats} needs one count >= 1 per "
                     f"data.source entry ({len(paths)})")
  out = []
  for ex, rec in zip(examples, records, strict=True):
    # The image, or the annotation file: a COCO source is its JSON, the images are beside it.
    files = [Path(f).resolve() for f in (rec.image_path, rec.label_path) if f is not None]
    i = next((k for k, p in enumerate(paths) if any(f.is_relative_to(p) for f in files)), 0)
    out += [ex] * repeats[i]
  return out


def augmentation(cfg) -> pipeline.Augmentation:
  d = cfg.data
  return pipeline.Augmentation(
      flip_h=bool(d.flip_horizontal), flip_v=bool(d.flip_vertical), rotate90=bool(d.rotate90),
      scale_jitter=tuple(float(x) for x in d.scale_jitter),
      intensity=float(d.intensity_jitter), stain=float(d.stain_jitter))


def training_examples(cfg, progress: bool = True) -> list[pipeline.TrainExample]:
  """Decoded training images of this host with the partial view applied."""
  return _load_training_split(cfg, progress)[0]


def integer_transfer(cfg) -> bool:
  """Whether training images stay uint8/uint16 up to the device (`ops.intensity`): always,
  except with photometric jitter (`data.intensity_jitter`, `data.stain_jitter`), which runs
  on float pixels on the host."""
  aug = augmentation(cfg)
  return aug.intensity <= 0 and aug.stain <= 0


def _load_training_split(cfg, progress: bool, keep_integers: bool = False):
  """(examples, their records) of the folder reader's training split."""
  records = source_records(cfg, cfg.data.train_split)
  examples = pipeline.load_training_examples(records, view_spec(cfg), cfg.data.normalize,
                                             progress=progress,
                                             target_diameter=float(cfg.data.diameter),
                                             keep_integers=keep_integers)
  return examples, records


def dataset_statistics(examples: list[pipeline.TrainExample]) -> dict:
  """Counts and the median nucleus box (w, h) of the *annotated* training nuclei."""
  from pa_jax.partial.targets import median_nucleus_size

  annotated = sum(readers.count_instances(ex.labels) for ex in examples)
  if not annotated:
    raise InputError("training data", "no annotated nucleus in the training images")
  n_full = sum(readers.count_instances(ex.full_labels) for ex in examples
               if ex.full_labels is not None)
  width, height = median_nucleus_size([ex.labels for ex in examples],
                                      [ex.zoom for ex in examples])
  return {"images": len(examples), "annotated_nuclei": annotated, "full_nuclei": n_full,
          "median_width": width, "median_height": height}


def batch_source(cfg, examples, process_index: int = 0, process_count: int = 1):
  return pipeline.BatchSource(
      examples, global_batch=cfg.train.batch_size, canvas=cfg.data.canvas_size,
      max_instances=cfg.data.max_instances, seed=cfg.seed, flip_h=cfg.data.flip_horizontal,
      flip_v=cfg.data.flip_vertical, process_index=process_index, process_count=process_count,
      prefetch=int(cfg.data.prefetch), workers=int(cfg.data.workers),
      augmentation=augmentation(cfg))


def training_data(cfg, process_index: int = 0, process_count: int = 1,
                  progress: bool = True) -> tuple[pipeline.BatchSource, dict]:
  """(this process's batch source, dataset statistics) from `config.data.reader`.

  'folder' decodes the whole training split into memory; 'tfds' opens an array_record
  build and reads only this process's rows of each batch (same batches for the same seed).
  """
  reader = cfg.data.reader
  if reader == "folder":
    examples, records = _load_training_split(cfg, progress, integer_transfer(cfg))
    stats = dataset_statistics(examples)
    examples = repeat_by_source(cfg, examples, records)
  elif reader == "tfds":
    repeats = any(int(r) != 1 for r in cfg.data.source_repeats)
    if (float(cfg.data.diameter) or float(cfg.data.val_fraction) or repeats
        or len(source_paths(cfg.data.source)) > 1):
      raise InputError("data.reader", "'tfds' builds hold one source at native scale: "
                       "data.diameter, data.val_fraction, data.source_repeats and several "
                       "data.source entries need data.reader='folder'")
    examples, stats = tfds_source.open_training_split(cfg, integer_transfer(cfg))
  else:
    raise InputError("data.reader", f"{reader!r} is not 'folder' or 'tfds'")
  return batch_source(cfg, examples, process_index, process_count), stats
