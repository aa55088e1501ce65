"""Mask R-CNN (FPN) with the optional partial-annotation module, static shapes throughout.

`MaskRCNN(spec)`:
  * `__call__(batch, rng, *, train=True) -> (loss, aux)` — every loss term of a batch;
  * `predict(image, image_size) -> Detections` — boxes, scores and 28x28 mask
    probabilities of up to `max_detections` nuclei per image, plus the PA boxes.

The per-image stages (anchor targets, proposal generation, RoI sampling) are pure
functions of ONE image written below and lifted over the batch with `jax.vmap` (scenic
style) inside `jax.shard_map` over "data" in training (`pa_jax.ops.per_device.per_image`:
each device runs the loops of its own images, no collective inside a loop); ops (IoU, NMS, RoIAlign, …) come from `pa_jax.ops`, losses from `pa_jax.losses`,
and everything specific to partial labels from `pa_jax.partial`, reached only when
`spec.partial` is True. With the switch off, the module has exactly the baseline's
parameters and computations (same parameter names, same random streams), which the
regression guard test checks bit for bit.

Boxes are float32 `(x0, y0, x1, y1)` absolute pixels of the canvas everywhere.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from pa_jax import losses
from pa_jax.models.attention import FactorizedAttention, padding_mask
from pa_jax.models.fpn import FPN
from pa_jax.models.partial import CenternessHead
from pa_jax.models.resnet import resnet
from pa_jax.models.roi_heads import BoxHead, MaskHead
from pa_jax.models.rpn import RPNHead
from pa_jax.ops import anchors as anchor_ops
from pa_jax.ops import boxes as box_ops
from pa_jax.ops import masks as mask_ops
from pa_jax.ops import nms as nms_ops
from pa_jax.ops import roi_align as roi_ops
from pa_jax.ops.matching import Assignment, match
from pa_jax.ops.per_device import per_image
from pa_jax.ops.sampling import sample_balanced
from pa_jax.structures import Batch

ROI_LEVELS = (2, 3, 4, 5)  # RoIAlign reads P2..P5 (P6 only feeds the RPN), as in FPN.
RPN_BOX_BETA = 1.0 / 9.0  # torchvision's smooth-L1 beta for the RPN
ROI_BOX_BETA = 1.0 / 9.0


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """Static (hashable) description of the network, built from `config.model`.

  Use `ModelSpec.from_config(config.model, anchor_wh=...)`. All fields are Python values so
  that shapes are known at trace time.
  """

  backbone: str = "resnet18"
  backbone_width: int = 64
  norm: str = "frozen_bn"
  freeze_at: int = 0
  fpn_channels: int = 256
  num_classes: int = 2
  compute_dtype: str = "float32"
  anchor_sizes: tuple = (8, 16, 32, 64, 128)
  anchor_strides: tuple = (4, 8, 16, 32, 64)
  anchor_ratios: tuple = (0.5, 1.0, 2.0)
  rpn_fg_iou: float = 0.7
  rpn_bg_iou: float = 0.3
  rpn_batch_per_image: int = 256
  rpn_positive_fraction: float = 0.5
  rpn_pre_nms_topk_train: int = 2000
  rpn_post_nms_topk_train: int = 1000
  rpn_pre_nms_topk_test: int = 1000
  rpn_post_nms_topk_test: int = 1000
  rpn_nms_iou: float = 0.7
  rpn_loss_weight: float = 1.0
  roi_fg_iou: float = 0.5
  roi_batch_per_image: int = 512
  roi_positive_fraction: float = 0.25
  box_weights: tuple = (10.0, 10.0, 5.0, 5.0)
  pooler_size: int = 7
  mask_pooler_size: int = 14
  sampling_ratio: int = 2
  fc_dim: int = 1024
  mask_dim: int = 256
  score_threshold: float = 0.05
  nms_iou: float = 0.5
  max_detections: int = 1000
  mask_box_scale: float = 1.0
  box_loss_weight: float = 1.0
  mask_loss_weight: float = 1.0
  # partial-annotation module
  partial: bool = False
  attention_levels: tuple = ("p2",)
  key_channels: int = 64
  value_channels: int = 64
  center_scale: float = 0.3
  pa_num_pixels: int = 128
  pa_positive_fraction: float = 0.5
  pa_threshold: float = 0.95
  max_pa_boxes: int = 256
  anchor_wh: tuple = (32.0, 32.0)
  components_backend: str = "device"
  rpn_ignore_iou: float = 0.3
  roi_ignore_iou: float = 0.5
  centerness_loss_weight: float = 1.0
  centerbox_loss_weight: float = 1.0
  hard_negatives: bool = False
  centerbox_weights: tuple = (10.0, 10.0, 5.0, 5.0)
  centerbox_beta: float = 1.0 / 9.0
  connectivity: int = 4
  attention_zero_init: bool = False
  attention_mask_padding: bool = True
  # Inference: detections per mask-head call (`config.model.roi.mask_batch`); more valid
  # detections run in further chunks of this size, see `masks_in_chunks`.
  mask_batch: int = 256

  @classmethod
  def from_config(cls, m, anchor_wh: Sequence[float] | None = None) -> "ModelSpec":
    """From `config.model` (ml_collections). `anchor_wh` = dataset median (w, h) for the
    'median' centerness anchor; ignored when `model.partial.anchor == 'fixed'`."""
    p = m.partial
    if int(m.num_classes) != 2:
      # The heads read class 1 as "nucleus" throughout (one foreground class).
      raise ValueError(f"model.num_classes={m.num_classes}: only 2 (background + nucleus) "
                       "is implemented")
    if p.anchor not in ("median", "fixed"):
      raise ValueError(f"model.partial.anchor must be 'median' or 'fixed', got {p.anchor!r}")
    if int(p.connectivity) not in (4, 8):
      raise ValueError(f"model.partial.connectivity must be 4 or 8, got {p.connectivity!r}")
    if p.anchor == "median" and p.enabled:
      # No silent fallback: a run trained with its dataset's median anchor but rebuilt
      # with the fixed window would decode different PA boxes than it learned.
      if anchor_wh is None:
        raise ValueError("model.partial.anchor='median' needs the dataset's median nucleus "
                         "width/height (saved in the run's run.json 'dataset')")
      wh = (float(anchor_wh[0]), float(anchor_wh[1]))
    else:  # 'fixed', or the module is off and the anchor is never used
      wh = (float(p.fixed_anchor_size), float(p.fixed_anchor_size))
    return cls(
        backbone=m.backbone, backbone_width=m.backbone_width, norm=m.norm,
        freeze_at=m.freeze_at, fpn_channels=m.fpn_channels, num_classes=m.num_classes,
        compute_dtype=m.compute_dtype, anchor_sizes=tuple(tuple(x) if isinstance(x, (tuple, list)) else x
                                                      for x in m.anchor_sizes),
        anchor_strides=tuple(m.anchor_strides), anchor_ratios=tuple(m.anchor_ratios),
        rpn_fg_iou=m.rpn.fg_iou, rpn_bg_iou=m.rpn.bg_iou,
        rpn_batch_per_image=m.rpn.batch_per_image,
        rpn_positive_fraction=m.rpn.positive_fraction,
        rpn_pre_nms_topk_train=m.rpn.pre_nms_topk_train,
        rpn_post_nms_topk_train=m.rpn.post_nms_topk_train,
        rpn_pre_nms_topk_test=m.rpn.pre_nms_topk_test,
        rpn_post_nms_topk_test=m.rpn.post_nms_topk_test, rpn_nms_iou=m.rpn.nms_iou,
        rpn_loss_weight=m.rpn.loss_weight, roi_fg_iou=m.roi.fg_iou,
        roi_batch_per_image=m.roi.batch_per_image,
        roi_positive_fraction=m.roi.positive_fraction, box_weights=tuple(m.roi.box_weights),
        pooler_size=m.roi.pooler_size, mask_pooler_size=m.roi.mask_pooler_size,
        sampling_ratio=m.roi.sampling_ratio, fc_dim=m.roi.fc_dim, mask_dim=m.roi.mask_dim,
        score_threshold=m.roi.score_threshold, nms_iou=m.roi.nms_iou,
        max_detections=m.roi.max_detections,
        mask_box_scale=float(m.roi.get("mask_box_scale", 1.0)), box_loss_weight=m.roi.box_loss_weight,
        mask_loss_weight=m.roi.mask_loss_weight, partial=bool(p.enabled),
        attention_levels=tuple(p.attention_levels), key_channels=p.key_channels,
        value_channels=p.value_channels, center_scale=p.center_scale,
        pa_num_pixels=p.num_pixels, pa_positive_fraction=p.positive_fraction,
        pa_threshold=p.threshold, max_pa_boxes=p.max_pa_boxes, anchor_wh=wh,
        components_backend=p.components_backend, rpn_ignore_iou=p.rpn_ignore_iou,
        roi_ignore_iou=p.roi_ignore_iou, centerness_loss_weight=p.centerness_loss_weight,
        centerbox_loss_weight=p.centerbox_loss_weight,
        hard_negatives=bool(p.get("hard_negatives", False)),
        centerbox_weights=tuple(float(x) for x in p.centerbox_weights),
        centerbox_beta=float(p.centerbox_beta), connectivity=int(p.connectivity),
        attention_zero_init=bool(p.attention_zero_init),
        attention_mask_padding=bool(p.attention_mask_padding),
        # Runs saved before the field existed lack it; 256 is base.py's default.
        mask_batch=int(m.roi.get("mask_batch", 256)))

  @property
  def dtype(self):
    return jnp.bfloat16 if self.compute_dtype == "bfloat16" else jnp.float32

  @property
  def num_pa_boxes(self) -> int:
    return self.max_pa_boxes if self.partial else 0


@struct.dataclass
class Detections:
  """Detections of a batch (static K = max_detections).

  boxes:     float32 [B, K, 4] (x0, y0, x1, y1) canvas pixels, clipped to the image.
  scores:    float32 [B, K] nucleus probability; sorted descending, padding last.
  masks:     float32 [B, K, 28, 28] mask probabilities inside each `mask_boxes` box;
             exactly 0 where `valid` is False (the mask head only runs on the valid
             detections).
  mask_boxes: float32 [B, K, 4] (x0, y0, x1, y1) the frame of `masks`: `boxes` scaled by
             `model.roi.mask_box_scale` about their centres (equal to `boxes` at 1.0).
  valid:     bool [B, K].
  pa_boxes:  float32 [B, P, 4] partial-annotation boxes (P = 0 without the module).
  pa_valid:  bool [B, P].
  """

  boxes: jax.Array
  scores: jax.Array
  masks: jax.Array
  mask_boxes: jax.Array
  valid: jax.Array
  pa_boxes: jax.Array
  pa_valid: jax.Array


# ----------------------------------------------------------------------- per image stages


def level_anchors(spec: ModelSpec, canvas_hw: tuple[int, int]) -> tuple[list[np.ndarray], list[tuple[int, int]]]:
  """Anchors per FPN level (numpy constants) and the level feature shapes."""
  shapes = anchor_ops.feature_shapes(canvas_hw[0], canvas_hw[1], spec.anchor_strides)
  per_level = anchor_ops.generate_anchors(shapes, spec.anchor_strides, spec.anchor_sizes,
                                          spec.anchor_ratios)
  return per_level, shapes


def rpn_targets(anchors: jax.Array, gt_boxes: jax.Array, gt_valid: jax.Array, key: jax.Array,
                spec: ModelSpec, pa_boxes: jax.Array | None = None,
                pa_valid: jax.Array | None = None):
  """Sampled anchors of one image and their objectness / box targets.

  Args:
    anchors: f32 [A, 4]; gt_boxes: f32 [M, 4]; gt_valid: bool [M]; key: PRNG key.
    pa_boxes/pa_valid: f32 [K, 4] / bool [K] — with the partial module, background anchors
      with IoU >= rpn_ignore_iou with a PA box are IGNORED (never sampled as negatives).
  Returns:
    (indices [S] int32, sampled bool [S], is_positive bool [S], box_targets f32 [S, 4],
    ignored_by_pa int32 scalar: negatives turned IGNORE by PA boxes), S = rpn_batch_per_image.
  """
  iou = box_ops.pairwise_iou(gt_boxes, anchors)
  matched, assignment = match(iou, gt_valid, spec.rpn_fg_iou, spec.rpn_bg_iou, True)
  ignored = jnp.int32(0)
  if pa_boxes is not None:
    from pa_jax.partial.ignore import ignore_near_pa_boxes

    before = assignment
    assignment = ignore_near_pa_boxes(assignment, anchors, pa_boxes, pa_valid,
                                      spec.rpn_ignore_iou)
    ignored = jnp.sum(assignment != before).astype(jnp.int32)
  idx, sampled = sample_balanced(key, assignment, spec.rpn_batch_per_image,
                                 spec.rpn_positive_fraction)
  positive = sampled & (assignment[idx] == Assignment.POSITIVE)
  targets = box_ops.encode_boxes(gt_boxes[matched[idx]], anchors[idx])
  return idx, sampled, positive, targets, ignored


def generate_proposals(objectness: Sequence[jax.Array], deltas: Sequence[jax.Array],
                       anchors: Sequence[np.ndarray], image_hw: jax.Array, pre_nms_topk: int,
                       post_nms_topk: int, nms_iou: float):
  """RPN proposals of one image: per-level top-k, decode, clip, per-level NMS, top-k.

  Args:
    objectness: per level f32 [n_l] logits; deltas: per level f32 [n_l, 4];
    anchors: per level [n_l, 4]; image_hw: int32 [2] real image size inside the canvas.
  Returns:
    (boxes f32 [P, 4], scores f32 [P] logits, valid bool [P]), P = post_nms_topk, sorted by
    score. Proposals carry no gradient (as in Faster R-CNN's approximate joint training).
  """
  all_boxes, all_scores, all_levels = [], [], []
  for lvl, (obj, dlt, anc) in enumerate(zip(objectness, deltas, anchors)):
    k = min(pre_nms_topk, obj.shape[0])
    scores, idx = jax.lax.top_k(obj, k)
    boxes = box_ops.decode_deltas(dlt[idx], jnp.asarray(anc)[idx])
    boxes = box_ops.clip_boxes(boxes, image_hw[0], image_hw[1])
    all_boxes.append(boxes)
    all_scores.append(scores)
    all_levels.append(jnp.full((k,), lvl, jnp.int32))
  boxes = jax.lax.stop_gradient(jnp.concatenate(all_boxes))
  scores = jax.lax.stop_gradient(jnp.concatenate(all_scores))
  levels = jnp.concatenate(all_levels)
  wh = boxes[:, 2:] - boxes[:, :2]
  valid = jnp.all(wh > 1e-3, axis=-1) & jnp.isfinite(scores)
  keep, keep_valid = nms_ops.grouped_nms(boxes, scores, valid, levels, nms_iou,
                                         min(post_nms_topk, boxes.shape[0]))
  return boxes[keep], jnp.where(keep_valid, scores[keep], -jnp.inf), keep_valid


def sample_rois(rois: jax.Array, roi_valid: jax.Array, gt_boxes: jax.Array, gt_valid: jax.Array,
                key: jax.Array, spec: ModelSpec, pa_boxes: jax.Array | None = None,
                pa_valid: jax.Array | None = None):
  """Samples the RoIs of one image for the box and mask heads.

  Args:
    rois: f32 [R, 4] proposals + ground-truth boxes (+ PA boxes); roi_valid: bool [R].
  Returns:
    (boxes f32 [S, 4], sampled bool [S], positive bool [S], matched_gt int32 [S],
    ignored_by_pa int32 scalar) with the sampled positives first (`sample_balanced`
    order), S = roi_batch_per_image.
  """
  iou = box_ops.pairwise_iou(gt_boxes, rois)
  matched, assignment = match(iou, gt_valid, spec.roi_fg_iou, spec.roi_fg_iou, False)
  ignored = jnp.int32(0)
  if pa_boxes is not None:
    from pa_jax.partial.ignore import ignore_near_pa_boxes

    before = assignment
    assignment = ignore_near_pa_boxes(assignment, rois, pa_boxes, pa_valid, spec.roi_ignore_iou)
    ignored = jnp.sum((assignment != before) & roi_valid).astype(jnp.int32)
  idx, sampled = sample_balanced(key, assignment, spec.roi_batch_per_image,
                                 spec.roi_positive_fraction, valid=roi_valid)
  positive = sampled & (assignment[idx] == Assignment.POSITIVE)
  return rois[idx], sampled, positive, matched[idx], ignored


def masks_in_chunks(mask_fn: Callable[[jax.Array], jax.Array], boxes: jax.Array,
                    valid: jax.Array, chunk: int) -> jax.Array:
  """Runs `mask_fn` on the valid detections only, `chunk` slots at a time.

  Args:
    mask_fn: boxes float32 [B, M, 4] -> float [B, M, ...] (a pure function of arrays; M is
      always ceil(K / ceil(K / chunk)) <= chunk, so it is traced once).
    boxes: float32 [B, K, 4] (x0, y0, x1, y1) canvas pixels, score-sorted (NMS order).
    valid: bool [B, K]; NMS puts the valid detections first.
    chunk: static slots per call (`ModelSpec.mask_batch`).
  Returns:
    [B, K, ...] `mask_fn` outputs; 0 in every invalid slot.

  Only ceil(n / M) calls run (a `lax.while_loop` with a traced trip count), n = the
  last valid slot + 1 over the batch: dense images (2,000 nuclei) get every mask, while a
  typical image (~5 % of 1,000 slots valid) pays for one chunk, not K slots. Counting up to
  the last valid slot rather than summing `valid` keeps this exact even if the valid
  slots were not a prefix. Shapes stay static; the result equals `mask_fn` on all K slots
  wherever `valid` is True.
  """
  b, k = boxes.shape[:2]
  # Equal chunks of at most `chunk` slots covering K with the least padding (K 300, chunk
  # 256: 2 x 150, not 2 x 256), so a full image never computes more than K slots.
  n_chunks = -(-k // max(1, int(chunk)))
  m = -(-k // n_chunks)
  boxes = jnp.pad(boxes, ((0, 0), (0, n_chunks * m - k), (0, 0)))
  out = jax.eval_shape(mask_fn, jax.ShapeDtypeStruct((b, m, 4), boxes.dtype))
  n_used = jnp.max(jnp.where(valid, jnp.arange(1, k + 1, dtype=jnp.int32), 0), initial=0)
  todo = (n_used + m - 1) // m

  def body(carry):
    i, acc = carry
    part = mask_fn(jax.lax.dynamic_slice_in_dim(boxes, i * m, m, axis=1))
    acc = jax.lax.dynamic_update_slice_in_dim(acc, part.astype(acc.dtype), i * m, axis=1)
    return i + 1, acc

  acc = jnp.zeros((b, n_chunks * m) + out.shape[2:], out.dtype)
  _, acc = jax.lax.while_loop(lambda c: c[0] < todo, body, (jnp.int32(0), acc))
  keep = valid.reshape(valid.shape + (1,) * (acc.ndim - 2))
  return jnp.where(keep, acc[:, :k], 0).astype(out.dtype)


def _flatten_levels(per_level: dict, names: Sequence[str], trailing: int) -> list[jax.Array]:
  """[B, H, W, A, ...] per level → [B, H*W*A, ...] in (y, x, a) order (anchors' order)."""
  out = []
  for n in names:
    x = per_level[n]
    b = x.shape[0]
    out.append(x.reshape((b, -1) + x.shape[x.ndim - trailing:] if trailing else (b, -1)))
  return out


# ------------------------------------------------------------------------------ the model


class MaskRCNN(nn.Module):
  """FPN Mask R-CNN (+ partial-annotation module when `spec.partial`)."""

  spec: ModelSpec

  def setup(self):
    s = self.spec
    self.backbone = resnet(s.backbone, base_channels=s.backbone_width, norm=s.norm,
                           freeze_at=s.freeze_at, dtype=s.dtype)
    self.fpn = FPN(s.fpn_channels, dtype=s.dtype)
    self.rpn = RPNHead(num_anchors=anchor_ops.num_anchors_per_location(s.anchor_sizes[0], s.anchor_ratios),
                       dtype=s.dtype)
    self.box_head = BoxHead(s.num_classes, s.fc_dim, dtype=s.dtype)
    self.mask_head = MaskHead(s.num_classes, s.mask_dim, dtype=s.dtype)
    if s.partial:
      self.attention = {lvl: FactorizedAttention(s.key_channels, s.value_channels,
                                                 zero_init_output=s.attention_zero_init,
                                                 dtype=s.dtype, name=f"attention_{lvl}")
                        for lvl in s.attention_levels}
      self.centerness = CenternessHead(dtype=s.dtype)

  # -------------------------------------------------------------------- shared features
  def features(self, image: jax.Array,
               image_size: jax.Array | None = None) -> dict[str, jax.Array]:
    """FPN pyramid {'p2'..'p6'} of a float32 [B, H, W, 3] batch (attention applied).

    `image_size` int32 [B, 2] real (H, W) of each image: with `spec.attention_mask_padding`
    the attention's keys ignore the canvas padding beyond it (None: the whole canvas is real).
    """
    # The backbone runs its norm layers in inference mode: 'frozen_bn' and 'group_norm'
    # have no batch statistics, and 'bn' uses its (imported) running statistics.
    feats = self.fpn(self.backbone(image, train=False))
    if self.spec.partial:
      feats = {k: (self.attention[k](v, self._attention_valid(k, v, image_size))
                   if k in self.attention else v) for k, v in feats.items()}
    return feats

  def _attention_valid(self, level: str, feat: jax.Array,
                       image_size: jax.Array | None) -> jax.Array | None:
    """bool [B, h, w] real cells of FPN level `level` ('p2' has stride 4), or None."""
    if image_size is None or not self.spec.attention_mask_padding:
      return None
    return padding_mask(image_size, feat.shape[1:3], 2 ** int(level[1:]))

  def _rpn(self, feats):
    out = self.rpn(feats)
    names = sorted(out.objectness, key=lambda n: int(n[1:]))
    obj = _flatten_levels(out.objectness, names, 0)
    dlt = _flatten_levels(out.deltas, names, 1)
    return out, names, obj, dlt

  def _roi_features(self, feats, boxes: jax.Array, size: int) -> jax.Array:
    """[B, R, 4] boxes → [B*R, size, size, C] multilevel RoIAlign features."""
    levels = [feats[f"p{k}"] for k in ROI_LEVELS]
    pooled = roi_ops.batched_multilevel_roi_align(levels, boxes, size, ROI_LEVELS,
                                                   self.spec.sampling_ratio)
    b, r = boxes.shape[:2]
    return pooled.reshape((b * r,) + pooled.shape[2:])

  def _pa_boxes(self, cen_logits, cen_deltas, image_size):
    """PA boxes of a batch from the centerness map (no gradient)."""
    from pa_jax.partial.pa_boxes import pa_boxes

    s = self.spec
    fn = lambda lg, dl, hw: pa_boxes(lg, dl, jnp.asarray(s.anchor_wh, jnp.float32),  # noqa: E731
                                     s.anchor_strides[0], hw, s.pa_threshold, s.max_pa_boxes,
                                     s.components_backend, connectivity=s.connectivity,
                                     weights=s.centerbox_weights)
    boxes, scores, valid = jax.vmap(fn)(jax.lax.stop_gradient(cen_logits),
                                        jax.lax.stop_gradient(cen_deltas), image_size)
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
      pa_aux, pa_boxes, pa_valid = pa_training.partial_terms(s, cen.logits, cen.deltas, batch,
                                                             k_pix)
      aux.update(pa_aux)
      pa_args = (pa_boxes, pa_valid)

    # Per-image stages run through `per_image`: vmap over one device's images inside
    # shard_map over "data" when the batch is sharded, so their loops (NMS, PA-ignore blocks)
    # never wait on other devices. Their inputs carry no gradient.
    # ---- RPN losses
    anchors_np = np.concatenate(anchors_per_level)
    keys = jax.random.split(k_rpn, b)
    idx, sampled, positive, targets, rpn_ignored = per_image(
        lambda k, gb, gv, *pa: rpn_targets(jnp.asarray(anchors_np), gb, gv, k, s, *pa),
        keys, batch.boxes, batch.valid, *pa_args)
    if s.partial:
      aux["pa_ignored_anchors_per_image"] = jnp.mean(rpn_ignored.astype(jnp.float32))
    obj_s = jnp.take_along_axis(obj_all, idx, axis=1)
    dlt_s = jnp.take_along_axis(dlt_all, idx[..., None], axis=1)
    n_rpn = jnp.sum(sampled)
    aux["loss_rpn_cls"] = s.rpn_loss_weight * losses.sigmoid_binary_cross_entropy(
        obj_s, positive, sampled, n_rpn)
    aux["loss_rpn_box"] = s.rpn_loss_weight * losses.smooth_l1(
        dlt_s.reshape(-1, 4), targets.reshape(-1, 4), positive.reshape(-1), RPN_BOX_BETA, n_rpn)
    aux["rpn_positives_per_image"] = jnp.sum(positive) / b

    # ---- proposals (+ ground truth, + PA boxes) → sampled RoIs
    props, _, props_valid = per_image(
        lambda o, d, hw: generate_proposals(
            o, d, anchors_per_level, hw, s.rpn_pre_nms_topk_train,
            s.rpn_post_nms_topk_train, s.rpn_nms_iou),
        [jax.lax.stop_gradient(x) for x in obj], [jax.lax.stop_gradient(x) for x in dlt],
        batch.image_size)
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
        rois, rois_valid, batch.boxes, batch.valid, keys, *pa_args)
    if s.partial:
      aux["pa_ignored_rois_per_image"] = jnp.mean(roi_ignored.astype(jnp.float32))
    sboxes = jax.lax.stop_gradient(sboxes)

    # ---- box head
    head = self.box_head(self._roi_features(feats, sboxes, s.pooler_size))
    n_roi = jnp.sum(ssampled)
    labels = spos.astype(jnp.int32).reshape(-1)
    aux["loss_cls"] = s.box_loss_weight * losses.softmax_cross_entropy(
        head.class_logits, labels, ssampled.reshape(-1), n_roi)
    gt_for_roi = jnp.take_along_axis(batch.boxes, smatched[..., None], axis=1)
    box_targets = box_ops.encode_boxes(gt_for_roi, sboxes, s.box_weights)
    pred = head.box_deltas[:, min(1, head.box_deltas.shape[1] - 1)]
    aux["loss_box"] = s.box_loss_weight * losses.smooth_l1(
        pred, box_targets.reshape(-1, 4), spos.reshape(-1), ROI_BOX_BETA, n_roi)

    # ---- mask head on the (at most roi_batch * positive_fraction) positives, which
    # `sample_balanced` puts first.
    n_pos = max(1, int(s.roi_batch_per_image * s.roi_positive_fraction))
    mboxes, mpos, mmatched = sboxes[:, :n_pos], spos[:, :n_pos], smatched[:, :n_pos]
    # The mask frame: the RoI with a margin (mask_box_scale), in training as at inference.
    mboxes = box_ops.scale_boxes(mboxes, s.mask_box_scale)
    mlogits = self.mask_head(self._roi_features(feats, mboxes, s.mask_pooler_size))[..., 0]
    ids = jnp.where(mpos, mmatched + 1, 0)
    size = mlogits.shape[-1]
    mtargets = jax.vmap(lambda lab, i, bx: mask_ops.mask_targets(lab, i, bx, size, s.sampling_ratio)
                        )(batch.labels, ids, mboxes)
    w = jnp.broadcast_to(mpos.reshape(-1)[:, None, None], mlogits.shape)
    aux["loss_mask"] = s.mask_loss_weight * losses.sigmoid_binary_cross_entropy(
        mlogits, mtargets.reshape(mlogits.shape), w)
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
            [x for x in o], [x for x in d], anchors_per_level, hw, s.rpn_pre_nms_topk_test,
            s.rpn_post_nms_topk_test, s.rpn_nms_iou)
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

    head = self.box_head(self._roi_features(feats, props, s.pooler_size))
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
    masks = masks_in_chunks(self._mask_probabilities(feats), mask_boxes, keep_valid,
                            s.mask_batch)
    return Detections(det_boxes, det_scores, masks, mask_boxes, keep_valid, pa, pa_valid)

  def _mask_probabilities(self, feats) -> Callable[[jax.Array], jax.Array]:
    """Pure function: boxes float32 [B, M, 4] (x0, y0, x1, y1) -> float32 [B, M, 28, 28]
    mask probabilities, from the pyramid `feats` and the mask head's bound weights.

    A plain function of arrays (the head applied to its own variables), not a module call,
    so that `masks_in_chunks` can run it inside a `lax.while_loop`.
    """
    s = self.spec
    if self.is_initializing():  # `init` through `predict`: create the weights read below
      c = feats["p2"].shape[-1]
      self.mask_head(jnp.zeros((1, s.mask_pooler_size, s.mask_pooler_size, c), s.dtype))
    head, head_vars = self.mask_head.clone(parent=None), self.mask_head.variables
    levels = [feats[f"p{k}"] for k in ROI_LEVELS]

    def probs(boxes):
      b, m = boxes.shape[:2]
      pooled = roi_ops.batched_multilevel_roi_align(levels, boxes, s.mask_pooler_size,
                                                     ROI_LEVELS, s.sampling_ratio)
      logits = head.apply(head_vars, pooled.reshape((b * m,) + pooled.shape[2:]))
      return jax.nn.sigmoid(logits[..., 0]).reshape((b, m) + logits.shape[1:3])

    return probs

  def attention_maps(self, image: jax.Array, image_size: jax.Array | None = None) -> dict:
    """Runs the features and returns nothing; call with mutable=['intermediates'] to
    collect the attention queries/keys sown by `FactorizedAttention` (`image_size` int32
    [B, 2] as in `predict`, so the keys are those prediction uses)."""
    self.features(image.astype(jnp.float32), image_size)
    return {}
