"""Overfit check: a tiny detector memorises 2 synthetic images (issue 4's learning test).

Loss must fall by more than 90 % and the predicted label maps must match the ground truth
with mAP > 0.9 after a few hundred steps — the whole chain (targets, sampling, heads,
losses, proposals, NMS, paste-back, label rendering) has to be right for that to happen.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from pa_jax.data import pipeline, synthetic
from pa_jax.evaluation.metrics import dsb_map
from pa_jax.infer.predictor import Predictor
from pa_jax.models.mask_rcnn import MaskRCNN, ModelSpec

SPEC = ModelSpec(
    backbone="resnet18",
    backbone_width=16,
    norm="group_norm",
    fpn_channels=32,
    anchor_sizes=((8, 11.3), (16, 22.6), (32, 45.3), (64, 90.5), (128, 181.0)),
    rpn_pre_nms_topk_train=300,
    rpn_post_nms_topk_train=150,
    rpn_pre_nms_topk_test=300,
    rpn_post_nms_topk_test=150,
    rpn_batch_per_image=128,
    roi_batch_per_image=128,
    fc_dim=64,
    mask_dim=32,
    max_detections=40,
    score_threshold=0.5,
)


@pytest.mark.usefixtures("xla_optimized")
def test_tiny_model_overfits_two_synthetic_images():
  canvas = 96
  images, labels, exs = [], [], []
  for i in range(2):
    img, lab = synthetic.synthetic_image(
        10 + i, canvas, canvas, n_nuclei=7, radius=(7, 11), touching=0.0
    )
    images.append(img)
    labels.append(lab)
    exs.append(pipeline.TrainExample(str(i), pipeline.normalize_image(img), lab, lab))
  src = pipeline.BatchSource(exs, 2, canvas, 16, flip_h=False, flip_v=False)
  batch = jax.tree.map(jnp.asarray, src.batch(0))
  model = MaskRCNN(SPEC)
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), batch, jax.random.PRNGKey(1))
  sched = optax.linear_schedule(0.0, 0.02, 30)
  tx = optax.chain(optax.clip_by_global_norm(5.0), optax.sgd(sched, momentum=0.9))
  params, opt = variables["params"], tx.init(variables["params"])

  @jax.jit
  def step(params, opt, k):
    (loss, aux), g = jax.value_and_grad(
        lambda p: model.apply({**variables, "params": p}, batch, k), has_aux=True
    )(params)
    upd, opt = tx.update(g, opt, params)
    return optax.apply_updates(params, upd), opt, loss

  losses = []
  for i in range(400):
    params, opt, loss = step(params, opt, jax.random.PRNGKey(i))
    losses.append(float(loss))
  first, last = np.mean(losses[:5]), np.mean(losses[-10:])
  assert last < 0.1 * first, (first, last)

  predictor = Predictor(model, {**variables, "params": params}, dilate=False)
  scores = [dsb_map(lab, predictor(img)) for img, lab in zip(images, labels)]
  assert np.mean(scores) > 0.9, scores
