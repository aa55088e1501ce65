"""Sequential depth and CPU time of the tiled NMS against the old one-candidate-per-turn loop.

For N = 1k, 4k, 10k RPN-like proposals (IoU 0.7, as the RPN), with K = 2000 outputs (the
paper's post-NMS top-k; capped at N) and K = N (no early stop), it runs `legacy_nms` (the
loop that `pa_jax.ops.nms` used before tiling, copied below) and `pa_jax.ops.nms` at several
block sizes, each jit-compiled and warm, and reports the median wall time of `--repeats`
calls, the sequential loop turns of each and whether both keep the same boxes in the same
order. Writes JSON and prints a Markdown table.

    python bench/nms_depth.py [--sizes 1000 4000 10000] [--blocks 128 256 512]
        [--repeats 5] [--out bench/results/nms_depth.json]
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench_config import write_result  # noqa: E402
from pa_jax.ops import nms as nms_ops  # noqa: E402
from pa_jax.ops.boxes import box_area  # noqa: E402

IOU = 0.7
RPN_POST_NMS_TOPK = 2000


def _iou_one_to_many(box, area, boxes, areas):
  w = jnp.maximum(jnp.minimum(box[2], boxes[:, 2]) - jnp.maximum(box[0], boxes[:, 0]), 0.0)
  h = jnp.maximum(jnp.minimum(box[3], boxes[:, 3]) - jnp.maximum(box[1], boxes[:, 1]), 0.0)
  inter = w * h
  union = area + areas - inter
  return jnp.where(union > 0, inter / jnp.where(union > 0, union, 1.0), 0.0)


def legacy_nms(boxes, scores, valid, iou_threshold, max_output):
  """`pa_jax.ops.nms.nms` as of commit fd2e53b (one `while_loop` turn per visited candidate),
  unchanged except that it also returns its number of turns."""
  n = boxes.shape[0]
  valid = valid.astype(bool)
  order = nms_ops.score_order(scores, valid)
  sboxes = boxes.astype(jnp.float32)[order]
  svalid = valid[order]
  sareas = box_area(sboxes)

  def cond(state):
    i, _, _, count = state
    return (i < n) & (count < max_output) & svalid[jnp.minimum(i, n - 1)]

  def body(state):
    i, suppressed, kept, count = state
    keep = ~suppressed[i]
    iou = _iou_one_to_many(sboxes[i], sareas[i], sboxes, sareas)
    suppressed = suppressed | (keep & (iou > iou_threshold))
    kept = kept.at[count].set(jnp.where(keep, i, kept[count]))
    return i + 1, suppressed, kept, count + keep.astype(jnp.int32)

  init = (jnp.int32(0), jnp.zeros((n,), bool), jnp.zeros((max_output,), jnp.int32),
          jnp.int32(0))
  turns, _, kept, count = jax.lax.while_loop(cond, body, init)
  out_valid = jnp.arange(max_output) < count
  indices = jnp.where(out_valid, order[kept], 0).astype(jnp.int32)
  return indices, out_valid, turns


def rpn_like_boxes(rng: np.random.Generator, n: int, canvas: int = 384,
                   n_objects: int = 150) -> tuple[np.ndarray, np.ndarray]:
  """Proposals as an RPN emits them on a crowded 384² canvas: 70 % are jittered copies of 150
  nuclei (8-40 px; centre jitter 8 % of the size, log-size jitter 0.1), scored higher the
  closer they are; 30 % are background boxes (8-96 px) with low scores.

  Returns:
    boxes float32 `[n, 4]` `(x0, y0, x1, y1)` pixels; scores float32 `[n]` logits.
  """
  centres = rng.uniform(0, canvas, (n_objects, 2))
  sizes = rng.uniform(8, 40, (n_objects, 1))
  near = rng.uniform(size=n) < 0.7
  obj = rng.integers(0, n_objects, n)
  dc = rng.normal(0, 0.08, (n, 2))
  cen = np.where(near[:, None], centres[obj] + dc * sizes[obj], rng.uniform(0, canvas, (n, 2)))
  wh = np.where(near[:, None], sizes[obj] * np.exp(rng.normal(0, 0.1, (n, 2))),
                np.exp(rng.uniform(np.log(8), np.log(96), (n, 2))))
  boxes = np.clip(np.concatenate([cen - wh / 2, cen + wh / 2], 1), 0, canvas)
  scores = np.where(near, rng.normal(1.5, 1.0, n) - 3 * np.abs(dc).sum(1),
                    rng.normal(-2, 1.5, n))
  return boxes.astype(np.float32), scores.astype(np.float32)


def _median_ms(fn, args, repeats: int):
  out = jax.block_until_ready(fn(*args))  # Compile and warm up.
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t)
  return out, 1e3 * statistics.median(times)


def run(sizes, blocks, repeats: int, seed: int = 0) -> list[dict]:
  rows = []
  for n in sizes:
    boxes, scores = rpn_like_boxes(np.random.default_rng(seed + n), n)
    valid = np.ones(n, bool)
    for k in sorted({min(RPN_POST_NMS_TOPK, n), n}):
      legacy = jax.jit(functools.partial(legacy_nms, max_output=k))
      (l_idx, l_ok, l_turns), l_ms = _median_ms(legacy, (boxes, scores, valid, IOU), repeats)
      for b in blocks:
        tiled = jax.jit(functools.partial(nms_ops.nms_with_turns, max_output=k, block_size=b))
        (idx, ok, turns), ms = _median_ms(tiled, (boxes, scores, valid, IOU), repeats)
        depth = int(turns.blocks) + int(turns.fixed_point)
        rows.append(dict(
            n=n, k=k, block=b, kept=int(ok.sum()),
            legacy_turns=int(l_turns), legacy_ms=round(l_ms, 2),
            block_turns=int(turns.blocks), fixed_point_turns=int(turns.fixed_point),
            tiled_turns=depth, n_over_128=n / 128, depth_target_met=depth <= n / 128,
            tiled_ms=round(ms, 2), speedup=round(l_ms / ms, 2),
            same_kept=bool(np.array_equal(idx, l_idx) and np.array_equal(ok, l_ok))))
        print(rows[-1], flush=True)
  return rows


def markdown(rows: list[dict]) -> str:
  lines = ["| N | K | kept | B | legacy turns | tiled turns (blocks + fixed point) | N/128 "
           "| legacy ms | tiled ms | speed-up | same kept |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(
        f"| {r['n']} | {r['k']} | {r['kept']} | {r['block']} | {r['legacy_turns']} "
        f"| {r['tiled_turns']} ({r['block_turns']} + {r['fixed_point_turns']}) "
        f"| {r['n_over_128']:.0f} | {r['legacy_ms']:.1f} | {r['tiled_ms']:.1f} "
        f"| {r['speedup']:.2f}x | {'yes' if r['same_kept'] else 'NO'} |")
  return "\n".join(lines)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000, 10000])
  p.add_argument("--blocks", type=int, nargs="+", default=[128, 256, 512])
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--out", default="bench/results/nms_depth.json")
  args = p.parse_args(argv)
  t0 = time.perf_counter()
  rows = run(args.sizes, args.blocks, args.repeats)
  table = markdown(rows)
  result = dict(
      command=" ".join(["python bench/nms_depth.py"] + (sys.argv[1:] if argv is None else argv)),
      iou_threshold=IOU, default_block_size=nms_ops.DEFAULT_BLOCK_SIZE,
      boxes="rpn_like_boxes: 384^2 canvas, 150 nuclei, 70 % jittered copies, seed 0 + N",
      timing=f"jit, warm, median of {args.repeats} calls",
      devices=[str(d) for d in jax.devices()], jax=jax.__version__,
      machine=platform.machine(), cpu_count=os.cpu_count(),
      date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
      seconds=round(time.perf_counter() - t0, 1), rows=rows)
  write_result(args.out, result)
  print(table)
  print(f"\nwrote {args.out} ({result['seconds']} s)")


if __name__ == "__main__":
  main()
