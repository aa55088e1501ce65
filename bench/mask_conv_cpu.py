"""One mask-head convolution on the CPU: XLA's convolution against im2col + one matmul.

The paper-size train step spends most of its time in the mask branch (docs/performance.md,
"Where the 66 s go"). This times one of its four 3x3 convolutions (256 -> 256 channels at
14x14) over the static mask slots of a batch of 2 (2 x 128 RoIs), forward and forward +
backward, written as `lax.conv_general_dilated` and as im2col followed by one matmul (the
same numbers, checked). Prints one line per form.

    python bench/mask_conv_cpu.py [--rois 256] [--reps 3]
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

SIDE, CHANNELS = 14, 256


def conv(x, w):
  """x [R, 14, 14, C], w [3, 3, C, C] -> [R, 14, 14, C] (SAME padding)."""
  return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def im2col(x, w):
  """`conv` as the 9 shifted windows side by side, then one [R*14*14, 9C] x [9C, C] matmul."""
  r, h, _, c = x.shape
  p = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  cols = jnp.concatenate([p[:, i:i + h, j:j + h, :] for i in range(3) for j in range(3)], -1)
  return (cols.reshape(-1, 9 * c) @ w.reshape(9 * c, -1)).reshape(r, h, h, -1)


def seconds(f, *args, reps: int) -> float:
  jax.block_until_ready(f(*args))  # compile
  t = time.perf_counter()
  for _ in range(reps):
    jax.block_until_ready(f(*args))
  return (time.perf_counter() - t) / reps


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--rois", type=int, default=256)
  ap.add_argument("--reps", type=int, default=3)
  a = ap.parse_args()
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(a.rois, SIDE, SIDE, CHANNELS)).astype(np.float32))
  w = jnp.asarray(rng.normal(size=(3, 3, CHANNELS, CHANNELS)).astype(np.float32) * 0.02)
  np.testing.assert_allclose(np.asarray(conv(x, w)), np.asarray(im2col(x, w)), rtol=1e-4, atol=1e-3)
  gflop = a.rois * SIDE * SIDE * CHANNELS * CHANNELS * 9 * 2 / 1e9
  for name, f in (("lax conv", conv), ("im2col + matmul", im2col)):
    fwd = seconds(jax.jit(f), x, w, reps=a.reps)
    grad = jax.jit(jax.value_and_grad(lambda x, w: jnp.sum(jnp.square(f(x, w))), argnums=(0, 1)))
    both = seconds(grad, x, w, reps=a.reps)
    print(f"{name}: forward {fwd:.3f} s ({gflop / fwd:.0f} GFLOP/s), forward + backward "
          f"{both:.3f} s ({3 * gflop / both:.0f} GFLOP/s)  [{a.rois} RoIs, {jax.devices()[0].platform}]")


if __name__ == "__main__":
  main()
