"""Convolution layers whose weight gradients are matrix products, for XLA:CPU.

XLA:CPU computes the weight gradient ("wgrad") of some `conv_general_dilated` shapes tens
of times slower than the same sums written as matmuls. Each layer here creates exactly the
parameters of the flax layer it stands for (same names, shapes and initialiser draws), so
checkpoints, the shipped models and `models/weights.py`'s torchvision import are
unchanged; only the computation differs, equal up to float rounding. Measurements:
docs/performance.md ("Where XLA:CPU loses" and "The mask head on the CPU").

- `PointwiseConv`, every 1x1 convolution (ResNet shortcuts, FPN laterals, the RPN,
  centre-box and mask-logit heads), as one `dot_general` over channels. XLA's wgrad of a
  64->256 1x1 conv on a 90x90 map costs ~40x its own forward pass (0.31 CPU-s, against 2-3x
  for a 3x3 conv there); the einsum's takes 0.012 CPU-s.
- `TransposeConv2x2`, the mask head's 2x2 stride-2 transposed convolution (14x14 -> 28x28,
  `conv5_mask`): the output blocks do not overlap, so each input pixel's 2x2 block is one
  matmul. For 256 channels over the 256 mask slots of a paper-size batch XLA takes 38.9 s
  for `nn.ConvTranspose`'s wgrad against 0.25 s for the matmul's (0.55 s against 0.012 s
  at the `:cpu` configs' 64 channels and 128 slots).
- `Conv3x3`, the mask head's 3x3 convolutions: XLA's forward, and on the CPU a
  `custom_vjp` whose weight gradient is nine matmuls (one per tap) and whose input gradient
  is a plain forward convolution with the flipped, channel-swapped kernel (`_conv3x3_dgrad`).
  Over many small (14x14) RoI maps XLA:CPU's wgrad is 4x its forward at 256 channels x 256
  slots (3.76 s against 0.99 s for the matmuls); its own input gradient, inside the whole
  train step, ran off the XNNPACK path at 10x the forward's time.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import linen as nn

Initializer = Callable[..., jax.Array]


class _ChannelConv(nn.Module):
  """The attributes and parameters shared by the layers below: flax's conv-layer names,
  shapes and initialiser draws (`kernel [*window, C_in, features]`, `bias [features]`)."""

  features: int
  use_bias: bool = True
  kernel_init: Initializer = nn.initializers.lecun_normal()
  bias_init: Initializer = nn.initializers.zeros
  dtype: Any = None
  param_dtype: Any = jnp.float32

  def kernel_and_bias(self, window: tuple[int, int], c_in: int):
    """`kernel [*window, c_in, features]` and `bias [features]` (None without `use_bias`)."""
    kernel = self.param("kernel", self.kernel_init, (*window, c_in, self.features),
                        self.param_dtype)
    bias = (self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias else None)
    return kernel, bias


def _over_channels(x: jax.Array, w: jax.Array) -> jax.Array:
  """`x [..., C_in] @ w [C_in, K]` -> `[..., K]`: one matmul over the channel axis."""
  return jax.lax.dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ())))


class PointwiseConv(_ChannelConv):
  """`nn.Conv(features, (1, 1), strides=(s, s), padding=0)` as a channel matmul.

  Input `[..., H, W, C_in]` (NHWC; any leading batch dims) -> `[..., ceil(H/s), ceil(W/s),
  features]` in `dtype` (or the promoted input dtype when None): a stride `s` 1x1 conv
  without padding reads the pixels `x[..., ::s, ::s, :]`.
  """

  strides: int = 1

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel, bias = self.kernel_and_bias((1, 1), x.shape[-1])
    if self.strides != 1:
      x = x[..., :: self.strides, :: self.strides, :]
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    y = _over_channels(x, kernel[0, 0])
    if bias is not None:
      y = y + bias
    return y


#: The implementation `pointwise_conv` builds: True = `PointwiseConv` (the default), False =
#: `nn.Conv`. Same parameters either way; a switch for side-by-side measurements
#: (bench/pointwise_conv.py), read when a model is traced.
POINTWISE_AS_MATMUL = True


def pointwise_conv(features: int, *, name: str, strides: int = 1, **layer_kwargs) -> nn.Module:
  """A 1x1 convolution module (unpadded, stride `strides`): `PointwiseConv` or `nn.Conv`.

  `layer_kwargs` (`use_bias`, `kernel_init`, `bias_init`, `dtype`, `param_dtype`) go to
  either layer unchanged: the two take the same names with the same defaults.
  """
  if POINTWISE_AS_MATMUL:
    return PointwiseConv(features, strides=strides, name=name, **layer_kwargs)
  return nn.Conv(features, (1, 1), strides=(strides, strides), padding=((0, 0), (0, 0)),
                 name=name, **layer_kwargs)


class TransposeConv2x2(_ChannelConv):
  """`nn.ConvTranspose(features, (2, 2), strides=(2, 2), padding="VALID")` as a channel matmul.

  Input `[..., H, W, C_in]` (NHWC; any leading batch dims) -> `[..., 2H, 2W, features]` in
  `dtype` (or the promoted input dtype when None). With stride equal to the kernel size the
  output blocks do not overlap: `y[2h + i, 2w + j] = x[h, w] @ kernel[1 - i, 1 - j] + bias`.
  The kernel is read flipped because flax's `ConvTranspose` (`transpose_kernel=False`)
  correlates the stride-dilated input with the kernel, so output offset `i` of a block meets
  kernel tap `1 - i`.
  """

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel, bias = self.kernel_and_bias((2, 2), x.shape[-1])
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    # [C_in, 2, 2, C_out] with the taps flipped: one [.., C_in] x [C_in, 4 * C_out] product.
    taps = jnp.transpose(kernel[::-1, ::-1], (2, 0, 1, 3)).reshape(x.shape[-1], -1)
    y = _over_channels(x, taps)
    *lead, h, w, _ = x.shape
    y = y.reshape(*lead, h, w, 2, 2, self.features)
    # [..., h, w, i, j, o] -> [..., h, i, w, j, o] -> [..., 2h, 2w, o]
    y = jnp.moveaxis(y, -3, -4).reshape(*lead, 2 * h, 2 * w, self.features)
    if bias is not None:
      y = y + bias
    return y


#: The implementation `transpose_conv_2x2` builds: True = `TransposeConv2x2` (the default),
#: False = `nn.ConvTranspose`. Same parameters either way; read when a model is traced.
TRANSPOSE_CONV_AS_MATMUL = True


def transpose_conv_2x2(features: int, *, name: str, **layer_kwargs) -> nn.Module:
  """A 2x2 stride-2 unpadded transposed convolution: `TransposeConv2x2` or `nn.ConvTranspose`
  (`layer_kwargs` as `pointwise_conv`'s)."""
  if TRANSPOSE_CONV_AS_MATMUL:
    return TransposeConv2x2(features, name=name, **layer_kwargs)
  return nn.ConvTranspose(features, (2, 2), strides=(2, 2), padding="VALID", name=name,
                          **layer_kwargs)


def _taps_wgrad(x: jax.Array, g: jax.Array) -> jax.Array:
  """Weight gradient of a 3x3 SAME stride-1 correlation, one matmul per tap.

  Args:
    x: `[N, H, W, C_in]` layer input.
    g: `[N, H, W, C_out]` gradient of the layer output.

  Returns:
    `[3, 3, C_in, C_out]` in `g.dtype`: `dk[i, j] = sum_{n,h,w} xpad[n, h + i, w + j] g[n, h, w]`.
  """
  n, h, w, c = x.shape
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  gf = g.reshape(-1, g.shape[-1])
  rows = []
  for i in range(3):
    cols = [
        jax.lax.dot_general(
            xp[:, i : i + h, j : j + w, :].reshape(-1, c), gf, (((0,), (0,)), ((), ()))
        )
        for j in range(3)
    ]
    rows.append(jnp.stack(cols))
  return jnp.stack(rows).astype(g.dtype)


_DN = ("NHWC", "HWIO", "NHWC")


def _conv3x3_same(x: jax.Array, kernel: jax.Array) -> jax.Array:
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), ((1, 1), (1, 1)), dimension_numbers=_DN)


@jax.custom_vjp
def conv3x3_matmul_wgrad(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """`[N, H, W, C_in]` x `[3, 3, C_in, C_out]` -> `[N, H, W, C_out]`, SAME, stride 1.

  The same function as `lax.conv_general_dilated`; its kernel gradient is `_taps_wgrad`.
  """
  return _conv3x3_same(x, kernel)


def _conv3x3_fwd(x, kernel):
  return _conv3x3_same(x, kernel), (x, kernel)


def _conv3x3_dgrad(g: jax.Array, kernel: jax.Array) -> jax.Array:
  """Input gradient of a 3x3 SAME stride-1 correlation: the same correlation of `g` with
  the kernel flipped in space and with C_in and C_out swapped.

  The swapped kernel is materialised behind an optimisation barrier. Left to itself, XLA
  folds the swap into the convolution's dimension numbers (kernel layout `01oi`); in the
  whole train step XLA:CPU then runs that convolution on its generic path, not the
  XNNPACK one it uses for `01io`: 0.40 s against 0.04 s for 64 mask slots x 256 channels
  (a profile of the paper-size step, docs/performance.md). The copy is 0.6M floats.
  """
  flipped = jax.lax.optimization_barrier(jnp.flip(kernel, (0, 1)).swapaxes(2, 3))
  return _conv3x3_same(g, flipped)


def _conv3x3_bwd(res, g):
  x, kernel = res
  return _conv3x3_dgrad(g, kernel).astype(x.dtype), _taps_wgrad(x, g).astype(kernel.dtype)


conv3x3_matmul_wgrad.defvjp(_conv3x3_fwd, _conv3x3_bwd)

#: When `Conv3x3` takes its weight gradient from `_taps_wgrad`: "cpu" (the default) on the
#: CPU backend only, since GPU and TPU convolution libraries have fast wgrads of their own;
#: True / False always / never (side-by-side timing, tests). Read when a model is traced.
CONV3X3_WGRAD_AS_MATMUL: bool | str = "cpu"


def _use_matmul_wgrad() -> bool:
  if CONV3X3_WGRAD_AS_MATMUL == "cpu":
    return jax.default_backend() == "cpu"
  return bool(CONV3X3_WGRAD_AS_MATMUL)


class Conv3x3(_ChannelConv):
  """`nn.Conv(features, (3, 3), padding=((1, 1), (1, 1)))` with a matmul weight gradient.

  Input `[..., H, W, C_in]` (NHWC; any leading batch dims) -> `[..., H, W, features]` in
  `dtype` (or the promoted input dtype when None). Parameters `kernel [3, 3, C_in,
  features]` and `bias [features]`, as `nn.Conv`'s.
  """

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel, bias = self.kernel_and_bias((3, 3), x.shape[-1])
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    *lead, h, w, c = x.shape
    flat = x.reshape(-1, h, w, c)
    conv = conv3x3_matmul_wgrad if _use_matmul_wgrad() else _conv3x3_same
    y = conv(flat, kernel).reshape(*lead, h, w, self.features)
    if bias is not None:
      y = y + bias
    return y
