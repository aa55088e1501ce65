"""The PA module acting inside the model (issue 14, item 5).

At random init the centerness never passes 0.95, so no PA box exists and no test of the
model could fail if the ignore rules stopped firing. Here the centerness head's output is
overridden around the unannotated nuclei of a synthetic partial batch (flax
`intercept_methods`: every other line of `MaskRCNN.__call__` runs as in training), so the
real path centerness -> PA boxes -> ignore rules runs, and its counters are checked against
an independent numpy count of the anchors that must turn from NEGATIVE to IGNORE.
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pa_jax.data import pipeline, synthetic
from pa_jax.models.mask_rcnn import MaskRCNN, ModelSpec, level_anchors
from pa_jax.models.partial import CenternessHead, CenternessOutput

CANVAS, STRIDE, ANCHOR = 64, 4, 16.0
SPEC = ModelSpec(backbone="resnet18", backbone_width=8, norm="group_norm", fpn_channels=16,
                 anchor_sizes=((8, 11.3), (16, 22.6), (32, 45.3), (64, 90.5), (128, 181.0)),
                 rpn_pre_nms_topk_train=200, rpn_post_nms_topk_train=100,
                 rpn_batch_per_image=64, roi_batch_per_image=64, fc_dim=32, mask_dim=16,
                 max_pa_boxes=32, key_channels=8, value_channels=8, attention_levels=("p2",),
                 anchor_wh=(ANCHOR, ANCHOR), partial=True)  # release defaults otherwise
RELEASE_WEIGHTS = (10.0, 10.0, 5.0, 5.0)


def _batch():
  """Two 64 x 64 synthetic images; nuclei with an even id are annotated, odd ones are not.
  No flips, so canvas coordinates are the images'."""
  exs = []
  for i in range(2):
    img, full = synthetic.synthetic_image(10 + i, CANVAS, CANVAS, n_nuclei=9, radius=(4, 7),
                                          touching=0.0)
    partial = np.where(full % 2 == 0, full, 0)
    exs.append(pipeline.TrainExample(str(i), pipeline.normalize_image(img), partial, full))
  src = pipeline.BatchSource(exs, 2, CANVAS, 16, flip_h=False, flip_v=False)
  return jax.tree.map(jnp.asarray, src.batch(0))


def _variables(model, batch):
  """He-scaled random weights with `model.init`'s structure (no init compile)."""
  shapes = jax.eval_shape(lambda b: model.init(jax.random.PRNGKey(0), b, jax.random.PRNGKey(1)),
                          batch)
  rng = np.random.default_rng(0)

  def fill(path, s):
    if path[-1].key == "kernel":
      return rng.normal(0, math.sqrt(2.0 / math.prod(s.shape[:-1])), s.shape).astype(s.dtype)
    if path[-1].key == "scale":
      return np.ones(s.shape, s.dtype)
    return rng.normal(0, 0.05, s.shape).astype(s.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def _forced_head(batch):
  """Centerness logits +8 at the centre cell of each unannotated nucleus (-8 elsewhere) and
  deltas there that decode, with the release coder, to that nucleus' box grown by 0.37 px a
  side (off the integer grid, so no IoU with an anchor lands exactly on a threshold), clipped
  to the image as the model clips. Nuclei whose
  centre cell touches an already forced cell are skipped, so every forced cell is its own
  component under either connectivity. Returns (logits [B, h, w], deltas [B, h, w, 4],
  forced boxes per image)."""
  b, h, w = batch.image.shape[0], CANVAS // STRIDE, CANVAS // STRIDE
  logits = np.full((b, h, w), -8.0, np.float32)
  deltas = np.zeros((b, h, w, 4), np.float32)
  forced = []
  for k in range(b):
    boxes = np.asarray(batch.unannotated_boxes[k])[np.asarray(batch.unannotated_valid[k])]
    mine = []
    for box in boxes:
      x0, y0, x1, y1 = box.astype(np.float64) + [-0.37, -0.37, 0.37, 0.37]
      cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
      i, j = int(cy // STRIDE), int(cx // STRIDE)
      if (logits[k, max(i - 1, 0):i + 2, max(j - 1, 0):j + 2] > 0).any():
        continue
      logits[k, i, j] = 8.0
      acx, acy = (j + 0.5) * STRIDE, (i + 0.5) * STRIDE
      wx, wy, ww, wh = RELEASE_WEIGHTS
      deltas[k, i, j] = [wx * (cx - acx) / ANCHOR, wy * (cy - acy) / ANCHOR,
                         ww * np.log((x1 - x0) / ANCHOR), wh * np.log((y1 - y0) / ANCHOR)]
      mine.append(np.clip([x0, y0, x1, y1], 0, CANVAS))
    forced.append(np.array(mine, np.float64).reshape(-1, 4))
  return logits, deltas, forced


def _override_centerness(logits, deltas):
  """Replaces the output of every `CenternessHead` call (the head itself still runs)."""
  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if isinstance(context.module, CenternessHead) and context.method_name == "__call__":
      return CenternessOutput(logits + 0.0 * out.logits, deltas + 0.0 * out.deltas)
    return out

  return nn.intercept_methods(interceptor)


def _losses(model):
  @jax.jit
  def run(variables, batch, rng, logits, deltas):
    with _override_centerness(logits, deltas):
      return model.apply(variables, batch, rng)

  return run


def _iou(a, b):
  x0 = np.maximum(a[:, None, 0], b[None, :, 0])
  y0 = np.maximum(a[:, None, 1], b[None, :, 1])
  x1 = np.minimum(a[:, None, 2], b[None, :, 2])
  y1 = np.minimum(a[:, None, 3], b[None, :, 3])
  inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
  area = lambda z: (z[:, 2] - z[:, 0]) * (z[:, 3] - z[:, 1])  # noqa: E731
  union = area(a)[:, None] + area(b)[None, :] - inter
  return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _anchors_turned_ignore(anchors, annotated, pa, spec):
  """Numpy count of DESIGN PA 6 for one image: anchors NEGATIVE w.r.t. the annotations
  (max IoU < bg_iou, and not some nucleus' best anchor) with IoU >= rpn_ignore_iou with a PA
  box. Also the smallest distance of any IoU to a threshold it is compared with."""
  iou = _iou(annotated, anchors)                                # [M, A]
  best_per_gt = iou.max(axis=1, keepdims=True)
  low_quality = ((iou == best_per_gt) & (best_per_gt > 0)).any(axis=0)
  negative = (iou.max(axis=0) < spec.rpn_bg_iou) & ~low_quality
  near_iou = _iou(anchors, pa)
  near = ((near_iou >= spec.rpn_ignore_iou) & (near_iou > 0)).any(axis=1)
  margin = min(np.abs(iou.max(axis=0) - spec.rpn_bg_iou).min(),
               np.abs(near_iou - spec.rpn_ignore_iou).min())
  return int(np.sum(negative & near)), margin


@pytest.fixture(scope="module")
def forced_run():
  batch = _batch()
  model = MaskRCNN(SPEC)
  variables = _variables(model, batch)
  logits, deltas, forced = _forced_head(batch)
  run = _losses(model)
  rng = jax.random.PRNGKey(3)
  on = run(variables, batch, rng, logits, deltas)
  # Control through the same compiled program: the head forced low everywhere.
  off = run(variables, batch, rng, np.full_like(logits, -8.0), deltas)
  return batch, variables, (logits, deltas, forced), on, off


def test_forced_centerness_turns_anchors_and_rois_on_unannotated_nuclei_to_ignore(forced_run):
  batch, _, (_, _, forced), (_, aux), (_, aux_control) = forced_run
  n_forced = [len(f) for f in forced]
  n_unannotated = np.asarray(batch.unannotated_valid).sum(axis=1)
  assert min(n_forced) >= 2 and np.asarray(batch.valid).sum(axis=1).min() >= 2
  # The model read its PA boxes off the forced map, decoded with the release coder weights
  # to exactly the forced nuclei: every forced nucleus is covered, none other.
  assert float(aux["pa_boxes_per_image"]) == np.mean(n_forced)
  np.testing.assert_allclose(float(aux["pa_unannotated_covered"]),
                             sum(n_forced) / n_unannotated.sum(), rtol=1e-6)
  # Anchors: exactly the numpy count of NEGATIVE anchors near a forced nucleus.
  anchors = np.concatenate(level_anchors(SPEC, (CANVAS, CANVAS))[0]).astype(np.float64)
  counts = []
  for k in range(2):
    annotated = np.asarray(batch.boxes[k], np.float64)[np.asarray(batch.valid[k])]
    count, margin = _anchors_turned_ignore(anchors, annotated, forced[k], SPEC)
    assert margin > 1e-4  # no IoU sits on a threshold: float32 vs float64 cannot disagree
    counts.append(count)
  assert min(counts) > 0
  assert float(aux["pa_ignored_anchors_per_image"]) == np.mean(counts)
  # RoIs: at least each PA box itself (it joins the RoIs, is background w.r.t. the
  # annotations and has IoU 1 with its PA box).
  assert float(aux["pa_ignored_rois_per_image"]) >= np.mean(n_forced)
  # Without PA boxes nothing is ignored, and the RPN loss sees other negatives.
  assert float(aux_control["pa_boxes_per_image"]) == 0.0
  assert float(aux_control["pa_ignored_anchors_per_image"]) == 0.0
  assert float(aux_control["pa_ignored_rois_per_image"]) == 0.0
  assert float(aux["loss_rpn_cls"]) != float(aux_control["loss_rpn_cls"])


def test_module_off_gives_the_baseline_losses_bit_for_bit(forced_run):
  """partial=False on the same batch under the same forcing = a baseline whose PA fields
  all hold other values (the pre-release ones among them), every aux term bit for bit."""
  batch, variables, (logits, deltas, _), _, _ = forced_run
  params = {k: v for k, v in variables["params"].items()
            if not k.startswith("attention") and k != "centerness"}
  base_vars = {**variables, "params": params}
  off = MaskRCNN(dataclasses.replace(SPEC, partial=False))
  baseline = MaskRCNN(dataclasses.replace(
      SPEC, partial=False, connectivity=8, centerbox_weights=(1.0, 1.0, 1.0, 1.0),
      centerbox_beta=1.0, attention_zero_init=True, attention_mask_padding=False,
      pa_threshold=0.1, rpn_ignore_iou=0.01, roi_ignore_iou=0.01, anchor_wh=(3.0, 99.0)))
  rng = jax.random.PRNGKey(3)
  # The same wrapper for both, so equal programs share one compilation (the test cache).
  loss_off, aux_off = _losses(off)(base_vars, batch, rng, logits, deltas)
  loss_base, aux_base = _losses(baseline)(base_vars, batch, rng, logits, deltas)
  assert not any(k.startswith("pa_") for k in aux_off)
  assert aux_off.keys() == aux_base.keys()
  assert float(loss_off) == float(loss_base)
  for k in aux_base:
    assert float(aux_off[k]) == float(aux_base[k]), k
