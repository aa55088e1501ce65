"""The ResNet stem's 3x3 / stride-2 max-pool, with a gradient that is elementwise work.

`flax.linen.max_pool` is `lax.reduce_window(max)`, whose gradient is XLA's
select-and-scatter. XLA:CPU lowers that to a variadic reduce-window that carries one s32
index array per dimension beside the values, plus the iotas that feed it: in a profile of
the `:cpu` train step (bench/results/profile_step_cpu_small.json) 10 + 9.4 ms of op time
for the reduce-window and one iota. Timed alone (`bench/max_pool_cpu.py`), forward +
backward at that stem's [2, 128, 128, 32] take 9.9 ms with flax's pool and 5.0 ms here
(107 against 22 ms at [2, 192, 192, 64]); the whole step moved within noise
(docs/performance.md).

The forward pass is `nn.max_pool`'s own reduce-window, unchanged. The backward pass sees
the window as nine strided slices of the padded input, routes each output's gradient to the
first tap (row-major in the window, as select-and-scatter's `>=` and PyTorch do) that
equals the maximum, and places the nine routed maps back with interior-padded `lax.pad`s:
one loop fusion, no index arrays. The routing is exactly `nn.max_pool`'s, ties included
(the input is a ReLU's output, so all-zero windows are common); where two windows overlap,
a pixel's two shares are summed in another order, so the gradients agree to float rounding.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

_WINDOW = 3
_STRIDE = 2
_PAD = 1


def _out_size(n: int) -> int:
  return (n + 2 * _PAD - _WINDOW) // _STRIDE + 1


def _taps(x: jax.Array) -> list[jax.Array]:
  """The nine window taps of `x [N, H, W, C]`, row-major: each `[N, Ho, Wo, C]`."""
  n, h, w, c = x.shape
  ho, wo = _out_size(h), _out_size(w)
  padded = jnp.pad(x, ((0, 0), (_PAD, _PAD), (_PAD, _PAD), (0, 0)),
                   constant_values=-jnp.inf)
  return [jax.lax.slice(padded, (0, di, dj, 0),
                        (n, di + _STRIDE * (ho - 1) + 1, dj + _STRIDE * (wo - 1) + 1, c),
                        (1, _STRIDE, _STRIDE, 1))
          for di in range(_WINDOW) for dj in range(_WINDOW)]


#: When `max_pool_3x3_s2` takes its gradient from the taps (`_bwd`): "cpu" (the default) on
#: the CPU backend only, where select-and-scatter is slow; GPU and TPU keep XLA's own,
#: unmeasured against this one so far. True / False: always / never (side-by-side timing,
#: tests). Read when a model is traced.
TAPS_GRAD: bool | str = "cpu"


def _use_taps_grad() -> bool:
  if TAPS_GRAD == "cpu":
    return jax.default_backend() == "cpu"
  return bool(TAPS_GRAD)


def _reduce_window_pool(x: jax.Array) -> jax.Array:
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, _WINDOW, _WINDOW, 1),
                               (1, _STRIDE, _STRIDE, 1),
                               ((0, 0), (_PAD, _PAD), (_PAD, _PAD), (0, 0)))


def max_pool_3x3_s2(x: jax.Array) -> jax.Array:
  """3x3 max-pool, stride 2, padding 1 (padded with -inf), NHWC: torchvision's stem pool.

  Args:
    x: `[N, H, W, C]`, any float dtype.
  Returns:
    `[N, (H - 1) // 2 + 1, (W - 1) // 2 + 1, C]` in x's dtype, equal to `nn.max_pool(x,
    (3, 3), (2, 2), ((1, 1), (1, 1)))`; its gradient is `_bwd`'s where `TAPS_GRAD` says.
  """
  return _taps_grad_pool(x) if _use_taps_grad() else _reduce_window_pool(x)


@jax.custom_vjp
def _taps_grad_pool(x: jax.Array) -> jax.Array:
  return _reduce_window_pool(x)


def _fwd(x):
  out = _reduce_window_pool(x)
  return out, (x, out)


def _bwd(res, g):
  x, out = res
  n, h, w, c = x.shape
  ho, wo = out.shape[1:3]
  taken = jnp.zeros(out.shape, bool)
  grad = jnp.zeros((n, h + 2 * _PAD, w + 2 * _PAD, c), g.dtype)
  zero = jnp.zeros((), g.dtype)
  for k, tap in enumerate(_taps(x)):
    di, dj = divmod(k, _WINDOW)
    hit = (tap == out) & ~taken
    taken = taken | hit
    # Output (i, j) read padded pixel (2i + di, 2j + dj): dilate by the stride, shift.
    grad = grad + jax.lax.pad(
        jnp.where(hit, g, zero), zero,
        ((0, 0, 0),
         (di, h + 2 * _PAD - di - (_STRIDE * (ho - 1) + 1), _STRIDE - 1),
         (dj, w + 2 * _PAD - dj - (_STRIDE * (wo - 1) + 1), _STRIDE - 1),
         (0, 0, 0)))
  return (grad[:, _PAD:_PAD + h, _PAD:_PAD + w, :],)


_taps_grad_pool.defvjp(_fwd, _bwd)
