"""Nucleus size normalisation, as Cellpose's `diameter`.

A model sees nuclei from 10 px (dsb2018 fluorescence) to 50 px (dh360) across. Zooming
every image so that its median nucleus has one set diameter lets a single model cover all
of them with anchors, centre boxes and receptive fields sized for that diameter: small
nuclei get more than one positive centerness pixel at stride 4, large ones fit the canvas.

The diameter of a nucleus is its equivalent-circle diameter, 2 * sqrt(area / pi): robust
to shape, and what Cellpose reports. Training measures it from the labels; prediction takes
it from the user or estimates it from the model's own detections (`infer.predictor`).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

# Zoom factors outside this range mean a mislabelled or mis-estimated image, not a real
# size: clamp rather than blow an image up 20x.
MIN_ZOOM, MAX_ZOOM = 0.25, 4.0


def equivalent_diameters(labels: np.ndarray) -> np.ndarray:
  """float64 [N]: 2 * sqrt(area / pi) of every instance of an int label map (0 = background)."""
  lab = np.asarray(labels)
  counts = np.bincount(lab[lab > 0].ravel().astype(np.int64))
  areas = counts[counts > 0]
  return 2.0 * np.sqrt(areas / np.pi)


def median_diameter(labels: np.ndarray) -> float | None:
  """Median equivalent diameter in px of a label map's instances; None when it has none."""
  d = equivalent_diameters(labels)
  return float(np.median(d)) if d.size else None


def zoom_factor(diameter: float | None, target: float) -> float:
  """Zoom that brings nuclei of `diameter` px to `target` px, clamped to
  [MIN_ZOOM, MAX_ZOOM]; 1.0 when either is unknown or not positive."""
  if not target or not diameter or diameter <= 0:
    return 1.0
  return float(np.clip(target / diameter, MIN_ZOOM, MAX_ZOOM))


def zoom_image(image: np.ndarray, zoom: float) -> np.ndarray:
  """Bilinear zoom of an (H, W) or (H, W, C) image by `zoom`, same dtype; the output is
  round(H * zoom) x round(W * zoom) (at least 1 x 1)."""
  img = np.asarray(image)
  if zoom == 1.0:
    return img
  h, w = img.shape[:2]
  out_hw = (max(1, int(round(h * zoom))), max(1, int(round(w * zoom))))
  factors = (out_hw[0] / h, out_hw[1] / w) + (1.0,) * (img.ndim - 2)
  out = ndimage.zoom(img.astype(np.float32), factors, order=1, mode="nearest",
                     grid_mode=True)
  if np.issubdtype(img.dtype, np.integer):
    info = np.iinfo(img.dtype)
    out = np.clip(np.rint(out), info.min, info.max)
  return out.astype(img.dtype)


def zoom_pixels(image: np.ndarray, zoom: float, intensity: np.ndarray) -> np.ndarray:
  """`zoom_image` of pixels the device will stretch by `intensity` (float32 [2, C]: the
  values that map to 0 and 1, `data.intensity.device_image`).

  The pixels are clipped to their range first, as a zoom of normalised pixels interpolates
  already clipped [0, 1] values (linear interpolation commutes with the linear stretch,
  not with the clip); integer pixels are rounded back to their dtype, at most half a grey
  level from zooming the normalised image."""
  img = np.asarray(image)
  if zoom == 1.0:
    return img
  clipped = np.clip(img.astype(np.float32), intensity[0], intensity[1])
  out = zoom_image(clipped, zoom)
  if np.issubdtype(img.dtype, np.integer):
    out = np.clip(np.rint(out), 0, np.iinfo(img.dtype).max)
  return out.astype(img.dtype)


def resize_labels(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
  """Nearest-neighbour resize of a label map to `shape` (H, W): ids are kept, never mixed."""
  lab = np.asarray(labels)
  if lab.shape[:2] == tuple(shape):
    return lab
  h, w = lab.shape[:2]
  # Pixel centres of the output sampled in the input (the grid_mode convention of zoom_image).
  ys = np.minimum(((np.arange(shape[0]) + 0.5) * h / shape[0]).astype(np.int64), h - 1)
  xs = np.minimum(((np.arange(shape[1]) + 0.5) * w / shape[1]).astype(np.int64), w - 1)
  return lab[ys[:, None], xs[None, :]]
