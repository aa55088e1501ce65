"""Intensity scaling of microscopy images: raw uint8/uint16 pixels to float32 [0, 1].

Two places do it, with the same numbers:
* the device, inside the compiled training step and the predictor's program: a batch
  carries each image's own integer pixels and its `intensity_range` (`device_image`), and
  `pa_jax.ops.intensity.scale_intensities` stretches them there, so a quarter (uint8) or
  half (uint16) of float32's bytes cross to the device and stay in host memory;
* the host, `normalize_image`: arrays of other dtypes handed to the API or napari (files
  are read as uint8 / uint16: `data.images.read_image` stretches float TIFFs to uint16),
  training crops that get photometric jitter (which runs on float pixels), and figures.
"""

from __future__ import annotations

import numpy as np


def intensity_range(image: np.ndarray, mode: str = "percentile") -> np.ndarray:
  """The values `normalize_image` maps to 0 and 1: float32 [2, C] (row 0 low, row 1 high)
  of an (H, W) or (H, W, C) image; C = 1 for a grey image."""
  img = np.asarray(image)
  if img.ndim == 2:
    img = img[..., None]
  if mode == "dtype":
    scale = 65535.0 if img.dtype == np.uint16 else 255.0
    return np.array([[0.0] * img.shape[-1], [scale] * img.shape[-1]], np.float32)
  if mode == "percentile":
    img = img.astype(np.float32)
    lo = np.percentile(img, 0.5, axis=(0, 1))
    hi = np.percentile(img, 99.5, axis=(0, 1))
    return np.stack([lo, hi]).astype(np.float32)
  raise ValueError(f"unknown normalisation {mode!r} (percentile, dtype)")


def normalize_image(image: np.ndarray, mode: str = "percentile",
                    intensity: np.ndarray | None = None) -> np.ndarray:
  """uint8/uint16 (H, W) or (H, W, 3) → float32 (H, W, 3) in [0, 1].

  'percentile': per-channel 0.5–99.5 % stretch; robust to 16-bit images whose signal uses
  a small part of the range and to hot pixels. 'dtype': divide by the dtype's maximum.
  `intensity` (float32 [2, C]), when given, is the range instead of the image's own (a
  slide's, for one of its tiles). Gray images are repeated to 3 channels so that
  RGB-pretrained backbones import as is.
  """
  img = np.asarray(image)
  if img.ndim == 2:
    img = img[..., None]
  rng = intensity_range(img, mode) if intensity is None else np.asarray(intensity, np.float32)
  out = stretch(img, rng)
  if out.shape[-1] == 1:
    out = np.repeat(out, 3, axis=-1)
  return out.astype(np.float32)


def stretch(image: np.ndarray, intensity: np.ndarray) -> np.ndarray:
  """(H, W, C) pixels and their float32 [2, C] range → float32 (H, W, C) in [0, 1]: the host
  twin of `pa_jax.ops.intensity.scale_intensities` (same float32 arithmetic)."""
  lo, hi = intensity
  out = (np.asarray(image).astype(np.float32) - lo) / np.maximum(hi - lo, np.float32(1e-6))
  return np.clip(out, 0.0, 1.0).astype(np.float32)


INTEGER_DTYPES = (np.uint8, np.uint16)


# The range of pixels already in [0, 1]: the device's stretch leaves them as they are.
IDENTITY_RANGE = np.array([[0.0] * 3, [1.0] * 3], np.float32)
IDENTITY_RANGE.flags.writeable = False  # shared by every caller


def integer_image(image: np.ndarray, mode: str = "percentile",
                  intensity: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray] | None:
  """An image as it travels to the device: (its own uint8/uint16 pixels (H, W, 3), grey
  repeated; float32 [2, 3] range), so that `pa_jax.ops.intensity.scale_intensities` of
  the pair equals `normalize_image(image)`. The range is `intensity` (float32 [2, C]) when
  given, e.g. a whole slide's for one of its tiles, else `intensity_range(image, mode)`.
  None for other dtypes, which are normalised on the host."""
  img = np.asarray(image)
  if img.dtype not in INTEGER_DTYPES:
    return None
  if img.ndim == 2:
    img = img[..., None]
  rng = intensity_range(img, mode) if intensity is None else np.asarray(intensity, np.float32)
  if img.shape[-1] == 1:
    img = np.repeat(img, 3, axis=-1)
  if rng.shape[-1] == 1:
    rng = np.repeat(rng, 3, axis=-1)
  return np.ascontiguousarray(img), rng


def device_image(image: np.ndarray, mode: str = "percentile",
                 intensity: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Any image as the device takes it: (pixels (H, W, 3), float32 [2, 3] range) whose
  `scale_intensities` equals `normalize_image(image, mode)` (or the stretch by
  `intensity`, [2, C], when given).

  uint8 / uint16: `integer_image`. Other dtypes are normalised here, on the host, and
  travel as float32 [0, 1] with `IDENTITY_RANGE`; so every image has a range and a
  training batch that mixes dtypes (numpy stacks it in the widest: uint16, or float32)
  is still stretched row by row correctly. Each stacked dtype is its own compiled step."""
  raw = integer_image(image, mode, intensity)
  if raw is not None:
    return raw
  return normalize_image(image, mode, intensity), IDENTITY_RANGE.copy()
