"""Where prediction time goes: cumulative per-stage timing of `MaskRCNN.predict`.

  python bench/predict_stages.py [--config configs/dh100_baseline.py:cpu] [--size 360]
      [--repeats 5] [--output bench/results/predict_stages.json] [--config.X=...]

Random weights of the config's model, one image of `size`² on its canvas (360 -> 384).
Each stage is a jitted program that runs the network up to and including that stage, so a
stage's cost is the difference to the previous line (XLA cannot skip work whose result is
returned; every program returns its stage's arrays):
  features   backbone + FPN
  rpn        + RPN head, per-level top-k, decode, proposal NMS
  box_head   + RoIAlign 7x7 of the proposals, box head, decode, detection NMS
  mask_head  + RoIAlign 14x14 + mask head on the valid detections (`masks_in_chunks`)
  render     + paste of every valid mask into one label map (the predictor's program)
Medians of `repeats` calls after a warm-up call, `block_until_ready`.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bench_config import load_config, write_result  # noqa: E402
from pa_jax import experiment  # noqa: E402
from pa_jax.infer.predictor import canvas_for  # noqa: E402
from pa_jax.models import mask_rcnn as M  # noqa: E402
from pa_jax.ops import boxes as box_ops  # noqa: E402
from pa_jax.ops import masks as mask_ops  # noqa: E402
from pa_jax.ops import nms as nms_ops  # noqa: E402


def _stages(model, canvas):
  s = model.spec

  def features(m, x, hw):
    return m.features(x, hw)

  def rpn(m, x, hw):
    feats = m.features(x, hw)
    _, _, obj, dlt = m._rpn(feats)
    anchors, _ = M.level_anchors(s, canvas)
    props, _, valid = jax.vmap(lambda o, d, h: M.generate_proposals(
        list(o), list(d), anchors, h, s.rpn_pre_nms_topk_test, s.rpn_post_nms_topk_test,
        s.rpn_nms_iou, anchors_in_image=s.mask_padding))(list(obj), list(dlt), hw)
    return feats, props, valid

  def box_head(m, x, hw):
    feats, props, props_valid = rpn(m, x, hw)
    head = m.box_head(m._roi_features(feats, props, s.pooler_size, m._roi_extent(hw)))
    b, r = props.shape[:2]
    probs = jax.nn.softmax(head.class_logits, axis=-1)[:, 1].reshape(b, r)
    deltas = head.box_deltas[:, min(1, head.box_deltas.shape[1] - 1)].reshape(b, r, 4)
    boxes = box_ops.clip_boxes(box_ops.decode_deltas(deltas, props, s.box_weights),
                               hw[:, 0:1], hw[:, 1:2])
    wh = boxes[..., 2:] - boxes[..., :2]
    valid = props_valid & (probs > s.score_threshold) & jnp.all(wh > 1e-3, axis=-1)
    keep, keep_valid = nms_ops.batched_nms(boxes, probs, valid, s.nms_iou,
                                           min(s.max_detections, r))
    det = jnp.take_along_axis(boxes, keep[..., None], axis=1)
    scores = jnp.where(keep_valid, jnp.take_along_axis(probs, keep, axis=1), 0.0)
    return feats, det, scores, keep_valid

  def mask_head(m, x, hw):
    feats, det, scores, valid = box_head(m, x, hw)
    frames = box_ops.scale_boxes(det, s.mask_box_scale)
    masks = M.masks_in_chunks(m._mask_probabilities(feats, m._roi_extent(hw)), frames, valid,
                              s.mask_batch)
    return frames, scores, valid, masks

  def render(m, x, hw):
    det, scores, valid, masks = mask_head(m, x, hw)
    return jax.vmap(lambda ms, b, sc, v: mask_ops.masks_to_label_map(
        ms, b, sc, v, canvas[0], canvas[1]))(masks, det, scores, valid)

  return {"features": features, "rpn": rpn, "box_head": box_head, "mask_head": mask_head,
          "render": render}


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--config", default="configs/dh100_baseline.py:cpu")
  ap.add_argument("--size", type=int, default=360)
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--output", default="bench/results/predict_stages.json")
  args, overrides = ap.parse_known_args(argv)
  cfg = load_config(args.config, [o.removeprefix("--config.") for o in overrides])
  model = experiment.build_model(cfg, None)
  canvas = canvas_for(args.size, args.size)
  rng = np.random.default_rng(0)
  x = jnp.zeros((1,) + canvas + (3,), jnp.float32).at[0, :args.size, :args.size].set(
      rng.uniform(0, 1, (args.size, args.size, 3)).astype(np.float32))
  hw = jnp.full((1, 2), args.size, jnp.int32)
  variables = jax.jit(lambda x, s: model.init(jax.random.PRNGKey(0), x, s,
                                              method=M.MaskRCNN.predict))(x, hw)
  result = {"command": "python bench/predict_stages.py " + " ".join(argv or sys.argv[1:]),
            "config": args.config, "overrides": overrides, "image": [args.size] * 2,
            "canvas": list(canvas), "max_detections": model.spec.max_detections,
            "mask_batch": model.spec.mask_batch, "jax": jax.__version__,
            "machine": platform.machine(), "cpu_count": os.cpu_count(), "cumulative_s": {},
            "stage_s": {}}
  prev = 0.0
  for name, fn in _stages(model, canvas).items():
    run = jax.jit(lambda v, x, s, fn=fn: model.apply(v, x, s, method=fn))
    t0 = time.perf_counter()
    out = jax.block_until_ready(run(variables, x, hw))
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(args.repeats):
      t0 = time.perf_counter()
      jax.block_until_ready(run(variables, x, hw))
      times.append(time.perf_counter() - t0)
    t = float(np.median(times))
    result["cumulative_s"][name] = t
    result["stage_s"][name] = t - prev
    prev = t
    if name == "box_head":
      result["valid_detections"] = int(np.asarray(out[3]).sum())
    print(f"{name:10s} cumulative {t:.3f} s  stage {result['stage_s'][name]:+.3f} s  "
          f"(first call {compile_s:.1f} s)", flush=True)
  write_result(args.output, result)


if __name__ == "__main__":
  main()
