"""Factorized (efficient) self-attention of Shen et al. 2018, as used by the PA module.

Notation of DESIGN.md / the paper, with ``x`` in R^{C x N} (N = H*W positions)::

    keys    = softmax_N (W_k x)            C_k x N   (each key row sums to 1 over positions)
    queries = softmax_Ck(W_q x)            C_k x N   (each query column sums to 1 over channels)
    values  = W_v x                        C_v x N
    context = keys @ values^T              C_k x C_v (global summary, size independent of N)
    out     = x + W_o (context^T @ queries)  C x N

The product is associated as ``keys @ values^T`` first, so time and memory are O(N * C_k *
C_v) and the N x N attention map ``queries^T @ keys`` is never built. That map is
equivalent to dot-product attention whose every row is a probability distribution over
positions (row sums = 1); :func:`render_attention` computes the mean of selected rows of it
-- the "merged attention map for the annotated regions" of the paper's Fig. 1 -- still in
linear cost.

In NHWC code the C x N matrices are stored transposed: ``[B, N, C_k]`` etc.; all W are 1x1
convs, i.e. ``Dense`` layers over the channel axis.

Padding. A batch is padded to a static canvas, and the key softmax runs over positions: left
alone, every padded cell takes a share of each key and its (meaningless) value leaks into the
context, so the same image gives other features on a bigger canvas. With a ``valid`` mask
(`pa_jax.models.padding.padding_mask` of the batch's ``image_size``) padded positions get key weight exactly 0
and the output on the real cells does not depend on how much padding there is.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


def masked_softmax(logits: Array, valid: Array, axis: int) -> Array:
  """Softmax over ``axis`` among the ``valid`` entries only; 0 elsewhere.

  Args:
    logits: float32 ``[...]``.
    valid: bool, broadcastable to ``logits``.
    axis: the normalised axis.

  Returns:
    float32 like ``logits``: each slice along ``axis`` sums to 1 over its valid entries,
    and is all 0 (not NaN) when it has none. Masked logits never reach ``exp``, so neither
    the value nor the gradient can see an overflow there.
  """
  valid = jnp.broadcast_to(valid, logits.shape)
  masked = jnp.where(valid, logits, -jnp.inf)
  top = jax.lax.stop_gradient(jnp.max(masked, axis=axis, keepdims=True))
  top = jnp.where(jnp.isfinite(top), top, 0.0)  # a slice with no valid entry
  e = jnp.where(valid, jnp.exp(jnp.where(valid, logits - top, 0.0)), 0.0)
  total = jnp.sum(e, axis=axis, keepdims=True)
  return e / jnp.where(total > 0, total, 1.0)


class FactorizedAttention(nn.Module):
  """Residual factorized self-attention block over one feature map.

  Attributes:
    key_channels: C_k (the paper's C_b = 64).
    value_channels: C_v (64).
    zero_init_output: initialise ``W_o`` (kernel and bias) to zero so the block starts as
      the identity ``out = x`` (SAGAN's gamma = 0 reasoning: a freshly added module leaves
      pretrained FPN features untouched at step 0). False (default, the paper's released
      code, ``model.partial.attention_zero_init``) uses the ordinary fan-in init. With a
      zero ``W_o`` the W_q/W_k/W_v gradients are zero on the very first step only.
    dtype: computation dtype for the projections; softmaxes and products run in float32.

  Params (all float32): ``query``, ``key``, ``value`` Dense ``[C, C_k|C_k|C_v]`` + bias;
  ``output`` Dense ``[C_v, C]`` + bias.

  ``__call__(x, valid=None)``:
    x: float ``[B, H, W, C]``.
    valid: bool ``[B, H, W]`` real (non-padding) positions (`pa_jax.models.padding.padding_mask`), or None
      for all. The key softmax runs over the valid positions only.
    Returns ``[B, H, W, C]`` (dtype of x): ``x + W_o(context^T queries)``.
    If ``mutable=['intermediates']`` is passed to ``apply``, also sows
    ``'queries'`` float32 ``[B, H, W, C_k]`` (softmax over channels) and ``'keys'``
    float32 ``[B, H, W, C_k]`` (softmax over the H*W positions of each image) into the
    ``'intermediates'`` collection for :func:`render_attention`. Linen's sow appends:
    the value is a tuple with one entry per call of this module instance (one per
    FPN level if a single instance is shared across levels), e.g.
    ``state['intermediates'][<path>]['queries'][0]``.
  """

  key_channels: int = 64
  value_channels: int = 64
  zero_init_output: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, valid: Array | None = None) -> Array:
    b, h, w, c = x.shape
    n = h * w

    def proj(features: int, name: str, zero: bool = False) -> nn.Dense:
      init = nn.initializers.zeros if zero else nn.initializers.lecun_normal()
      return nn.Dense(
          features,
          kernel_init=init,
          bias_init=nn.initializers.zeros,
          dtype=self.dtype,
          param_dtype=jnp.float32,
          name=name,
      )

    xc = x.astype(self.dtype)
    q = proj(self.key_channels, "query")(xc).astype(jnp.float32).reshape(b, n, self.key_channels)
    k = proj(self.key_channels, "key")(xc).astype(jnp.float32).reshape(b, n, self.key_channels)
    v = (
        proj(self.value_channels, "value")(xc)
        .astype(jnp.float32)
        .reshape(b, n, self.value_channels)
    )

    if valid is None:
      keys = jax.nn.softmax(k, axis=1)  # over the N positions, per key channel
    else:
      keys = masked_softmax(k, valid.reshape(b, n, 1), axis=1)
    queries = jax.nn.softmax(q, axis=2)  # over the C_k channels, per position
    self.sow("intermediates", "queries", queries.reshape(b, h, w, self.key_channels))
    self.sow("intermediates", "keys", keys.reshape(b, h, w, self.key_channels))

    # context[b] = keys[b]^T values[b]: [C_k, C_v], summed over positions.
    context = jnp.einsum("bnk,bnv->bkv", keys, v)
    # attended[b, n] = sum_k queries[b, n, k] context[b, k, :]  (= context^T queries).
    attended = jnp.einsum("bnk,bkv->bnv", queries, context)
    delta = proj(c, "output", zero=self.zero_init_output)(attended.astype(self.dtype))
    return (x.astype(jnp.float32) + delta.reshape(b, h, w, c).astype(jnp.float32)).astype(x.dtype)


def render_attention(queries: Array, keys: Array, pixel_mask: Array) -> Array:
  """Merged attention of the selected positions over all positions (the paper's Fig. 1).

  Row ``i`` of the attention map ``A = queries^T keys`` (``A[i, j] = sum_k
  queries[i, k] * keys[j, k]``) is a distribution over positions ``j``. The mean of the
  rows selected by ``pixel_mask`` equals ``keys @ mean_i(queries[i])`` by linearity, so
  this costs O(N * C_k) and never forms A.

  Args:
    queries: float ``[H, W, C_k]`` -- one image's sown ``'queries'``.
    keys: float ``[H, W, C_k]`` -- the same image's sown ``'keys'``.
    pixel_mask: bool ``[H, W]`` at the feature resolution (True = annotated pixel).
      Callers downsample an image-resolution annotation mask to the feature stride
      themselves (e.g. ``mask[::4, ::4]`` for P2).

  Returns:
    float32 ``[H, W]``: the mean attention paid by the selected positions to each
    position; sums to 1 when any pixel is selected, all zeros when none is. Use
    ``jax.vmap`` for a batch.
  """
  q = queries.astype(jnp.float32)
  kk = keys.astype(jnp.float32)
  m = pixel_mask.astype(jnp.float32)
  count = jnp.sum(m)
  mean_query = jnp.einsum("hw,hwk->k", m, q) / jnp.maximum(count, 1.0)
  return jnp.einsum("hwk,k->hw", kk, mean_query)
