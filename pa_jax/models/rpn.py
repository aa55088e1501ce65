"""Region Proposal Network head (Ren et al. 2015), shared across FPN levels.

Same structure as torchvision's ``RPNHead`` / maskrcnn-benchmark's single-conv RPN head:
one 3x3 conv + ReLU, then two sibling 1x1 convs giving A objectness logits and 4A box
deltas per location. The same weights run on every pyramid level. The hidden map (output
of the shared 3x3 conv + ReLU) is returned too, because the partial-annotation centerness
head (:mod:`pa_jax.models.partial`) reads it on P2 (DESIGN.md, PA module point 2).

Name map for weight import: torchvision ``rpn.head.conv.0.0`` -> ``conv``,
``rpn.head.cls_logits`` -> ``objectness``, ``rpn.head.bbox_pred`` -> ``deltas``.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from pa_jax.models.layers import pointwise_conv

Array = jax.Array

_head_init = nn.initializers.normal(stddev=0.01)  # torchvision / detectron2 RPN init


class RPNOutput(NamedTuple):
  """Per-level RPN predictions (dicts keyed like the input, e.g. ``'p2'..'p6'``).

  objectness: float32 ``[B, H_l, W_l, A]`` logits; anchor ``a`` at location ``(y, x)``.
  deltas: float32 ``[B, H_l, W_l, A, 4]`` box-regression deltas ``(dx, dy, dw, dh)`` for
    the same anchor (the conv's ``4A`` channels are anchor-major, as in torchvision, so
    ``reshape(..., A, 4)`` keeps weight import exact). Anchors must be enumerated in
    (y, x, a) order to line up with a row-major flatten of these arrays.
  hidden: ``[B, H_l, W_l, C]`` output of the shared 3x3 conv + ReLU (compute dtype);
    ``hidden['p2']`` feeds the centerness head.
  """

  objectness: Dict[str, Array]
  deltas: Dict[str, Array]
  hidden: Dict[str, Array]


class RPNHead(nn.Module):
  """Shared-weight RPN head.

  Attributes:
    num_anchors: A, anchors per location (3 aspect ratios x 1 size per FPN level).
    conv_channels: width of the shared 3x3 conv; None = input channels (torchvision).
    dtype: computation dtype (parameters float32; outputs cast to float32).

  ``__call__(features)``: mapping level name -> float ``[B, H_l, W_l, C]`` (all levels
  with the same C, e.g. the FPN output). Returns :class:`RPNOutput`.
  """

  num_anchors: int = 3
  conv_channels: Optional[int] = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, features: Mapping[str, Array]) -> RPNOutput:
    names = list(features)
    channels = self.conv_channels or features[names[0]].shape[-1]
    common = dict(
        kernel_init=_head_init,
        bias_init=nn.initializers.zeros,
        dtype=self.dtype,
        param_dtype=jnp.float32,
    )
    # Created once, called per level: linen shares the parameters across calls.
    conv = nn.Conv(channels, (3, 3), padding=((1, 1), (1, 1)), name="conv", **common)
    cls = pointwise_conv(self.num_anchors, name="objectness", **common)
    reg = pointwise_conv(4 * self.num_anchors, name="deltas", **common)
    objectness, deltas, hidden = {}, {}, {}
    for name in names:
      t = nn.relu(conv(features[name].astype(self.dtype)))
      hidden[name] = t
      objectness[name] = cls(t).astype(jnp.float32)
      d = reg(t).astype(jnp.float32)
      deltas[name] = d.reshape(d.shape[:-1] + (self.num_anchors, 4))
    return RPNOutput(objectness, deltas, hidden)
