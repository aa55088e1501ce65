"""Mask R-CNN (FPN) with the optional partial-annotation module, static shapes throughout.

`MaskRCNN(spec)`:
  * `__call__(batch, rng, *, train=True) -> (loss, aux)` — every loss term of a batch;
  * `predict(image, image_size) -> Detections` — boxes, scores and 28x28 mask
    probabilities of up to `max_detections` nuclei per image, plus the PA boxes.

The per-image stages (anchor targets, proposal generation, RoI sampling) are pure
functions of ONE image (`pa_jax.models.proposals`) lifted over the batch with `jax.vmap` (scenic
style) inside `jax.shard_map` over "data" in training (`pa_jax.ops.per_device.per_image`:
each device runs the loops of its own images, no collective inside a loop); ops (IoU, NMS, RoIAlign, …) come from `pa_jax.ops`, losses from `pa_jax.losses`,
and everything specific to partial labels from `pa_jax.partial`, reached only when
`spec.partial` is True. With the switch off, the module has exactly the baseline's
parameters and computations (same parameter names, same random streams), which the
regression guard test checks bit for bit.

Boxes are float32 `(x0, y0, x1, y1)` absolute pixels of the canvas everywhere.
"""

from __future__ import annotations

from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from pa_jax import losses
from pa_jax.models.attention import FactorizedAttention
from pa_jax.models.fpn import FPN
from pa_jax.models.mask_chunks import mask_loss_in_chunks, masks_in_chunks  # noqa: F401
from pa_jax.models.padding import padding_mask, smallest_canvas, zero_padding
from pa_jax.models.partial import CenternessHead

# The spec, the output and the per-image stages have their own modules; imported from here too.
from pa_jax.models.proposals import (
    generate_proposals,
    level_anchors,
    rpn_targets,  # noqa: F401
    sample_rois,
)
from pa_jax.models.resnet import resnet
from pa_jax.models.roi_heads import BoxHead, MaskHead
from pa_jax.models.rpn import RPNHead
from pa_jax.models.spec import Detections, ModelSpec
from pa_jax.ops import anchors as anchor_ops
from pa_jax.ops import boxes as box_ops
from pa_jax.ops import masks as mask_ops
from pa_jax.ops import nms as nms_ops
from pa_jax.ops import roi_align as roi_ops
from pa_jax.ops.per_device import per_image, per_image_on_prefix
from pa_jax.structures import Batch

ROI_LEVELS = (2, 3, 4, 5)  # RoIAlign reads P2..P5 (P6 only feeds the RPN), as in FPN.
RPN_BOX_BETA = 1.0 / 9.0  # torchvision's smooth-L1 beta for the RPN
ROI_BOX_BETA = 1.0 / 9.0


def _flatten_levels(per_level: dict, names: Sequence[str], trailing: int) -> list[jax.Array]:
  """[B, H, W, A, ...] per level → [B, H*W*A, ...] in (y, x, a) order (anchors' order)."""
  out = []
  for n in names:
    x = per_level[n]
    b = x.shape[0]
    out.append(x.reshape((b, -1) + x.shape[x.ndim - trailing :] if trailing else (b, -1)))
  return out


# ------------------------------------------------------------------------------ the model


class MaskRCNN(nn.Module):
  """FPN Mask R-CNN (+ partial-annotation module when `spec.partial`)."""

  spec: ModelSpec

  def setup(self):
    s = self.spec
    self.backbone = resnet(
        s.backbone,
        base_channels=s.backbone_width,
        norm=s.norm,
        freeze_at=s.freeze_at,
        dtype=s.dtype,
    )
    self.fpn = FPN(s.fpn_channels, dtype=s.dtype)
    self.rpn = RPNHead(
        num_anchors=anchor_ops.num_anchors_per_location(s.anchor_sizes[0], s.anchor_ratios),
        dtype=s.dtype,
    )
    self.box_head = BoxHead(s.num_classes, s.fc_dim, dtype=s.dtype)
    self.mask_head = MaskHead(s.num_classes, s.mask_dim, dtype=s.dtype)
    if s.partial:
      self.attention = {
          lvl: FactorizedAttention(
              s.key_channels,
              s.value_channels,
              zero_init_output=s.attention_zero_init,
              dtype=s.dtype,
              name=f"attention_{lvl}",
          )
          for lvl in s.attention_levels
      }
      self.centerness = CenternessHead(dtype=s.dtype)

  # -------------------------------------------------------------------- shared features
  def features(self, image: jax.Array, image_size: jax.Array | None = None) -> dict[str, jax.Array]:
    """FPN pyramid {'p2'..'p6'} of a float32 [B, H, W, 3] batch (attention applied).

    `image_size` int32 [B, 2] real (H, W) of each image (None: the whole canvas is real).
    With `spec.mask_padding` no layer sees the canvas padding beyond it
    (`pa_jax.models.padding`); with `spec.attention_mask_padding` alone, only the
    attention's keys ignore it.
    """
    # The backbone runs its norm layers in inference mode: 'frozen_bn' and 'group_norm'
    # have no batch statistics, and 'bn' uses its (imported) running statistics.
    masked = image_size if self.spec.mask_padding else None
    feats = self.fpn(self.backbone(image, train=False, image_size=masked), masked)
    if self.spec.partial:
      for k in self.attention:
        valid = self._attention_valid(k, feats[k], image_size)
        out = self.attention[k](feats[k], valid)
        feats[k] = zero_padding(out, valid) if masked is not None else out
    return feats

  def _attention_valid(
      self, level: str, feat: jax.Array, image_size: jax.Array | None
  ) -> jax.Array | None:
    """bool [B, h, w] real cells of FPN level `level` ('p2' has stride 4), or None."""
    s = self.spec
    if image_size is None or not (s.attention_mask_padding or s.mask_padding):
      return None
    return padding_mask(image_size, feat.shape[1:3], 2 ** int(level[1:]))

  def _rpn(self, feats):
    out = self.rpn(feats)
    names = sorted(out.objectness, key=lambda n: int(n[1:]))
    obj = _flatten_levels(out.objectness, names, 0)
    dlt = _flatten_levels(out.deltas, names, 1)
    return out, names, obj, dlt

  def _roi_extent(self, image_size: jax.Array) -> jax.Array | None:
    """int32 [B, 2]: with `spec.mask_padding`, the smallest multiple-of-32 canvas holding
    each image, where RoIAlign's maps end (`roi_align`, "Where the map ends"); else None."""
    return smallest_canvas(image_size) if self.spec.mask_padding else None

  def _roi_features(self, feats, boxes: jax.Array, size: int, extent=None) -> jax.Array:
    """[B, R, 4] boxes → [B*R, size, size, C] multilevel RoIAlign features; `extent` as
    `_roi_extent` gives."""
    levels = [feats[f"p{k}"] for k in ROI_LEVELS]
    pooled = roi_ops.batched_multilevel_roi_align(
        levels, boxes, size, ROI_LEVELS, self.spec.sampling_ratio, extent_hw=extent
    )
    b, r = boxes.shape[:2]
    return pooled.reshape((b * r,) + pooled.shape[2:])

  def _pa_boxes(self, cen_logits, cen_deltas, image_size):
    """PA boxes of a batch from the centerness map (no gradient)."""
    from pa_jax.partial.pa_boxes import pa_boxes

    s = self.spec
    fn = lambda lg, dl, hw: pa_boxes(
        lg,
        dl,
        jnp.asarray(s.anchor_wh, jnp.float32),  # noqa: E731
        s.anchor_strides[0],
        hw,
        s.pa_threshold,
        s.max_pa_boxes,
        s.components_backend,
        connectivity=s.connectivity,
        weights=s.centerbox_weights,
    )
    boxes, scores, valid = jax.vmap(fn)(
        jax.lax.stop_gradient(cen_logits), jax.lax.stop_gradient(cen_deltas), image_size
    )
    return jax.lax.stop_gradient(boxes), scores, valid

  # --------------------------------------------------------------------------- training
  def __call__(self, batch: Batch, rng: jax.Array, *, train: bool = True):
    """All losses of a batch.

    Returns (loss scalar, aux dict of scalars: each weighted term and diagnostics).
    """
    del train  # losses are only defined in training mode
    s = self.spec
    canvas_hw = batch.image.shape[1:3]
    b = batch.image.shape[0]
    # Always three keys (the partial module uses the third), so the baseline's random
    # streams are the same with the module on or off.
    k_rpn, k_roi, k_pix = jax.random.split(rng, 3)

    feats = self.features(batch.pixels(), batch.image_size)
    rpn_out, names, obj, dlt = self._rpn(feats)
    anchors_per_level, _ = level_anchors(s, canvas_hw)
    obj_all = jnp.concatenate(obj, axis=1)
    dlt_all = jnp.concatenate(dlt, axis=1)

    aux = {}
    pa_args = ()  # (pa_boxes, pa_valid) with the module: the ignore rules of DESIGN PA 6
    if s.partial:
      from pa_jax.partial import training as pa_training

      cen = self.centerness(rpn_out.hidden["p2"])
      pa_aux, pa_boxes, pa_valid = pa_training.partial_terms(
          s, cen.logits, cen.deltas, batch, k_pix
      )
      aux.update(pa_aux)
      pa_args = (pa_boxes, pa_valid)

    # Per-image stages run through `per_image`: vmap over one device's images inside
    # shard_map over "data" when the batch is sharded, so their loops (NMS, PA-ignore blocks)
    # never wait on other devices. Their inputs carry no gradient.
    # ---- RPN losses
    anchors_np = np.concatenate(anchors_per_level)
    keys = jax.random.split(k_rpn, b)
    # Matching costs anchors x ground-truth slots: cut the slots to the valid ones (in
    # static steps of 32, 64, ... max_instances) rather than match every padded slot.
    idx, sampled, positive, targets, rpn_ignored = per_image_on_prefix(
        lambda gb, gv, k, *pa: rpn_targets(jnp.asarray(anchors_np), gb, gv, k, s, *pa),
        batch.valid,
        (batch.boxes, batch.valid),
        (keys, *pa_args),
    )
    if s.partial:
      aux["pa_ignored_anchors_per_image"] = jnp.mean(rpn_ignored.astype(jnp.float32))
    obj_s = jnp.take_along_axis(obj_all, idx, axis=1)
    dlt_s = jnp.take_along_axis(dlt_all, idx[..., None], axis=1)
    n_rpn = jnp.sum(sampled)
    aux["loss_rpn_cls"] = s.rpn_loss_weight * losses.sigmoid_binary_cross_entropy(
        obj_s, positive, sampled, n_rpn
    )
    aux["loss_rpn_box"] = s.rpn_loss_weight * losses.smooth_l1(
        dlt_s.reshape(-1, 4), targets.reshape(-1, 4), positive.reshape(-1), RPN_BOX_BETA, n_rpn
    )
    aux["rpn_positives_per_image"] = jnp.sum(positive) / b

    # ---- proposals (+ ground truth, + PA boxes) → sampled RoIs
    props, _, props_valid = per_image(
        lambda o, d, hw: generate_proposals(
            o,
            d,
            anchors_per_level,
            hw,
            s.rpn_pre_nms_topk_train,
            s.rpn_post_nms_topk_train,
            s.rpn_nms_iou,
            anchors_in_image=s.mask_padding,
        ),
        [jax.lax.stop_gradient(x) for x in obj],
        [jax.lax.stop_gradient(x) for x in dlt],
        batch.image_size,
    )
    rois = [props, batch.boxes]
    rois_valid = [props_valid, batch.valid]
    if s.partial:
      more, more_valid = pa_training.extra_rois(s, pa_boxes, pa_valid, batch)
      rois += more
      rois_valid += more_valid
    rois = jnp.concatenate(rois, axis=1)
    rois_valid = jnp.concatenate(rois_valid, axis=1)
    keys = jax.random.split(k_roi, b)
    sboxes, ssampled, spos, smatched, roi_ignored = per_image(
        lambda r, rv, gb, gv, k, *pa: sample_rois(r, rv, gb, gv, k, s, *pa),
        rois,
        rois_valid,
        batch.boxes,
        batch.valid,
        keys,
        *pa_args,
    )
    if s.partial:
      aux["pa_ignored_rois_per_image"] = jnp.mean(roi_ignored.astype(jnp.float32))
    sboxes = jax.lax.stop_gradient(sboxes)

    # ---- box head
    extent = self._roi_extent(batch.image_size)
    head = self.box_head(self._roi_features(feats, sboxes, s.pooler_size, extent))
    n_roi = jnp.sum(ssampled)
    labels = spos.astype(jnp.int32).reshape(-1)
    aux["loss_cls"] = s.box_loss_weight * losses.softmax_cross_entropy(
        head.class_logits, labels, ssampled.reshape(-1), n_roi
    )
    gt_for_roi = jnp.take_along_axis(batch.boxes, smatched[..., None], axis=1)
    box_targets = box_ops.encode_boxes(gt_for_roi, sboxes, s.box_weights)
    pred = head.box_deltas[:, min(1, head.box_deltas.shape[1] - 1)]
    aux["loss_box"] = s.box_loss_weight * losses.smooth_l1(
        pred, box_targets.reshape(-1, 4), spos.reshape(-1), ROI_BOX_BETA, n_roi
    )

    # ---- mask head on the (at most roi_batch * positive_fraction) positives, which
    # `sample_balanced` puts first. Only the chunks of slots that hold a positive run
    # (`mask_loss_in_chunks`): the rest would add 0 to the loss and to every gradient.
    n_pos = max(1, int(s.roi_batch_per_image * s.roi_positive_fraction))
    mboxes, mpos, mmatched = sboxes[:, :n_pos], spos[:, :n_pos], smatched[:, :n_pos]
    # The mask frame: the RoI with a margin (mask_box_scale), in training as at inference.
    mboxes = box_ops.scale_boxes(mboxes, s.mask_box_scale)
    ids = jnp.where(mpos, mmatched + 1, 0)
    mask_logits = self._mask_logits(feats, extent)
    size = 2 * s.mask_pooler_size

    def chunk_loss(bx, pos, i):
      """BCE SUM over the positive slots of one chunk: bx [B, M, 4], pos, i [B, M]."""
      logits = mask_logits(bx)
      targets = jax.vmap(
          lambda lab, ii, bb: mask_ops.mask_targets(lab, ii, bb, size, s.sampling_ratio)
      )(batch.labels, i, bx)
      w = jnp.broadcast_to(pos[..., None, None], logits.shape)
      return losses.sigmoid_binary_cross_entropy(logits, targets.reshape(logits.shape), w, 1.0)

    total = mask_loss_in_chunks(chunk_loss, mpos, (mboxes, mpos, ids), s.mask_train_chunk)
    # The mean over positive pixels, as `sigmoid_binary_cross_entropy` on all slots gives.
    n_pix = jnp.sum(mpos.astype(jnp.float32)) * size * size
    aux["loss_mask"] = s.mask_loss_weight * total / jnp.maximum(n_pix, 1.0)
    aux["roi_positives_per_image"] = jnp.sum(spos) / b

    loss_terms = [v for k, v in aux.items() if k.startswith("loss_")]
    loss = sum(loss_terms[1:], loss_terms[0])
    return loss, aux

  # -------------------------------------------------------------------------- inference
  def predict(self, image: jax.Array, image_size: jax.Array) -> Detections:
    """Detections of a float32 [B, H, W, 3] batch; `image_size` int32 [B, 2] real sizes."""
    s = self.spec
    canvas_hw = image.shape[1:3]
    feats = self.features(image.astype(jnp.float32), image_size)
    rpn_out, names, obj, dlt = self._rpn(feats)
    anchors_per_level, _ = level_anchors(s, canvas_hw)
    props, _, props_valid = jax.vmap(
        lambda o, d, hw: generate_proposals(
            [x for x in o],
            [x for x in d],
            anchors_per_level,
            hw,
            s.rpn_pre_nms_topk_test,
            s.rpn_post_nms_topk_test,
            s.rpn_nms_iou,
            anchors_in_image=s.mask_padding,
        )
    )(list(obj), list(dlt), image_size)
    b = image.shape[0]
    if s.partial:
      cen = self.centerness(rpn_out.hidden["p2"])
      pa, _, pa_valid = self._pa_boxes(cen.logits, cen.deltas, image_size)
      # PA boxes join the proposals "with objectness 1": the box head scores them like any.
      props = jnp.concatenate([props, pa], axis=1)
      props_valid = jnp.concatenate([props_valid, pa_valid], axis=1)
    else:
      pa = jnp.zeros((b, 0, 4), jnp.float32)
      pa_valid = jnp.zeros((b, 0), bool)

    extent = self._roi_extent(image_size)
    head = self.box_head(self._roi_features(feats, props, s.pooler_size, extent))
    r = props.shape[1]
    probs = jax.nn.softmax(head.class_logits, axis=-1)[:, 1].reshape(b, r)
    deltas = head.box_deltas[:, min(1, head.box_deltas.shape[1] - 1)].reshape(b, r, 4)
    boxes = box_ops.decode_deltas(deltas, props, s.box_weights)
    boxes = box_ops.clip_boxes(boxes, image_size[:, 0:1], image_size[:, 1:2])
    wh = boxes[..., 2:] - boxes[..., :2]
    valid = props_valid & (probs > s.score_threshold) & jnp.all(wh > 1e-3, axis=-1)
    k = min(s.max_detections, r)
    keep, keep_valid = nms_ops.batched_nms(boxes, probs, valid, s.nms_iou, k)
    det_boxes = jnp.take_along_axis(boxes, keep[..., None], axis=1)
    det_scores = jnp.where(keep_valid, jnp.take_along_axis(probs, keep, axis=1), 0.0)
    mask_boxes = box_ops.scale_boxes(det_boxes, s.mask_box_scale)
    masks = masks_in_chunks(self._mask_probabilities(feats, extent), mask_boxes, keep_valid,
                            s.mask_batch)
    return Detections(det_boxes, det_scores, masks, mask_boxes, keep_valid, pa, pa_valid)

  def _mask_probabilities(self, feats, extent=None) -> Callable[[jax.Array], jax.Array]:
    """Pure function: boxes float32 [B, M, 4] (x0, y0, x1, y1) -> float32 [B, M, 28, 28]
    mask probabilities (the sigmoid of `_mask_logits`)."""
    logits = self._mask_logits(feats, extent)
    return lambda boxes: jax.nn.sigmoid(logits(boxes))

  def _mask_logits(self, feats, extent=None) -> Callable[[jax.Array], jax.Array]:
    """Pure function: boxes float32 [B, M, 4] (x0, y0, x1, y1) -> float32 [B, M, 28, 28]
    mask logits, from the pyramid `feats` (RoIAlign's maps ending at `extent`,
    `_roi_extent`) and the mask head's bound weights.

    A plain function of arrays (the head applied to its own variables), not a module call,
    so that `masks_in_chunks` can run it inside a `lax.while_loop` and
    `mask_loss_in_chunks` inside a `lax.cond`; in training the variables are the traced
    parameters, so their gradients flow through it.
    """
    s = self.spec
    if self.is_initializing():  # `init`: create the weights read below
      c = feats["p2"].shape[-1]
      self.mask_head(jnp.zeros((1, s.mask_pooler_size, s.mask_pooler_size, c), s.dtype))
    head, head_vars = self.mask_head.clone(parent=None), self.mask_head.variables

    def logits(boxes):
      out = head.apply(head_vars, self._roi_features(feats, boxes, s.mask_pooler_size, extent))
      return out[..., 0].reshape(boxes.shape[:2] + out.shape[1:3])

    return logits

  def attention_maps(self, image: jax.Array, image_size: jax.Array | None = None) -> dict:
    """Runs the features and returns nothing; call with mutable=['intermediates'] to
    collect the attention queries/keys sown by `FactorizedAttention` (`image_size` int32
    [B, 2] as in `predict`, so the keys are those prediction uses)."""
    self.features(image.astype(jnp.float32), image_size)
    return {}
