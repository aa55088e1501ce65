"""Normalisation layers used by the backbone, and a factory that picks one by name.

Three kinds, selected by a string so that configs can switch them:

* ``'frozen_bn'`` -- :class:`FrozenBatchNorm`: BatchNorm whose statistics *and* affine
  parameters are constants. They live in the ``'frozen'`` variable collection
  (:data:`FROZEN_COLLECTION`), never in ``'params'``, so an optimiser that only sees
  ``variables['params']`` cannot change them, and no ``mutable=`` is needed in training.
  This is what detectron2 / maskrcnn-benchmark use for detection fine-tuning, where the
  per-GPU batch (1--2 images) is far too small for batch statistics.
* ``'bn'`` -- ``flax.linen.BatchNorm`` (statistics in ``'batch_stats'``),
  ``use_running_average = not train``; momentum 0.9 in flax == 0.1 in PyTorch. The
  detector calls its backbone with ``train=False`` (same small-batch reason), so there
  it normalises with the imported running statistics, never updates them, and trains
  only ``scale``/``bias``.
* ``'group_norm'`` -- :class:`GroupNorm` with 32 groups (affine in ``'params'``).

Every kind stores its variables under the same leaf names -- ``scale``, ``bias`` and, for
the BatchNorms, ``mean`` and ``var`` -- so a torchvision ``bn.weight / bn.bias /
bn.running_mean / bn.running_var`` maps onto ``scale / bias / mean / var`` regardless of
the collection the kind uses.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from pa_jax.models.padding import zero_padding

Array = jax.Array

#: Variable collection holding the constants of :class:`FrozenBatchNorm`.
FROZEN_COLLECTION = "frozen"

NORM_KINDS = ("frozen_bn", "bn", "group_norm")

# torchvision's BatchNorm2d / FrozenBatchNorm2d epsilon, needed for exact weight import.
BN_EPSILON = 1e-5


class FrozenBatchNorm(nn.Module):
  """BatchNorm with fixed statistics and affine transform.

  ``y = (x - mean) / sqrt(var + eps) * scale + bias`` applied per channel (last axis),
  folded into one multiply-add. All four vectors are float32 ``[C]`` variables in the
  ``'frozen'`` collection, initialised to the identity (scale 1, bias 0, mean 0, var 1);
  a weight importer overwrites them with pretrained values.

  Input ``x``: ``[..., C]`` any float dtype. Output: same shape, dtype ``self.dtype`` or
  ``x.dtype``.
  """

  epsilon: float = BN_EPSILON
  dtype: Any = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c = x.shape[-1]
    ones = lambda: jnp.ones((c,), jnp.float32)  # noqa: E731
    zeros = lambda: jnp.zeros((c,), jnp.float32)  # noqa: E731
    scale = self.variable(FROZEN_COLLECTION, "scale", ones).value
    bias = self.variable(FROZEN_COLLECTION, "bias", zeros).value
    mean = self.variable(FROZEN_COLLECTION, "mean", zeros).value
    var = self.variable(FROZEN_COLLECTION, "var", ones).value
    # Fold into y = x * a + b in float32, then cast: one fused op at compute dtype.
    a = scale * jax.lax.rsqrt(var + self.epsilon)
    b = bias - mean * a
    dtype = self.dtype or x.dtype
    return x.astype(dtype) * a.astype(dtype) + b.astype(dtype)


def group_norm_groups(channels: int, max_groups: int = 32) -> int:
  """Largest divisor of ``channels`` that is <= ``max_groups``.

  Equals 32 for every full-size layer (all channel counts are multiples of 32); the
  fallback only matters for the tiny test/CPU networks whose widths are not.
  """
  for g in range(min(max_groups, channels), 0, -1):
    if channels % g == 0:
      return g
  return 1


class GroupNorm(nn.Module):
  """Group normalisation (Wu & He 2018) over NHWC features.

  Statistics per sample and per group over (H, W, C/G), in float32. ``num_groups`` is
  the target group count (32); for channel counts not divisible by it the largest
  divisor below it is used (see :func:`group_norm_groups`). Affine ``scale`` / ``bias``
  are float32 ``[C]`` in ``'params'``.

  Input ``x``: ``[B, ..., C]``; ``valid``: optional bool ``[B, ...]`` (``x`` without its
  channel axis), the cells whose statistics count (the image, not the canvas padding:
  :mod:`pa_jax.models.padding`). Output: same shape, dtype ``self.dtype`` or ``x.dtype``;
  cells outside ``valid`` are normalised with the image's statistics, not zeroed (use
  :func:`normalize` for that).

  Computed as flax's ``nn.GroupNorm`` does by default: the mean and the mean square in one
  pass (one fusion on XLA:CPU), variance ``E[x^2] - E[x]^2`` clipped at 0, then one
  per-channel multiply-add. The two-pass form (``mean((x - mean)^2)``) it replaces gave the
  same outputs to ~1e-6 but its gradient took 30.7 ms over the `:cpu` backbone's 20 norms
  against 5.0 ms (12.3 against 0.7 ms at the stem's [2, 128, 128, 32], one channel per
  group): ``python bench/norm_cpu.py`` (bench/results/norm_cpu.json), docs/performance.md.
  """

  num_groups: int = 32
  epsilon: float = BN_EPSILON
  dtype: Any = None

  @nn.compact
  def __call__(self, x: Array, valid: Array | None = None) -> Array:
    c = x.shape[-1]
    g = group_norm_groups(c, self.num_groups)
    scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    xf = x.astype(jnp.float32)
    grouped = xf.reshape(x.shape[:1] + (-1, g, c // g))  # [B, H*W*..., G, C/G]
    if valid is None:
      mean = grouped.mean(axis=(1, 3))  # [B, G]
      mean_sq = jnp.square(grouped).mean(axis=(1, 3))
    else:
      # Sums over the valid cells only, divided by their count (at least 1: an image with
      # no valid cell gets finite statistics and is zeroed by the caller anyway).
      m = valid.reshape(x.shape[:1] + (-1, 1, 1))
      inside = jnp.where(m, grouped, 0.0)
      count = jnp.maximum(jnp.sum(m, axis=(1, 2, 3)).astype(jnp.float32) * (c // g), 1.0)
      mean = jnp.sum(inside, axis=(1, 3)) / count[:, None]
      mean_sq = jnp.sum(jnp.square(inside), axis=(1, 3)) / count[:, None]
    inv_std = jax.lax.rsqrt(jnp.maximum(mean_sq - jnp.square(mean), 0.0) + self.epsilon)
    # Per sample and channel: y = x * mul + add, mul = scale / std, add = bias - mean * mul.
    mul = (inv_std[:, :, None] * scale.reshape(g, c // g)).reshape(-1, c)
    add = bias - (mean[:, :, None] * mul.reshape(-1, g, c // g)).reshape(-1, c)
    spatial = (1,) * (x.ndim - 2)
    y = xf * mul.reshape(-1, *spatial, c) + add.reshape(-1, *spatial, c)
    return y.astype(self.dtype or x.dtype)


def normalize(norm: Callable[..., nn.Module], name: str, x: Array,
              valid: Array | None = None) -> Array:
  """``norm(name=name)`` applied to ``x`` ``[B, h, w, C]`` (inside a compact method).

  With ``valid`` bool ``[B, h, w]`` (the image's cells, :mod:`pa_jax.models.padding`),
  GroupNorm takes its statistics over those cells only, and every kind's output is 0
  outside them: the shift a norm adds would otherwise put non-zero values into the
  padding, which the next 3x3 convolution reads at the image's edges. None: the layer
  alone, exactly as without masking.
  """
  layer = norm(name=name)
  if valid is None:
    return layer(x)
  y = layer(x, valid) if isinstance(layer, GroupNorm) else layer(x)
  return zero_padding(y, valid)


def make_norm(kind: str, *, train: bool, dtype: Any = jnp.float32) -> Callable[..., nn.Module]:
  """Return a constructor for the normalisation layer ``kind``.

  Usage inside a compact method: ``norm = make_norm('frozen_bn', train=train)`` then
  ``y = norm(name='bn1')(x)``. ``train`` only matters for ``'bn'`` (batch statistics and
  running-average updates, which need ``mutable=['batch_stats']`` in ``apply``).
  """
  if kind == "frozen_bn":
    return functools.partial(FrozenBatchNorm, dtype=dtype)
  if kind == "bn":
    return functools.partial(
        nn.BatchNorm,
        use_running_average=not train,
        momentum=0.9,
        epsilon=BN_EPSILON,
        dtype=dtype,
        param_dtype=jnp.float32,
    )
  if kind == "group_norm":
    return functools.partial(GroupNorm, num_groups=32, dtype=dtype)
  raise ValueError(f"unknown norm kind {kind!r}; expected one of {NORM_KINDS}")
