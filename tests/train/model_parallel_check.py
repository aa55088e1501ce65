"""Run with XLA_FLAGS=--xla_force_host_platform_device_count=8: one training step of a tiny
Mask R-CNN with the partial-annotation module (the real model code, `per_image` under
shard_map) on an 8-device mesh and on a 1-device mesh, same global batch of 8. Prints one
JSON line: loss and every aux value of both, and the largest parameter difference."""

import json
import sys

import jax
import numpy as np
import optax

from pa_jax import experiment
from pa_jax.data import pipeline, synthetic
from pa_jax.data.pipeline import shard_batch
from pa_jax.models.mask_rcnn import MaskRCNN, ModelSpec
from pa_jax.train.state import create_train_state, make_data_mesh
from pa_jax.train.step import make_train_step

SPEC = ModelSpec(backbone="resnet18", backbone_width=8, norm="group_norm", fpn_channels=16,
                 anchor_sizes=((8, 11.3), (16, 22.6), (32, 45.3), (64, 90.5), (128, 181.0)),
                 rpn_pre_nms_topk_train=200, rpn_post_nms_topk_train=100,
                 rpn_batch_per_image=64, roi_batch_per_image=64, fc_dim=32, mask_dim=16,
                 max_detections=50, max_pa_boxes=80, key_channels=8, value_channels=8,
                 anchor_wh=(16.0, 16.0), partial=True, hard_negatives=True,
                 pa_threshold=0.3)


def batch8(canvas=64):
  exs = []
  for i in range(8):
    img, lab = synthetic.synthetic_image(i, canvas, canvas, n_nuclei=6, radius=(5, 9))
    exs.append(pipeline.TrainExample(str(i), pipeline.normalize_image(img), lab, lab))
  b = pipeline.BatchSource(exs, 8, canvas, 16).batch(0)
  # One rejected region per image (hard negatives), on a nucleus' box shifted a bit.
  neg = np.zeros_like(b.negative_boxes)
  neg[:, 0] = b.boxes[:, 0] + 3.0
  ok = np.zeros_like(b.negative_valid)
  ok[:, 0] = b.valid[:, 0]
  return b.replace(negative_boxes=neg, negative_valid=ok)


def step_on(mesh, batch):
  task = experiment.make_task(MaskRCNN(SPEC))
  tx = optax.sgd(0.01)
  state = create_train_state(task, None, jax.random.PRNGKey(0), batch, mesh, tx)
  step = make_train_step(task, tx, mesh)
  state, metrics = step(state, shard_batch(batch, mesh))
  flat = {jax.tree_util.keystr(p): np.asarray(v)
          for p, v in jax.tree_util.tree_flatten_with_path(jax.device_get(state.params))[0]}
  return flat, {k: float(v) for k, v in jax.device_get(metrics).items()}


def main():
  batch = batch8()
  p8, m8 = step_on(make_data_mesh(), batch)
  p1, m1 = step_on(make_data_mesh(jax.devices()[:1]), batch)
  out = {"n_devices": len(jax.devices()), "metrics_8": m8, "metrics_1": m1,
         "max_abs_diff_params": max(float(np.max(np.abs(p8[k] - p1[k]))) for k in p8)}
  print(json.dumps(out))


if __name__ == "__main__":
  sys.exit(main())
