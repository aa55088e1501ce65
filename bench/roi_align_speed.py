"""RoIAlign speed at the CPU config's shapes: today's op vs the previous one.

  python bench/roi_align_speed.py [--repeats 20] [--output bench/results/roi_align_speed.json]

`after` is `pa_jax.ops.roi_align.multilevel_roi_align`: 16 fused gathers forward, a custom
backward of two dense contractions per level (no scatter). `before` is the previous
implementation, rebuilt here from the public `roi_align_taps` list: the same 16 gathers,
differentiated by autodiff (16 scatter-adds backward). A third variant, one stacked gather
of all 16 taps (`[R, 7, 7, 16, C]`, one scatter-add backward) was measured with this script
while choosing: forward 20-30x slower than `before` on XLA:CPU (not fused), backward about
equal (scatter cost grows with the rows, not the number of scatters). Both see the same
pyramid and boxes; outputs and gradients are checked equal first.

Cases (configs/dh100_baseline.py:cpu: canvas 256, batch 2, FPN 64 channels, P2..P5):
  * train_box:  fwd+bwd, 256 RoIs per image at 7x7 (roi.batch_per_image);
  * train_mask: fwd+bwd, 64 positives per image at 14x14 (256 * positive_fraction 0.25);
  * predict_box / predict_mask: forward only, one 384² canvas (a 360² dh360 image),
    500 proposals at 7x7 (rpn.post_nms_topk_test) / 256 detections at 14x14 (mask_batch).
Timings: median of `repeats` jitted calls after one warm-up call, `block_until_ready`.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bench_config import write_result  # noqa: E402
from pa_jax.ops import roi_align as RA  # noqa: E402

LEVELS = (2, 3, 4, 5)


def per_tap_multilevel(feats, boxes, size, sampling_ratio=2):
  """The previous `multilevel_roi_align`: one gather per tap, summed in turn."""
  c = feats[0].shape[-1]
  sizes = [tuple(f.shape[:2]) for f in feats]
  offsets = np.cumsum([0] + [h * w for h, w in sizes])[:-1]
  flat = jnp.concatenate([f.reshape(-1, c) for f in feats], axis=0)
  lvl = RA.assign_levels(boxes, LEVELS[0], LEVELS[-1]) - LEVELS[0]
  heights = jnp.asarray([h for h, _ in sizes], jnp.int32)[lvl]
  widths = jnp.asarray([w for _, w in sizes], jnp.int32)[lvl]
  base = jnp.asarray(offsets, jnp.int32)[lvl]
  scales = jnp.asarray([2.0 ** -k for k in LEVELS], jnp.float32)[lvl]
  acc = None
  for index, weight in RA.roi_align_taps(boxes, size, scales, heights, widths, sampling_ratio,
                                         True, base_offsets=base):
    term = flat[index].astype(jnp.float32) * weight[..., None]
    acc = term if acc is None else acc + term
  return acc.astype(feats[0].dtype)


def current_multilevel(feats, boxes, size):
  return RA.multilevel_roi_align(feats, boxes, size, LEVELS)


def _boxes(rng, n, canvas):
  """Nucleus-like boxes (8-64 px sides) plus a few large ones, inside the canvas."""
  side = rng.uniform(8, 64, (n, 2))
  side[: n // 20] = rng.uniform(64, canvas / 2, (n // 20, 2))
  xy = rng.uniform(0, canvas - side)
  return np.concatenate([xy, xy + side], 1).astype(np.float32)


def _timed(fn, args, repeats):
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def case(name, impl, batch, canvas, channels, n_rois, size, backward, repeats, seed=0):
  rng = np.random.default_rng(seed)
  feats = [jnp.asarray(rng.normal(size=(batch, canvas >> k, canvas >> k, channels)),
                       jnp.float32) for k in LEVELS]
  boxes = jnp.asarray(np.stack([_boxes(rng, n_rois, canvas) for _ in range(batch)]))
  cot = jnp.asarray(rng.normal(size=(batch, n_rois, size, size, channels)), jnp.float32)

  def pooled(fs):
    return jax.vmap(lambda f, b: impl(f, b, size))(fs, boxes)

  if backward:  # the training use: features' gradient through the pooled RoIs
    fn = jax.jit(jax.value_and_grad(lambda fs: jnp.sum(pooled(fs) * cot)))
  else:
    fn = jax.jit(pooled)
  return fn, (feats,)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--repeats", type=int, default=20)
  ap.add_argument("--output", default="bench/results/roi_align_speed.json")
  args = ap.parse_args(argv)
  cases = {  # name: (batch, canvas, channels, rois per image, output size, backward)
      "train_box": (2, 256, 64, 256, 7, True),
      "train_mask": (2, 256, 64, 64, 14, True),
      "predict_box": (1, 384, 64, 500, 7, False),
      "predict_mask": (1, 384, 64, 256, 14, False),
  }
  result = {"command": "python bench/roi_align_speed.py " + " ".join(argv or sys.argv[1:]),
            "jax": jax.__version__, "devices": [str(d) for d in jax.devices()],
            "machine": platform.machine(), "cpu_count": os.cpu_count(),
            "repeats": args.repeats, "seconds": {}}
  for name, spec in cases.items():
    fa, xa = case(name, per_tap_multilevel, *spec, args.repeats)
    fb, xb = case(name, current_multilevel, *spec, args.repeats)
    ra, rb = fa(*xa), fb(*xb)
    for u, v in zip(jax.tree.leaves(ra), jax.tree.leaves(rb)):
      np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-4, atol=1e-4)
    # Alternate the two so machine load (shared cores) hits both alike.
    ta, tb = [], []
    for _ in range(3):
      ta.append(_timed(fa, xa, max(1, args.repeats // 3)))
      tb.append(_timed(fb, xb, max(1, args.repeats // 3)))
    result["seconds"][name] = {"before": float(np.median(ta)), "after": float(np.median(tb)),
                               "speedup": float(np.median(ta) / np.median(tb))}
    print(name, result["seconds"][name], flush=True)
  write_result(args.output, result)


if __name__ == "__main__":
  main()
