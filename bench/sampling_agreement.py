"""Do pa_jax and torchvision sample the same training RoIs? Stage by stage, on one batch.

The framework comparison (bench/frameworks.py) times both training steps on the same
batches and weights; the mask head's work follows the positive RoIs each side samples.
This script checks, with the imported torchvision weights and no optimiser step, each
stage that decides that count, per image of one training batch:

  1. the ground-truth boxes each side receives (identical?);
  2. the RPN's training proposals (count; share with a partner at IoU >= 0.99 on the other
     side);
  3. the foreground candidates: proposals + ground truth with IoU >= the RoI head's
     threshold to a ground-truth box (and how many of them are proposals);
  4. the sampled positives (pa_jax over several sampler keys; torchvision once, seeded).

  python bench/frameworks.py export --preset cpu_small --out /tmp/tv_small.npz
  python bench/sampling_agreement.py --npz /tmp/tv_small.npz --batch 0 \\
      --out bench/results/sampling_agreement_cpu_small.json

It found (2026-12-01) that both sides agree at every stage; the ~50 % more positives
torchvision had sampled during the timed steps came from its training at a constant
learning rate (docs/performance.md, "Current figures").
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_config import load_config  # noqa: E402
from frameworks import PRESETS, box_iou, preset  # noqa: E402


def jax_proposals(model, variables, batch):
  """pa_jax's training proposals of a batch: (boxes [B, P, 4], valid [B, P]) as numpy."""
  import jax

  from pa_jax.models.proposals import generate_proposals, level_anchors

  def stages(m, b):
    feats = m.features(b.pixels(), b.image_size)
    _, _, obj, dlt = m._rpn(feats)
    anchors, _ = level_anchors(m.spec, b.image.shape[1:3])
    s = m.spec
    props, _, valid = jax.vmap(lambda o, d, hw: generate_proposals(
        o, d, anchors, hw, s.rpn_pre_nms_topk_train, s.rpn_post_nms_topk_train,
        s.rpn_nms_iou))(obj, dlt, b.image_size)
    return props, valid

  with jax.default_matmul_precision("highest"):
    props, valid = jax.jit(lambda v, b: model.apply(v, b, method=stages))(variables, batch)
  return np.asarray(props), np.asarray(valid)


def jax_positives(model, props, valid, gt_boxes, gt_valid, seeds: int) -> list[int]:
  """Sampled positive RoIs of one image (proposals + ground truth) for `seeds` keys."""
  import jax
  import jax.numpy as jnp

  from pa_jax.models.proposals import sample_rois

  @jax.jit
  def sample(key):
    rois = jnp.concatenate([props, gt_boxes])
    rv = jnp.concatenate([valid, gt_valid])
    return sample_rois(rois, rv, gt_boxes, gt_valid, key, model.spec)[2]

  return [int(np.asarray(sample(jax.random.PRNGKey(k))).sum()) for k in range(seeds)]


def torchvision_stages(cfg, state_dict, batch):
  """torchvision in training mode, no optimiser step: per image (GT boxes, proposals,
  number of sampled positives)."""
  import torch

  from frameworks_torchvision import build_torchvision, torch_inputs

  tv = build_torchvision(cfg, "cpu")
  tv.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict.items()})
  tv.train()
  images, targets = torch_inputs(batch, "cpu")
  with torch.no_grad():
    image_list, targets = tv.transform(images, targets)
    feats = tv.backbone(image_list.tensors)
    props, _ = tv.rpn(image_list, feats, targets)
    torch.manual_seed(0)
    _, _, labels, _ = tv.roi_heads.select_training_samples([p.clone() for p in props], targets)
  return [(t["boxes"].numpy(), p.numpy(), int((lab > 0).sum()))
          for t, p, lab in zip(targets, props, labels)]


def foreground_candidates(props: np.ndarray, gt: np.ndarray, thr: float) -> tuple[int, int]:
  """(candidates among proposals + GT with IoU >= thr to a GT box, of which proposals)."""
  if len(gt) == 0:
    return 0, 0
  best = box_iou(gt, np.concatenate([props, gt])).max(0)
  from_props = box_iou(gt, props).max(0) if len(props) else np.zeros(0)
  return int((best >= thr).sum()), int((from_props >= thr).sum())


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--preset", default="cpu_small", choices=sorted(PRESETS))
  ap.add_argument("--npz", required=True, help="torchvision state dict (frameworks.py export)")
  ap.add_argument("--batch", type=int, default=0, help="index of the bench's training batch")
  ap.add_argument("--seeds", type=int, default=5, help="pa_jax sampler keys")
  ap.add_argument("--out", required=True)
  a = ap.parse_args(argv)

  from frameworks_timing import pa_jax_setup, pa_jax_variables

  spec, overrides = preset(a.preset)  # with the presets' SAME_AS_TORCHVISION
  cfg = load_config(spec, overrides)
  cfg.model.compute_dtype = "float32"
  model, _, batches, first = pa_jax_setup(cfg)
  state_dict = dict(np.load(a.npz))
  variables, _ = pa_jax_variables(model, first, state_dict)
  batch = batches.batch(a.batch)
  props, valid = jax_proposals(model, variables, batch)
  tv = torchvision_stages(cfg, state_dict, batch)
  thr = float(model.spec.roi_fg_iou)
  images = []
  for i, (gt_t, props_t, pos_t) in enumerate(tv):
    gv = np.asarray(batch.valid[i])
    gt_j = np.asarray(batch.boxes[i])[gv]
    props_j = props[i][valid[i]]
    iou = box_iou(props_j, props_t) if len(props_j) and len(props_t) else np.zeros((0, 0))
    images.append({
        "gt_boxes": [len(gt_j), len(gt_t)],
        "gt_identical": bool(gt_j.shape == gt_t.shape and np.array_equal(gt_j, gt_t)),
        "proposals": [int(len(props_j)), int(len(props_t))],
        "proposals_with_partner_iou0.99": [
            float((iou.max(1) >= 0.99).mean()) if iou.size else None,
            float((iou.max(0) >= 0.99).mean()) if iou.size else None],
        "foreground_candidates_and_from_proposals": [
            foreground_candidates(props_j, gt_j, thr), foreground_candidates(props_t, gt_t, thr)],
        "sampled_positives_pa_jax_per_seed": jax_positives(
            model, props[i], valid[i], batch.boxes[i], batch.valid[i], a.seeds),
        "sampled_positives_torchvision": pos_t,
    })
  res = {"command": "python " + " ".join(["bench/sampling_agreement.py"] + (argv or sys.argv[1:])),
         "preset": a.preset, "batch": a.batch, "roi_fg_iou": thr,
         "pairs": "[pa_jax, torchvision]", "images": images}
  Path(a.out).parent.mkdir(parents=True, exist_ok=True)
  Path(a.out).write_text(json.dumps(res, indent=1))
  print(json.dumps(res, indent=1))
  return 0


if __name__ == "__main__":
  sys.exit(main())
