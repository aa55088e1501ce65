"""pa_jax vs torchvision: the same Mask R-CNN, the same weights, the same real batch.

  python bench/frameworks.py compare --preset paper_r50 --out bench/results/frameworks_cpu_paper_r50.json
  python bench/frameworks.py compare --preset cpu_small --out bench/results/frameworks_cpu_small.json
  python bench/frameworks.py profile --out bench/results/frameworks_cpu_profile.json

`compare` (1) builds torchvision's `MaskRCNN` with the config's anchors, top-k, RoI and
detection counts, thresholds and box-coder weights (`torchvision_settings`), exports ITS
randomly initialised state dict to .npz and imports that into pa_jax through
`pa_jax/models/weights.py` (strict), (2) runs both on the same real dh360 image and reports
max abs differences of the FPN outputs and RPN objectness and the IoU match of the final
boxes, once with stock torchvision (RoIAlign `aligned=False`) and once with torchvision's
RoIAlign switched to `aligned=True` (pa_jax's choice, detectron2's ROIAlignV2), and
(3) times each framework in its own subprocess (`worker`) on the same real batch: train
step, inference per image, images/s and peak memory. Everything lands in one JSON with the
command, date, machine and versions.

Inputs are identical tensors: pa_jax's canvas image (percentile-normalised to [0, 1],
zero-padded to the canvas), handed to torchvision with image_mean 0, image_std 1 and its
resize switched off (`transform.resize` = identity); torchvision pads to a multiple of 32
with zeros exactly as pa_jax's canvas does.

The pure pieces (`preset`, `torchvision_settings`, `tv_grid_anchors`, `summarize_agreement`,
`box_match`) need neither torch nor a dataset and are unit-tested in
tests/test_bench_frameworks.py.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))  # as when run as a script

from bench_config import load_config  # noqa: E402

# --------------------------------------------------------------------------- presets

#: name -> (config spec, overrides). Batch and canvas are the issue's: dh360 canvas 384.
PRESETS = {
    # The paper's R50-FPN baseline (issue 12 item 5), CPU-sized batch 2.
    "paper_r50": ("configs/dh100_baseline.py", ["model.backbone=resnet50", "train.batch_size=2"]),
    # The same at GPU batch size, R50 and ResNeXt-101 64x4d (bench/gpu/check.sh).
    "gpu_r50": ("configs/dh100_baseline.py", ["model.backbone=resnet50", "train.batch_size=8"]),
    "gpu_x101": ("configs/dh100_baseline.py", ["model.backbone=resnext101_64x4d",
                                               "train.batch_size=8"]),
    # The CPU-sized family (base.cpu_sized): ResNet-18 at half width, GroupNorm, 256 canvas,
    # smaller heads and top-k. The baseline (partial module off), so that torchvision has
    # the same network.
    "cpu_small": ("configs/dh100_baseline.py:cpu", []),
    # Toy size for --dry-run / tests: tiny everything.
    "toy": ("configs/dh100_baseline.py:cpu", [
        "data.canvas_size=64", "model.backbone_width=8", "model.fpn_channels=16",
        "model.roi.fc_dim=32", "model.roi.mask_dim=8", "model.rpn.pre_nms_topk_train=64",
        "model.rpn.post_nms_topk_train=32", "model.rpn.pre_nms_topk_test=64",
        "model.rpn.post_nms_topk_test=32", "model.roi.batch_per_image=32",
        "model.rpn.batch_per_image=32", "model.roi.max_detections=16",
        "data.max_instances=64", "train.batch_size=2"]),
}


def preset(name: str, extra: Sequence[str] = ()) -> tuple[str, list[str]]:
  """(config spec, overrides) of a preset, plus `extra` overrides (later ones win)."""
  if name not in PRESETS:
    raise ValueError(f"unknown preset {name!r}; one of {sorted(PRESETS)}")
  spec, ov = PRESETS[name]
  return spec, list(ov) + list(extra)


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


# ------------------------------------------------------------------------------ pa_jax


#: Training images decoded for the timed batches (batches cycle over steps 0..3 of them).
MAX_EXAMPLES = 8


def pa_jax_setup(cfg, n_examples: int | None = MAX_EXAMPLES):
  """(model, examples, batch source, first batch) of a config on its real data: the first
  `n_examples` training images of the split (all when None)."""
  from pa_jax import experiment
  from pa_jax.data import pipeline

  records = experiment.source_records(cfg, cfg.data.train_split)
  if n_examples:
    records = records[:max(n_examples, int(cfg.train.batch_size))]
  examples = pipeline.load_training_examples(records, experiment.view_spec(cfg),
                                             cfg.data.normalize, progress=False)
  stats = experiment.dataset_statistics(examples)
  model = experiment.build_model(cfg, stats)
  batches = experiment.batch_source(cfg, examples)
  return model, examples, batches, batches.batch(0)


def test_canvases(cfg, n: int):
  """`n` dh360 test images on the canvas (no flips), as a numpy Batch."""
  from pa_jax import experiment
  from pa_jax.data import pipeline

  records = experiment.source_records(cfg, cfg.data.eval_split)[:n]
  exs = pipeline.load_training_examples(records, experiment.view_spec(cfg), cfg.data.normalize,
                                        progress=False)
  rng = np.random.default_rng(0)
  items = [pipeline.canvas_example(e, int(cfg.data.canvas_size), int(cfg.data.max_instances),
                                   rng, False, False) for e in exs]
  return pipeline.stack_batch(items), records


def pa_jax_variables(model, batch, state_dict: dict, seed: int = 0):
  import jax

  from pa_jax.models.weights import import_pretrained

  k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
  # Shapes only (no compile of the init program): strict import sets every variable.
  variables = jax.eval_shape(lambda a, b, c: model.init(a, b, c), k1, batch, k2)
  variables, report = import_pretrained(variables, state_dict, strict=True, verbose=False)
  return variables, report


# ---------------------------------------------------------------------------- agreement


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  a = np.asarray(a, np.float64).reshape(-1, 4)
  b = np.asarray(b, np.float64).reshape(-1, 4)
  lt = np.maximum(a[:, None, :2], b[None, :, :2])
  rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
  inter = np.prod(np.clip(rb - lt, 0, None), axis=-1)
  area = lambda x: np.prod(np.clip(x[:, 2:] - x[:, :2], 0, None), axis=-1)  # noqa: E731
  union = area(a)[:, None] + area(b)[None, :] - inter
  return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def box_match(ref: np.ndarray, other: np.ndarray, thresholds=(0.5, 0.9, 0.99)) -> dict:
  """How many `ref` boxes have a partner in `other` (best IoU) above each threshold, both ways."""
  ref, other = np.asarray(ref).reshape(-1, 4), np.asarray(other).reshape(-1, 4)
  out = {"n_ref": int(len(ref)), "n_other": int(len(other))}
  if len(ref) == 0 or len(other) == 0:
    for t in thresholds:
      out[f"ref_matched_iou{t}"] = float(len(ref) == len(other))
      out[f"other_matched_iou{t}"] = float(len(ref) == len(other))
    return out
  iou = box_iou(ref, other)
  best_r, best_o = iou.max(axis=1), iou.max(axis=0)
  for t in thresholds:
    out[f"ref_matched_iou{t}"] = float(np.mean(best_r >= t))
    out[f"other_matched_iou{t}"] = float(np.mean(best_o >= t))
  k = min(len(ref), len(other))
  out["top_k_compared"] = k
  out["top_k_same_order_iou0.99"] = float(np.mean(np.diag(iou[:k, :k]) >= 0.99))
  return out


def summarize_agreement(pairs: dict) -> dict:
  """{name: (a, b)} -> {name: {max_abs, max_rel (to max |b|), shape}} (numpy only)."""
  out = {}
  for name, (a, b) in pairs.items():
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
      out[name] = {"shape_a": list(a.shape), "shape_b": list(b.shape), "error": "shape mismatch"}
      continue
    d = np.abs(a - b)
    scale = float(np.max(np.abs(b))) if b.size else 0.0
    out[name] = {"shape": list(a.shape), "max_abs": float(d.max()) if d.size else 0.0,
                 "max_rel": float(d.max() / scale) if scale > 0 else 0.0,
                 "ref_max_abs": scale}
  return out


def agreement(cfg, model, variables, tv_model, image_batch) -> dict:
  """FPN, RPN objectness and final detections of both frameworks on image 0 of a batch."""
  import jax
  import jax.numpy as jnp
  import torch

  from pa_jax.models.mask_rcnn import MaskRCNN

  b1 = jax.tree.map(lambda x: np.asarray(x)[:1], image_batch)
  img = jnp.asarray(b1.image, jnp.float32)

  def feats_and_rpn(m, x):
    f = m.features(x)
    out = m.rpn(f)
    return f, out.objectness, out.deltas

  # Full float32 matmuls and convolutions: on a GPU JAX's default is TF32 (10-bit
  # mantissa), which would make this a check of the precision mode, not of the models.
  with jax.default_matmul_precision("highest"):
    f_j, obj_j, dlt_j = jax.jit(lambda v, x: model.apply(v, x, method=feats_and_rpn))(
        variables, img)
    det = jax.jit(lambda v, x, s: model.apply(v, x, s, method=MaskRCNN.predict))(
        variables, img, jnp.asarray(b1.image_size))
  tv_model.eval()
  images, _ = torch_inputs(b1, "cpu", with_targets=False)
  with torch.no_grad():
    il, _ = tv_model.transform(images)
    f_t = tv_model.backbone(il.tensors)
    obj_t, dlt_t = tv_model.rpn.head(list(f_t.values()))
  pairs = {}
  for k, name in zip(["0", "1", "2", "3", "pool"], ["p2", "p3", "p4", "p5", "p6"]):
    pairs[f"fpn_{name}"] = (np.asarray(f_j[name]), f_t[k].numpy().transpose(0, 2, 3, 1))
  a = obj_t[0].shape[1]
  for i, name in enumerate(["p2", "p3", "p4", "p5", "p6"]):
    oj = np.asarray(obj_j[name]).reshape(1, -1)
    ot = obj_t[i].numpy().transpose(0, 2, 3, 1).reshape(1, -1)
    pairs[f"rpn_objectness_{name}"] = (oj, ot)
    dj = np.asarray(dlt_j[name]).reshape(1, -1, 4)
    n, _, h, w = dlt_t[i].shape
    dt = dlt_t[i].numpy().reshape(n, a, 4, h, w).transpose(0, 3, 4, 1, 2).reshape(1, -1, 4)
    pairs[f"rpn_deltas_{name}"] = (dj, dt)
  res = {"tensors": summarize_agreement(pairs), "input_shape": list(img.shape),
         "image_size": [int(x) for x in np.asarray(b1.image_size[0])]}
  valid = np.asarray(det.valid[0])
  boxes_j = np.asarray(det.boxes[0])[valid]
  scores_j = np.asarray(det.scores[0])[valid]
  for aligned in (False, True):
    set_roi_align_aligned(aligned)
    with torch.no_grad():
      out_t = tv_model(images)[0]
    bt, st = out_t["boxes"].numpy(), out_t["scores"].numpy()
    m = box_match(bt, boxes_j)
    # Scores of matched boxes (best IoU partner).
    if len(bt) and len(boxes_j):
      iou = box_iou(bt, boxes_j)
      j = iou.argmax(1)
      ok = iou.max(1) >= 0.99
      m["matched_score_max_abs"] = float(np.max(np.abs(st[ok] - scores_j[j[ok]]))) if ok.any() else None
      k = min(len(bt), len(boxes_j), 100)
      m["top100_box_max_abs"] = float(np.max(np.abs(bt[:k] - boxes_j[:k])))
    m["torchvision_detections"] = int(len(bt))
    m["pa_jax_detections"] = int(len(boxes_j))
    res[f"detections_tv_aligned_{aligned}"] = m
  set_roi_align_aligned(False)
  return res


# ------------------------------------------------------------------------------ timing


def _peak_rss_mb() -> float:
  """Peak resident memory of THIS process image (VmHWM). Not ru_maxrss: Linux carries that
  over exec from the forking parent, so a worker would report its parent's size."""
  try:
    for line in open("/proc/self/status"):
      if line.startswith("VmHWM:"):
        return int(line.split()[1]) / 1024.0
  except OSError:
    pass
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _versions() -> dict:
  v = {"python": platform.python_version()}
  for mod in ("jax", "jaxlib", "flax", "optax", "numpy", "torch", "torchvision"):
    try:
      v[mod] = __import__(mod).__version__
    except Exception:  # noqa: BLE001 - absent is a fact to record
      v[mod] = None
  return v


def machine() -> dict:
  info = {"machine": platform.machine(), "cpu_count": os.cpu_count(),
          "platform": platform.platform(), "load_avg_1_5_15": list(os.getloadavg())}
  try:
    for line in open("/proc/cpuinfo"):
      if line.startswith("model name"):
        info["cpu"] = line.split(":", 1)[1].strip()
        break
  except OSError:
    pass
  return info


def _step_timings(times: list[float], cpu: list[float], warmup: int, batch: int) -> dict:
  """Wall and CPU seconds of the timed train steps (after `warmup`), images/s, first step."""
  wall = _median(times[warmup:])
  return {"train_step_cpu_seconds": cpu[warmup:], "train_step_cpu_median": _median(cpu[warmup:]),
          "first_step_seconds": times[0], "train_step_seconds": times[warmup:],
          "train_step_median": wall, "train_images_per_second": batch / wall}


def _median(xs):
  return float(np.median(xs)) if xs else None


def time_pa_jax(cfg, npz: str, steps: int, warmup: int, n_predict: int, dtype: str) -> dict:
  import jax
  import jax.numpy as jnp

  from pa_jax import experiment
  from pa_jax.data.pipeline import shard_batch
  from pa_jax.models.mask_rcnn import MaskRCNN
  from pa_jax.train.optimizer import make_optimizer
  from pa_jax.train.state import create_train_state, make_data_mesh
  from pa_jax.train.step import make_train_step

  cfg.model.compute_dtype = dtype
  model, examples, batches, first = pa_jax_setup(cfg)
  res = {"framework": "pa_jax", "devices": [str(d) for d in jax.devices()],
         "compute_dtype": dtype}
  res["rss_after_data_mb"] = _peak_rss_mb()
  task = experiment.make_task(model, pretrained=npz)
  mesh = make_data_mesh()
  tx = make_optimizer(cfg.train, task.trainable)
  t0 = time.perf_counter()
  state = create_train_state(task, cfg, jax.random.PRNGKey(cfg.seed), first, mesh, tx)
  jax.block_until_ready(state)
  res["init_seconds"] = time.perf_counter() - t0
  # Prediction first, with the imported (shared) weights: after training, the two
  # frameworks' weights differ and so would their detection counts (torchvision's work
  # depends on them).
  variables = {**state.variables, "params": state.params}
  tb, _ = test_canvases(cfg, n_predict + 1)
  pred = jax.jit(lambda v, x, s: model.apply(v, x, s, method=MaskRCNN.predict))
  ptimes, pcpu, ndet = [], [], []
  for i in range(n_predict + 1):
    x, s = jnp.asarray(tb.image[i:i + 1]), jnp.asarray(tb.image_size[i:i + 1])
    t0, c0 = time.perf_counter(), time.process_time()
    d = pred(variables, x, s)
    jax.block_until_ready(d)
    ptimes.append(time.perf_counter() - t0)
    pcpu.append(time.process_time() - c0)
    ndet.append(int(np.asarray(d.valid).sum()))
  res["first_predict_seconds"] = ptimes[0]
  res["predict_seconds"] = ptimes[1:]
  res["predict_seconds_per_image"] = _median(ptimes[1:])
  res["predict_images_per_second"] = 1.0 / res["predict_seconds_per_image"]
  res["predict_cpu_seconds_per_image"] = _median(pcpu[1:])
  res["detections_per_image"] = ndet
  # pa_jax's predict never pastes masks (that is the host post-process): the same figure.
  res["predict_unpasted_seconds_per_image"] = res["predict_seconds_per_image"]
  step_fn = make_train_step(task, tx, mesh, grad_accum=int(cfg.train.grad_accum))
  times, cpu = [], []
  for k in range(warmup + steps):
    batch = shard_batch(batches.batch(k % 4), mesh)
    t0, c0 = time.perf_counter(), time.process_time()
    state, metrics = step_fn(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t0)
    cpu.append(time.process_time() - c0)
  res.update(_step_timings(times, cpu, warmup, cfg.train.batch_size))
  res["last_loss"] = float(metrics["loss"])
  # The mask head's real work: pa_jax runs it on roi.batch_per_image * positive_fraction
  # static slots per image whatever this count is; torchvision on exactly these positives.
  if "roi_positives_per_image" in metrics:
    res["mask_positives_per_image"] = float(metrics["roi_positives_per_image"])
  res["mask_slots_per_image"] = max(1, int(cfg.model.roi.batch_per_image
                                           * cfg.model.roi.positive_fraction))
  res["peak_rss_after_train_mb"] = _peak_rss_mb()
  res.update(_jax_mem("train"))
  res["peak_rss_mb"] = _peak_rss_mb()
  res.update(_jax_mem("end"))
  return res


def _jax_mem(tag: str) -> dict:
  import jax

  try:
    st = jax.devices()[0].memory_stats() or {}
  except Exception:  # noqa: BLE001
    st = {}
  if "peak_bytes_in_use" in st:
    return {f"device_peak_mb_{tag}": st["peak_bytes_in_use"] / 2 ** 20}
  return {}


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


def time_torchvision(cfg, npz: str | None, steps: int, warmup: int, n_predict: int, dtype: str,
                     device: str) -> dict:
  import torch

  model, examples, batches, first = pa_jax_setup(cfg)  # same data (pa_jax's model unused)
  del model
  res = {"framework": "torchvision", "device": device, "compute_dtype": dtype,
         "torch_threads": torch.get_num_threads()}
  res["rss_after_data_mb"] = _peak_rss_mb()
  tv = build_torchvision(cfg, device)
  if npz:
    sd = {k: torch.from_numpy(v) for k, v in np.load(npz).items()}
    tv.load_state_dict(sd)
  amp = dtype == "bfloat16"
  dev_type = "cuda" if device.startswith("cuda") else "cpu"
  sync = (lambda: torch.cuda.synchronize()) if dev_type == "cuda" else (lambda: None)
  # Prediction first, with the shared weights (see time_pa_jax).
  tv.eval()
  tb, _ = test_canvases(cfg, n_predict + 1)
  inputs = [torch_inputs(__import__("jax").tree.map(lambda x: np.asarray(x)[i:i + 1], tb), device,
                         with_targets=False)[0] for i in range(n_predict + 1)]

  def timed(predict):
    """(wall seconds, CPU seconds, outputs) of `predict(images)` on each test image."""
    walls, cpus, outs = [], [], []
    for images in inputs:
      sync()
      t0, c0 = time.perf_counter(), time.process_time()
      with torch.no_grad(), torch.autocast(dev_type, dtype=torch.bfloat16, enabled=amp):
        outs.append(predict(images))
      sync()
      walls.append(time.perf_counter() - t0)
      cpus.append(time.process_time() - c0)
    return walls, cpus, outs

  ptimes, pcpu, outs = timed(tv)
  ndet = [int(out[0]["boxes"].shape[0]) for out in outs]
  if dev_type == "cuda":
    res["device_peak_mb_predict"] = torch.cuda.max_memory_allocated() / 2 ** 20
  res["first_predict_seconds"] = ptimes[0]
  res["predict_seconds"] = ptimes[1:]
  res["predict_seconds_per_image"] = _median(ptimes[1:])
  res["predict_images_per_second"] = 1.0 / res["predict_seconds_per_image"]
  res["predict_cpu_seconds_per_image"] = _median(pcpu[1:])
  res["detections_per_image"] = ndet
  # Like for like with pa_jax's predict: the same images, stopping before mask pasting.
  utimes, _, _ = timed(lambda images: tv_predict_unpasted(tv, images))
  res["predict_unpasted_seconds"] = utimes[1:]
  res["predict_unpasted_seconds_per_image"] = _median(utimes[1:])
  tv.train()
  params = [p for p in tv.parameters() if p.requires_grad]
  opt = torch.optim.SGD(params, lr=float(cfg.train.learning_rate), momentum=float(cfg.train.momentum),
                        weight_decay=float(cfg.train.weight_decay))
  if dev_type == "cuda":
    torch.cuda.reset_peak_memory_stats()
  positives = count_roi_positives(tv)
  times, cpu = [], []
  for k in range(warmup + steps):
    images, targets = torch_inputs(batches.batch(k % 4), device)
    sync()
    t0, c0 = time.perf_counter(), time.process_time()
    with torch.autocast(dev_type, dtype=torch.bfloat16, enabled=amp):
      losses = tv(images, targets)
    loss = sum(losses.values())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.train.clip_grad_norm:
      torch.nn.utils.clip_grad_norm_(params, float(cfg.train.clip_grad_norm))
    opt.step()
    sync()
    times.append(time.perf_counter() - t0)
    cpu.append(time.process_time() - c0)
  res.update(_step_timings(times, cpu, warmup, cfg.train.batch_size))
  res["last_loss"] = float(loss.detach())
  # Mean positives per image over the timed steps: the RoIs its mask head ran on.
  timed_pos = positives[warmup * cfg.train.batch_size:]
  if timed_pos:
    res["mask_positives_per_image"] = float(np.mean(timed_pos))
  res["peak_rss_after_train_mb"] = _peak_rss_mb()
  if dev_type == "cuda":
    res["device_peak_mb_train"] = torch.cuda.max_memory_allocated() / 2 ** 20
  res["peak_rss_mb"] = _peak_rss_mb()
  if dev_type == "cuda":
    res["device_peak_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
  return res



# ----------------------------------------------------------------------------- profile

#: XLA:CPU variants tried on the backbone fwd+bwd (each in its own process).
XLA_VARIANTS = {
    "default": "",
    "no_multi_thread_eigen": "--xla_cpu_multi_thread_eigen=false",
    "legacy_runtime": "--xla_cpu_use_thunk_runtime=false",
    "fast_math": "--xla_cpu_enable_fast_math=true",
    "onednn": "--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_custom_call=true",
    "xnnpack": "--xla_cpu_use_xnnpack=true",
    "xnn_graph_greedy": "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY",
}

#: Representative convs of a ResNet-50 at a 360x360 input: (name, H=W, Cin, Cout, k, stride).
CONV_CASES = [
    ("layer1_3x3_64", 90, 64, 64, 3, 1),
    ("layer1_1x1_64_256", 90, 64, 256, 1, 1),
    ("layer3_3x3_256", 23, 256, 256, 3, 1),
    ("stem_7x7_s2", 360, 3, 64, 7, 2),
]


def _bench(fn, reps: int) -> dict:
  """Wall and CPU seconds (all threads of the process) of `fn`, first call apart."""
  t0 = time.perf_counter()
  fn()
  first = time.perf_counter() - t0
  ts, cs = [], []
  for _ in range(reps):
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    ts.append(time.perf_counter() - t0)
    cs.append(time.process_time() - c0)
  return {"first": first, "median": _median(ts), "all": ts, "cpu_median": _median(cs)}


def profile_jax(size: int, reps: int, layouts: bool, conv_only: bool = False) -> dict:
  res = {"framework": "jax", "xla_flags": os.environ.get("XLA_FLAGS", "")}
  if not conv_only:
    res.update(_profile_jax_r50(size, reps, layouts))
  res["convs"] = _profile_jax_convs(reps, layouts)
  return res


def _profile_jax_r50(size: int, reps: int, layouts: bool) -> dict:
  import jax
  import jax.numpy as jnp

  from pa_jax.models.resnet import resnet

  res = {}
  net = resnet("resnet50", base_channels=64, norm="frozen_bn", freeze_at=0)
  x = jax.random.normal(jax.random.PRNGKey(0), (1, size, size, 3), jnp.float32)
  variables = jax.jit(lambda k, x: net.init(k, x, train=False))(jax.random.PRNGKey(1), x)
  params, rest = variables["params"], {k: v for k, v in variables.items() if k != "params"}

  def out_sum(p, x):
    feats = net.apply({**rest, "params": p}, x, train=False)
    leaves = feats.values() if isinstance(feats, dict) else jax.tree.leaves(feats)
    return sum(jnp.sum(f) for f in leaves)

  fwd = jax.jit(out_sum)
  g_params = jax.jit(jax.grad(out_sum, argnums=0))
  g_input = jax.jit(jax.grad(out_sum, argnums=1))
  g_both = jax.jit(jax.grad(out_sum, argnums=(0, 1)))
  blk = lambda f: (lambda: jax.block_until_ready(f(params, x)))  # noqa: E731
  res["r50_fwd"] = _bench(blk(fwd), reps)
  res["r50_fwd_bwd_both"] = _bench(blk(g_both), reps)
  if layouts:  # the full split only in the default variant
    res["r50_fwd_bwd_params"] = _bench(blk(g_params), reps)
    res["r50_fwd_bwd_input_only"] = _bench(blk(g_input), reps)
  return res


def _profile_jax_convs(reps: int, layouts: bool) -> dict:
  import jax
  import jax.numpy as jnp
  from jax import lax

  convs = {}
  for name, hw, cin, cout, k, st in CONV_CASES:
    pad = ((k // 2, k // 2),) * 2
    xi = jax.random.normal(jax.random.PRNGKey(2), (1, hw, hw, cin), jnp.float32)
    w = jax.random.normal(jax.random.PRNGKey(3), (k, k, cin, cout), jnp.float32) * 0.05

    def conv(x, w, dn=("NHWC", "HWIO", "NHWC")):
      return lax.conv_general_dilated(x, w, (st, st), pad, dimension_numbers=dn)

    y = jax.jit(conv)(xi, w)
    ct = jnp.ones_like(y)
    f = jax.jit(conv)
    dgrad = jax.jit(lambda x, w: jax.vjp(lambda a: conv(a, w), x)[1](ct)[0])
    wgrad = jax.jit(lambda x, w: jax.vjp(lambda b: conv(x, b), w)[1](ct)[0])
    c = {}
    for kind, fn_k in (("fwd", f), ("dgrad", dgrad), ("wgrad", wgrad)):
      b = _bench(lambda: jax.block_until_ready(fn_k(xi, w)), reps)
      c[kind], c[kind + "_cpu"] = b["median"], b["cpu_median"]
    c["gflop_fwd"] = 2.0 * y.size * cin * k * k / 1e9
    if layouts:
      xn = jnp.transpose(xi, (0, 3, 1, 2))
      wn = jnp.transpose(w, (3, 2, 0, 1))
      dn = ("NCHW", "OIHW", "NCHW")
      ctn = jnp.transpose(ct, (0, 3, 1, 2))
      fn_ = jax.jit(lambda x, w: conv(x, w, dn))
      wg_n = jax.jit(lambda x, w: jax.vjp(lambda b: conv(x, b, dn), w)[1](ctn)[0])
      dg_n = jax.jit(lambda x, w: jax.vjp(lambda a: conv(a, w, dn), x)[1](ctn)[0])
      c["nchw_fwd"] = _bench(lambda: jax.block_until_ready(fn_(xn, wn)), reps)["median"]
      c["nchw_dgrad"] = _bench(lambda: jax.block_until_ready(dg_n(xn, wn)), reps)["median"]
      c["nchw_wgrad"] = _bench(lambda: jax.block_until_ready(wg_n(xn, wn)), reps)["median"]
    convs[name] = c
  return convs


def profile_torch(size: int, reps: int, conv_only: bool = False) -> dict:
  import torch
  from torchvision.models import resnet50
  from torchvision.models._utils import IntermediateLayerGetter
  from torchvision.ops import FrozenBatchNorm2d

  res = {"framework": "torch", "threads": torch.get_num_threads()}
  if conv_only:
    res["convs"] = _profile_torch_convs(reps)
    return res
  body = IntermediateLayerGetter(resnet50(weights=None, norm_layer=FrozenBatchNorm2d),
                                 {"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"})
  x = torch.randn(1, 3, size, size)

  def fwd():
    with torch.no_grad():
      sum(v.sum() for v in body(x).values())

  def fwd_bwd(input_grad: bool, param_grad: bool):
    for p in body.parameters():
      p.requires_grad_(param_grad)
    xi = x.clone().requires_grad_(input_grad)

    def run():
      body.zero_grad(set_to_none=True)
      sum(v.sum() for v in body(xi).values()).backward()
    return run

  res["r50_fwd"] = _bench(fwd, reps)
  res["r50_fwd_bwd_params"] = _bench(fwd_bwd(False, True), reps)
  res["r50_fwd_bwd_input_only"] = _bench(fwd_bwd(True, False), reps)
  res["r50_fwd_bwd_both"] = _bench(fwd_bwd(True, True), reps)
  res["convs"] = _profile_torch_convs(reps)
  return res


def _profile_torch_convs(reps: int) -> dict:
  import torch
  import torch.nn.functional as F

  convs = {}
  for name, hw, cin, cout, k, st in CONV_CASES:
    xi = torch.randn(1, cin, hw, hw)
    w = torch.randn(cout, cin, k, k) * 0.05
    y = F.conv2d(xi, w, stride=st, padding=k // 2)
    ct = torch.ones_like(y)

    def f():
      with torch.no_grad():
        F.conv2d(xi, w, stride=st, padding=k // 2)

    def dgrad():
      a = xi.clone().requires_grad_(True)
      torch.autograd.grad(F.conv2d(a, w, stride=st, padding=k // 2), a, ct)

    def wgrad():
      b = w.clone().requires_grad_(True)
      torch.autograd.grad(F.conv2d(xi, b, stride=st, padding=k // 2), b, ct)

    c = {"gflop_fwd": 2.0 * y.numel() * cin * k * k / 1e9}
    for kind, fn_k in (("fwd", f), ("dgrad", dgrad), ("wgrad", wgrad)):
      b = _bench(fn_k, reps)
      c[kind], c[kind + "_cpu"] = b["median"], b["cpu_median"]
    convs[name] = c
  return convs


def cmd_profile_worker(a) -> int:
  res = (profile_torch(a.size, a.reps, a.conv_only) if a.framework == "torch"
         else profile_jax(a.size, a.reps, a.layouts, a.conv_only))
  res["versions"] = _versions()
  Path(a.out).write_text(json.dumps(res, indent=1))
  return 0


def cmd_profile(a) -> int:
  out = Path(a.out)
  result = {"command": "python " + " ".join(sys.argv), "date_utc": _now(), "machine": machine(),
            "versions": _versions(), "input": [1, a.size, a.size, 3], "reps": a.reps,
            "runs": {}}
  jobs = [("torch", "torch", "")] if _torch_available() and not a.no_torch else []
  variants = a.variants.split(",") if a.variants else list(XLA_VARIANTS)
  jobs += [("jax", f"jax_{v}", XLA_VARIANTS[v]) for v in variants]
  for fw, name, flags in jobs:
    wout = f"{out}.{name}.tmp.json"
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + flags).strip()
    cmd = [sys.executable, str(Path(__file__).resolve()), "profile-worker", "--framework", fw,
           "--size", str(a.size), "--reps", str(a.reps), "--out", wout]
    if name == "jax_default":
      cmd.append("--layouts")
    if a.conv_only:
      cmd.append("--conv-only")
    print("+", f"XLA_FLAGS='{env['XLA_FLAGS']}'" if fw == "jax" else "", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=str(ROOT), env=env, capture_output=True, text=True)
    run = {"returncode": p.returncode, "wall_seconds": time.perf_counter() - t0,
           "xla_flags": flags, "load_avg_after": list(os.getloadavg())}
    if p.returncode == 0 and os.path.exists(wout):
      run.update(json.loads(Path(wout).read_text()))
      os.remove(wout)
    else:
      run["stderr_tail"] = p.stderr[-1500:]
    result["runs"][name] = run
    out.write_text(json.dumps(result, indent=1))
    short = {k: (v.get("median") if isinstance(v, dict) and "median" in v else None)
             for k, v in run.items() if k.startswith("r50_")}
    print(name, p.returncode, json.dumps(short), flush=True)
  return 0


# ---------------------------------------------------------------------------------- CLI


def cmd_worker(a) -> int:
  spec, ov = preset(a.preset, a.override)
  cfg = load_config(spec, ov)
  if a.framework == "pa_jax":
    res = time_pa_jax(cfg, a.npz, a.steps, a.warmup, a.predict_images, a.dtype)
  else:
    res = time_torchvision(cfg, a.npz, a.steps, a.warmup, a.predict_images, a.dtype, a.device)
  res["versions"] = _versions()
  Path(a.out).write_text(json.dumps(res, indent=1))
  return 0


def cmd_export(a) -> int:
  """torchvision's randomly initialised Mask R-CNN of a preset's config, as .npz (weights
  for a frozen-BN config on a machine without downloads; speed does not depend on them)."""
  import torch

  spec, ov = preset(a.preset, a.override)
  cfg = load_config(spec, ov)
  torch.manual_seed(a.seed)
  sd = state_dict_numpy(build_torchvision(cfg, "cpu"))
  np.savez(a.out, **sd)
  print(f"{a.out}: {len(sd)} tensors ({cfg.model.backbone}, random init)")
  return 0


def _torch_available() -> bool:
  return importlib.util.find_spec("torch") is not None and importlib.util.find_spec("torchvision") is not None


def cmd_compare(a) -> int:
  spec, ov = preset(a.preset, a.override)
  cfg = load_config(spec, ov)
  # The agreement check is a float32 one: paper-size configs default to bfloat16 compute,
  # which put the FPN 1.7 % apart on an H200 (2026-11-30). The timed workers set their own
  # dtype (--dtypes).
  cfg.model.compute_dtype = "float32"
  out = Path(a.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  result = {"command": "python " + " ".join(sys.argv), "date_utc": _now(),
            "preset": a.preset, "config": spec, "overrides": ov, "machine": machine(),
            "versions": _versions(), "device": a.device, "dtypes": a.dtypes,
            "steps": a.steps, "warmup": a.warmup, "predict_images": a.predict_images,
            "canvas": int(cfg.data.canvas_size), "batch_size": int(cfg.train.batch_size)}
  if not _torch_available():
    result["skipped"] = "torch/torchvision not installed (pip install -r requirements-bench.txt)"
    out.write_text(json.dumps(result, indent=1))
    print(result["skipped"])
    return 0
  import torch

  torch.manual_seed(a.seed)
  tv = build_torchvision(cfg, "cpu")
  npz = str(out.with_suffix("")) + "_weights.npz" if a.keep_weights else os.path.join(
      os.environ.get("TMPDIR", "/tmp"), f"frameworks_{a.preset}_{os.getpid()}.npz")
  sd = state_dict_numpy(tv)
  np.savez(npz, **sd)
  t0 = time.perf_counter()
  model, examples, batches, first = pa_jax_setup(cfg)
  variables, report = pa_jax_variables(model, first, sd)
  result["weights"] = {"tensors_in_state_dict": len(sd), "loaded": report["loaded"],
                       "skipped": report["skipped"], "unexpected": report["unexpected"],
                       "missing": report["missing"]}
  if a.agreement_from:
    prev = json.loads(Path(a.agreement_from).read_text())
    result["agreement"] = prev["agreement"]
    result["agreement_note"] = f"copied from {prev.get('command')} ({prev.get('date_utc')})"
  elif not a.no_agree:
    tb, recs = test_canvases(cfg, 1)
    result["agreement"] = agreement(cfg, model, variables, tv, tb)
    result["agreement"]["image_id"] = recs[0].id if hasattr(recs[0], "id") else str(recs[0])
    result["agreement_seconds"] = time.perf_counter() - t0
    print(json.dumps(result["agreement"], indent=1))
  del tv, variables
  result["runs"] = []
  frameworks = [f for f in a.frameworks.split(",") if f]
  for dtype in a.dtypes.split(","):
    for fw in frameworks:
      wout = f"{out}.{fw}.{dtype}.tmp.json"
      cmd = [sys.executable, str(Path(__file__).resolve()), "worker", "--framework", fw,
             "--preset", a.preset, "--npz", npz, "--steps", str(a.steps), "--warmup",
             str(a.warmup), "--predict-images", str(a.predict_images), "--dtype", dtype,
             "--device", a.device, "--out", wout] + sum((["--override", o] for o in a.override), [])
      print("+", " ".join(cmd), flush=True)
      t0 = time.perf_counter()
      p = subprocess.run(cmd, cwd=str(ROOT))
      run = {"framework": fw, "compute_dtype": dtype, "returncode": p.returncode,
             "wall_seconds": time.perf_counter() - t0, "load_avg_after": list(os.getloadavg())}
      if p.returncode == 0 and os.path.exists(wout):
        run.update(json.loads(Path(wout).read_text()))
        os.remove(wout)
      result["runs"].append(run)
      out.write_text(json.dumps(result, indent=1))
  result["ratios"] = ratios(result["runs"])
  if not a.keep_weights and os.path.exists(npz):
    os.remove(npz)
  out.write_text(json.dumps(result, indent=1))
  print(json.dumps(result["ratios"], indent=1))
  return 0


def ratios(runs: list) -> dict:
  """pa_jax / torchvision time ratios per dtype (> 1: pa_jax slower)."""
  out = {}
  by = {(r.get("framework"), r.get("compute_dtype")): r for r in runs}
  for (fw, dt), r in by.items():
    if fw != "pa_jax" or ("torchvision", dt) not in by:
      continue
    t = by[("torchvision", dt)]
    d = {}
    for key in ("train_step_median", "predict_seconds_per_image", "train_step_cpu_median",
                "predict_cpu_seconds_per_image", "predict_unpasted_seconds_per_image"):
      if r.get(key) and t.get(key):
        d[key + "_ratio"] = r[key] / t[key]
    out[dt] = d
  return out


def mask_work(run: dict) -> str:
  """'positives (slots)' of a run's mask head in training: pa_jax computes its static slots
  whatever the positives; torchvision only its positives. '–' for runs from before it was
  recorded."""
  pos = run.get("mask_positives_per_image")
  if pos is None:
    return "–"
  slots = run.get("mask_slots_per_image")
  return f"{pos:.1f}" + (f" ({slots})" if slots else "")


def markdown(paths: Sequence[str]) -> str:
  """Markdown rows (one per framework run) of compare JSON files, for docs/performance.md."""
  rows = ["| preset | framework | dtype | train step s (CPU-s) | train img/s | predict s/img (CPU-s) "
          "| predict s/img, masks not pasted | detections/img | mask-head positives/img (slots) "
          "| peak RSS MB | device peak MB |",
          "|---|---|---|---|---|---|---|---|---|---|---|"]
  f = lambda x, d=2: "–" if x is None else f"{x:.{d}f}"  # noqa: E731
  for path in paths:
    d = json.loads(Path(path).read_text())
    for r in d.get("runs", []):
      if r.get("returncode"):
        rows.append(f"| {d['preset']} | {r['framework']} | {r['compute_dtype']} | failed (rc {r['returncode']}) |||||||")
        continue
      dev = r.get("device_peak_mb_train") or r.get("device_peak_mb") or r.get("device_peak_mb_end")
      rows.append(
          f"| {d['preset']} | {r['framework']} | {r['compute_dtype']} | {f(r.get('train_step_median'))} "
          f"({f(r.get('train_step_cpu_median'))}) | {f(r.get('train_images_per_second'), 3)} | "
          f"{f(r.get('predict_seconds_per_image'))} ({f(r.get('predict_cpu_seconds_per_image'))}) | "
          f"{f(r.get('predict_unpasted_seconds_per_image'), 3)} | {r.get('detections_per_image')} | "
          f"{mask_work(r)} | {f(r.get('peak_rss_mb'), 0)} | {f(dev, 0)} |")
  return "\n".join(rows)


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  sub = ap.add_subparsers(dest="cmd", required=True)
  p = sub.add_parser("table")
  p.add_argument("json", nargs="+")
  p = sub.add_parser("profile")
  p.add_argument("--size", type=int, default=360)
  p.add_argument("--reps", type=int, default=3)
  p.add_argument("--variants", default="", help="comma list of XLA_VARIANTS (default: all)")
  p.add_argument("--no-torch", action="store_true")
  p.add_argument("--conv-only", action="store_true", help="only the per-conv fwd/dgrad/wgrad split")
  p.add_argument("--out", required=True)
  p = sub.add_parser("profile-worker")
  p.add_argument("--framework", choices=["jax", "torch"], required=True)
  p.add_argument("--size", type=int, default=360)
  p.add_argument("--reps", type=int, default=3)
  p.add_argument("--layouts", action="store_true")
  p.add_argument("--conv-only", action="store_true")
  p.add_argument("--out", required=True)
  p = sub.add_parser("export")
  p.add_argument("--preset", default="paper_r50", choices=sorted(PRESETS))
  p.add_argument("--override", action="append", default=[], help="config override a.b=c")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", required=True)
  for name in ("compare", "worker"):
    p = sub.add_parser(name)
    p.add_argument("--preset", default="paper_r50", choices=sorted(PRESETS))
    p.add_argument("--override", action="append", default=[], help="config override a.b=c")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--predict-images", type=int, default=2)
    p.add_argument("--device", default="cpu", help="torch device: cpu or cuda")
    p.add_argument("--out", required=True)
    if name == "compare":
      p.add_argument("--dtypes", default="float32", help="comma list: float32,bfloat16")
      p.add_argument("--frameworks", default="pa_jax,torchvision")
      p.add_argument("--seed", type=int, default=0)
      p.add_argument("--no-agree", action="store_true")
      p.add_argument("--agreement-from", default="", help="reuse the agreement of an earlier JSON")
      p.add_argument("--keep-weights", action="store_true")
    else:
      p.add_argument("--framework", required=True, choices=["pa_jax", "torchvision"])
      p.add_argument("--npz", default=None)
      p.add_argument("--dtype", default="float32")
  a = ap.parse_args(argv)
  return {"compare": cmd_compare, "worker": cmd_worker, "export": cmd_export,
          "profile": cmd_profile, "profile-worker": cmd_profile_worker,
          "table": lambda a: print(markdown(a.json)) or 0}[a.cmd](a)


if __name__ == "__main__":
  sys.exit(main())
