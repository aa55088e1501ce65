"""Flax linen modules of the Mask R-CNN + partial-annotation model (NHWC throughout).

One concept per file: ``norm`` (frozen BN / BN / GroupNorm factory), ``resnet``
(ResNet-18..101, ResNeXt-101), ``fpn`` (P2..P6), ``attention`` (factorized self-attention
and its Fig. 1 renderer), ``rpn`` (shared RPN head), ``partial`` (centerness head),
``roi_heads`` (box and mask heads), ``params`` (parameter counting), ``spec`` (the
model's static `ModelSpec` and its `Detections`), ``proposals`` (the per-image stages:
anchors, RPN targets, proposals, RoI sampling), ``mask_rcnn`` (the model that joins them).
"""

from pa_jax.models.attention import FactorizedAttention, render_attention
from pa_jax.models.fpn import FPN
from pa_jax.models.norm import FROZEN_COLLECTION, FrozenBatchNorm, GroupNorm, make_norm
from pa_jax.models.params import count_parameters, model_parameter_counts
from pa_jax.models.partial import CenternessHead, CenternessOutput
from pa_jax.models.resnet import BACKBONES, ResNet, resnet, trainable_mask
from pa_jax.models.roi_heads import BoxHead, BoxHeadOutput, MaskHead
from pa_jax.models.rpn import RPNHead, RPNOutput

__all__ = [
    "BACKBONES",
    "FPN",
    "FROZEN_COLLECTION",
    "BoxHead",
    "BoxHeadOutput",
    "CenternessHead",
    "CenternessOutput",
    "FactorizedAttention",
    "FrozenBatchNorm",
    "GroupNorm",
    "MaskHead",
    "RPNHead",
    "RPNOutput",
    "ResNet",
    "count_parameters",
    "make_norm",
    "model_parameter_counts",
    "render_attention",
    "resnet",
    "trainable_mask",
]
