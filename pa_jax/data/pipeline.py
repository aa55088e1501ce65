"""Training input pipeline: examples → static-shape, augmented, per-host batches.

Why it looks like this:
* **Static shapes.** XLA compiles one program per input shape. Every batch therefore has
  the same canvas (`canvas_size`, a multiple of 32 so the five FPN strides divide it) and
  the same number of instance slots (`max_instances`, padded with `valid=False`). Larger
  images are randomly cropped to the canvas, smaller ones zero-padded.
* **Label maps, not masks.** A batch carries one int32 label map per image (relabelled so
  value k is slot k-1) instead of M full-size binary masks: 512 nuclei on a 384² canvas
  would be 75 MB of masks per image. Mask targets are cut from the label map on device.
* **The data order is a pure function of the step.** `global_indices(step)` draws the
  examples of a step from per-epoch permutations seeded by `(seed, epoch)`, and the
  augmentation of a slot is seeded by `(seed, step, slot)`. A run resumed at step s
  therefore sees exactly the batches an uninterrupted run would have seen, with no
  iterator state to checkpoint.
* **Per-host sharding.** With P processes, process p builds only the rows
  `[p·B/P, (p+1)·B/P)` of each global batch (B = global batch size); together the hosts
  cover the global batch once. Each host reads only what it needs: with `examples` a lazy
  sequence over a tfds build (pa_jax/data/tfds_source.py) that is all it ever reads.
* **Worker threads.** `workers > 0` builds the rows of a batch (read, decode, crop, flip)
  in a thread pool; rows keep their slots, so the batch is the same with any count.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
from typing import Iterator, Sequence

import numpy as np
from scipy import ndimage

from pa_jax.data import augment, diameter, partial_views, readers
# Re-exported: the pipeline's callers have always found the host normalisation here.
from pa_jax.data.intensity import device_image, normalize_image, stretch  # noqa: F401
from pa_jax.errors import InputError
from pa_jax.structures import Batch


# ------------------------------------------------------------------ instance geometry


def instance_boxes(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Boxes of every instance of a label map.

  Returns (ids int32 [N] sorted, boxes float32 [N, 4] as (x0, y0, x1, y1) pixel edges).
  """
  ids = np.unique(labels)
  ids = ids[ids != 0].astype(np.int32)
  if ids.size == 0:
    return ids, np.zeros((0, 4), np.float32)
  seq = np.searchsorted(ids, labels) + 1
  seq[labels == 0] = 0
  slices = ndimage.find_objects(seq, max_label=len(ids))
  boxes = np.array([[s[1].start, s[0].start, s[1].stop, s[0].stop] for s in slices],
                   np.float32)
  return ids, boxes


@dataclasses.dataclass
class TrainExample:
  """A decoded training image (host memory), after its partial view.

  image: float32 (H, W, 3) in [0, 1]; labels: int32 (H, W) annotated (partial) map;
  full_labels: int32 (H, W) full map when known, else None;
  negatives: int32 (H, W) regions a person marked "not a nucleus" (rejected proposals of
  the annotation loop: hard negatives), else None;
  zoom: the size normalisation of this image (`data.diameter` / its median nucleus
  diameter; 1.0 = native scale), applied when crops are cut.
  intensity: None, or float32 [2, 3] when `image` holds pixels the device stretches
  (`device_image`: the raw uint8/uint16 pixels, or float32 [0, 1] with the identity
  range): the values that map to 0 and 1 (`ops.intensity`).
  """

  id: str
  image: np.ndarray
  labels: np.ndarray
  full_labels: np.ndarray | None
  negatives: np.ndarray | None = None
  zoom: float = 1.0
  intensity: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class Augmentation:
  """Random transforms of a training crop (config `data.*`); the default is the paper's:
  flips only. `scale_jitter` (low, high): zoom drawn log-uniformly on top of the
  example's own `zoom`; `intensity` / `stain`: strengths of `augment.jitter_intensity` /
  `augment.jitter_stain` (0 = off)."""

  flip_h: bool = True
  flip_v: bool = True
  rotate90: bool = False
  scale_jitter: tuple[float, float] = (1.0, 1.0)
  intensity: float = 0.0
  stain: float = 0.0


def training_pixels(image: np.ndarray, normalize: str, keep_integers: bool
                    ) -> tuple[np.ndarray, np.ndarray | None]:
  """(pixels, intensity) of a `TrainExample`: with `keep_integers`, `device_image` (uint8 /
  uint16 stay integers beside their range; other dtypes are normalised and carry the
  identity range); else host-normalised float32 [0, 1] and None."""
  if keep_integers:
    return device_image(image, normalize)
  return normalize_image(image, normalize), None


def load_training_examples(records: Sequence[readers.Record], view: partial_views.ViewSpec,
                           normalize: str = "percentile", progress: bool = False,
                           target_diameter: float = 0.0,
                           keep_integers: bool = False) -> list[TrainExample]:
  """Reads records, applies the partial view, normalises intensities.

  `keep_integers`: 8/16-bit images stay integers with their `intensity` range, normalised
  on the device (`training_pixels`: other dtypes are normalised here and carry the
  identity range, so every example has one and batches stack); needs a training crop
  without photometric jitter, which runs on float pixels on the host.

  `target_diameter` > 0: each example's `zoom` brings the median (equivalent-circle)
  diameter of its annotated nuclei to this many pixels; an image without annotated nuclei
  takes the median of the others' diameters.
  """
  out = []
  it = records
  if progress:
    from tqdm import tqdm

    it = tqdm(records, desc="loading", unit="img", leave=False)
  for rec in it:
    ex = readers.load_example(rec)
    if ex.labels is None:
      raise InputError(rec.image_path, "training image has no label map (an image without "
                       "nuclei needs an all-zero label map)")
    image, labels, full = partial_views.apply_view(ex.image, ex.labels, rec.id, view)
    pixels, rng = training_pixels(image, normalize, keep_integers)
    out.append(TrainExample(rec.id, pixels, labels, full, intensity=rng))
  if target_diameter > 0:
    measured = [diameter.median_diameter(ex.labels) for ex in out]
    known = [d for d in measured if d is not None]
    fallback = float(np.median(known)) if known else None
    for ex, d in zip(out, measured):
      ex.zoom = diameter.zoom_factor(d if d is not None else fallback, target_diameter)
  return out


def _crop_window(h: int, w: int, size: tuple[int, int], rng: np.random.Generator):
  """A random (y0, x0) for a `size` window inside an h x w image (0 where it does not fit)."""
  y0 = int(rng.integers(0, h - size[0] + 1)) if h > size[0] else 0
  x0 = int(rng.integers(0, w - size[1] + 1)) if w > size[1] else 0
  return y0, x0


# --------------------------------------------------------------------- one example


def canvas_example(ex: TrainExample, canvas: int, max_instances: int,
                   rng: np.random.Generator, flip_h: bool, flip_v: bool,
                   aug: Augmentation | None = None) -> dict:
  """One example on a `canvas x canvas` canvas: random zoom/crop/pad + flips (+ the
  rotations and intensity/stain jitter of `aug`, which overrides flip_h/flip_v) + padded
  instances.

  Returns numpy arrays: image [C, C, 3] f32 (or the example's uint8/uint16 with
  intensity [2, 3] f32 beside it, when the example holds integers), labels [C, C] i32 (slot k-1 ↔ value k),
  boxes [M, 4] f32, valid [M] bool, negative_boxes [M, 4] f32 + negative_valid [M] bool
  (rejected regions), image_size [2] i32, unannotated_boxes [M, 4] f32 and
  unannotated_valid [M] bool (full-label nuclei absent from the partial labels, at most M
  kept: diagnostics only), has_full.
  """
  aug = aug or Augmentation(flip_h=flip_h, flip_v=flip_v)
  h, w = ex.labels.shape
  zoom = ex.zoom * augment.log_uniform(rng, *aug.scale_jitter)
  # The window of the source that fills the canvas at this zoom (no draw when zoom is 1:
  # the paper configs keep exactly their earlier batches).
  win = (canvas, canvas) if zoom == 1.0 else (int(np.ceil(canvas / zoom)),) * 2
  y0, x0 = _crop_window(h, w, win, rng)
  ch, cw = min(h, win[0]), min(w, win[1])
  image = ex.image[y0:y0 + ch, x0:x0 + cw]
  labels = ex.labels[y0:y0 + ch, x0:x0 + cw]
  full = ex.full_labels[y0:y0 + ch, x0:x0 + cw] if ex.full_labels is not None else None
  neg = ex.negatives[y0:y0 + ch, x0:x0 + cw] if ex.negatives is not None else None
  if zoom != 1.0:
    image = (diameter.zoom_image(image, zoom) if ex.intensity is None
             else diameter.zoom_pixels(image, zoom, ex.intensity))
    # Labels to the whole zoomed size, then the same crop: ceil(canvas / zoom) * zoom can
    # exceed the canvas, and resizing to the cropped size would stretch them off the image.
    shape = image.shape[:2]
    image = image[:canvas, :canvas]
    labels = diameter.resize_labels(labels, shape)[:canvas, :canvas]
    full = diameter.resize_labels(full, shape)[:canvas, :canvas] if full is not None else None
    neg = diameter.resize_labels(neg, shape)[:canvas, :canvas] if neg is not None else None
  if aug.flip_h and rng.random() < 0.5:
    image, labels = image[:, ::-1], labels[:, ::-1]
    full = full[:, ::-1] if full is not None else None
    neg = neg[:, ::-1] if neg is not None else None
  if aug.flip_v and rng.random() < 0.5:
    image, labels = image[::-1], labels[::-1]
    full = full[::-1] if full is not None else None
    neg = neg[::-1] if neg is not None else None
  if aug.rotate90:
    k = int(rng.integers(4))
    image, labels = np.rot90(image, k), np.rot90(labels, k)
    full = np.rot90(full, k) if full is not None else None
    neg = np.rot90(neg, k) if neg is not None else None
  intensity = ex.intensity
  if intensity is not None and (aug.intensity > 0 or aug.stain > 0):
    # Photometric jitter runs on float pixels here: this crop is normalised on the host.
    image, intensity = stretch(image, intensity), None
  if aug.intensity > 0 or aug.stain > 0:
    image = augment.jitter_stain(np.ascontiguousarray(image), rng, aug.stain)
    image = augment.jitter_intensity(image, rng, aug.intensity)
  ch, cw = labels.shape

  ids, boxes = instance_boxes(labels)
  if len(ids) > max_instances:
    raise InputError(ex.id, f"{len(ids)} annotated nuclei in a {canvas}px crop exceed "
                     f"data.max_instances={max_instances}; raise it")
  seq = np.zeros_like(labels, dtype=np.int32)
  if len(ids):
    seq = (np.searchsorted(ids, labels) + 1).astype(np.int32)
    seq[labels == 0] = 0

  out_img = np.zeros((canvas, canvas, 3), image.dtype if intensity is not None else np.float32)
  out_img[:ch, :cw] = image
  out_lab = np.zeros((canvas, canvas), np.int32)
  out_lab[:ch, :cw] = seq
  un_boxes = np.zeros((max_instances, 4), np.float32)
  un_valid = np.zeros((max_instances,), bool)
  if full is not None:
    full_ids, full_boxes = instance_boxes(full)
    missing = ~np.isin(full_ids, ids)  # same label values: views never renumber nuclei
    extra = full_boxes[missing][:max_instances]
    un_boxes[:len(extra)] = extra
    un_valid[:len(extra)] = True
  out_boxes = np.zeros((max_instances, 4), np.float32)
  out_boxes[:len(ids)] = boxes
  valid = np.zeros((max_instances,), bool)
  valid[:len(ids)] = True
  neg_boxes = np.zeros((max_instances, 4), np.float32)
  neg_valid = np.zeros((max_instances,), bool)
  if neg is not None:
    _, nb = instance_boxes(neg)
    nb = nb[:max_instances]
    neg_boxes[:len(nb)] = nb
    neg_valid[:len(nb)] = True
  return dict(image=out_img, labels=out_lab, boxes=out_boxes, valid=valid,
              negative_boxes=neg_boxes, negative_valid=neg_valid,
              image_size=np.array([ch, cw], np.int32), unannotated_boxes=un_boxes,
              unannotated_valid=un_valid, has_full=np.bool_(full is not None),
              **({} if intensity is None else {"intensity": intensity}))


def stack_batch(items: Sequence[dict]) -> Batch:
  return Batch(**{k: np.stack([it[k] for it in items]) for k in items[0]})


# ------------------------------------------------------------------------- ordering


def global_indices(step: int, global_batch: int, num_examples: int, seed: int) -> np.ndarray:
  """Example indices of the global batch of `step` (a pure function: resumable).

  Epoch e is a permutation seeded by (seed, e); batches walk through consecutive epochs
  without dropping or repeating examples inside an epoch.
  """
  if num_examples <= 0:
    raise ValueError("no training examples")
  start = step * global_batch
  pos = np.arange(start, start + global_batch)
  epochs, offsets = np.divmod(pos, num_examples)
  out = np.empty(global_batch, np.int64)
  for e in np.unique(epochs):
    perm = np.random.default_rng([seed, int(e)]).permutation(num_examples)
    sel = epochs == e
    out[sel] = perm[offsets[sel]]
  return out


def host_slice(global_batch: int, process_index: int, process_count: int) -> slice:
  """Rows of the global batch that `process_index` builds."""
  if global_batch % process_count:
    raise ValueError(f"train.batch_size={global_batch} must divide by the number of "
                     f"processes ({process_count})")
  per = global_batch // process_count
  return slice(process_index * per, (process_index + 1) * per)


@dataclasses.dataclass
class BatchSource:
  """Deterministic, resumable batches of training examples for one host.

  `batch(step)` returns this host's share of the global batch of `step`; iterate with
  `iterate(start_step)`.
  """

  examples: Sequence[TrainExample]
  global_batch: int
  canvas: int
  max_instances: int
  seed: int = 0
  flip_h: bool = True
  flip_v: bool = True
  process_index: int = 0
  process_count: int = 1
  prefetch: int = 2  # batches `iterate` prepares ahead on a host thread (config data.prefetch)
  workers: int = 0  # threads building the rows of a batch (config data.workers); 0 = in line
  augmentation: Augmentation | None = None  # overrides flip_h / flip_v when given

  def __post_init__(self):
    if self.canvas % 32:
      raise InputError("data.canvas_size", f"{self.canvas} is not a multiple of 32")
    self._rows = host_slice(self.global_batch, self.process_index, self.process_count)
    # Idle pool threads cost nothing; they end with the process.
    self._pool = (concurrent.futures.ThreadPoolExecutor(self.workers, "pa_jax-rows")
                  if self.workers > 0 else None)

  def _row(self, step: int, idx: np.ndarray, slot: int) -> dict:
    # Seeded by (step, slot) alone: the same row whichever thread builds it, and when.
    rng = np.random.default_rng([self.seed, 1, step, slot])
    return canvas_example(self.examples[idx[slot]], self.canvas, self.max_instances, rng,
                          self.flip_h, self.flip_v, self.augmentation)

  def batch(self, step: int) -> Batch:
    idx = global_indices(step, self.global_batch, len(self.examples), self.seed)
    slots = range(self._rows.start, self._rows.stop)
    row = functools.partial(self._row, step, idx)
    # map keeps slot order and re-raises a row's exception (e.g. an unreadable record) here.
    items = list(self._pool.map(row, slots)) if self._pool else [row(s) for s in slots]
    return stack_batch(items)

  def iterate(self, start_step: int = 0, prefetch: int | None = None) -> Iterator[Batch]:
    """Batches from `start_step` on, prepared `prefetch` (default: the source's) ahead on
    background threads, in step order; 0 = on demand."""
    prefetch = self.prefetch if prefetch is None else prefetch
    if prefetch <= 0:
      step = start_step
      while True:
        yield self.batch(step)
        step += 1
    # With row workers the prefetched batches are built at once (their threads only wait on
    # the row pool, which bounds the CPU used): a small per-host batch still fills the pool.
    threads = prefetch if self._pool else 1
    with concurrent.futures.ThreadPoolExecutor(max_workers=threads) as pool:
      futures = [pool.submit(self.batch, start_step + i) for i in range(prefetch)]
      step = start_step + prefetch
      while True:
        fut = futures.pop(0)
        futures.append(pool.submit(self.batch, step))
        step += 1
        yield fut.result()


def shard_batch(batch: Batch, mesh) -> Batch:
  """Places this host's rows of a batch on the mesh as global arrays sharded over 'data'.

  Each process passes its own rows; `jax.make_array_from_process_local_data` assembles
  them into arrays of the global batch, split along axis 0 over the ('data',) mesh axis.
  """
  import jax
  from jax.sharding import NamedSharding, PartitionSpec

  sharding = NamedSharding(mesh, PartitionSpec("data"))
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)
