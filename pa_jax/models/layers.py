"""A 1x1 convolution written as a matrix product over channels.

Why: XLA:CPU's weight gradient of a 1x1 `conv_general_dilated` is an outlier. For a
64->256 channel 1x1 conv on a 90x90 map it costs ~40x its own forward pass (0.31 CPU-s,
against 2-3x for every 3x3 conv), while the same product written as an einsum takes
0.012 CPU-s for that gradient (docs/performance.md, "Where XLA:CPU loses"). ResNet
shortcuts, the FPN laterals and every prediction head (RPN, centre-box, mask logits) are
1x1 convs, at the highest resolutions.

`PointwiseConv` creates exactly the parameters `nn.Conv(features, (1, 1))` would: `kernel`
float32 `[1, 1, C_in, C_out]` drawn by the same initialiser from the same key, and `bias`
`[C_out]`, so checkpoints, shipped models and `models/weights.py`'s torchvision import
are unchanged. Only the computation differs (a dot over the channel axis instead of a
convolution), equal up to float rounding.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import linen as nn

Initializer = Callable[..., jax.Array]


class PointwiseConv(nn.Module):
  """`nn.Conv(features, (1, 1), strides=(s, s), padding=0)` as a channel matmul.

  Input `[..., H, W, C_in]` (NHWC; any leading batch dims) -> `[..., ceil(H/s), ceil(W/s),
  features]` in `dtype` (or the promoted input dtype when None): a stride `s` 1x1 conv
  without padding reads the pixels `x[..., ::s, ::s, :]`.
  """

  features: int
  strides: int = 1
  use_bias: bool = True
  kernel_init: Initializer = nn.initializers.lecun_normal()
  bias_init: Initializer = nn.initializers.zeros
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param(
        "kernel", self.kernel_init, (1, 1, x.shape[-1], self.features), self.param_dtype
    )
    bias = (
        self.param("bias", self.bias_init, (self.features,), self.param_dtype)
        if self.use_bias
        else None
    )
    if self.strides != 1:
      x = x[..., :: self.strides, :: self.strides, :]
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    y = jax.lax.dot_general(x, kernel[0, 0], (((x.ndim - 1,), (0,)), ((), ())))
    if bias is not None:
      y = y + bias
    return y


#: The implementation `pointwise_conv` builds: True = `PointwiseConv` (the default), False =
#: `nn.Conv`. Same parameters either way; a switch for side-by-side measurements
#: (bench/pointwise_conv.py), read when a model is traced.
POINTWISE_AS_MATMUL = True


def pointwise_conv(
    features: int,
    *,
    name: str,
    strides: int = 1,
    use_bias: bool = True,
    kernel_init: Initializer = nn.initializers.lecun_normal(),
    bias_init: Initializer = nn.initializers.zeros,
    dtype: Any = None,
    param_dtype: Any = jnp.float32,
) -> nn.Module:
  """A 1x1 convolution module (unpadded, stride `strides`): `PointwiseConv` or `nn.Conv`."""
  if POINTWISE_AS_MATMUL:
    return PointwiseConv(
        features,
        strides=strides,
        use_bias=use_bias,
        kernel_init=kernel_init,
        bias_init=bias_init,
        dtype=dtype,
        param_dtype=param_dtype,
        name=name,
    )
  return nn.Conv(
      features,
      (1, 1),
      strides=(strides, strides),
      padding=((0, 0), (0, 0)),
      use_bias=use_bias,
      kernel_init=kernel_init,
      bias_init=bias_init,
      dtype=dtype,
      param_dtype=param_dtype,
      name=name,
  )
