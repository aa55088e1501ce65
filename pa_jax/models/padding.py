"""Which feature cells hold the image, and keeping the canvas padding out of the network.

A batch is padded to a static canvas (training: the config's crop; prediction: a multiple of
32 or a bucket, `infer.predictor`). Left alone, the padding reaches the real cells four
ways, so the same image gives other detections on a bigger canvas:

* GroupNorm statistics are means over the whole map, padding included;
* every layer with a bias (or a norm's shift) writes non-zero values into the padding, which
  the next 3x3 convolution reads at the image's bottom and right edges;
* the attention's key softmax runs over every position;
* anchors centred in the padding compete for proposals, and a bigger canvas has more.

With `model.mask_padding` the statistics are taken over the image's cells only, every
norm, FPN level and attention output is zeroed outside them (`zero_padding`), and only
anchors centred inside the image are proposed (`generate_proposals(anchors_in_image=True)`). Then a cell
of the image sees exactly what it would see on the smallest canvas, because a convolution's
own zero padding and a zeroed padding cell read the same: the network's output on the
image does not depend on the canvas (up to float rounding; tests/models/test_models_padding.py).
Two places need more than zeroing:

* the stem's max pool pads with -inf where the canvas ends and reads zeros in a zeroed
  padding, the same maximum after a ReLU; its own outputs next to the image are zeroed too;
* RoIAlign clamps samples at the end of its map, which is where the canvas ends: its maps
  end where the smallest multiple-of-32 canvas holding the image would end
  (`MaskRCNN._roi_extent`, `ops.roi_align` "Where the map ends").
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

#: Every canvas is a multiple of this (the backbone's largest stride, C5's): the predictor's
#: smallest canvas for an image (`infer.predictor.canvas_for`) and the one RoIAlign's maps
#: end at under `model.mask_padding` (`smallest_canvas`) must be the same.
CANVAS_MULTIPLE = 32


def smallest_canvas(image_size: Array) -> Array:
  """int32 ``[..., 2]``: each side of ``image_size`` rounded up to `CANVAS_MULTIPLE`."""
  m = CANVAS_MULTIPLE
  return -(-jnp.asarray(image_size, jnp.int32) // m) * m


def padding_mask(image_size: Array, feature_hw: tuple[int, int], stride: int) -> Array:
  """Feature cells that hold at least one real pixel of the image.

  Cell ``(i, j)`` of a map at ``stride`` covers canvas pixels ``[s*i, s*i + s) x [s*j,
  s*j + s)``; the real image is the top-left ``[0, H) x [0, W)`` of the canvas, so the cell
  is real iff ``s*i < H`` and ``s*j < W``.

  Args:
    image_size: int ``[B, 2]`` real ``(H, W)`` of each image (``Batch.image_size``).
    feature_hw: static ``(h, w)`` of the feature map.
    stride: static stride of the map (4 for P2, 2**k for Pk).

  Returns:
    bool ``[B, h, w]``.
  """
  h, w = feature_hw
  size = jnp.asarray(image_size)
  rows = jnp.arange(h) * stride < size[:, 0:1]  # [B, h]
  cols = jnp.arange(w) * stride < size[:, 1:2]  # [B, w]
  return rows[:, :, None] & cols[:, None, :]


def zero_padding(x: Array, valid: Array | None) -> Array:
  """``x`` float ``[B, h, w, C]`` with the cells outside ``valid`` bool ``[B, h, w]`` set to
  0 (same dtype); ``x`` itself when ``valid`` is None."""
  if valid is None:
    return x
  return jnp.where(valid[..., None], x, jnp.zeros((), x.dtype))
