"""Box and mask heads of Mask R-CNN, applied to RoIAlign features.

Both heads see a flat batch of R RoIs (all images' RoIs concatenated, or one image's
under ``vmap``); the RoIAlign itself lives in ``pa_jax.ops.roi_align``. Class index 0 is
background (torchvision convention); nuclei use ``num_classes = 2``.

Name map for weight import (torchvision ``roi_heads``):
``box_head.fc6`` -> ``fc6``, ``box_head.fc7`` -> ``fc7``, ``box_predictor.cls_score`` ->
``cls_score``, ``box_predictor.bbox_pred`` -> ``bbox_pred`` (Linear ``weight [out, in]`` ->
``kernel [in, out]``; ``fc6`` rows must also be permuted from torch's (C, H, W) flatten
order to our (H, W, C) order); ``mask_head.mask_fcn{i}`` -> ``mask_fcn{i}``,
``mask_predictor.conv5_mask`` -> ``conv5_mask`` (ConvTranspose weight ``[in, out, kh, kw]``
-> ``kernel [kh, kw, in, out]`` flipped in both spatial axes, since flax's ConvTranspose,
whose parameters ``layers.TransposeConv2x2`` keeps, is a dilated forward conv), ``mask_predictor.mask_fcn_logits`` -> ``mask_logits``
(torchvision predicts all ``num_classes`` maps; drop its background channel 0).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from pa_jax.models.layers import Conv3x3, pointwise_conv, transpose_conv_2x2

Array = jax.Array

# detectron2 initialisations: c2_xavier_fill for FCs (== kaiming_uniform(a=1)), c2_msra_fill
# for mask convs, and small normals for the predictors so initial outputs are near zero.
_fc_init = nn.initializers.variance_scaling(1.0, "fan_in", "uniform")
_msra_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class BoxHeadOutput(NamedTuple):
  """class_logits: float32 ``[R, num_classes]`` (index 0 = background).
  box_deltas: float32 ``[R, K, 4]`` ``(dx, dy, dw, dh)`` to be decoded with the box coder
    weights (10, 10, 5, 5); ``K = num_classes`` (class-specific; row k refines the box
    for class k, row 0 unused but kept for torchvision weight compatibility) or ``K = 1``
    (class-agnostic)."""

  class_logits: Array
  box_deltas: Array


class BoxHead(nn.Module):
  """Two-FC ("2mlp") box head + predictor.

  Attributes:
    num_classes: classes including background (2 for nuclei).
    fc_dim: width of both FC layers (1024).
    num_fcs: number of FC + ReLU layers (2).
    class_agnostic: predict one box per RoI instead of one per class.
    dtype: computation dtype (parameters and outputs float32).

  ``__call__(roi_features)``: float ``[R, 7, 7, C]`` -> :class:`BoxHeadOutput`.
  """

  num_classes: int = 2
  fc_dim: int = 1024
  num_fcs: int = 2
  class_agnostic: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, roi_features: Array) -> BoxHeadOutput:
    r = roi_features.shape[0]
    x = roi_features.astype(self.dtype).reshape(r, -1)  # (H, W, C) flatten order
    for i in range(self.num_fcs):
      x = nn.Dense(
          self.fc_dim,
          kernel_init=_fc_init,
          bias_init=nn.initializers.zeros,
          dtype=self.dtype,
          param_dtype=jnp.float32,
          name=f"fc{6 + i}",
      )(x)
      x = nn.relu(x)
    k = 1 if self.class_agnostic else self.num_classes
    logits = nn.Dense(
        self.num_classes,
        kernel_init=nn.initializers.normal(0.01),
        dtype=self.dtype,
        param_dtype=jnp.float32,
        name="cls_score",
    )(x)
    deltas = nn.Dense(
        4 * k,
        kernel_init=nn.initializers.normal(0.001),
        dtype=self.dtype,
        param_dtype=jnp.float32,
        name="bbox_pred",
    )(x)
    return BoxHeadOutput(logits.astype(jnp.float32), deltas.astype(jnp.float32).reshape(r, k, 4))


class MaskHead(nn.Module):
  """FCN mask head: ``num_convs`` x (3x3 conv + ReLU) -> 2x2/2 transposed conv + ReLU ->
  1x1 conv to per-class mask logits.

  Attributes:
    num_classes: classes including background; the head predicts ``num_classes - 1``
      foreground maps (channel ``k`` is class ``k + 1``), or 1 if ``class_agnostic``.
    conv_dim: channels of the convs and the deconv (256).
    num_convs: 4.
    class_agnostic: a single mask map for every class.
    dtype: computation dtype (parameters and outputs float32).

  ``__call__(roi_features)``: float ``[R, S, S, C]`` (S = 14) -> float32 mask logits
  ``[R, 2S, 2S, num_classes - 1]`` (28x28).
  """

  num_classes: int = 2
  conv_dim: int = 256
  num_convs: int = 4
  class_agnostic: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, roi_features: Array) -> Array:
    x = roi_features.astype(self.dtype)
    common = dict(dtype=self.dtype, param_dtype=jnp.float32, bias_init=nn.initializers.zeros)
    for i in range(self.num_convs):
      x = Conv3x3(self.conv_dim, kernel_init=_msra_init, name=f"mask_fcn{i + 1}", **common)(x)
      x = nn.relu(x)
    x = transpose_conv_2x2(self.conv_dim, kernel_init=_msra_init, name="conv5_mask", **common)(x)
    x = nn.relu(x)
    out = 1 if self.class_agnostic else self.num_classes - 1
    x = pointwise_conv(
        out, kernel_init=nn.initializers.normal(0.001), name="mask_logits", **common
    )(x)
    return x.astype(jnp.float32)
