"""Where each torchvision Mask R-CNN / ResNet tensor goes in our Flax variables, in what layout.

The name map (`torchvision_to_flax_names`) and the layout conversions (`convert_tensor`)
that `pa_jax.models.weights.import_pretrained` applies; pure functions of names and numpy
arrays (no torch, no jax).

=============================================  ==============================================
torchvision key                                flax variable (``<coll>/`` + path)
=============================================  ==============================================
``[backbone.body.]conv1.weight``               ``backbone/conv1/kernel``           (conv)
``[backbone.body.]bn1.weight|bias``            ``backbone/bn1/scale|bias``
``[backbone.body.]bn1.running_mean|var``       ``backbone/bn1/mean|var``
``[backbone.body.]layer2.0.downsample.0.*``    ``backbone/layer2_0/downsample_0/*``
``backbone.fpn.inner_blocks.{i}[.0].*``        ``fpn/lateral{i+2}/*``              (conv)
``backbone.fpn.layer_blocks.{i}[.0].*``        ``fpn/output{i+2}/*``               (conv)
``rpn.head.conv[.0.0].*``                      ``rpn/conv/*``                      (conv)
``rpn.head.cls_logits.*`` / ``bbox_pred.*``    ``rpn/objectness/*`` / ``rpn/deltas/*``
``roi_heads.box_head.fc6.*``                   ``box_head/fc6/*``       (linear, rows permuted)
``roi_heads.box_head.fc7.*``                   ``box_head/fc7/*``                  (linear)
``roi_heads.box_predictor.cls_score.*``        ``box_head/cls_score/*``   (linear, predictor)
``roi_heads.box_predictor.bbox_pred.*``        ``box_head/bbox_pred/*``   (linear, predictor)
``roi_heads.mask_head.{i}.0.*``                ``mask_head/mask_fcn{i+1}/*``        (conv)
``roi_heads.mask_head.mask_fcn{i}.*`` (old)    ``mask_head/mask_fcn{i}/*``          (conv)
``roi_heads.mask_predictor.conv5_mask.*``      ``mask_head/conv5_mask/*``  (conv-transpose)
``roi_heads.mask_predictor.mask_fcn_logits.*`` ``mask_head/mask_logits/*`` (conv, predictor,
                                               background channel 0 dropped)
``fc.*``, ``*.num_batches_tracked``            dropped
=============================================  ==============================================

Both the torchvision >= 0.13 names (``Conv2dNormActivation`` wrappers: ``.0`` / ``.0.0``)
and the older flat names are accepted. ``<coll>`` is found in the variables themselves:
``params`` for weights, ``frozen`` for every BN vector of ``norm='frozen_bn'``,
``params`` (scale/bias) + ``batch_stats`` (mean/var) for ``norm='bn'``; a
``norm='group_norm'`` model has no place for BN statistics and is refused.

Tensor layouts (all verified numerically in ``tests/models/test_models_weights.py``):

* Conv ``[O, I/G, kh, kw]`` -> ``[kh, kw, I/G, O]`` (grouped convs included).
* Linear ``[out, in]`` -> ``[in, out]``; ``fc6`` additionally reorders its input rows from
  torch's (C, H, W) flatten of the RoI features to our (H, W, C) one.
* ConvTranspose ``[in, out, kh, kw]`` -> ``[kh, kw, in, out]`` flipped in both spatial
  axes (flax's ``ConvTranspose`` with ``transpose_kernel=False`` is a forward correlation
  over the dilated input; torch's is the adjoint of a conv).
* BN ``weight, bias, running_mean, running_var`` -> ``scale, bias, mean, var``.
"""

from __future__ import annotations

import re
from typing import Any, Dict, Iterable, NamedTuple, Optional, Tuple

import numpy as np

__all__ = ["FlaxTarget", "convert_tensor", "torchvision_to_flax_names"]


class FlaxTarget(NamedTuple):
  """Where one torchvision tensor goes.

  path: module path + leaf name relative to the MaskRCNN variables of one collection,
    e.g. ``('backbone', 'layer1_0', 'bn1', 'mean')``; the collection (``params``,
    ``frozen``, ``batch_stats``) is looked up in the variables at import time.
  kind: the layout conversion, see :func:`convert_tensor`.
  """

  path: Tuple[str, ...]
  kind: str


# ------------------------------------------------------------------------------ name map

_DROP = object()  # sentinel: known name deliberately not imported

_NORM_LEAVES = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}

_RESNET_RE = re.compile(
    r"^(?:(conv1|bn1)|layer(\d+)\.(\d+)\.(conv\d+|bn\d+|downsample\.[01]))\.(\w+)$"
)
_FPN_RE = re.compile(r"^backbone\.fpn\.(inner|layer)_blocks\.(\d+)(?:\.0)?\.(weight|bias)$")
_RPN_RE = re.compile(r"^rpn\.head\.(conv(?:\.0\.0)?|cls_logits|bbox_pred)\.(weight|bias)$")
_BOX_RE = re.compile(
    r"^roi_heads\.(?:box_head\.(fc6|fc7)|box_predictor\.(cls_score|bbox_pred))\.(weight|bias)$"
)
_MASK_FCN_RE = re.compile(
    r"^roi_heads\.mask_head\.(?:mask_fcn(\d+)(?:\.0)?|(\d+)\.0)\.(weight|bias)$"
)
_MASK_PRED_RE = re.compile(
    r"^roi_heads\.mask_predictor\.(conv5_mask|mask_fcn_logits)\.(weight|bias)$"
)


def _resnet_target(key: str) -> Any:
  m = _RESNET_RE.match(key)
  if m is None:
    return None
  stem, stage, block, sub, leaf = m.groups()
  if stem:
    module: Tuple[str, ...] = ("backbone", stem)
    name = stem
  else:
    name = sub.replace(".", "_")
    module = ("backbone", f"layer{stage}_{block}", name)
  is_conv = name.startswith("conv") or name == "downsample_0"
  if is_conv:
    if leaf == "weight":
      return FlaxTarget(module + ("kernel",), "conv")
    return FlaxTarget(module + ("bias",), "vector") if leaf == "bias" else None
  if leaf == "num_batches_tracked":
    return _DROP
  if leaf in _NORM_LEAVES:
    return FlaxTarget(module + (_NORM_LEAVES[leaf],), "vector")
  return None


def _conv_target(module: Tuple[str, ...], leaf: str, weight_kind: str = "conv") -> FlaxTarget:
  if leaf == "weight":
    return FlaxTarget(module + ("kernel",), weight_kind)
  return FlaxTarget(module + ("bias",), "vector")


def _map_key(key: str) -> Any:
  """FlaxTarget, ``_DROP`` (known, not imported) or None (unknown name)."""
  if key.startswith("backbone.body."):
    return _resnet_target(key[len("backbone.body.") :])
  if key in ("fc.weight", "fc.bias"):
    return _DROP  # ImageNet classifier
  if key.startswith(("conv1.", "bn1.", "layer")):
    return _resnet_target(key)
  m = _FPN_RE.match(key)
  if m:
    kind, idx, leaf = m.groups()
    name = ("lateral" if kind == "inner" else "output") + str(int(idx) + 2)
    return _conv_target(("fpn", name), leaf)
  m = _RPN_RE.match(key)
  if m:
    layer, leaf = m.groups()
    name = {"cls_logits": "objectness", "bbox_pred": "deltas"}.get(layer, "conv")
    return _conv_target(("rpn", name), leaf)
  m = _BOX_RE.match(key)
  if m:
    fc, pred, leaf = m.groups()
    name = fc or pred
    if leaf == "weight":
      return FlaxTarget(("box_head", name, "kernel"), "fc6" if name == "fc6" else "linear")
    return FlaxTarget(("box_head", name, "bias"), "vector")
  m = _MASK_FCN_RE.match(key)
  if m:
    old, new, leaf = m.groups()
    n = int(old) if old is not None else int(new) + 1
    return _conv_target(("mask_head", f"mask_fcn{n}"), leaf)
  m = _MASK_PRED_RE.match(key)
  if m:
    layer, leaf = m.groups()
    if layer == "conv5_mask":
      return _conv_target(("mask_head", "conv5_mask"), leaf, "conv_transpose")
    if leaf == "weight":
      return FlaxTarget(("mask_head", "mask_logits", "kernel"), "mask_logits")
    return FlaxTarget(("mask_head", "mask_logits", "bias"), "mask_logits_bias")
  return None


def torchvision_to_flax_names(keys: Iterable[str]) -> Dict[str, Optional[FlaxTarget]]:
  """Name map of torchvision state-dict keys onto MaskRCNN variable paths.

  Args:
    keys: state-dict keys (classification ResNet/ResNeXt or FPN Mask R-CNN, old or new
      torchvision naming).
  Returns:
    ``{key: FlaxTarget}`` for every key with a counterpart, ``{key: None}`` for keys
    that are known but deliberately not imported (``fc.*``, ``num_batches_tracked``);
    unknown keys are absent. Paths are relative to a MaskRCNN (``backbone/...``); for a
    bare :class:`~pa_jax.models.resnet.ResNet` drop the leading ``'backbone'``.
  """
  out: Dict[str, Optional[FlaxTarget]] = {}
  for key in keys:
    t = _map_key(key)
    if t is _DROP:
      out[key] = None
    elif t is not None:
      out[key] = t
  return out


# ---------------------------------------------------------------------------- conversions


def convert_tensor(
    kind: str, value: np.ndarray, *, fc6_channels: Optional[int] = None
) -> np.ndarray:
  """Convert one torch tensor (numpy) to the flax layout.

  kinds: ``'conv'`` OIHW -> HWIO; ``'conv_transpose'`` ``[in, out, kh, kw]`` -> spatially
  flipped ``[kh, kw, in, out]``; ``'linear'`` ``[out, in]`` -> ``[in, out]``; ``'fc6'``
  ``[out, C*S*S]`` with (C, H, W)-ordered columns -> ``[S*S*C, out]`` with (H, W, C)-ordered
  rows (needs ``fc6_channels`` = C, square S x S RoIs); ``'mask_logits'`` conv without
  the background output channel 0; ``'mask_logits_bias'`` ``[N]`` -> ``[N-1]``;
  ``'vector'`` unchanged. Raises ValueError when ``value`` cannot have that layout.
  """
  v = np.asarray(value)
  want_ndim = {"conv": 4, "conv_transpose": 4, "mask_logits": 4, "linear": 2, "fc6": 2}.get(kind, 1)
  if v.ndim != want_ndim:
    raise ValueError(f"expected a {want_ndim}-d tensor for a {kind}")
  if kind == "conv":
    out = v.transpose(2, 3, 1, 0)
  elif kind == "mask_logits":
    out = v.transpose(2, 3, 1, 0)[..., 1:]
  elif kind == "mask_logits_bias":
    out = v[1:]
  elif kind == "conv_transpose":
    out = v.transpose(2, 3, 0, 1)[::-1, ::-1]
  elif kind == "linear":
    out = v.T
  elif kind == "fc6":
    n_out, n_in = v.shape
    c = fc6_channels or 0
    s = int(round(np.sqrt(n_in / c))) if c > 0 and n_in % c == 0 else 0
    if s == 0 or c * s * s != n_in:
      raise ValueError(f"fc6 input size {n_in} is not C*S*S for C={fc6_channels}")
    out = v.reshape(n_out, c, s, s).transpose(2, 3, 1, 0).reshape(s * s * c, n_out)
  elif kind == "vector":
    out = v
  else:
    raise ValueError(f"unknown tensor kind {kind!r}")
  return np.ascontiguousarray(out)
