"""Parameter counting, including the full-size model without allocating it.

:func:`model_parameter_counts` initialises every component under ``jax.eval_shape``, so
only shapes are computed (no memory, a second or two on CPU) -- enough to check the full
ResNeXt-101 64x4d FPN Mask R-CNN against the paper's Table 2 (102.1 M parameters).
"""

from __future__ import annotations

from typing import Any, Dict

import jax
import jax.numpy as jnp
import numpy as np

from pa_jax.models.attention import FactorizedAttention
from pa_jax.models.fpn import FPN
from pa_jax.models.norm import FROZEN_COLLECTION
from pa_jax.models.partial import CenternessHead
from pa_jax.models.resnet import resnet
from pa_jax.models.roi_heads import BoxHead, MaskHead
from pa_jax.models.rpn import RPNHead


def count_parameters(tree: Any) -> int:
  """Total number of scalars in a pytree of arrays or ``jax.ShapeDtypeStruct`` leaves."""
  return int(sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(tree)))


def _shapes(module, *args, **kwargs) -> Dict[str, Any]:
  """All variable collections of ``module.init`` as ShapeDtypeStructs (nothing allocated)."""
  return jax.eval_shape(lambda *a: module.init(jax.random.PRNGKey(0), *a, **kwargs), *args)


def model_parameter_counts(
    backbone: str = "resnext101_64x4d",
    *,
    norm: str = "frozen_bn",
    num_classes: int = 2,
    fpn_channels: int = 256,
    num_anchors: int = 3,
    box_fc_dim: int = 1024,
    mask_conv_dim: int = 256,
    partial: bool = False,
    attention_levels: int = 5,
    image_size: int = 256,
) -> Dict[str, int]:
  """Parameter counts of backbone + FPN + RPN + box head + mask head (+ PA module).

  Returns a dict of trainable ``'params'`` sizes per component (``'backbone'``,
  ``'fpn'``, ``'rpn'``, ``'box_head'``, ``'mask_head'``, and with ``partial``:
  ``'attention'`` (``attention_levels`` separate blocks, one per FPN level as in the
  released code) and ``'centerness'``), their sum ``'total'``, the backbone's
  non-trainable normalisation constants ``'backbone_norm_constants'`` (``'frozen'`` or
  ``'batch_stats'`` scalars), and ``'total_with_frozen_affine'``: the total plus the
  frozen BN scale/bias, i.e. what ``model.parameters()`` reports for a torchvision
  model that keeps BN affine as parameters.
  """
  img = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  bb = _shapes(resnet(backbone, norm=norm), img)
  feats = jax.eval_shape(lambda v, x: resnet(backbone, norm=norm).apply(v, x), bb, img)
  fpn = _shapes(FPN(fpn_channels), feats)
  pyramid = jax.eval_shape(lambda v, f: FPN(fpn_channels).apply(v, f), fpn, feats)
  rpn = _shapes(RPNHead(num_anchors), pyramid)
  box = _shapes(
      BoxHead(num_classes, box_fc_dim), jax.ShapeDtypeStruct((1, 7, 7, fpn_channels), jnp.float32)
  )
  mask = _shapes(
      MaskHead(num_classes, mask_conv_dim),
      jax.ShapeDtypeStruct((1, 14, 14, fpn_channels), jnp.float32),
  )

  counts = {
      "backbone": count_parameters(bb.get("params", {})),
      "fpn": count_parameters(fpn["params"]),
      "rpn": count_parameters(rpn["params"]),
      "box_head": count_parameters(box["params"]),
      "mask_head": count_parameters(mask["params"]),
  }
  if partial:
    p2 = pyramid["p2"]
    att = _shapes(FactorizedAttention(), p2)
    cen = _shapes(CenternessHead(), p2)
    counts["attention"] = attention_levels * count_parameters(att["params"])
    counts["centerness"] = count_parameters(cen["params"])
  counts["total"] = sum(counts.values())
  constants = {k: v for k, v in bb.items() if k != "params"}
  counts["backbone_norm_constants"] = count_parameters(constants)
  frozen_affine = 0
  if FROZEN_COLLECTION in bb:
    frozen_affine = count_parameters(
        [
            leaf
            for path, leaf in jax.tree_util.tree_leaves_with_path(bb[FROZEN_COLLECTION])
            if path[-1].key in ("scale", "bias")
        ]
    )
  counts["total_with_frozen_affine"] = counts["total"] + frozen_affine
  return counts
