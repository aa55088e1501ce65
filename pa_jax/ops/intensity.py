"""Intensity scaling on the device: integer images in, float32 [0, 1] pixels out.

Training batches and the predictor's images travel from host to device in the images' own
integer dtype (uint8 or uint16, 1/4 or 1/2 of float32's bytes per pixel) with each image's
intensity range beside them; the stretch to [0, 1] runs here, inside the compiled training
step or prediction program. The host keeps the training set as integers too (3 instead of
12 bytes per pixel for 8-bit images, 6 for 16-bit). `pa_jax.data.intensity.device_image`
computes the range, and `scale_intensities(*device_image(x))` equals
`intensity.normalize_image(x)` (to float32 rounding: XLA's division is not numpy's).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def scale_intensities(image: jax.Array, intensity: jax.Array,
                      image_size: jax.Array | None = None) -> jax.Array:
  """Per-channel linear stretch of a batch of integer images to float32 [0, 1].

  Args:
    image: uint8 / uint16 (any real dtype) [B, H, W, C] raw intensities, canvas padding 0.
    intensity: float32 [B, 2, C]: row 0 the value that maps to 0, row 1 the value that maps
      to 1 (e.g. the 0.5 and 99.5 percentiles of the whole source image).
    image_size: int32 [B, 2] (height, width) of the real image in each canvas; pixels beyond
      it stay 0, as on a host-normalised canvas. None: the whole canvas is real.

  Returns:
    float32 [B, H, W, C]: clip((image - lo) / max(hi - lo, 1e-6), 0, 1).
  """
  lo = intensity[:, 0, None, None, :].astype(jnp.float32)
  hi = intensity[:, 1, None, None, :].astype(jnp.float32)
  out = jnp.clip((image.astype(jnp.float32) - lo) / jnp.maximum(hi - lo, 1e-6), 0.0, 1.0)
  if image_size is None:
    return out
  h, w = image.shape[1:3]
  inside = ((jnp.arange(h)[None, :, None] < image_size[:, 0, None, None])
            & (jnp.arange(w)[None, None, :] < image_size[:, 1, None, None]))
  return jnp.where(inside[..., None], out, 0.0)
