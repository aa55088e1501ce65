"""Feature Pyramid Network (Lin et al. 2017) producing P2..P6 from C2..C5.

Same structure as torchvision's ``FeaturePyramidNetwork`` + ``LastLevelMaxPool`` (and
maskrcnn-benchmark's FPN used by the paper): per level a 1x1 lateral conv, a top-down
pathway (nearest-neighbour upsample of the coarser merged map, added to the lateral),
a 3x3 output conv, and P6 = ``max_pool(kernel=1, stride=2)`` of P5 (a plain stride-2
subsample used only by the RPN). No normalisation and no activation.

Name map for weight import: torchvision ``fpn.inner_blocks.{k}.0`` ->
``lateral{k+2}``, ``fpn.layer_blocks.{k}.0`` -> ``output{k+2}`` (conv kernel OIHW ->
HWIO, bias unchanged).
"""

from __future__ import annotations

from typing import Any, Dict, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from pa_jax.models.layers import pointwise_conv
from pa_jax.models.padding import padding_mask, zero_padding

Array = jax.Array

# torchvision FPN init: kaiming_uniform_(a=1) == variance_scaling(1, fan_in, uniform); bias 0.
_fpn_init = nn.initializers.variance_scaling(1.0, "fan_in", "uniform")


def resize_nearest(x: Array, size: tuple[int, int]) -> Array:
  """Nearest-neighbour resize of ``[B, h, w, C]`` to ``[B, H, W, C]`` with PyTorch's
  ``F.interpolate(mode='nearest')`` rule: source index ``floor(dst * in / out)``.

  For the usual exact 2x case this is a pure repeat; the general rule handles odd
  input sizes (where the finer map is ``2h - 1`` rows) without any padding tricks.
  Shapes are static, so the gathers are compile-time index arrays.
  """
  h, w = x.shape[1], x.shape[2]
  out_h, out_w = size
  if (out_h, out_w) == (2 * h, 2 * w):
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
  rows = np.minimum(np.floor(np.arange(out_h) * (h / out_h)).astype(np.int32), h - 1)
  cols = np.minimum(np.floor(np.arange(out_w) * (w / out_w)).astype(np.int32), w - 1)
  return jnp.take(jnp.take(x, rows, axis=1), cols, axis=2)


class FPN(nn.Module):
  """FPN over backbone features.

  Attributes:
    out_channels: channels of every output level (256 in the paper).
    add_p6: add P6 = stride-2 subsample of P5 (torchvision ``LastLevelMaxPool``).
    dtype: computation dtype (parameters float32).

  ``__call__(features, image_size=None)``:
    features: mapping with keys ``'c2'..'c5'`` (any contiguous subset ``'c{k}'``), each
      float ``[B, H_k, W_k, C_k]`` with stride ``2**k``.
    image_size: optional int ``[B, 2]`` real ``(H, W)`` of each image: the merged maps and
      the outputs are zeroed outside the image's cells (the convs' biases would fill the
      padding; :mod:`pa_jax.models.padding`). None: nothing is zeroed.
    Returns ``{'p2': [B, H_2, W_2, out], ..., 'p5': [...], 'p6': [B, ceil(H_5/2),
    ceil(W_5/2), out]}`` -- level ``p{k}`` has stride ``2**k``.
  """

  out_channels: int = 256
  add_p6: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(
      self, features: Mapping[str, Array], image_size: Array | None = None
  ) -> Dict[str, Array]:
    levels = sorted(int(k[1:]) for k in features if k.startswith("c"))
    if not levels:
      raise ValueError(f"FPN needs 'c<k>' inputs, got keys {sorted(features)}")

    def conv(kernel: int, name: str) -> nn.Module:
      if kernel == 1:  # The laterals: a matmul over channels (layers.py says why).
        return pointwise_conv(
            self.out_channels,
            kernel_init=_fpn_init,
            bias_init=nn.initializers.zeros,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            name=name,
        )
      pad = kernel // 2
      return nn.Conv(
          self.out_channels,
          (kernel, kernel),
          padding=((pad, pad), (pad, pad)),
          kernel_init=_fpn_init,
          bias_init=nn.initializers.zeros,
          dtype=self.dtype,
          param_dtype=jnp.float32,
          name=name,
      )

    outputs: Dict[str, Array] = {}
    merged = None
    # Top-down: coarsest level first, each finer lateral adds the upsampled sum.
    for k in reversed(levels):
      lateral = conv(1, f"lateral{k}")(features[f"c{k}"].astype(self.dtype))
      if merged is not None:
        lateral = lateral + resize_nearest(merged, lateral.shape[1:3])
      valid = None if image_size is None else padding_mask(image_size, lateral.shape[1:3], 2**k)
      merged = zero_padding(lateral, valid)
      outputs[f"p{k}"] = zero_padding(conv(3, f"output{k}")(merged), valid)
    if self.add_p6:
      top = levels[-1]
      outputs[f"p{top + 1}"] = outputs[f"p{top}"][:, ::2, ::2, :]
    return {k: outputs[k] for k in sorted(outputs, key=lambda s: int(s[1:]))}
