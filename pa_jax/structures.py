"""Typed containers that cross the jit boundary.

All are `flax.struct` dataclasses (pytrees). Shapes are static: padding is described by a
boolean `valid` (True = real element). Boxes are float32 absolute pixels `(x0, y0, x1, y1)`
in the coordinates of the canvas the batch lives on (COCO/torchvision order).
"""

from __future__ import annotations

import jax
import numpy as np
from flax import struct


@struct.dataclass
class Batch:
  """A static-shape training/eval batch (B images on a canvas of H x W pixels).

  image:        float32 [B, H, W, 3], intensities scaled to [0, 1]; padding is 0. Or the
                raw uint8/uint16 pixels, with `intensity` (below).
  labels:       int32 [B, H, W] *annotated* instance label map of the canvas, relabelled so
                that value k (1..M) is instance slot k-1; 0 = background OR unannotated.
  boxes:        float32 [B, M, 4] (x0, y0, x1, y1) of each annotated instance, pixel edges
                (a one-pixel nucleus at column 5 has x0 = 5, x1 = 6).
  valid:        bool [B, M] True for real instances, False for padding slots.
  negative_boxes: float32 [B, M, 4] boxes of regions a person marked "not a nucleus"
                (rejected proposals; hard negatives, used with model.partial.hard_negatives).
  negative_valid: bool [B, M].
  image_size:   int32 [B, 2] (height, width) of the real image inside the canvas.
  unannotated_boxes: float32 [B, M, 4] boxes of the nuclei of the full labels that are NOT
                annotated in `labels` (known when a partial view was derived from full
                labels). Diagnostics only — never used by a loss: how many unannotated
                nuclei the PA boxes cover.
  unannotated_valid: bool [B, M].
  has_full:     bool [B] whether full labels were known for the image.
  intensity:    None when `image` holds float32 [0, 1] pixels; else float32 [B, 2, 3], the
                range of each image's raw uint8/uint16 pixels that `pixels()` stretches to
                [0, 1] on the device (row 0 low, row 1 high; `ops.intensity`).
  """

  image: jax.Array | np.ndarray
  labels: jax.Array | np.ndarray
  boxes: jax.Array | np.ndarray
  valid: jax.Array | np.ndarray
  negative_boxes: jax.Array | np.ndarray
  negative_valid: jax.Array | np.ndarray
  image_size: jax.Array | np.ndarray
  unannotated_boxes: jax.Array | np.ndarray
  unannotated_valid: jax.Array | np.ndarray
  has_full: jax.Array | np.ndarray
  intensity: jax.Array | np.ndarray | None = None

  def pixels(self) -> jax.Array:
    """float32 [B, H, W, 3] in [0, 1]: `image`, stretched by `intensity` when it holds
    integers (inside the compiled step, so the integers are what crosses to the device)."""
    import jax.numpy as jnp

    if self.intensity is None:
      return jnp.asarray(self.image, jnp.float32)
    from pa_jax.ops.intensity import scale_intensities

    return scale_intensities(self.image, self.intensity, self.image_size)

