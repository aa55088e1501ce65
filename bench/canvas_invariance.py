"""Does `MaskRCNN.predict` give the same detections for one image on several canvases?

  python bench/canvas_invariance.py [--config configs/dh25_pa.py] [--dtype float32|bfloat16]
      [--mask-padding 1|0] [--image 200x190] [--canvases 224,256,320]
      [--output bench/results/canvas_invariance.json]

One random image (`--image`, 200 x 190 by default; 224x224 fills the first canvas), the
config's model with random weights (seed 0), predicted on each canvas (zero padding beyond
the image). Reports, against the first canvas, the largest change of the score-sorted
detection scores, and of the boxes and masks of each detection and the other canvas's
nearest box. With `model.mask_padding` they should agree to the compute dtype's rounding
(pa_jax/models/padding.py); tests/models/test_models_padding.py checks the same on a tiny
model. Random weights give near-equal scores (~0.5), so a rounding-size change can swap
ranks: detections are therefore paired by box, not by rank.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bench_config import load_config, write_result  # noqa: E402
from pa_jax import experiment  # noqa: E402
from pa_jax.models.mask_rcnn import MaskRCNN  # noqa: E402



def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--config", default="configs/dh25_pa.py")
  ap.add_argument("--dtype", default="", help="model.compute_dtype (default: the config's)")
  ap.add_argument("--mask-padding", type=int, default=1)
  ap.add_argument("--image", default="200x190", help="HxW of the random image")
  ap.add_argument("--canvases", default="224,256,320")
  ap.add_argument("--output", default="bench/results/canvas_invariance.json")
  args = ap.parse_args(argv)
  image_hw = tuple(int(v) for v in args.image.split("x"))
  cfg = load_config(args.config)
  cfg.model.mask_padding = bool(args.mask_padding)
  if args.dtype:
    cfg.model.compute_dtype = args.dtype
  # The PA module's median anchor needs a dataset statistic; a fixed 20 px stands in.
  model = experiment.build_model(cfg, {"median_width": 20.0, "median_height": 20.0})
  x = jnp.zeros((1, 64, 64, 3), jnp.float32)
  hw = jnp.full((1, 2), 64, jnp.int32)
  variables = jax.jit(lambda x, s: model.init(jax.random.PRNGKey(0), x, s,
                                              method=MaskRCNN.predict))(x, hw)
  image = np.random.default_rng(0).random(image_hw + (3,)).astype(np.float32)
  size = jnp.array([image_hw], jnp.int32)
  predict = jax.jit(lambda v, c: model.apply(v, c, size, method=MaskRCNN.predict))
  outs, rows = [], []
  for side in (int(c) for c in args.canvases.split(",")):
    canvas = np.zeros((1, side, side, 3), np.float32)
    canvas[0, :image_hw[0], :image_hw[1]] = image
    t0 = time.perf_counter()
    det = jax.device_get(predict(variables, jnp.asarray(canvas)))
    outs.append(det)
    ref = outs[0]
    # Near-equal scores may swap ranks between canvases: pair each detection of the first
    # canvas with the other canvas's nearest box (L1), then compare boxes and masks.
    a = np.flatnonzero(ref.valid[0])
    b = np.flatnonzero(det.valid[0])
    box_a, box_b = ref.boxes[0][a], det.boxes[0][b]  # [na, 4], [nb, 4]
    dist = np.abs(box_a[:, None, :] - box_b[None, :, :]).sum(-1)  # [na, nb]
    pair = b[dist.argmin(axis=1)] if b.size else a[:0]
    rows.append({
        "canvas": side, "valid": int(det.valid.sum()), "seconds": time.perf_counter() - t0,
        "max_score_change": float(np.abs(np.sort(det.scores[0])[::-1]
                                         - np.sort(ref.scores[0])[::-1]).max()),
        "max_box_change_px": float(np.abs(det.boxes[0, pair] - ref.boxes[0, a]).max())
        if a.size and b.size else None,
        "max_mask_change": float(np.abs(det.masks[0, pair] - ref.masks[0, a]).max())
        if a.size and b.size else None})
    print(rows[-1], flush=True)
  write_result(args.output, {
      "command": "python bench/canvas_invariance.py " + " ".join(argv or sys.argv[1:]),
      "config": args.config, "compute_dtype": cfg.model.compute_dtype,
      "mask_padding": bool(args.mask_padding), "image_hw": list(image_hw),
      "against_canvas": rows[0]["canvas"], "rows": rows, "jax": jax.__version__})


if __name__ == "__main__":
  main()
