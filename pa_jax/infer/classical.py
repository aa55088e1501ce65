"""Classical nucleus segmentation: Otsu threshold + distance-transform watershed.

The field's floor (what every learned method is compared with), usable on its own:
`python run.py predict --method classical --input DIR --output DIR`.

Pipeline of `segment_classical` (defaults in `DEFAULT_PARAMS`, recorded next to the
predictions as `classical_params.json` by `run.py predict --method classical`,
`pa_jax.predict.predict_command`):

1. grey level: RGB → mean of the channels; float.
2. Gaussian smoothing (`sigma` px).
3. Otsu threshold. Polarity (`polarity="auto"`): the background is the majority of the
   pixels, so if the median pixel is below the threshold nuclei are brighter than the
   background (fluorescence) and the foreground is "above"; otherwise (brightfield,
   histology: dark nuclei on a bright background) the foreground is "below".
4. Clean-up: fill holes, remove connected components smaller than `min_size` px.
5. Euclidean distance transform of the foreground, smoothed by `distance_sigma`.
6. Markers: `peak_local_max` of the distance inside each connected component, with
   `min_distance` = `min_distance_factor` × the typical nucleus radius. That radius is
   estimated per image as the median over components of their largest distance value
   (the inscribed radius: for a clump of touching round nuclei it is still one nucleus'
   radius, so clumps do not inflate it). An explicit integer `min_distance` overrides it.
7. Watershed of the negated distance from the markers, restricted to the foreground; a
   component without a marker keeps its own label; pieces smaller than `min_size` are
   dropped; labels renumbered 1..N.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

DEFAULT_PARAMS: dict[str, Any] = {
    "sigma": 1.0,
    "polarity": "auto",  # "auto" | "bright" (fluorescence) | "dark" (brightfield, H&E)
    "min_size": 30,
    "fill_holes": True,
    "distance_sigma": 1.0,
    "min_distance": "auto",  # "auto" or an int (pixels)
    "min_distance_factor": 0.7,
}


def parse_params(text: str) -> dict[str, Any]:
  """Parses `--classical_params` text: 'key=value,key=value' → overrides of DEFAULT_PARAMS.

  Values take the type of the default: numbers for sigma/min_size/distance_sigma/
  min_distance_factor, true/false for fill_holes, 'auto' or an int for min_distance, a word
  for polarity. Unknown keys and unparsable values raise ValueError naming them.
  E.g. 'min_distance=5,distance_sigma=0,fill_holes=false,min_size=0' is the textbook
  scikit-image recipe (fixed marker spacing, raw distance map).
  """
  out: dict[str, Any] = {}
  for item in filter(None, (t.strip() for t in text.split(","))):
    key, sep, raw = item.partition("=")
    key, raw = key.strip(), raw.strip()
    if not sep or not raw:
      raise ValueError(f"{item!r} is not key=value")
    if key not in DEFAULT_PARAMS:
      raise ValueError(f"unknown classical parameter {key!r} (known: {', '.join(DEFAULT_PARAMS)})")
    try:
      if key == "fill_holes":
        if raw.lower() not in ("true", "false", "1", "0"):
          raise ValueError
        out[key] = raw.lower() in ("true", "1")
      elif key == "polarity":
        if raw not in ("auto", "bright", "dark"):
          raise ValueError
        out[key] = raw
      elif key == "min_distance":
        out[key] = "auto" if raw == "auto" else int(raw)
      elif key == "min_size":
        out[key] = int(raw)
      else:
        out[key] = float(raw)
    except ValueError:
      raise ValueError(f"{key}={raw!r}: not a valid value (default {DEFAULT_PARAMS[key]!r})") from None
  return out


def _gray(image: np.ndarray) -> np.ndarray:
  image = np.asarray(image)
  if image.ndim == 3 and image.shape[-1] in (3, 4):
    image = image[..., :3].astype(np.float32).mean(axis=-1)
  if image.ndim != 2:
    raise ValueError(f"expected an (H, W) or (H, W, 3) image, got shape {image.shape}")
  if image.dtype == np.bool_ or not (np.issubdtype(image.dtype, np.integer)
                                     or np.issubdtype(image.dtype, np.floating)):
    raise ValueError(f"unsupported image type {image.dtype}")
  return image.astype(np.float32, copy=False)


def _remove_small(mask: np.ndarray, min_size: int) -> tuple[np.ndarray, np.ndarray, int]:
  """Drops components below `min_size` px; returns (mask, component labels, count)."""
  cc, n = ndimage.label(mask)
  if n and min_size > 1:
    sizes = np.bincount(cc.ravel())
    keep = sizes >= min_size
    keep[0] = False
    mask = keep[cc]
    cc, n = ndimage.label(mask)
  return mask, cc, n


def segment_classical(image: np.ndarray, **params: Any) -> np.ndarray:
  """Segments nuclei of one image with Otsu + distance-transform watershed.

  Args:
    image: (H, W) or (H, W, 3) uint8/uint16 (float accepted) image.
    **params: overrides of `DEFAULT_PARAMS` (sigma, polarity, min_size, fill_holes,
      distance_sigma, min_distance, min_distance_factor).

  Returns:
    int32 (H, W) instance label map, 0 = background, nuclei 1..N.
  """
  from skimage.feature import peak_local_max
  from skimage.filters import threshold_otsu
  from skimage.segmentation import watershed

  unknown = set(params) - set(DEFAULT_PARAMS)
  if unknown:
    raise ValueError(f"unknown classical parameter(s): {', '.join(sorted(unknown))} "
                     f"(known: {', '.join(DEFAULT_PARAMS)})")
  p = {**DEFAULT_PARAMS, **params}
  gray = _gray(image)
  out = np.zeros(gray.shape, np.int32)
  if p["sigma"] and p["sigma"] > 0:
    gray = ndimage.gaussian_filter(gray, float(p["sigma"]))
  if float(gray.max()) - float(gray.min()) <= 1e-6 * max(abs(float(gray.max())), 1.0):
    return out  # a flat image has no nuclei
  t = threshold_otsu(gray)
  polarity = p["polarity"]
  if polarity == "auto":
    polarity = "bright" if np.median(gray) <= t else "dark"
  if polarity == "bright":
    fg = gray > t
  elif polarity == "dark":
    fg = gray <= t
  else:
    raise ValueError(f"polarity must be 'auto', 'bright' or 'dark', got {polarity!r}")
  if p["fill_holes"]:
    fg = ndimage.binary_fill_holes(fg)
  min_size = int(p["min_size"])
  fg, cc, n = _remove_small(fg, min_size)
  if n == 0:
    return out

  dist = ndimage.distance_transform_edt(fg)
  if p["distance_sigma"] and p["distance_sigma"] > 0:
    dist = ndimage.gaussian_filter(dist, float(p["distance_sigma"])) * fg
  if p["min_distance"] == "auto":
    radius = float(np.median(ndimage.maximum(dist, cc, np.arange(1, n + 1))))
    min_distance = max(2, int(round(float(p["min_distance_factor"]) * radius)))
  else:
    min_distance = max(1, int(p["min_distance"]))
  peaks = peak_local_max(dist, min_distance=min_distance, labels=cc, exclude_border=False)
  markers = np.zeros(gray.shape, np.int32)
  markers[peaks[:, 0], peaks[:, 1]] = np.arange(1, len(peaks) + 1)
  # A component without a peak (e.g. a plateau) still becomes one nucleus.
  has_marker = np.zeros(n + 1, bool)
  has_marker[cc[peaks[:, 0], peaks[:, 1]]] = True
  has_marker[0] = True
  labels = watershed(-dist, markers, mask=fg)
  lonely = ~has_marker[cc]
  labels[lonely] = cc[lonely] + len(peaks)

  # Drop watershed fragments below min_size, renumber 1..N.
  sizes = np.bincount(labels.ravel())
  keep = sizes >= max(min_size, 1)
  keep[0] = False
  lut = np.zeros(sizes.size, np.int32)
  lut[keep] = np.arange(1, int(keep.sum()) + 1)
  return lut[labels]
