"""RoIAlign speed at the CPU and paper configs' shapes: the op's two backward forms vs autodiff.

  python bench/roi_align_speed.py [--repeats 20] [--output bench/results/roi_align_speed.json]

`dense` and `scatter` are `pa_jax.ops.roi_align.multilevel_roi_align` (16 fused gathers
forward) with each form of its custom backward (`roi_align.BACKWARD`): two dense
contractions per level, or 16 scatter-adds into the flat table (`"auto"`: the scatter on
the CPU, where it won inside the whole train step; bench/profile_step.py). `before` is the first
implementation, rebuilt here from the public `roi_align_taps` list: the same 16 gathers,
differentiated by autodiff (16 scatter-adds backward). A third variant, one stacked gather
of all 16 taps (`[R, 7, 7, 16, C]`, one scatter-add backward) was measured with this script
while choosing: forward 20-30x slower than `before` on XLA:CPU (not fused), backward about
equal (scatter cost grows with the rows, not the number of scatters). Both see the same
pyramid and boxes; outputs and gradients are checked equal first.

Cases (configs/dh100_baseline.py:cpu: canvas 256, batch 2, FPN 64 channels, P2..P5; the
`paper_*` cases: 384 canvas, 256 channels, 512 RoIs and one 32-slot mask chunk per image):
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
      # The paper-size R50-FPN (bench/frameworks.py --preset paper_r50): 256 channels,
      # 384 canvas, 512 RoIs per image; mask: one 32-slot chunk (`mask_train_chunk`).
      "paper_train_box": (2, 384, 256, 512, 7, True),
      "paper_train_mask": (2, 384, 256, 32, 14, True),
  }
  result = {"command": "python bench/roi_align_speed.py " + " ".join(argv or sys.argv[1:]),
            "jax": jax.__version__, "devices": [str(d) for d in jax.devices()],
            "machine": platform.machine(), "cpu_count": os.cpu_count(),
            "repeats": args.repeats, "seconds": {}}
  for name, spec in cases.items():
    # `before`: autodiff through the 16 gathers (16 scatter-adds); `dense` / `scatter`: the
    # op's custom backward in each form (`roi_align.BACKWARD`); forward-only cases time the
    # shared forward once.
    variants = {"before": (per_tap_multilevel, None), "dense": (current_multilevel, "dense")}
    if spec[-1]:
      variants["scatter"] = (current_multilevel, "scatter")
    fns, outs = {}, {}
    for v, (impl, mode) in variants.items():
      RA.BACKWARD = mode or "auto"
      fns[v] = case(name, impl, *spec, args.repeats)
      outs[v] = fns[v][0](*fns[v][1])  # traced (and compiled) under this mode
    RA.BACKWARD = "auto"
    for v in variants:
      for u, w in zip(jax.tree.leaves(outs["before"]), jax.tree.leaves(outs[v])):
        np.testing.assert_allclose(np.asarray(u), np.asarray(w), rtol=1e-4, atol=1e-4)
    # Alternate the variants so machine load (shared cores) hits all alike.
    times = {v: [] for v in variants}
    for _ in range(3):
      for v, (fn, xs) in fns.items():
        times[v].append(_timed(fn, xs, max(1, args.repeats // 3)))
    row = {v: float(np.median(t)) for v, t in times.items()}
    row["speedup"] = row["before"] / row["dense"]  # the dense form against autodiff
    result["seconds"][name] = row
    print(name, row, flush=True)
  write_result(args.output, result)


if __name__ == "__main__":
  main()
