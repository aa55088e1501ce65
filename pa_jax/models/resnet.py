"""ResNet / ResNeXt backbones (torchvision layout) returning the C2..C5 feature maps.

Architecture follows ``torchvision.models.resnet`` exactly ("ResNet v1.5"): a 7x7/2 stem
conv + norm + ReLU + 3x3/2 max-pool, then four stages ``layer1..layer4`` of BasicBlocks
(depth 18/34) or Bottlenecks (50/101, ResNeXt), with the stage stride placed in the 3x3
conv of the bottleneck and a 1x1 conv + norm projection shortcut (``downsample``) where
the shape changes. All paddings are explicit and symmetric, as in PyTorch, so that
imported weights give the same numbers (flax's ``'SAME'`` pads stride-2 convs
asymmetrically).

Parameter names are chosen so that a torchvision state dict maps onto them by a
mechanical rule (the importer itself lives elsewhere):

=================================  ==========================================
torchvision key                    flax variable path
=================================  ==========================================
``conv1.weight``                   ``params/conv1/kernel`` (OIHW -> HWIO)
``bn1.weight`` / ``bn1.bias``      ``<coll>/bn1/scale`` / ``<coll>/bn1/bias``
``bn1.running_mean`` / ``_var``    ``<coll>/bn1/mean`` / ``<coll>/bn1/var``
``layer1.0.conv1.weight``          ``params/layer1_0/conv1/kernel``
``layer2.0.downsample.0.weight``   ``params/layer2_0/downsample_0/kernel``
``layer2.0.downsample.1.weight``   ``<coll>/layer2_0/downsample_1/scale``
=================================  ==========================================

i.e. ``<module>.<int>`` pairs are joined with ``_``, other dots become ``/``; conv
``weight`` -> ``kernel`` transposed (2, 3, 1, 0); norm ``weight`` -> ``scale``,
``running_mean`` -> ``mean``, ``running_var`` -> ``var``; ``num_batches_tracked`` and
``fc.*`` are dropped. ``<coll>`` is ``'frozen'`` for ``norm='frozen_bn'`` (everything),
``'params'`` (scale/bias) + ``'batch_stats'`` (mean/var) for ``'bn'``, ``'params'`` for
``'group_norm'``. Grouped convs (ResNeXt) have torchvision's weight ``[O, I/G, 3, 3]``,
which transposes to flax's ``feature_group_count`` kernel ``[3, 3, I/G, O]`` directly.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from pa_jax.models.layers import pointwise_conv
from pa_jax.models.norm import make_norm, normalize
from pa_jax.models.padding import padding_mask, zero_padding
from pa_jax.ops.max_pool import max_pool_3x3_s2

Array = jax.Array

# Block type and blocks per stage for each supported depth (torchvision).
STAGE_SIZES: Dict[int, Tuple[int, int, int, int]] = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}

# Named configurations accepted by :func:`resnet` (kwargs of :class:`ResNet`).
BACKBONES: Dict[str, Dict[str, Any]] = {
    "resnet18": dict(depth=18),
    "resnet34": dict(depth=34),
    "resnet50": dict(depth=50),
    "resnet101": dict(depth=101),
    "resnext101_32x8d": dict(depth=101, groups=32, width_per_group=8),
    "resnext101_64x4d": dict(depth=101, groups=64, width_per_group=4),
}

# torchvision initialisation: kaiming_normal_(mode='fan_out', nonlinearity='relu').
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _conv(
    features: int, kernel: int, stride: int, name: str, groups: int = 1, dtype=jnp.float32
) -> nn.Conv:
  """Bias-free conv with PyTorch's symmetric padding ``kernel // 2`` (1x1: a matmul, layers.py)."""
  if kernel == 1 and groups == 1:
    return pointwise_conv(
        features,
        strides=stride,
        use_bias=False,
        kernel_init=_conv_init,
        dtype=dtype,
        param_dtype=jnp.float32,
        name=name,
    )
  pad = kernel // 2
  return nn.Conv(
      features,
      (kernel, kernel),
      strides=(stride, stride),
      padding=((pad, pad), (pad, pad)),
      feature_group_count=groups,
      use_bias=False,
      kernel_init=_conv_init,
      dtype=dtype,
      param_dtype=jnp.float32,
      name=name,
  )


def _valid(image_size: Optional[Array], x: Array, stride: int) -> Optional[Array]:
  """bool ``[B, h, w]`` image cells of a map ``x`` at ``stride``, or None (no masking)."""
  return None if image_size is None else padding_mask(image_size, x.shape[1:3], stride)


class BasicBlock(nn.Module):
  """Two 3x3 convs with a residual (ResNet-18/34). ``[B,H,W,Cin]`` -> ``[B,H/s,W/s,planes]``."""

  planes: int
  stride: int = 1
  norm: str = "frozen_bn"
  train: bool = False
  dtype: Any = jnp.float32

  expansion = 1

  @nn.compact
  def __call__(self, x: Array, image_size: Optional[Array] = None, in_stride: int = 4) -> Array:
    """``x`` at ``in_stride``; ``image_size`` int ``[B, 2]`` masks the canvas padding
    (:func:`pa_jax.models.norm.normalize`), None leaves it."""
    norm = make_norm(self.norm, train=self.train, dtype=self.dtype)
    out = _conv(self.planes, 3, self.stride, "conv1", dtype=self.dtype)(x)
    valid = _valid(image_size, out, in_stride * self.stride)
    out = nn.relu(normalize(norm, "bn1", out, valid))
    out = _conv(self.planes, 3, 1, "conv2", dtype=self.dtype)(out)
    out = normalize(norm, "bn2", out, valid)
    shortcut = x
    if self.stride != 1 or x.shape[-1] != self.planes:
      shortcut = _conv(self.planes, 1, self.stride, "downsample_0", dtype=self.dtype)(x)
      shortcut = normalize(norm, "downsample_1", shortcut, valid)
    return nn.relu(out + shortcut)


class Bottleneck(nn.Module):
  """1x1 -> 3x3 (stride, groups) -> 1x1 bottleneck with residual (ResNet-50+/ResNeXt).

  Inner width = ``int(planes * width_per_group / 64) * groups`` (torchvision), output
  channels ``4 * planes``. ``[B,H,W,Cin]`` -> ``[B,H/s,W/s,4*planes]``.
  """

  planes: int
  stride: int = 1
  groups: int = 1
  width_per_group: int = 64
  norm: str = "frozen_bn"
  train: bool = False
  dtype: Any = jnp.float32

  expansion = 4

  @nn.compact
  def __call__(self, x: Array, image_size: Optional[Array] = None, in_stride: int = 4) -> Array:
    """``x`` at ``in_stride``; ``image_size`` int ``[B, 2]`` masks the canvas padding
    (:func:`pa_jax.models.norm.normalize`), None leaves it."""
    norm = make_norm(self.norm, train=self.train, dtype=self.dtype)
    width = int(self.planes * (self.width_per_group / 64.0)) * self.groups
    out_ch = self.planes * self.expansion
    out = _conv(width, 1, 1, "conv1", dtype=self.dtype)(x)
    out = nn.relu(normalize(norm, "bn1", out, _valid(image_size, out, in_stride)))
    # Stride in the 3x3 conv (v1.5), grouped for ResNeXt.
    out = _conv(width, 3, self.stride, "conv2", groups=self.groups, dtype=self.dtype)(out)
    valid = _valid(image_size, out, in_stride * self.stride)
    out = nn.relu(normalize(norm, "bn2", out, valid))
    out = _conv(out_ch, 1, 1, "conv3", dtype=self.dtype)(out)
    out = normalize(norm, "bn3", out, valid)
    shortcut = x
    if self.stride != 1 or x.shape[-1] != out_ch:
      shortcut = _conv(out_ch, 1, self.stride, "downsample_0", dtype=self.dtype)(x)
      shortcut = normalize(norm, "downsample_1", shortcut, valid)
    return nn.relu(out + shortcut)


class ResNet(nn.Module):
  """ResNet/ResNeXt feature extractor.

  Attributes:
    depth: 18 or 34 (BasicBlock), 50, 101 or 152 (Bottleneck).
    groups, width_per_group: ResNeXt cardinality and per-group width (torchvision's
      ``groups`` / ``width_per_group``); ResNeXt-101 64x4d is ``groups=64,
      width_per_group=4``. BasicBlock depths reject other values, as torchvision does.
    base_channels: stem width and stage-1 ``planes`` (64 in every standard net); stage
      ``i`` uses ``base_channels * 2**i`` planes. Small values (e.g. 8) give tiny
      networks for tests and CPU configs with the same topology.
    stage_sizes: optional override of the blocks per stage (e.g. ``(1, 1, 1, 1)``).
    norm: ``'frozen_bn'`` | ``'bn'`` | ``'group_norm'`` (see :mod:`pa_jax.models.norm`).
    freeze_at: detectron2 semantics. 0 = nothing frozen, 1 = stem, 2 = stem + res2
      (``layer1``), ... 5 = everything. Gradients are cut with ``jax.lax.stop_gradient``
      after the last frozen stage, so its parameters get exactly zero gradient; with
      ``norm='bn'`` the frozen stages also use running statistics (never updated),
      mirroring detectron2's conversion to FrozenBatchNorm. The optimiser should still
      mask those parameters out of weight decay: see :func:`trainable_mask`.
    dtype: computation dtype (parameters are float32).

  ``__call__(x, *, train=False, image_size=None)``:
    x: float ``[B, H, W, 3]`` normalised image, canvas padding 0.
    image_size: optional int ``[B, 2]`` real ``(H, W)`` of each image: GroupNorm
      statistics over the image's cells only and every norm's output zeroed outside them
      (:mod:`pa_jax.models.padding`). None: the whole canvas is the image.
    Returns ``{'c2', 'c3', 'c4', 'c5'}``: ``[B, ceil(H/4), ceil(W/4), 4*base]``,
    ``[B, ceil(H/8), .., 8*base]``, ``[B, ceil(H/16), .., 16*base]``,
    ``[B, ceil(H/32), .., 32*base]`` (x ``expansion``: 4 for bottlenecks, 1 for basic
    blocks); i.e. strides 4, 8, 16, 32 (exact when H, W are multiples of 32).
  """

  depth: int = 50
  groups: int = 1
  width_per_group: int = 64
  base_channels: int = 64
  stage_sizes: Optional[Sequence[int]] = None
  norm: str = "frozen_bn"
  freeze_at: int = 0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(
      self, x: Array, *, train: bool = False, image_size: Optional[Array] = None
  ) -> Dict[str, Array]:
    if self.depth not in STAGE_SIZES:
      raise ValueError(
          f"unsupported ResNet depth {self.depth}; expected one of {sorted(STAGE_SIZES)}"
      )
    stage_sizes = tuple(self.stage_sizes or STAGE_SIZES[self.depth])
    bottleneck = self.depth >= 50
    if not bottleneck and (self.groups != 1 or self.width_per_group != 64):
      raise ValueError("BasicBlock ResNets (depth 18/34) support only groups=1, width_per_group=64")

    def stage_train(stage: int) -> bool:
      # Frozen stages (stem = 1, layer1 = 2, ...) never update BN statistics.
      return train and stage > self.freeze_at

    x = x.astype(self.dtype)
    x = _conv(self.base_channels, 7, 2, "conv1", dtype=self.dtype)(x)
    x = normalize(make_norm(self.norm, train=stage_train(1), dtype=self.dtype), "bn1", x,
                  _valid(image_size, x, 2))
    x = nn.relu(x)
    # 3x3/2 max-pool with padding 1 and -inf padding like PyTorch: nn.max_pool's values, with
    # a gradient XLA:CPU computes 4x faster than select-and-scatter (ops/max_pool.py).
    x = max_pool_3x3_s2(x)
    # The pool's outputs in the padding next to the image hold the image's maxima: zero them,
    # since a BasicBlock's first 3x3 conv (and its identity shortcut) reads them directly.
    x = zero_padding(x, _valid(image_size, x, 4))
    if self.freeze_at >= 1:
      x = jax.lax.stop_gradient(x)

    outputs: Dict[str, Array] = {}
    in_stride = 4
    for i, num_blocks in enumerate(stage_sizes):
      planes = self.base_channels * 2**i
      for j in range(num_blocks):
        stride = 2 if (i > 0 and j == 0) else 1
        name = f"layer{i + 1}_{j}"
        if bottleneck:
          x = Bottleneck(
              planes,
              stride,
              groups=self.groups,
              width_per_group=self.width_per_group,
              norm=self.norm,
              train=stage_train(i + 2),
              dtype=self.dtype,
              name=name,
          )(x, image_size, in_stride)
        else:
          x = BasicBlock(
              planes, stride, norm=self.norm, train=stage_train(i + 2), dtype=self.dtype, name=name
          )(x, image_size, in_stride)
        in_stride *= stride
      if self.freeze_at >= i + 2:
        x = jax.lax.stop_gradient(x)
      outputs[f"c{i + 2}"] = x
    return outputs


def resnet(name: str, **overrides: Any) -> ResNet:
  """Build a named backbone (:data:`BACKBONES` keys), e.g. ``resnet('resnext101_64x4d',
  freeze_at=2)``; ``overrides`` replace any :class:`ResNet` attribute."""
  if name not in BACKBONES:
    raise ValueError(f"unknown backbone {name!r}; expected one of {sorted(BACKBONES)}")
  return ResNet(**{**BACKBONES[name], **overrides})


def is_frozen_module(module_name: str, freeze_at: int) -> bool:
  """Whether a top-level ResNet submodule (``'conv1'``, ``'bn1'``, ``'layer2_0'``, ...)
  belongs to a stage frozen by ``freeze_at`` (stem = stage 1, ``layerK`` = stage K+1)."""
  if module_name in ("conv1", "bn1"):
    return freeze_at >= 1
  if module_name.startswith("layer"):
    stage = int(module_name[len("layer") :].split("_")[0]) + 1
    return freeze_at >= stage
  return False


def trainable_mask(resnet_params: Any, freeze_at: int) -> Any:
  """Pytree of bools matching ``resnet_params`` (the ResNet's own ``'params'`` subtree):
  False for leaves of frozen stages. Use with ``optax.masked`` so weight decay and
  momentum leave frozen weights untouched (stop_gradient alone zeroes only the
  gradient, not the decoupled decay term)."""
  return {
      name: jax.tree_util.tree_map(lambda _: not is_frozen_module(name, freeze_at), sub)
      for name, sub in resnet_params.items()
  }
