"""Photometric augmentation for mixed modalities (fluorescence, brightfield, H&E).

Pure numpy functions of a float32 (H, W, 3) image in [0, 1] and a numpy Generator, applied
to a training crop after its geometry (zoom, crop, flips, rotations: `pipeline`). One
model sees grey fluorescence (the channel repeated three times) and RGB histology, so:
* intensity jitter (contrast, brightness, gamma) everywhere: microscopes, exposures and
  the per-image percentile stretch all move these;
* stain jitter only on colour images: H&E colour varies with the lab, the stain batch and
  the scanner, and perturbing the haematoxylin / eosin / DAB optical densities (Tellez et
  al. 2018, "H&E stain augmentation") is the standard way to make a model robust to it.
"""

from __future__ import annotations

import numpy as np


def is_grey(image: np.ndarray) -> bool:
  """Whether an (H, W, 3) image is grey repeated over its channels (how readers store it)."""
  return bool(np.array_equal(image[..., 0], image[..., 1])
              and np.array_equal(image[..., 0], image[..., 2]))


def jitter_intensity(image: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
  """Random gamma in [1/(1+s), 1+s], contrast in [1-s, 1+s] about the mean, brightness
  in [-s/2, s/2]; clipped to [0, 1]. float32 (H, W, 3) -> same."""
  if strength <= 0:
    return image
  gamma = float(np.exp(rng.uniform(-np.log1p(strength), np.log1p(strength))))
  contrast = rng.uniform(1.0 - strength, 1.0 + strength)
  brightness = rng.uniform(-strength / 2, strength / 2)
  out = np.power(np.clip(image, 0.0, 1.0), gamma)
  mean = out.mean()
  out = (out - mean) * contrast + mean + brightness
  return np.clip(out, 0.0, 1.0).astype(np.float32)


def jitter_stain(image: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
  """H&E(-DAB) stain jitter: in scikit-image's HED optical-density space each stain is
  scaled by U(1-s, 1+s) and shifted by U(-s, s) (relative to its image range), then mapped
  back to RGB. Grey images come back unchanged. float32 (H, W, 3) -> same."""
  if strength <= 0 or is_grey(image):
    return image
  from skimage.color import hed_from_rgb, rgb_from_hed

  # skimage's rgb2hed / hed2rgb with its matrices, but without rgb2hed's clip of negative
  # densities to 0 (most H&E pixels have a negative DAB density): clipped, the round trip
  # alone shifts colours (up to 0.36 on skimage's IHC sample) however small the jitter.
  log_adjust = np.log(1e-6)
  hed = (np.log(np.maximum(np.clip(image, 0.0, 1.0), 1e-6)) / log_adjust) @ hed_from_rgb
  span = np.maximum(hed.reshape(-1, 3).max(0) - hed.reshape(-1, 3).min(0), 1e-6)
  alpha = rng.uniform(1.0 - strength, 1.0 + strength, size=3)
  beta = rng.uniform(-strength, strength, size=3) * span
  out = np.exp(((hed * alpha + beta) @ rgb_from_hed) * log_adjust)
  return np.clip(out, 0.0, 1.0).astype(np.float32)


def log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
  """A zoom drawn log-uniformly from [low, high] (1.0 when low == high == 1)."""
  if low == high:
    return float(low)
  return float(np.exp(rng.uniform(np.log(low), np.log(high))))
