"""How much do the predictor's canvas buckets change predictions?

  python bench/canvas_buckets.py [--config configs/dh100_baseline.py:cpu]
      [--workdir RUN | --model NAME] [--images 3] [--output bench/results/canvas_buckets.json]

The predictor pads an image to a bucket canvas (`predict.canvas_octaves`, e.g. a 200² image
to 256² instead of 224²). This predicts crops of dh360 test images of several sizes both ways
(`canvas_octaves=0`: the smallest multiple of 32; buckets) and compares the label maps (F1 and
the DSB mAP of one against the other) and the score-sorted detection scores, once with
`model.mask_padding` on and once off, with the same weights: with it, no layer sees the
padding (pa_jax/models/padding.py) and the two label maps should agree; without it,
GroupNorm statistics and the layers' biases read the padding.

With `--workdir` (a trained run) or `--model` (a shipped model) those weights are used;
without, the config's model with random weights, whose scores hover around 0.5 (a coin
flip at the config's 0.5 cut), so then every detection is drawn (`min_score 0`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bench_config import load_config, write_result  # noqa: E402
from pa_jax import experiment  # noqa: E402
from pa_jax.data import readers  # noqa: E402
from pa_jax.evaluation.metrics import image_metrics  # noqa: E402
from pa_jax.infer import predictor as P  # noqa: E402
from pa_jax.models.mask_rcnn import MaskRCNN  # noqa: E402

# Canvases 224² / 320² / 224² / 320 x 320 plain, 256² / 384² / 256² / 384 x 320 bucketed; the
# last two fill (or all but fill) their plain canvas, so detections reach its edge.
SIZES = ((200, 200), (300, 300), (224, 224), (320, 318))


def _weights(args):
  """(config, model, variables, name) of a run, a shipped model or a random init."""
  if args.workdir:
    cfg, model, variables, _ = experiment.load_run(args.workdir)
    return cfg, model, variables, args.workdir
  if args.model:
    from pa_jax.zoo.load import load_model

    cfg, model, variables = load_model(args.model)
    return cfg, model, variables, args.model
  cfg = load_config(args.config)
  model = experiment.build_model(cfg, None)
  x = jnp.zeros((1, 64, 64, 3), jnp.float32)
  hw = jnp.full((1, 2), 64, jnp.int32)
  variables = jax.jit(lambda x, s: model.init(jax.random.PRNGKey(cfg.seed), x, s,
                                              method=MaskRCNN.predict))(x, hw)
  return cfg, model, variables, "random init (seed cfg.seed)"


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--config", default="configs/dh100_baseline.py:cpu")
  ap.add_argument("--workdir", default="")
  ap.add_argument("--model", default="", help="a shipped model's name instead of --workdir")
  ap.add_argument("--images", type=int, default=3)
  ap.add_argument("--output", default="bench/results/canvas_buckets.json")
  args = ap.parse_args(argv)
  cfg, model, variables, weights = _weights(args)
  trained = bool(args.workdir or args.model)
  # The images: the run's own evaluation split, else the --config's (dh360 test by default).
  data_cfg = cfg if args.workdir else load_config(args.config)
  records = experiment.source_records(data_cfg, data_cfg.data.eval_split)[:args.images]
  images = [readers.load_example(r).image for r in records]
  rows = []
  min_score = float(cfg.predict.score_threshold) if trained else 0.0
  for masked in (True, False):
    m = MaskRCNN(dataclasses.replace(model.spec, mask_padding=masked))
    kw = dict(normalize=cfg.data.normalize, mask_threshold=cfg.model.roi.mask_threshold,
              dilate=False, min_score=min_score, tile_size=cfg.predict.tile_size,
              target_diameter=float(cfg.data.get("diameter", 0.0)),
              diameter=float(cfg.predict.get("diameter", 0.0)))
    plain = P.Predictor(m, variables, canvas_octaves=0, **kw)
    bucket = P.Predictor(m, variables, canvas_octaves=max(2, cfg.predict.get("canvas_octaves", 0)),
                         **kw)
    for i, img in enumerate(images):
      for h, w in SIZES:
        crop = img[:h, :w]
        t0 = time.perf_counter()
        la, sa = plain.predict_scored(crop)
        lb, sb = bucket.predict_scored(crop)
        met = image_metrics(la, lb)
        a = np.sort(list(sa.values()))[::-1]
        b = np.sort(list(sb.values()))[::-1]
        n = min(len(a), len(b))
        rows.append({
            "image": records[i].name if hasattr(records[i], "name") else i, "size": [h, w],
            "mask_padding": masked, "min_score": min_score,
            "canvas_plain": list(P.canvas_for(h, w)),
            "canvas_bucket": list(P.bucket_canvas(h, w, bucket.sides)),
            "n_plain": len(a), "n_bucket": len(b), "f1": met["f1"], "map": met["map"],
            "max_sorted_score_change": float(np.abs(a[:n] - b[:n]).max()) if n else 0.0,
            "seconds": time.perf_counter() - t0})
        print(rows[-1], flush=True)
  summary = {}
  for masked in (True, False):
    sel = [r for r in rows if r["mask_padding"] == masked
           and r["canvas_plain"] != r["canvas_bucket"]]
    summary[f"mask_padding={masked}"] = {
        "cases_with_a_different_canvas": len(sel),
        "f1_min": min((r["f1"] for r in sel), default=None),
        "f1_mean": float(np.mean([r["f1"] for r in sel])) if sel else None,
        "map_mean": float(np.mean([r["map"] for r in sel])) if sel else None,
        "max_sorted_score_change": max((r["max_sorted_score_change"] for r in sel),
                                       default=None)}
  result = {"command": "python bench/canvas_buckets.py " + " ".join(argv or sys.argv[1:]),
            "weights": weights, "config": args.config, "min_score": min_score,
            "summary": summary, "rows": rows, "jax": jax.__version__}
  write_result(args.output, result)
  print(json.dumps(summary, indent=2))


if __name__ == "__main__":
  main()
