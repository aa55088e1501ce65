"""The partial-annotation module's part of a training step (DESIGN.md PA 3-6).

`MaskRCNN.__call__` runs the centerness head and hands its output here; what comes back
are the PA loss terms and diagnostics (`partial_terms`) and the RoI candidates the module
adds (`extra_rois`). The ignore rules themselves live in `ignore.py` and are applied by the
per-image target stages. `spec` is the model's `ModelSpec` (read by field name: this
package does not import the model).

Per-image stages that loop (connected components in `pa_boxes`) run per device through
`pa_jax.ops.per_device.per_image`; the pixel sample stays one sample over the whole global
batch (DESIGN PA 4: "per batch, sample 128 pixels"), so the result does not depend on the
number of devices.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from pa_jax.ops.per_device import per_image
from pa_jax.partial.hard_negatives import negatives_in_centerness, suppress_near
from pa_jax.partial.ignore import off_the_edge, pa_hits_device
from pa_jax.partial.pa_boxes import pa_boxes
from pa_jax.partial.targets import centerness_losses, centerness_targets, sample_pixels


def training_pa_boxes(spec: Any, logits: jax.Array, deltas: jax.Array,
                      batch: Any) -> tuple[jax.Array, jax.Array]:
  """PA boxes of a training batch, per device, with no gradient.

  Args:
    logits: float32 `[B, h, w]`, deltas: float32 `[B, h, w, 4]` (centerness head).
    batch: `pa_jax.structures.Batch` (image_size; negative boxes with hard negatives).

  Returns:
    `(boxes float32 [B, P, 4], valid bool [B, P])`, P = `spec.max_pa_boxes`. With
    `spec.hard_negatives`, boxes near a rejected region (IoU >= roi_ignore_iou) are invalid.
  """
  def one(lg, dl, hw, neg, neg_valid):
    boxes, _, valid = pa_boxes(lg, dl, jnp.asarray(spec.anchor_wh, jnp.float32),
                               spec.anchor_strides[0], hw, spec.pa_threshold, spec.max_pa_boxes,
                               spec.components_backend, connectivity=spec.connectivity,
                               weights=spec.centerbox_weights)
    if spec.hard_negatives:  # never propose (or ignore anchors) where a person said "no"
      valid = suppress_near(boxes, valid, neg, neg_valid, spec.roi_ignore_iou)
    return boxes, valid

  boxes, valid = per_image(one, jax.lax.stop_gradient(logits), jax.lax.stop_gradient(deltas),
                           batch.image_size, batch.negative_boxes, batch.negative_valid)
  return jax.lax.stop_gradient(boxes), valid


def partial_terms(spec: Any, logits: jax.Array, deltas: jax.Array, batch: Any,
                  key: jax.Array) -> tuple[dict, jax.Array, jax.Array]:
  """Centerness losses, PA boxes and diagnostics of a training batch.

  Args:
    logits: float32 `[B, h, w]`, deltas: float32 `[B, h, w, 4]` from `CenternessHead` on P2.
    batch: `pa_jax.structures.Batch`.
    key: PRNG key of the centerness pixel sample.

  Returns:
    `(aux, pa_boxes [B, P, 4], pa_valid [B, P])`. `aux` holds, in this order (the model sums
    the `loss_` keys in insertion order): `loss_centerness`, `loss_centerbox` (weighted),
    `pa_boxes_per_image`, `pa_unannotated_per_image`, `pa_unannotated_covered`, and
    `pa_<stat>` for the statistics of `targets.centerness_losses`.
  """
  h, w = logits.shape[1:3]
  stride = spec.anchor_strides[0]

  def targets_of(lab, bx, v, neg, neg_valid):
    target, box_target = centerness_targets(lab, bx, v, (h, w), stride, spec.center_scale)
    if spec.hard_negatives:
      target = negatives_in_centerness(target, neg, neg_valid, stride)
    return target, box_target

  target, box_target = per_image(targets_of, batch.labels, batch.boxes, batch.valid,
                                 batch.negative_boxes, batch.negative_valid)
  sampled = sample_pixels(key, target, spec.pa_num_pixels, spec.pa_positive_fraction)
  l_cen, l_cbox, stats = centerness_losses(logits, deltas, target, box_target, sampled,
                                           jnp.asarray(spec.anchor_wh, jnp.float32), stride,
                                           beta=spec.centerbox_beta,
                                           weights=spec.centerbox_weights)
  boxes, valid = training_pa_boxes(spec, logits, deltas, batch)
  aux = {"loss_centerness": spec.centerness_loss_weight * l_cen,
         "loss_centerbox": spec.centerbox_loss_weight * l_cbox,
         "pa_boxes_per_image": jnp.mean(jnp.sum(valid, axis=1).astype(jnp.float32))}
  # How many unannotated nuclei (known only when the labels are a derived partial view) the
  # PA boxes find: the module doing its job, visible in the log.
  # One IoU matrix per image, counted twice: over every unannotated nucleus, and over those
  # no crop edge cuts (`off_the_edge`): a sliver whose centre lies outside the crop can get
  # no PA box, so the plain figure mixes the centerness with the crop geometry.
  hit = jax.vmap(pa_hits_device)(boxes, valid, batch.unannotated_boxes)
  missing = batch.unannotated_valid
  whole = missing & jax.vmap(off_the_edge)(batch.unannotated_boxes, batch.image_size)
  count = lambda m: jnp.sum(m, axis=1).astype(jnp.float32)  # noqa: E731
  aux["pa_unannotated_per_image"] = jnp.mean(count(missing))
  aux["pa_unannotated_covered"] = jnp.sum(count(hit & missing)) / jnp.maximum(
      jnp.sum(count(missing)), 1.0)
  aux["pa_unannotated_whole_covered"] = jnp.sum(count(hit & whole)) / jnp.maximum(
      jnp.sum(count(whole)), 1.0)
  aux["pa_unannotated_whole_per_image"] = jnp.mean(count(whole))
  aux.update({f"pa_{k}": v for k, v in stats.items()})
  return aux, boxes, valid


def extra_rois(spec: Any, pa_boxes: jax.Array, pa_valid: jax.Array,
               batch: Any) -> tuple[list, list]:
  """RoI candidates the module adds to proposals + ground truth: the PA boxes (DESIGN PA 6)
  and, with hard negatives, the rejected regions (always background RoIs).

  Returns:
    `(boxes, valid)`: lists of float32 `[B, n, 4]` and bool `[B, n]` to concatenate on axis 1.
  """
  boxes, valid = [pa_boxes], [pa_valid]
  if spec.hard_negatives:
    boxes.append(batch.negative_boxes)
    valid.append(batch.negative_valid)
  return boxes, valid
