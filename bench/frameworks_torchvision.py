"""The torchvision side of bench/frameworks.py: a `MaskRCNN` equal to pa_jax's model of a
config (settings, anchors, a half-width ResNet-18 for the CPU-sized family), its inputs,
and the hooks that read what it did (positives per image, the eval forward before pasting).
torch and torchvision are imported inside the functions: they are optional
(requirements-bench.txt)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))  # its sibling modules, as when run as a script


# ------------------------------------------------------------------- torchvision settings


def torchvision_settings(m, canvas: int) -> dict:
  """Keyword arguments of torchvision's `MaskRCNN` equal to pa_jax's `config.model`.

  Pure (no torch): what is matched, in one place. `m` = `config.model`.
  """
  sizes = tuple(tuple(float(x) for x in s) if isinstance(s, (tuple, list)) else (float(s),)
                for s in m.anchor_sizes)
  return dict(
      num_classes=int(m.num_classes),
      # Identity transform: pa_jax's tensor goes in unchanged (resize is switched off too).
      min_size=canvas, max_size=canvas, image_mean=[0.0, 0.0, 0.0], image_std=[1.0, 1.0, 1.0],
      anchor_sizes=sizes, aspect_ratios=tuple(float(r) for r in m.anchor_ratios),
      rpn_pre_nms_top_n_train=int(m.rpn.pre_nms_topk_train),
      rpn_pre_nms_top_n_test=int(m.rpn.pre_nms_topk_test),
      rpn_post_nms_top_n_train=int(m.rpn.post_nms_topk_train),
      rpn_post_nms_top_n_test=int(m.rpn.post_nms_topk_test),
      rpn_nms_thresh=float(m.rpn.nms_iou), rpn_fg_iou_thresh=float(m.rpn.fg_iou),
      rpn_bg_iou_thresh=float(m.rpn.bg_iou), rpn_batch_size_per_image=int(m.rpn.batch_per_image),
      rpn_positive_fraction=float(m.rpn.positive_fraction), rpn_score_thresh=0.0,
      box_score_thresh=float(m.roi.score_threshold), box_nms_thresh=float(m.roi.nms_iou),
      box_detections_per_img=int(m.roi.max_detections),
      box_fg_iou_thresh=float(m.roi.fg_iou), box_bg_iou_thresh=float(m.roi.fg_iou),
      box_batch_size_per_image=int(m.roi.batch_per_image),
      box_positive_fraction=float(m.roi.positive_fraction),
      bbox_reg_weights=tuple(float(w) for w in m.roi.box_weights),
      # Not constructor arguments; used by build_torchvision.
      backbone=str(m.backbone), backbone_width=int(m.backbone_width), norm=str(m.norm),
      trainable_layers=5 - int(m.freeze_at), fpn_channels=int(m.fpn_channels),
      fc_dim=int(m.roi.fc_dim), mask_dim=int(m.roi.mask_dim),
      pooler_size=int(m.roi.pooler_size), mask_pooler_size=int(m.roi.mask_pooler_size),
      sampling_ratio=int(m.roi.sampling_ratio),
  )


def pa_jax_cell_anchors(m) -> list[np.ndarray]:
  """pa_jax's unrounded cell anchors per level (torchvision rounds its own to integers)."""
  from pa_jax.ops import anchors as anchor_ops

  return [anchor_ops.cell_anchors(s, tuple(m.anchor_ratios)) for s in m.anchor_sizes]


def tv_grid_anchors(cell: Sequence[np.ndarray], shapes: Sequence[tuple[int, int]],
                    strides: Sequence[int]) -> list[np.ndarray]:
  """numpy copy of torchvision's `AnchorGenerator.grid_anchors` (shifts from 0, (y, x, a))."""
  out = []
  for base, (h, w), s in zip(cell, shapes, strides):
    sx = np.arange(w, dtype=np.float32) * s
    sy = np.arange(h, dtype=np.float32) * s
    yy, xx = np.meshgrid(sy, sx, indexing="ij")
    shifts = np.stack([xx.reshape(-1), yy.reshape(-1), xx.reshape(-1), yy.reshape(-1)], 1)
    out.append((shifts[:, None, :] + np.asarray(base, np.float32)[None]).reshape(-1, 4))
  return out


# --------------------------------------------------------------------------- torchvision


def build_torchvision(cfg, device: str = "cpu"):
  """torchvision MaskRCNN equal to pa_jax's model of `cfg` (randomly initialised)."""
  import torch
  from torch import nn
  from torchvision.models import resnet as tv_resnet
  from torchvision.models.detection import MaskRCNN
  from torchvision.models.detection.anchor_utils import AnchorGenerator
  from torchvision.models.detection.backbone_utils import BackboneWithFPN
  from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
  from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
  from torchvision.ops import FrozenBatchNorm2d, MultiScaleRoIAlign
  from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

  from pa_jax.models.norm import group_norm_groups

  s = torchvision_settings(cfg.model, int(cfg.data.canvas_size))
  if s["norm"] == "frozen_bn":
    norm_layer = FrozenBatchNorm2d
  elif s["norm"] == "group_norm":
    norm_layer = lambda c: nn.GroupNorm(group_norm_groups(c, 32), c, eps=1e-5)  # noqa: E731
  else:
    norm_layer = nn.BatchNorm2d
  name, width = s["backbone"], s["backbone_width"]
  if width == 64:
    body = getattr(tv_resnet, name)(weights=None, norm_layer=norm_layer)
  else:  # torchvision's ResNet fixes the stem at 64 channels: same blocks, narrower.
    block = {"resnet18": (tv_resnet.BasicBlock, [2, 2, 2, 2]),
             "resnet34": (tv_resnet.BasicBlock, [3, 4, 6, 3])}.get(name)
    if block is None:
      raise ValueError(f"backbone_width={width} is built for resnet18/34 only")
    body = _NarrowResNet(block[0], block[1], width, norm_layer)
  # Freeze the stages pa_jax freezes (freeze_at=2: stem + layer1), as torchvision's
  # `_resnet_fpn_extractor(trainable_layers=5 - freeze_at)` does.
  train_names = ["layer4", "layer3", "layer2", "layer1", "conv1"][:s["trainable_layers"]]
  if s["trainable_layers"] == 5:
    train_names.append("bn1")
  for pname, p in body.named_parameters():
    if all(not pname.startswith(t) for t in train_names):
      p.requires_grad_(False)
  c2 = width if name in ("resnet18", "resnet34") else width * 4
  backbone = BackboneWithFPN(
      body, {"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
      [c2, c2 * 2, c2 * 4, c2 * 8], s["fpn_channels"], extra_blocks=LastLevelMaxPool())
  ag = AnchorGenerator(sizes=s["anchor_sizes"], aspect_ratios=(s["aspect_ratios"],) * len(s["anchor_sizes"]))
  # pa_jax's cell anchors, unrounded and in its (size, ratio) order.
  ag.cell_anchors = [torch.as_tensor(a) for a in pa_jax_cell_anchors(cfg.model)]
  fpn_c, p = s["fpn_channels"], s["pooler_size"]
  model = MaskRCNN(
      backbone, num_classes=None, min_size=s["min_size"], max_size=s["max_size"],
      image_mean=s["image_mean"], image_std=s["image_std"], rpn_anchor_generator=ag,
      rpn_pre_nms_top_n_train=s["rpn_pre_nms_top_n_train"],
      rpn_pre_nms_top_n_test=s["rpn_pre_nms_top_n_test"],
      rpn_post_nms_top_n_train=s["rpn_post_nms_top_n_train"],
      rpn_post_nms_top_n_test=s["rpn_post_nms_top_n_test"], rpn_nms_thresh=s["rpn_nms_thresh"],
      rpn_fg_iou_thresh=s["rpn_fg_iou_thresh"], rpn_bg_iou_thresh=s["rpn_bg_iou_thresh"],
      rpn_batch_size_per_image=s["rpn_batch_size_per_image"],
      rpn_positive_fraction=s["rpn_positive_fraction"], rpn_score_thresh=s["rpn_score_thresh"],
      box_roi_pool=MultiScaleRoIAlign(["0", "1", "2", "3"], p, s["sampling_ratio"]),
      box_head=TwoMLPHead(fpn_c * p * p, s["fc_dim"]),
      box_predictor=FastRCNNPredictor(s["fc_dim"], s["num_classes"]),
      box_score_thresh=s["box_score_thresh"], box_nms_thresh=s["box_nms_thresh"],
      box_detections_per_img=s["box_detections_per_img"],
      box_fg_iou_thresh=s["box_fg_iou_thresh"], box_bg_iou_thresh=s["box_bg_iou_thresh"],
      box_batch_size_per_image=s["box_batch_size_per_image"],
      box_positive_fraction=s["box_positive_fraction"], bbox_reg_weights=s["bbox_reg_weights"],
      mask_roi_pool=MultiScaleRoIAlign(["0", "1", "2", "3"], s["mask_pooler_size"], s["sampling_ratio"]),
      mask_head=MaskRCNNHeads(fpn_c, [s["mask_dim"]] * 4, 1),
      mask_predictor=MaskRCNNPredictor(s["mask_dim"], s["mask_dim"], s["num_classes"]))
  # No resize: the tensor pa_jax sees is the tensor torchvision sees.
  model.transform.resize = lambda image, target=None: (image, target)
  return model.to(device)


def _narrow_resnet_cls():
  from torch import nn

  class NarrowResNet(nn.Module):
    """torchvision ResNet layout (same module names) with a `width`-channel stem."""

    def __init__(self, block, layers, width, norm_layer):
      super().__init__()
      self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
      self.bn1 = norm_layer(width)
      self.relu = nn.ReLU(inplace=True)
      self.maxpool = nn.MaxPool2d(3, 2, 1)
      inplanes = width
      for i, n in enumerate(layers):
        planes, stride = width * 2 ** i, (1 if i == 0 else 2)
        down = None
        if stride != 1 or inplanes != planes:
          down = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), norm_layer(planes))
        blocks = [block(inplanes, planes, stride, down, norm_layer=norm_layer)]
        blocks += [block(planes, planes, norm_layer=norm_layer) for _ in range(n - 1)]
        setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        inplanes = planes

    def forward(self, x):
      x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
      return self.layer4(self.layer3(self.layer2(self.layer1(x))))

  return NarrowResNet


def _NarrowResNet(*a):  # noqa: N802 - a class built lazily (torch is optional)
  return _narrow_resnet_cls()(*a)


def state_dict_numpy(model) -> dict:
  return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}


def set_roi_align_aligned(aligned: bool) -> None:
  """Switch torchvision's MultiScaleRoIAlign between aligned=False (stock) and True."""
  import functools

  import torchvision.ops.poolers as poolers
  from torchvision.ops import roi_align

  poolers.roi_align = functools.partial(roi_align, aligned=True) if aligned else roi_align


def pa_jax_sgd(params, train_config, n_updates: int):
  """(torch SGD, learning rates [n_updates]) doing what pa_jax/train/optimizer.py's
  `make_optimizer` does, for the comparison's torchvision side.

  Weight decay only on tensors of ndim > 1 (never biases or norm parameters), momentum with
  torch's buffer (equal to optax's trace: both start from the first gradient and apply the
  rate after the momentum), and the config's learning-rate schedule, warm-up included:
  the caller clips the gradient (`clip_grad_norm_`) and calls `set_learning_rate(opt,
  rates[k])` before `opt.step()` of update k. With a constant rate instead, torchvision's
  RPN learned within the timed steps and its sampler found ~50 % more positive RoIs than
  pa_jax's on the same batches (docs/performance.md, "Current figures").
  """
  import torch

  from pa_jax.train.optimizer import learning_rate_at

  params = list(params)
  groups = [{"params": [p for p in params if p.ndim > 1],
             "weight_decay": float(train_config.weight_decay)},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
  opt = torch.optim.SGD(groups, lr=float(train_config.learning_rate),
                        momentum=float(train_config.momentum))
  return opt, [learning_rate_at(train_config, k) for k in range(n_updates)]


def set_learning_rate(opt, rate: float) -> None:
  for group in opt.param_groups:
    group["lr"] = rate


def torch_inputs(batch, device: str = "cpu", with_targets: bool = True):
  """pa_jax Batch (numpy) -> torchvision's list of images [3, h, w] and targets."""
  import torch

  images, targets = [], []
  for i in range(batch.image.shape[0]):
    h, w = (int(x) for x in np.asarray(batch.image_size[i]))
    img = np.asarray(batch.image[i, :h, :w], np.float32)
    images.append(torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).to(device))
    if with_targets:
      valid = np.asarray(batch.valid[i])
      n = int(valid.sum())
      lab = np.asarray(batch.labels[i, :h, :w])
      masks = (lab[None] == np.arange(1, n + 1)[:, None, None]).astype(np.uint8)
      targets.append({"boxes": torch.from_numpy(np.asarray(batch.boxes[i][valid], np.float32)).to(device),
                      "labels": torch.ones(n, dtype=torch.int64, device=device),
                      "masks": torch.from_numpy(masks).to(device)})
  return images, (targets if with_targets else None)


def count_roi_positives(tv) -> list:
  """Wraps `tv.roi_heads.select_training_samples` so that every training forward appends,
  per image, the number of sampled positive RoIs (label > 0): the RoIs torchvision's mask
  head then runs on. Returns the list it appends to."""
  counts = []
  select = tv.roi_heads.select_training_samples

  def counting(proposals, targets):
    out = select(proposals, targets)
    counts.extend(int((lab > 0).sum()) for lab in out[2])
    return out

  tv.roi_heads.select_training_samples = counting
  return counts


def tv_predict_unpasted(tv, images):
  """torchvision's eval forward up to what pa_jax's `MaskRCNN.predict` returns: per image a
  dict of boxes [N, 4] (x1, y1, x2, y2, canvas px), scores [N], labels [N] and masks
  [N, 1, 28, 28] mask probabilities, before `transform.postprocess` pastes each mask into the
  image (a per-detection Python loop that pa_jax leaves to its host-side post-process).
  `tv.eval()` and `torch.no_grad()` are the caller's."""
  batch, _ = tv.transform(images)
  features = tv.backbone(batch.tensors)
  proposals, _ = tv.rpn(batch, features)
  detections, _ = tv.roi_heads(features, proposals, batch.image_sizes)
  return detections
