"""A napari image layer's data as the 2-D image the library segments."""

from __future__ import annotations

import numpy as np

from pa_jax.errors import InputError


def library_image(data, rgb: bool, name: str) -> np.ndarray:
  """[H, W] or [H, W, 3] array (dtype kept: uint8/uint16 as read, float accepted) from an
  image layer's `data` (numpy, dask or zarr; multiscale: the full-resolution level).

  rgb: the layer's `rgb` flag (the last axis is colour; an alpha channel is dropped).
  A stack or any other shape is an InputError naming the layer: pa_jax segments one plane.
  """
  if isinstance(data, (list, tuple)):  # multiscale: level 0 is full resolution
    data = data[0]
  arr = np.asarray(data)
  if rgb:
    arr = arr[..., :3]
  if arr.ndim != (3 if rgb else 2) or min(arr.shape[:2], default=0) < 1:
    kind = "an RGB image" if rgb else "a 2-D image"
    raise InputError(f"layer {name!r}", f"has shape {tuple(np.shape(data))}; pa_jax segments "
                     f"{kind} (H, W{', 3' if rgb else ''}): pick one plane of a stack first")
  if arr.dtype == np.bool_:
    arr = arr.astype(np.uint8)
  if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
    raise InputError(f"layer {name!r}", f"has pixels of type {arr.dtype}, not numbers")
  return arr
