"""bench/frameworks.py: the pure pieces without torch; the torchvision model with torch.

The timings themselves are never tested (docs/performance.md records them with commands).
"""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load():
  spec = importlib.util.spec_from_file_location("bench_frameworks", ROOT / "bench" / "frameworks.py")
  mod = importlib.util.module_from_spec(spec)
  sys.modules["bench_frameworks"] = mod
  spec.loader.exec_module(mod)
  return mod


fw = _load()


def test_presets_and_overrides():
  spec, ov = fw.preset("paper_r50", ["model.roi.max_detections=100"])
  assert spec == "configs/dh100_baseline.py"
  cfg = fw.load_config(spec, ov)
  assert cfg.model.backbone == "resnet50"
  assert cfg.train.batch_size == 2
  assert cfg.model.roi.max_detections == 100
  assert cfg.data.canvas_size == 384 and cfg.data.group == "dh360"
  assert Path(cfg.data.source).is_absolute()
  small = fw.load_config(*fw.preset("cpu_small"))
  assert (small.model.backbone, small.model.backbone_width, small.model.norm) == ("resnet18", 32, "group_norm")
  assert not small.model.partial.enabled
  with pytest.raises(ValueError):
    fw.preset("nope")


def test_torchvision_settings_match_the_paper_config():
  cfg = fw.load_config(*fw.preset("paper_r50"))
  s = fw.torchvision_settings(cfg.model, cfg.data.canvas_size)
  assert (s["rpn_pre_nms_top_n_train"], s["rpn_post_nms_top_n_train"]) == (4000, 2000)
  assert (s["rpn_pre_nms_top_n_test"], s["rpn_post_nms_top_n_test"]) == (4000, 2000)
  assert s["box_batch_size_per_image"] == 512
  assert s["box_detections_per_img"] == 1000
  assert s["box_score_thresh"] == 0.05 and s["box_nms_thresh"] == 0.5
  assert s["bbox_reg_weights"] == (10.0, 10.0, 5.0, 5.0)
  assert s["anchor_sizes"] == ((8.0,), (16.0,), (32.0,), (64.0,), (128.0,))
  assert s["aspect_ratios"] == (0.5, 1.0, 2.0)
  assert s["image_mean"] == [0.0] * 3 and s["image_std"] == [1.0] * 3
  assert s["min_size"] == s["max_size"] == 384
  assert s["trainable_layers"] == 3  # freeze_at=2: stem + layer1 frozen
  assert s["box_fg_iou_thresh"] == s["box_bg_iou_thresh"] == 0.5


@pytest.mark.parametrize("name", ["paper_r50", "cpu_small"])
def test_torchvision_anchor_grid_equals_pa_jax_anchors(name):
  from pa_jax.ops import anchors as anchor_ops

  cfg = fw.load_config(*fw.preset(name))
  m, canvas = cfg.model, cfg.data.canvas_size
  shapes = anchor_ops.feature_shapes(canvas, canvas, m.anchor_strides)
  ours = anchor_ops.generate_anchors(shapes, m.anchor_strides, m.anchor_sizes, m.anchor_ratios)
  theirs = fw.tv_grid_anchors(fw.pa_jax_cell_anchors(m), shapes, m.anchor_strides)
  for a, b in zip(ours, theirs):
    np.testing.assert_array_equal(a, b)


def test_box_match_and_summary():
  a = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], np.float32)
  m = fw.box_match(a, a[::-1] + np.float32(0.001))
  assert m["ref_matched_iou0.99"] == 1.0 and m["other_matched_iou0.99"] == 1.0
  assert m["top_k_same_order_iou0.99"] == 0.0  # same set, other order
  m = fw.box_match(a, a[:1])
  assert m["ref_matched_iou0.5"] == 0.5 and m["other_matched_iou0.5"] == 1.0
  assert fw.box_match(a, np.zeros((0, 4)))["ref_matched_iou0.5"] == 0.0
  s = fw.summarize_agreement({"x": (np.ones(3), np.ones(3) * 1.5), "y": (np.ones(2), np.ones(3))})
  assert s["x"]["max_abs"] == 0.5 and abs(s["x"]["max_rel"] - 1 / 3) < 1e-12
  assert s["y"]["error"] == "shape mismatch"


def test_ratios():
  runs = [{"framework": "pa_jax", "compute_dtype": "float32", "train_step_median": 4.0,
           "predict_seconds_per_image": 1.0},
          {"framework": "torchvision", "compute_dtype": "float32", "train_step_median": 2.0,
           "predict_seconds_per_image": 0.5}]
  assert fw.ratios(runs) == {"float32": {"train_step_median_ratio": 2.0,
                                         "predict_seconds_per_image_ratio": 2.0}}


@pytest.mark.parametrize("name", ["toy", "paper_r50"])
def test_torchvision_state_dict_maps_completely_onto_pa_jax(name):
  pytest.importorskip("torch")
  pytest.importorskip("torchvision")
  from pa_jax.models.weights import torchvision_to_flax_names

  cfg = fw.load_config(*fw.preset(name))
  model = fw.build_torchvision(cfg)
  sd = model.state_dict()
  names = torchvision_to_flax_names(sd)
  assert set(names) == set(sd)  # every tensor has a counterpart (or is a known drop)
  assert model.rpn._pre_nms_top_n["training"] == cfg.model.rpn.pre_nms_topk_train
  assert model.roi_heads.detections_per_img == cfg.model.roi.max_detections
  cell = fw.pa_jax_cell_anchors(cfg.model)
  for a, b in zip(model.rpn.anchor_generator.cell_anchors, cell):
    np.testing.assert_array_equal(a.numpy(), b)


def _toy_torchvision():
  """(torch, the toy preset's config, its torchvision model from seed 0); skips without torch."""
  torch = pytest.importorskip("torch")
  pytest.importorskip("torchvision")
  cfg = fw.load_config(*fw.preset("toy"))
  torch.manual_seed(0)
  return torch, cfg, fw.build_torchvision(cfg)


def test_unpasted_prediction_is_the_eval_forward_before_pasting():
  # The like-for-like prediction timing stops where pa_jax's predict stops: same boxes and
  # scores as torchvision's whole eval forward, masks still 28x28 probabilities.
  torch, cfg, model = _toy_torchvision()
  model.eval()
  # A low score bar so that a random-weight model keeps detections to compare.
  model.roi_heads.score_thresh = 0.0
  canvas = int(cfg.data.canvas_size)
  images = [torch.rand(3, canvas, canvas)]
  with torch.no_grad():
    whole = model(images)[0]
    unpasted = fw.tv_predict_unpasted(model, images)[0]
  n = whole["boxes"].shape[0]
  assert n > 0
  torch.testing.assert_close(unpasted["boxes"], whole["boxes"])
  torch.testing.assert_close(unpasted["scores"], whole["scores"])
  assert tuple(unpasted["masks"].shape) == (n, 1, 28, 28)
  assert tuple(whole["masks"].shape) == (n, 1, canvas, canvas)
  # Probabilities (after the sigmoid), as pa_jax's `Detections.masks`.
  assert float(unpasted["masks"].max()) <= 1.0 and float(unpasted["masks"].min()) >= 0.0


def test_ratios_include_the_unpasted_prediction():
  runs = [{"framework": "pa_jax", "compute_dtype": "float32",
           "predict_unpasted_seconds_per_image": 0.1},
          {"framework": "torchvision", "compute_dtype": "float32",
           "predict_unpasted_seconds_per_image": 0.4}]
  assert fw.ratios(runs) == {"float32": {"predict_unpasted_seconds_per_image_ratio": 0.25}}


def test_roi_positive_count_is_what_the_mask_head_sees():
  # The count recorded per image equals the number of RoIs torchvision's mask head runs on
  # in the same training forward (its `project_masks_on_boxes` gets one RoI per positive).
  torch, cfg, model = _toy_torchvision()
  from torchvision.models.detection import roi_heads as tv_roi_heads

  model.train()
  counts = fw.count_roi_positives(model)
  canvas = int(cfg.data.canvas_size)
  labels = np.zeros((canvas, canvas), np.int64)
  labels[10:30, 10:30], labels[40:60, 50:80] = 1, 2
  boxes = torch.tensor([[10.0, 10.0, 30.0, 30.0], [50.0, 40.0, 80.0, 60.0]])
  target = {"boxes": boxes, "labels": torch.ones(2, dtype=torch.int64),
            "masks": torch.from_numpy(np.stack([labels == 1, labels == 2]).astype(np.uint8))}
  seen = []
  orig = tv_roi_heads.maskrcnn_loss

  def spy(mask_logits, proposals, gt_masks, gt_labels, mask_matched_idxs):
    seen.extend(int(p.shape[0]) for p in proposals)
    return orig(mask_logits, proposals, gt_masks, gt_labels, mask_matched_idxs)

  tv_roi_heads.maskrcnn_loss = spy
  try:
    model([torch.rand(3, canvas, canvas)] * 2, [target, target])
  finally:
    tv_roi_heads.maskrcnn_loss = orig
  assert counts == seen and len(counts) == 2
  # Ground truth joins the proposals, so each of the two nuclei is at least one positive.
  assert all(c >= 2 for c in counts)


def test_mask_work_column():
  assert fw.mask_work({"mask_positives_per_image": 37.5, "mask_slots_per_image": 128}) == "37.5 (128)"
  assert fw.mask_work({"mask_positives_per_image": 37.5}) == "37.5"
  assert fw.mask_work({}) == "–"


def test_torch_sgd_makes_pa_jax_updates():
  # The comparison's torchvision side trains with pa_jax's optimiser: the same parameters
  # after three updates of a kernel (decayed) and a bias (not), with clipping active and
  # the warm-up ramp, as optax's chain from pa_jax/train/optimizer.py gives.
  torch = pytest.importorskip("torch")
  import jax.numpy as jnp
  import ml_collections
  import optax

  import frameworks_torchvision as ftv
  from pa_jax.train.optimizer import make_optimizer

  cfg = ml_collections.ConfigDict(dict(
      learning_rate=0.1, momentum=0.9, weight_decay=0.05, clip_grad_norm=1.0, warmup_steps=2,
      steps=10, schedule="cosine", grad_accum=1))
  rng = np.random.default_rng(0)
  w0 = rng.normal(size=(3, 2)).astype(np.float32)
  b0 = rng.normal(size=(2,)).astype(np.float32)
  x = rng.normal(size=(4, 3)).astype(np.float32)

  def loss_np(w, b, xp):  # written for both frameworks: sum((x w + b)^2) * 3 (clip engages)
    return 3.0 * ((xp @ w + b) ** 2).sum()

  w, b = torch.tensor(w0, requires_grad=True), torch.tensor(b0, requires_grad=True)
  opt, rates = ftv.pa_jax_sgd([w, b], cfg, 3)
  for k in range(3):
    opt.zero_grad()
    loss_np(w, b, torch.tensor(x)).backward()
    torch.nn.utils.clip_grad_norm_([w, b], cfg.clip_grad_norm)
    ftv.set_learning_rate(opt, rates[k])
    opt.step()

  import jax

  params = {"kernel": jnp.asarray(w0), "bias": jnp.asarray(b0)}
  tx = make_optimizer(cfg)
  state = tx.init(params)
  for _ in range(3):
    grads = jax.grad(lambda p: loss_np(p["kernel"], p["bias"], jnp.asarray(x)))(params)
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  np.testing.assert_allclose(w.detach().numpy(), np.asarray(params["kernel"]), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(b.detach().numpy(), np.asarray(params["bias"]), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(rates[:2], [0.05, 0.1], rtol=1e-6)  # warm-up (s + 1) / 2
