"""From images to instance label maps with a trained detector.

`Predictor(model, variables)` pads each image to a canvas (`canvas_octaves=0`: each side
rounded up to a multiple of 32, one compile per distinct size; `canvas_octaves > 0`, the
configs' default since `model.mask_padding` made the output canvas-independent: one of the
half-octave buckets below `tile_size`, `bucket_sides`, a bounded number of programs, 5 for
square images; larger images are tiled), sends the image's own uint8 / uint16 pixels with
its intensity range, runs the jitted stretch to [0, 1] + `MaskRCNN.predict` (one compile
per model, canvas shape and pixel dtype, shared by every Predictor of the process),
renders the detections into one label map on device
(`ops.masks.masks_to_label_map`: overlaps go to the higher score, and with `mask_overlap` < 1
a detection mostly covered by higher-scoring ones is dropped; no [K, H, W] mask stack),
crops back to the image and applies the paper's post-process on the host: every nucleus
dilated once with a 3x3 square.

A model trained with `data.diameter` (nuclei zoomed to one size, `data.diameter` module)
sees each image zoomed the same way: by the diameter the user gives (`predict.diameter`) or
by one estimated from a first pass of the model itself; the label map is brought back to
the image's own size.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from pa_jax.data import diameter as diam
from pa_jax.data.intensity import IDENTITY_RANGE, device_image
from pa_jax.data.readers import relabel_sequential
from pa_jax.models.padding import CANVAS_MULTIPLE
from pa_jax.ops import masks as mask_ops
from pa_jax.ops.intensity import scale_intensities


def dilate_labels(labels: np.ndarray) -> np.ndarray:
  """Grows every nucleus by one pixel (3x3 square) into the background only.

  Where two nuclei grow into the same background pixel the larger label value wins, as
  a grey dilation would; existing nucleus pixels never change hands.
  """
  if not labels.any():
    return labels
  grown = ndimage.grey_dilation(labels, size=(3, 3))
  return np.where(labels == 0, grown, labels).astype(labels.dtype)


class ZoomEstimate(NamedTuple):
  """What `Predictor.estimate_zoom` found on a first pass of the model.

  zoom: the zoom that brings the estimated `diameter` to the model's (1.0 when too few
    nuclei were found at every trial zoom).
  diameter: the median nucleus diameter in the input's pixels, or None (too few nuclei).
  result: a trial pass that can stand as the prediction: (label map int32 [H, W],
    {label: score}) made at `result_zoom`, which is within 10 % of `zoom`; else None.
  result_zoom: the trial zoom (one of `Predictor.TRIAL_ZOOMS`) `result` ran at, or None.
  """
  zoom: float
  diameter: float | None
  result: tuple | None
  result_zoom: float | None


def predictor_for(cfg, model, variables) -> "Predictor":
  """The Predictor a run's config asks for (older configs lack predict.score_threshold)."""
  p = cfg.predict
  return Predictor(model, variables, cfg.data.normalize, cfg.model.roi.mask_threshold,
                   cfg.eval.dilate, p.get("score_threshold", 0.5), p.tile_size,
                   p.tile_overlap, p.batch_size, canvas_octaves=p.get("canvas_octaves", 0),
                   target_diameter=float(cfg.data.get("diameter", 0.0)),
                   diameter=float(p.get("diameter", 0.0)),
                   mask_overlap=float(p.get("mask_overlap", 1.0)))


def canvas_for(height: int, width: int, multiple: int = CANVAS_MULTIPLE) -> tuple[int, int]:
  """The smallest canvas (multiple of `multiple`) holding an image."""
  return (-(-height // multiple) * multiple, -(-width // multiple) * multiple)


def bucket_sides(tile_size: int, octaves: int = 2) -> tuple[int, ...]:
  """Canvas side lengths, ascending: `tile_size * 2 ** (-j / 2)` for j = 0 .. 2 * octaves,
  each rounded up to a multiple of 32. 512, 2 -> (128, 192, 256, 384, 512).

  Half-octave steps keep the padding of a side under ~1.5x (a 360² image runs on a 384²
  canvas, as without buckets); whole octaves (tile, half, quarter) would pad it to 512².
  """
  sides = {math.ceil(tile_size * 2.0 ** (-j / 2) / 32) * 32 for j in range(2 * octaves + 1)}
  return tuple(sorted(sides))


def bucket_canvas(height: int, width: int, sides: tuple[int, ...]) -> tuple[int, int]:
  """The canvas of an image: each side rounded up to the next bucket side (to a multiple of
  32 beyond the largest bucket, which only untiled callers reach)."""
  def up(n):
    return next((s for s in sides if s >= n), canvas_for(n, n)[0])
  return up(height), up(width)


def pad_batch(images: list[np.ndarray], batch: int, canvas: tuple[int, int],
              intensity: np.ndarray | None = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Images of one shape on one canvas, as `_jitted_predict`'s program takes them.

  Args:
    images: n pixel arrays [h, w, 3] of one shape: uint8 / uint16 with `intensity` their
      range (`data.intensity.device_image`), or float32 in [0, 1] with `intensity` None.
    batch: slots of the batch; max(batch, n) are filled, the extra ones with zeros.
    canvas: (Hc, Wc) >= (h, w).
    intensity: float32 [2, 3] shared by the images (one image's tiles, a slide's tiles).
      Integer images without it, or images of different dtypes, raise ValueError.

  Returns:
    pixels [B, Hc, Wc, 3] in the images' dtype, zero beyond each image; image_size int32
    [B, 2], (h, w) in every slot; intensity float32 [B, 2, 3] (`IDENTITY_RANGE` for None).
  """
  dtypes = {np.asarray(im).dtype for im in images}
  if len(dtypes) > 1:  # np.zeros in the first one's dtype would cast the others silently
    raise ValueError(f"images of one batch must share a dtype, got {sorted(map(str, dtypes))}")
  dtype = dtypes.pop()
  if intensity is None and np.issubdtype(dtype, np.integer):
    raise ValueError(f"{dtype} pixels need their intensity range (data.intensity."
                     "device_image); without it they would be clipped to [0, 1]")
  h, w = images[0].shape[:2]
  rows = max(batch, len(images))
  pixels = np.zeros((rows,) + tuple(canvas) + (3,), dtype)
  for i, img in enumerate(images):
    pixels[i, :h, :w] = img
  sizes = np.tile(np.array([[h, w]], np.int32), (rows, 1))
  rng = IDENTITY_RANGE if intensity is None else np.asarray(intensity, np.float32)
  return pixels, sizes, np.tile(rng[None], (rows, 1, 1))


@functools.lru_cache(maxsize=32)
def _jitted_predict(model, canvas: tuple[int, int], threshold: float, min_score: float,
                    overlap: float | None = None) -> Callable:
  """One jitted predict + render program per (model, canvas, thresholds), shared process-wide.

  Module level on purpose: periodic evaluation and every annotation round build a new
  Predictor around new variables; a per-instance jit would trace and compile the whole
  Mask R-CNN again each time. Flax modules built from the same config compare (and hash)
  equal, and the variables are a traced argument, so one compile serves them all.
  """
  from pa_jax.models.mask_rcnn import MaskRCNN

  render = functools.partial(mask_ops.masks_to_label_map, height=canvas[0], width=canvas[1],
                             threshold=threshold, overlap_threshold=overlap)

  @jax.jit
  def run(variables, pixels, image_size, intensity):
    # The stretch to [0, 1] runs here, on the device: uint8 / uint16 pixels cross as
    # they are (a quarter / half of float32's bytes), `pad_batch`.
    image = scale_intensities(pixels, intensity, image_size)
    det = model.apply(variables, image, image_size, method=MaskRCNN.predict)
    labels = jax.vmap(render)(det.masks, det.mask_boxes, det.scores,
                              det.valid & (det.scores >= min_score))
    return labels, det

  return run


class Predictor:
  """Callable: image (uint8/uint16 [H, W] or [H, W, 3]) → int32 label map [H, W].

  The image's intensity range is taken once (whole image, so tiles share one intensity
  scale) and its uint8 / uint16 pixels travel to the device as they are, stretched to
  [0, 1] there (`data.intensity.device_image`; other dtypes are normalised on the host);
  images larger than `tile_size` are segmented in overlapping tiles (`pa_jax.infer.tiling`) and
  stitched, so memory is bounded by the tile, not the image; the 3x3 dilation runs once on
  the final map.

  Args:
    model: a `MaskRCNN` module; variables: its flax variables.
    normalize: intensity mode used in training (`config.data.normalize`).
    mask_threshold: mask probability that counts as inside.
    dilate: apply the 3x3 post-process dilation.
    min_score: detections scoring below this are not drawn into the label map.
    tile_size, overlap: tiling of large images (multiple of 32; overlap must exceed the
      largest nucleus plus the network's context, see docs/tiling.md).
    batch_size: tiles per device call (the batch is padded to this size: one compile).
    canvas_octaves: each side is padded to one of `bucket_sides(tile_size, canvas_octaves)`
      (512, 2 -> 128, 192, 256, 384, 512), so at most `(2 * canvas_octaves + 1) ** 2`
      canvases are compiled (5 for square images), however many image sizes are seen.
      A model built with `model.mask_padding` gives the same output on any bucket (float
      rounding aside: pa_jax/models/padding.py); without it GroupNorm statistics and the
      layers' biases see the padding, so the output can change with the bucket
      (bench/canvas_buckets.py measures both). 0 pads to a multiple of 32 only (one
      compile per distinct size, the smallest canvas).
    target_diameter: the median nucleus diameter (px) the model was trained at
      (`config.data.diameter`); 0 = no zoom.
    diameter: the median nucleus diameter of the input images (px); 0 = estimate it per
      image from a first pass (`estimate_zoom`). Only used with `target_diameter`.
    mask_overlap: a detection with at least this fraction of its mask already claimed by
      higher-scoring ones is not drawn (`masks_to_label_map`'s `overlap_threshold`);
      1.0 = only the fully covered, i.e. overlaps simply go to the higher score.
  """

  TRIAL_ZOOMS = (1.0, 2.0, 0.5)  # the passes `estimate_zoom` tries, in this order

  def __init__(self, model, variables, normalize: str = "percentile",
               mask_threshold: float = 0.5, dilate: bool = True, min_score: float = 0.5,
               tile_size: int = 512, overlap: int = 96, batch_size: int = 1,
               progress: bool = False, canvas_octaves: int = 0,
               target_diameter: float = 0.0, diameter: float = 0.0,
               mask_overlap: float = 1.0):
    self.model = model
    self.target_diameter = float(target_diameter)
    self.diameter = float(diameter)
    # Of the latest image (or slide, `slide_zoom`): its nucleus diameter in input pixels
    # (None: no `target_diameter`, or too few nuclei to estimate it), where that came from
    # ('given' | 'estimated' | None) and the zoom its pass ran at.
    self.last_diameter: float | None = None
    self.last_diameter_source: str | None = None
    self.last_zoom: float | None = None
    self.variables = variables
    self.normalize = normalize
    self.mask_threshold = mask_threshold
    self.dilate = dilate
    self.min_score = min_score
    # 1.0 (or more) drops nothing that would show: the plain overwrite program, compiled once.
    self.mask_overlap = None if mask_overlap >= 1.0 else float(mask_overlap)
    self.tile_size = tile_size
    self.overlap = overlap
    self.batch_size = max(1, int(batch_size))
    self.progress = progress
    self.sides = bucket_sides(tile_size, canvas_octaves) if canvas_octaves > 0 else ()

  def _run_batch(self, images: list[np.ndarray], batch: int,
                 intensity: np.ndarray | None = None):
    """Pixels [h, w, 3] of one shape (`pad_batch`: uint8 / uint16 with `intensity`, or
    float32 [0, 1]) → raw label maps + detection scores.

    The images are padded to `batch` slots (a fixed batch = one compile per canvas and
    pixel dtype). Raw label v is the detection of score rank v-1 (NMS output is sorted by
    score).
    """
    h, w = images[0].shape[:2]
    canvas = bucket_canvas(h, w, self.sides) if self.sides else canvas_for(h, w)
    pixels, sizes, ranges = pad_batch(images, batch, canvas, intensity)
    run = _jitted_predict(self.model, canvas, float(self.mask_threshold), float(self.min_score),
                          self.mask_overlap)
    raw, det = run(self.variables, jnp.asarray(pixels), jnp.asarray(sizes), jnp.asarray(ranges))
    n = len(images)
    return np.asarray(raw)[:n, :h, :w], np.asarray(det.scores)[:n]

  def run_tiles(self, tiles: list[np.ndarray], intensity: np.ndarray | None = None
                ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Tiles [h, w, 3] of any shapes (uint8 / uint16 sharing the range `intensity`, float32
    [2, 3], or float32 [0, 1] pixels) → [(raw label map int32 [h, w], scores float32
    [max_detections])], in `batch_size` batches of equal-shape tiles (one compile per
    canvas bucket). Raw label v is the detection `scores[v - 1]`."""
    out: list = [None] * len(tiles)
    by_shape: dict[tuple, list[int]] = {}
    for i, t in enumerate(tiles):
      by_shape.setdefault(t.shape[:2], []).append(i)
    for idx in by_shape.values():
      for k in range(0, len(idx), self.batch_size):
        chunk = idx[k:k + self.batch_size]
        raw, scores = self._run_batch([tiles[i] for i in chunk], self.batch_size, intensity)
        for i, lab, sc in zip(chunk, raw, scores):
          out[i] = (lab, sc)
    return out

  def segment_tiles(self, tiles: list[np.ndarray], intensity: np.ndarray | None = None
                    ) -> list[np.ndarray]:
    """`tiling.predict_tiled` callback: tiles (as `run_tiles`) → label maps (no dilation)."""
    return [lab for lab, _ in self.run_tiles(tiles, intensity)]

  def _segment(self, img: np.ndarray, intensity: np.ndarray | None = None
               ) -> tuple[np.ndarray, dict[int, float]]:
    """Pixels [H, W, 3] (as `run_tiles`) -> (label map int32 [H, W] labelled 1..N, {label:
    score}; empty when tiled), before dilation."""
    h, w = img.shape[:2]
    if max(h, w) > self.tile_size:
      from pa_jax.infer.tiling import predict_tiled

      # The tiles share the whole image's range: one intensity scale across tile seams.
      labels = predict_tiled(img, functools.partial(self.segment_tiles, intensity=intensity),
                             self.tile_size, self.overlap, self.batch_size,
                             progress=self.progress)
      return relabel_sequential(labels), {}
    # One image: a batch of one, not `batch_size` slots of which all but one are padding.
    raw, scores = self._run_batch([img], 1, intensity)
    raw, scores = raw[0], scores[0]
    ids = np.unique(raw)
    ids = ids[ids != 0]
    return relabel_sequential(raw), {int(i + 1): float(scores[v - 1]) for i, v in enumerate(ids)}

  def _segment_zoomed(self, img: np.ndarray, zoom: float,
                      intensity: np.ndarray | None = None):
    """`_segment` of `img` (pixels with their `intensity`, as `run_tiles`) zoomed by
    `zoom` (`data.diameter.zoom_pixels`), then the post-process dilation (if on), then
    the label map brought back to img's size. The dilation runs at the zoomed scale, where
    nuclei have the size the model learnt: one pixel there is the paper's correction of
    Mask R-CNN's shrunken masks; one pixel at native scale would grow 15 px nuclei by a
    quarter of their area."""
    rng = IDENTITY_RANGE if intensity is None else intensity
    labels, table = self._segment(diam.zoom_pixels(img, zoom, rng), intensity)
    if self.dilate:
      labels = dilate_labels(labels)
    if zoom == 1.0:
      return labels, table
    labels = diam.resize_labels(labels, img.shape[:2])
    kept = relabel_sequential(labels)  # a nucleus smaller than a pixel can vanish
    if table:
      old = np.unique(labels)
      old = old[old != 0]
      table = {i + 1: table[int(v)] for i, v in enumerate(old) if int(v) in table}
    return kept, table

  def estimate_zoom(self, img: np.ndarray, intensity: np.ndarray | None = None
                    ) -> ZoomEstimate:
    """The zoom for `img` (pixels with their `intensity`, as `run_tiles`), from a first
    pass of the model.

    The model finds nuclei over about an octave around its training diameter, so the first
    pass runs at zoom 1, then 2 and 0.5 until one finds at least 3 nuclei; their median
    diameter (in the input's pixels; less the 2 zoomed pixels the dilation adds) gives the
    zoom. When that zoom is within 10 % of the pass's, the pass is the result; when no
    pass finds 3 nuclei, the zoom is 1 and the zoom-1 pass is the result."""
    first = None
    for z in self.TRIAL_ZOOMS:
      out = self._segment_zoomed(img, z, intensity)
      first = first or out
      d = diam.equivalent_diameters(out[0])
      if d.size >= 3:
        d_in = max(1.0, float(np.median(d)) - (2.0 / z if self.dilate else 0.0))
        zoom = diam.zoom_factor(d_in, self.target_diameter)
        if abs(math.log(zoom / z)) < math.log(1.1):
          return ZoomEstimate(zoom, d_in, out, z)
        return ZoomEstimate(zoom, d_in, None, None)
    # Too few nuclei at any zoom: native scale, and its pass is already made.
    return ZoomEstimate(1.0, None, first, self.TRIAL_ZOOMS[0])

  def choose_zoom(self, estimate_on: Callable[[], tuple[np.ndarray, np.ndarray | None]]
                  ) -> tuple[float, tuple | None]:
    """(zoom, a pass already made at that zoom or None) for the next image or slide.

    No `target_diameter`: 1.0. A given `diameter`: the zoom that brings it to the model's.
    Else `estimate_zoom` on the (pixels, intensity) `estimate_on()` returns (called only
    then); when one of its trial passes is within 10 % of the estimate, that pass's zoom
    is the one used (and the pass is returned), so that its result stands as is.
    Sets `last_diameter`, `last_diameter_source` ('given' | 'estimated' | None) and
    `last_zoom`, which then describe this image or slide (predict.json, report.html).
    """
    done = None
    if not self.target_diameter:
      zoom, self.last_diameter, self.last_diameter_source = 1.0, None, None
    elif self.diameter:
      zoom = diam.zoom_factor(self.diameter, self.target_diameter)
      self.last_diameter, self.last_diameter_source = self.diameter, "given"
    else:
      est = self.estimate_zoom(*estimate_on())
      self.last_diameter, self.last_diameter_source = est.diameter, "estimated"
      zoom, done = (est.result_zoom, est.result) if est.result is not None else (est.zoom, None)
    self.last_zoom = zoom
    return zoom, done

  def predict_scored(self, image: np.ndarray) -> tuple[np.ndarray, dict[int, float]]:
    """(label map int32 [H, W], {label: detection score}); scores are known for images
    up to `tile_size` after zooming (tiled images give an empty score table)."""
    pixels, intensity = device_image(image, self.normalize)
    zoom, done = self.choose_zoom(lambda: (pixels, intensity))
    return done or self._segment_zoomed(pixels, zoom, intensity)

  def __call__(self, image: np.ndarray) -> np.ndarray:
    return self.predict_scored(image)[0]
