"""Classical nucleus segmentation: Otsu threshold + distance-transform watershed.

The field's floor (what every learned method is compared with), usable on its own:
`python run.py predict --method classical --input DIR --output DIR`.

Pipeline of `segment_classical` (defaults in `DEFAULT_PARAMS`, recorded next to the
predictions as `classical_params.json` by `run.py predict --method classical`,
`pa_jax.predict.predict_command`):

1. One channel to threshold (`stain`, `resolve_stain`):
   - 'none': grey level, the mean of the RGB channels.
   - 'hed': haematoxylin density of an H&E image (scikit-image's `rgb2hed` colour
     deconvolution, Ruifrok & Johnston's stain vectors). In grey, eosin-dense stroma and
     red cells are as dark as nuclei and Otsu takes them for nuclei; haematoxylin binds
     chromatin, so the H channel is bright on nuclei only.
   - 'auto' (default): 'hed' for an RGB image that is coloured, mostly bright (transmitted
     light) and not greenest (purple/pink stains), 'none' otherwise (grey,
     fluorescence of any colour); the exact rule is `resolve_stain`'s.
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
    "stain": "auto",  # "auto" | "none" (grey) | "hed" (haematoxylin channel of H&E)
    "sigma": 1.0,
    "polarity": "auto",  # of the channel: "auto" | "bright" (fluorescence, H) | "dark" (grey H&E)
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
  for polarity and stain. Unknown keys and unparsable values raise ValueError naming them.
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
      elif key == "stain":
        if raw not in STAINS:
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


STAINS = ("auto", "none", "hed")
# Mean over pixels of (largest - smallest channel), as a fraction of the grey range, above
# which an RGB image counts as coloured. Grey saved as RGB has 0; H&E tiles 0.048-0.5
# (the palest TNBC crops are the lowest).
_COLOUR_SPREAD = 0.03
# Median over 99th-percentile grey at or above which most of the image is bright
# (transmitted light); see `resolve_stain`.
_BRIGHT_MAJORITY = 0.35


def _unit_rgb(image: np.ndarray) -> np.ndarray:
  """float64 (H, W, 3) in [0, 1] of an (H, W, 3|4) integer or float image."""
  rgb = np.asarray(image)[..., :3]
  if np.issubdtype(rgb.dtype, np.integer):
    return rgb.astype(np.float64) / float(np.iinfo(rgb.dtype).max)
  rgb = rgb.astype(np.float64)
  top = float(rgb.max()) if rgb.size else 1.0
  return rgb / top if top > 1.0 else rgb  # floats are [0, 1], or scaled by their maximum


def haematoxylin(image: np.ndarray) -> np.ndarray:
  """Haematoxylin optical density of an RGB H&E image (`skimage.color.rgb2hed` channel 0).

  Args:
    image: (H, W, 3|4) uint8/uint16, or float in [0, 1].
  Returns:
    float32 (H, W), >= 0: 0 where there is no haematoxylin, larger on nuclei.
  """
  from skimage.color import rgb2hed

  return rgb2hed(_unit_rgb(image))[..., 0].astype(np.float32)


def resolve_stain(image: np.ndarray, stain: str = "auto") -> str:
  """The channel `segment_classical` thresholds: 'none' (grey) or 'hed' (haematoxylin).

  'auto' picks 'hed' for an RGB image that looks like a stained slide in transmitted light:
  - coloured: the mean channel spread (largest - smallest) is above 3 % of the grey range
    (grey saved as RGB has none);
  - a bright majority: median grey >= 0.35 x its 99th percentile (fluorescence is a dark
    background with bright objects, about 0.1; H&E tiles 0.4-0.97, dense tissue lowest);
  - green is not the brightest channel on average: haematoxylin and eosin both absorb
    green most (purple/pink), unlike e.g. a GFP image.
  Otherwise 'none'. 'hed' on a non-RGB image is an error.
  """
  if stain not in STAINS:
    raise ValueError(f"stain must be one of {', '.join(STAINS)}, got {stain!r}")
  rgb_input = np.ndim(image) == 3 and np.shape(image)[-1] in (3, 4)
  if stain == "hed" and not rgb_input:
    raise ValueError(f"stain='hed' needs an (H, W, 3) RGB image, got shape {np.shape(image)}")
  if stain != "auto":
    return stain
  if not rgb_input:
    return "none"
  rgb = _unit_rgb(image)
  gray = rgb.mean(axis=-1)
  span = float(gray.max() - gray.min())
  if span <= 1e-6:
    return "none"
  coloured = float(np.mean(rgb.max(axis=-1) - rgb.min(axis=-1))) > _COLOUR_SPREAD * span
  bright_majority = np.median(gray) >= _BRIGHT_MAJORITY * np.percentile(gray, 99)
  r, g, b = rgb.reshape(-1, 3).mean(axis=0)
  return "hed" if coloured and bright_majority and g < max(r, b) else "none"


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
    **params: overrides of `DEFAULT_PARAMS` (stain, sigma, polarity, min_size, fill_holes,
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
  gray = _gray(image)  # checks shape and type for every stain
  if resolve_stain(image, p["stain"]) == "hed":
    gray = haematoxylin(image)
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
