"""Centerness + centre-box head of the partial-annotation module (DESIGN.md, PA point 2).

Reads the shared RPN 3x3 conv output on P2 (stride 4; ``RPNOutput.hidden['p2']``) and
predicts, per location, the logit of "this pixel is inside the central 0.3 x 0.3 box of a
nucleus" and 4 deltas that decode (against a fixed-size anchor centred on the pixel, see
``pa_jax.partial``) into that nucleus' box. Two sibling 1x1 convs, no extra trunk: the
paper keeps the module tiny (< 1 % more parameters than the baseline).

The head only exists when ``config.model.partial.enabled``; the baseline never builds it,
so disabling the module leaves the parameter tree and the outputs of the baseline intact.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from pa_jax.models.layers import pointwise_conv

Array = jax.Array


class CenternessOutput(NamedTuple):
  """logits: float32 ``[B, H, W]`` centerness logits (sigmoid -> probability);
  deltas: float32 ``[B, H, W, 4]`` ``(dx, dy, dw, dh)`` box deltas per location."""

  logits: Array
  deltas: Array


class CenternessHead(nn.Module):
  """Two 1x1 convs on the shared RPN hidden map of P2.

  Attributes:
    prior_prob: initial sigmoid output of the logit bias. 0.5 (bias 0) by default -- the
      targets are sampled 1:1 positive/negative, so no class-imbalance prior is needed.
    dtype: computation dtype (parameters float32, outputs float32).

  ``__call__(hidden)``: ``hidden`` float ``[B, H, W, C]``; returns
  :class:`CenternessOutput` (``logits [B, H, W]``, ``deltas [B, H, W, 4]``).
  """

  prior_prob: float = 0.5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, hidden: Array) -> CenternessOutput:
    bias = math.log(self.prior_prob / (1.0 - self.prior_prob))
    common = dict(
        kernel_init=nn.initializers.normal(stddev=0.01), dtype=self.dtype, param_dtype=jnp.float32
    )
    h = hidden.astype(self.dtype)
    logits = pointwise_conv(
        1, bias_init=nn.initializers.constant(bias), name="centerness", **common
    )(h)
    deltas = pointwise_conv(4, bias_init=nn.initializers.zeros, name="box", **common)(h)
    return CenternessOutput(logits[..., 0].astype(jnp.float32), deltas.astype(jnp.float32))
