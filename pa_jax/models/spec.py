"""The static description of a Mask R-CNN (`ModelSpec`) and its inference output
(`Detections`): hashable, jit-static, built from `config.model` by `ModelSpec.from_config`.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import struct


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
  # Keep the canvas padding out of every layer (`config.model.mask_padding`,
  # pa_jax/models/padding.py); implies the attention's masking.
  mask_padding: bool = False
  # Inference: detections per mask-head call (`config.model.roi.mask_batch`); more valid
  # detections run in further chunks of this size, see `masks_in_chunks`.
  mask_batch: int = 256
  # Training: mask-head slots per call (`config.model.roi.mask_train_chunk`); chunks with no
  # positive in any image are skipped, see `mask_loss_in_chunks`. 0: one call on all slots.
  mask_train_chunk: int = 32

  @classmethod
  def from_config(cls, m, anchor_wh: Sequence[float] | None = None) -> "ModelSpec":
    """From `config.model` (ml_collections). `anchor_wh` = dataset median (w, h) for the
    'median' centerness anchor; ignored when `model.partial.anchor == 'fixed'`."""
    p = m.partial
    if int(m.num_classes) != 2:
      # The heads read class 1 as "nucleus" throughout (one foreground class).
      raise ValueError(
          f"model.num_classes={m.num_classes}: only 2 (background + nucleus) " "is implemented"
      )
    if p.anchor not in ("median", "fixed"):
      raise ValueError(f"model.partial.anchor must be 'median' or 'fixed', got {p.anchor!r}")
    if int(p.connectivity) not in (4, 8):
      raise ValueError(f"model.partial.connectivity must be 4 or 8, got {p.connectivity!r}")
    if p.anchor == "median" and p.enabled:
      # No silent fallback: a run trained with its dataset's median anchor but rebuilt
      # with the fixed window would decode different PA boxes than it learned.
      if anchor_wh is None:
        raise ValueError(
            "model.partial.anchor='median' needs the dataset's median nucleus "
            "width/height (saved in the run's run.json 'dataset')"
        )
      wh = (float(anchor_wh[0]), float(anchor_wh[1]))
    else:  # 'fixed', or the module is off and the anchor is never used
      wh = (float(p.fixed_anchor_size), float(p.fixed_anchor_size))
    return cls(
        backbone=m.backbone,
        backbone_width=m.backbone_width,
        norm=m.norm,
        freeze_at=m.freeze_at,
        fpn_channels=m.fpn_channels,
        num_classes=m.num_classes,
        compute_dtype=m.compute_dtype,
        anchor_sizes=tuple(tuple(x) if isinstance(x, (tuple, list)) else x for x in m.anchor_sizes),
        anchor_strides=tuple(m.anchor_strides),
        anchor_ratios=tuple(m.anchor_ratios),
        rpn_fg_iou=m.rpn.fg_iou,
        rpn_bg_iou=m.rpn.bg_iou,
        rpn_batch_per_image=m.rpn.batch_per_image,
        rpn_positive_fraction=m.rpn.positive_fraction,
        rpn_pre_nms_topk_train=m.rpn.pre_nms_topk_train,
        rpn_post_nms_topk_train=m.rpn.post_nms_topk_train,
        rpn_pre_nms_topk_test=m.rpn.pre_nms_topk_test,
        rpn_post_nms_topk_test=m.rpn.post_nms_topk_test,
        rpn_nms_iou=m.rpn.nms_iou,
        rpn_loss_weight=m.rpn.loss_weight,
        roi_fg_iou=m.roi.fg_iou,
        roi_batch_per_image=m.roi.batch_per_image,
        roi_positive_fraction=m.roi.positive_fraction,
        box_weights=tuple(m.roi.box_weights),
        pooler_size=m.roi.pooler_size,
        mask_pooler_size=m.roi.mask_pooler_size,
        sampling_ratio=m.roi.sampling_ratio,
        fc_dim=m.roi.fc_dim,
        mask_dim=m.roi.mask_dim,
        score_threshold=m.roi.score_threshold,
        nms_iou=m.roi.nms_iou,
        max_detections=m.roi.max_detections,
        mask_box_scale=float(m.roi.get("mask_box_scale", 1.0)),
        box_loss_weight=m.roi.box_loss_weight,
        mask_loss_weight=m.roi.mask_loss_weight,
        partial=bool(p.enabled),
        attention_levels=tuple(p.attention_levels),
        key_channels=p.key_channels,
        value_channels=p.value_channels,
        center_scale=p.center_scale,
        pa_num_pixels=p.num_pixels,
        pa_positive_fraction=p.positive_fraction,
        pa_threshold=p.threshold,
        max_pa_boxes=p.max_pa_boxes,
        anchor_wh=wh,
        components_backend=p.components_backend,
        rpn_ignore_iou=p.rpn_ignore_iou,
        roi_ignore_iou=p.roi_ignore_iou,
        centerness_loss_weight=p.centerness_loss_weight,
        centerbox_loss_weight=p.centerbox_loss_weight,
        hard_negatives=bool(p.get("hard_negatives", False)),
        centerbox_weights=tuple(float(x) for x in p.centerbox_weights),
        centerbox_beta=float(p.centerbox_beta),
        connectivity=int(p.connectivity),
        attention_zero_init=bool(p.attention_zero_init),
        attention_mask_padding=bool(p.attention_mask_padding),
        mask_padding=bool(m.get("mask_padding", False)),
        # Runs saved before the field existed lack it; 256 is base.py's default.
        mask_batch=int(m.roi.get("mask_batch", 256)),
        # Only the schedule of the computation: older runs get the same loss with it.
        mask_train_chunk=int(m.roi.get("mask_train_chunk", 32)),
    )

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
