"""Pretrained-weight import: round trips, shape checks, and (with torch) numerics (name map and
layouts: test_models_weight_names.py).

The numpy tests build a torchvision-named state dict from a tiny model's flax variables
with the inverse mapping written out here independently, and check that importing it
into a differently initialised model reproduces the variables and the outputs. The torch
test (skipped without torch) builds small torch networks with torchvision's names and
compares layer outputs.
"""

import dataclasses
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pa_jax.errors import InputError
from pa_jax.models.mask_rcnn import MaskRCNN, ModelSpec
from pa_jax.models.resnet import ResNet
from pa_jax.models.weights import convert_to_npz, import_pretrained, load_state_dict

SPEC = ModelSpec(
    backbone="resnet18",
    backbone_width=8,
    norm="frozen_bn",
    fpn_channels=16,
    fc_dim=32,
    mask_dim=16,
    rpn_pre_nms_topk_test=50,
    rpn_post_nms_topk_test=20,
    max_detections=10,
)
IMG = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
HW = jax.ShapeDtypeStruct((1, 2), jnp.int32)


def _vars(rand_vars, spec=SPEC, seed=0):
  return rand_vars(MaskRCNN(spec), IMG, HW, seed=seed, method=MaskRCNN.predict)


def _np(tree):
  return jax.tree.map(np.asarray, tree)


# ------------------------------------------------------------ inverse map (test's own code)


def _torch_module_name(flax_name):
  """'layer1_0' -> 'layer1.0', 'downsample_1' -> 'downsample.1'."""
  head, _, tail = flax_name.rpartition("_")
  return f"{head}.{tail}" if tail.isdigit() and head else flax_name


def to_torchvision(variables, *, old_names=False, num_torch_classes=None, prefix="backbone.body."):
  """torchvision Mask R-CNN state dict (numpy) equivalent to our flax variables."""
  v = _np(variables)
  norm_coll = v.get("frozen") or {}
  stats = v.get("batch_stats") or {}
  p = v["params"]
  sd = {}

  def backbone_modules(tree, path=()):
    for name, sub in tree.items():
      if isinstance(sub, dict) and not any(isinstance(x, dict) for x in sub.values()):
        yield path + (name,), sub
      elif isinstance(sub, dict):
        yield from backbone_modules(sub, path + (name,))

  bb_params = p.get("backbone", {})
  bb_norm = norm_coll.get("backbone", {})
  for mod_path, leaves in list(backbone_modules(bb_params)) + list(backbone_modules(bb_norm)):
    tname = prefix + ".".join(_torch_module_name(n) for n in mod_path)
    if "kernel" in leaves:
      sd[tname + ".weight"] = leaves["kernel"].transpose(3, 2, 0, 1)
    for ours, theirs in (
        ("scale", "weight"),
        ("bias", "bias"),
        ("mean", "running_mean"),
        ("var", "running_var"),
    ):
      if ours in leaves:
        sd[f"{tname}.{theirs}"] = leaves[ours]
  for mod_path, leaves in backbone_modules(stats.get("backbone", {})):
    tname = prefix + ".".join(_torch_module_name(n) for n in mod_path)
    sd[tname + ".running_mean"], sd[tname + ".running_var"] = leaves["mean"], leaves["var"]

  def conv(tname, leaves, sep=".0"):
    sd[f"{tname}{sep}.weight"] = leaves["kernel"].transpose(3, 2, 0, 1)
    sd[f"{tname}{sep}.bias"] = leaves["bias"]

  if "fpn" in p:
    for name, leaves in p["fpn"].items():
      k = int(name[-1]) - 2
      block = "inner_blocks" if name.startswith("lateral") else "layer_blocks"
      conv(f"backbone.fpn.{block}.{k}", leaves, "" if old_names else ".0")
    conv("rpn.head.conv", p["rpn"]["conv"], "" if old_names else ".0.0")
    conv("rpn.head.cls_logits", p["rpn"]["objectness"], "")
    conv("rpn.head.bbox_pred", p["rpn"]["deltas"], "")
    box = p["box_head"]
    k6 = box["fc6"]["kernel"]  # rows in (H, W, C) order
    c = SPEC.fpn_channels
    s = int(round(np.sqrt(k6.shape[0] / c)))
    sd["roi_heads.box_head.fc6.weight"] = (
        k6.reshape(s, s, c, -1).transpose(3, 2, 0, 1).reshape(k6.shape[1], -1)
    )
    sd["roi_heads.box_head.fc6.bias"] = box["fc6"]["bias"]
    sd["roi_heads.box_head.fc7.weight"] = box["fc7"]["kernel"].T
    sd["roi_heads.box_head.fc7.bias"] = box["fc7"]["bias"]
    for n in ("cls_score", "bbox_pred"):
      sd[f"roi_heads.box_predictor.{n}.weight"] = box[n]["kernel"].T
      sd[f"roi_heads.box_predictor.{n}.bias"] = box[n]["bias"]
    mask = p["mask_head"]
    for i in range(1, 5):
      conv(
          f"roi_heads.mask_head.mask_fcn{i}" if old_names else f"roi_heads.mask_head.{i - 1}",
          mask[f"mask_fcn{i}"],
          "" if old_names else ".0",
      )
    k5 = mask["conv5_mask"]["kernel"]  # [kh, kw, in, out], correlation form
    sd["roi_heads.mask_predictor.conv5_mask.weight"] = k5[::-1, ::-1].transpose(2, 3, 0, 1)
    sd["roi_heads.mask_predictor.conv5_mask.bias"] = mask["conv5_mask"]["bias"]
    kl = mask["mask_logits"]["kernel"].transpose(3, 2, 0, 1)  # [N-1, C, 1, 1]
    background = np.full((1,) + kl.shape[1:], 7.0, kl.dtype)
    sd["roi_heads.mask_predictor.mask_fcn_logits.weight"] = np.concatenate([background, kl])
    sd["roi_heads.mask_predictor.mask_fcn_logits.bias"] = np.concatenate(
        [[7.0], mask["mask_logits"]["bias"]]
    )
    if num_torch_classes:
      rng = np.random.default_rng(5)
      t = num_torch_classes
      for n, rows in (("cls_score", t), ("bbox_pred", 4 * t)):
        w = sd[f"roi_heads.box_predictor.{n}.weight"]
        sd[f"roi_heads.box_predictor.{n}.weight"] = rng.normal(size=(rows, w.shape[1])).astype(
            np.float32
        )
        sd[f"roi_heads.box_predictor.{n}.bias"] = np.zeros(rows, np.float32)
      w = sd["roi_heads.mask_predictor.mask_fcn_logits.weight"]
      sd["roi_heads.mask_predictor.mask_fcn_logits.weight"] = rng.normal(
          size=(t,) + w.shape[1:]
      ).astype(np.float32)
      sd["roi_heads.mask_predictor.mask_fcn_logits.bias"] = np.zeros(t, np.float32)
  return sd


def _assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  jax.tree.map(np.testing.assert_array_equal, _np(a), _np(b))


# ------------------------------------------------------------------------- round trip


def test_round_trip_npz_reproduces_variables_and_outputs(rand_vars, tmp_path):
  original = _vars(rand_vars, seed=0)
  fresh = _vars(rand_vars, seed=1)
  path = tmp_path / "maskrcnn.npz"
  np.savez(path, **to_torchvision(original))
  new, report = import_pretrained(fresh, path, strict=True)
  _assert_trees_equal(new, original)
  assert report["loaded"] == len(jax.tree.leaves(original))
  assert report["missing"] == [] and report["skipped"] == [] and report["unexpected"] == []
  # `fresh` itself is untouched (functional).
  _assert_trees_equal(fresh, _vars(rand_vars, seed=1))

  model = MaskRCNN(SPEC)
  image = jax.random.normal(jax.random.PRNGKey(3), (1, 64, 64, 3))
  feats = jax.jit(lambda v, x: model.apply(v, x, method=MaskRCNN.features))
  ref, got = feats(original, image), feats(new, image)
  assert set(ref) == {"p2", "p3", "p4", "p5", "p6"}
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), ref, got)
  assert not np.allclose(np.asarray(feats(fresh, image)["p2"]), np.asarray(ref["p2"]))
  roi = jax.random.normal(jax.random.PRNGKey(4), (3, 7, 7, SPEC.fpn_channels))
  box = lambda v: model.apply(v, roi, method=lambda m, x: m.box_head(x))  # noqa: E731
  jax.tree.map(
      lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
      box(original),
      box(new),
  )


def test_old_torchvision_names_import_too(rand_vars):
  original = _vars(rand_vars, seed=0)
  new, report = import_pretrained(
      _vars(rand_vars, seed=1), to_torchvision(original, old_names=True), strict=True
  )
  _assert_trees_equal(new, original)


def test_class_count_mismatch_skips_predictors_with_a_note(rand_vars, capsys):
  original = _vars(rand_vars, seed=0)
  fresh = _vars(rand_vars, seed=1)
  sd = to_torchvision(original, num_torch_classes=91)
  new, report = import_pretrained(fresh, sd, strict=True)
  assert "91 classes" in capsys.readouterr().out
  predictors = {
      f"roi_heads.box_predictor.{n}.{w}"
      for n in ("cls_score", "bbox_pred")
      for w in ("weight", "bias")
  }
  predictors |= {f"roi_heads.mask_predictor.mask_fcn_logits.{w}" for w in ("weight", "bias")}
  assert set(report["skipped"]) == predictors and report["missing"] == []
  for name in ("cls_score", "bbox_pred"):
    np.testing.assert_array_equal(
        new["params"]["box_head"][name]["kernel"], fresh["params"]["box_head"][name]["kernel"]
    )
  np.testing.assert_array_equal(
      new["params"]["mask_head"]["mask_logits"]["kernel"],
      fresh["params"]["mask_head"]["mask_logits"]["kernel"],
  )
  np.testing.assert_array_equal(
      new["params"]["box_head"]["fc6"]["kernel"], original["params"]["box_head"]["fc6"]["kernel"]
  )


def test_other_shape_mismatch_is_an_input_error_naming_the_key(rand_vars):
  sd = to_torchvision(_vars(rand_vars, seed=0))
  sd["backbone.body.layer1.0.conv1.weight"] = np.zeros((9, 8, 3, 3), np.float32)
  with pytest.raises(InputError, match=r"layer1\.0\.conv1\.weight \(9, 8, 3, 3\).*\(3, 3, 8, 8\)"):
    import_pretrained(_vars(rand_vars, seed=1), sd)
  sd = to_torchvision(_vars(rand_vars, seed=0))
  sd["roi_heads.box_head.fc7.weight"] = np.zeros((32, 64), np.float32)
  with pytest.raises(InputError, match=r"fc7\.weight"):
    import_pretrained(_vars(rand_vars, seed=1), sd)


def test_unexpected_and_missing_are_reported_or_strict_errors(rand_vars):
  sd = to_torchvision(_vars(rand_vars, seed=0))
  sd["roi_heads.extra.weight"] = np.zeros(3, np.float32)
  del sd["rpn.head.conv.0.0.bias"]
  _, report = import_pretrained(_vars(rand_vars, seed=1), sd)
  assert report["unexpected"] == ["roi_heads.extra.weight"]
  assert report["missing"] == ["params/rpn/conv/bias"]
  with pytest.raises(InputError, match="strict import"):
    import_pretrained(_vars(rand_vars, seed=1), sd, strict=True)
  with pytest.raises(InputError, match="no tensor matches"):
    import_pretrained(_vars(rand_vars, seed=1), {"foo.weight": np.zeros(3, np.float32)})


def _classification_sd(variables):
  """torchvision classification ResNet naming (no prefix) + fc + num_batches_tracked."""
  sd = to_torchvision(variables, prefix="")
  sd = {k: v for k, v in sd.items() if not k.startswith(("backbone.fpn", "rpn.", "roi_heads."))}
  for k in [k for k in sd if k.endswith("running_var")]:
    sd[k.replace("running_var", "num_batches_tracked")] = np.array(100)
  sd["fc.weight"], sd["fc.bias"] = np.zeros((1000, 64), np.float32), np.zeros(1000, np.float32)
  return sd


def test_classification_resnet_into_bn_model_and_bare_backbone(rand_vars):
  spec = dataclasses.replace(SPEC, norm="bn")
  original = _vars(rand_vars, spec, seed=0)
  assert "batch_stats" in original and "frozen" not in original
  sd = _classification_sd(original)
  new, report = import_pretrained(_vars(rand_vars, spec, seed=1), sd)
  _assert_trees_equal(new["params"]["backbone"], original["params"]["backbone"])
  _assert_trees_equal(new["batch_stats"], original["batch_stats"])
  assert (
      "fc.weight" in report["skipped"] and "layer1.0.bn1.num_batches_tracked" in report["skipped"]
  )
  assert report["unexpected"] == [] and "params/fpn/lateral2/kernel" in report["missing"]
  assert all(not m.startswith(("params/backbone", "batch_stats")) for m in report["missing"])
  with pytest.raises(InputError, match="strict"):
    import_pretrained(_vars(rand_vars, spec, seed=1), sd, strict=True)

  # The same file into a bare ResNet (frozen BN): every variable set.
  resnet = ResNet(depth=18, base_channels=8)
  img = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  bare0, bare1 = rand_vars(resnet, img, seed=0), rand_vars(resnet, img, seed=1)
  bare_sd = _classification_sd(
      {"params": {"backbone": bare0["params"]}, "frozen": {"backbone": bare0["frozen"]}}
  )
  new, report = import_pretrained(bare1, bare_sd, strict=True)
  _assert_trees_equal(new, bare0)

  # bn_eps shifts the variances so that var + 1e-5 == var_file + bn_eps.
  new0, _ = import_pretrained(bare1, bare_sd, bn_eps=0.0)
  np.testing.assert_allclose(
      new0["frozen"]["bn1"]["var"] + 1e-5, bare0["frozen"]["bn1"]["var"], rtol=1e-6
  )


def test_group_norm_model_refuses_batchnorm_weights(rand_vars):
  sd = to_torchvision(_vars(rand_vars, seed=0))
  gn = dataclasses.replace(SPEC, norm="group_norm")
  with pytest.raises(InputError, match="group_norm"):
    import_pretrained(_vars(rand_vars, gn, seed=1), sd)


def test_pth_without_torch_and_bad_files(tmp_path, monkeypatch):
  pth = tmp_path / "w.pth"
  pth.write_bytes(b"not really")
  monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
  with pytest.raises(
      InputError, match="install torch to import .pth files, or convert to .npz"
  ) as e:
    load_state_dict(pth)
  assert "\n" not in str(e.value) and str(pth) in str(e.value)
  with pytest.raises(InputError, match="not found"):
    load_state_dict(tmp_path / "missing.npz")
  (tmp_path / "w.h5").write_bytes(b"")
  with pytest.raises(InputError, match="unsupported"):
    load_state_dict(tmp_path / "w.h5")
  np.savez(tmp_path / "m.npz", **{"module.conv1.weight": np.ones((2, 3, 1, 1), np.float32)})
  assert list(load_state_dict(tmp_path / "m.npz")) == ["conv1.weight"]


# ------------------------------------------------------------------- torch, when present


def _torch_resnet(torch, basic, layers, width, groups=1, width_per_group=64):
  """A torchvision-shaped ResNet written here (same module names as torchvision)."""
  tnn = torch.nn

  class Basic(tnn.Module):
    expansion = 1

    def __init__(self, cin, planes, stride):
      super().__init__()
      self.conv1 = tnn.Conv2d(cin, planes, 3, stride, 1, bias=False)
      self.bn1 = tnn.BatchNorm2d(planes)
      self.conv2 = tnn.Conv2d(planes, planes, 3, 1, 1, bias=False)
      self.bn2 = tnn.BatchNorm2d(planes)
      self.downsample = None
      if stride != 1 or cin != planes:
        self.downsample = tnn.Sequential(
            tnn.Conv2d(cin, planes, 1, stride, bias=False), tnn.BatchNorm2d(planes)
        )

    def forward(self, x):
      out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
      return torch.relu(out + (self.downsample(x) if self.downsample is not None else x))

  class Bottle(tnn.Module):
    expansion = 4

    def __init__(self, cin, planes, stride):
      super().__init__()
      w = int(planes * width_per_group / 64) * groups
      self.conv1 = tnn.Conv2d(cin, w, 1, bias=False)
      self.bn1 = tnn.BatchNorm2d(w)
      self.conv2 = tnn.Conv2d(w, w, 3, stride, 1, groups=groups, bias=False)
      self.bn2 = tnn.BatchNorm2d(w)
      self.conv3 = tnn.Conv2d(w, planes * 4, 1, bias=False)
      self.bn3 = tnn.BatchNorm2d(planes * 4)
      self.downsample = None
      if stride != 1 or cin != planes * 4:
        self.downsample = tnn.Sequential(
            tnn.Conv2d(cin, planes * 4, 1, stride, bias=False), tnn.BatchNorm2d(planes * 4)
        )

    def forward(self, x):
      out = torch.relu(self.bn1(self.conv1(x)))
      out = torch.relu(self.bn2(self.conv2(out)))
      out = self.bn3(self.conv3(out))
      return torch.relu(out + (self.downsample(x) if self.downsample is not None else x))

  block = Basic if basic else Bottle

  class Net(tnn.Module):

    def __init__(self):
      super().__init__()
      self.conv1 = tnn.Conv2d(3, width, 7, 2, 3, bias=False)
      self.bn1 = tnn.BatchNorm2d(width)
      cin = width
      for i, n in enumerate(layers):
        blocks = []
        for j in range(n):
          blocks.append(block(cin, width * 2**i, 2 if (i > 0 and j == 0) else 1))
          cin = width * 2**i * block.expansion
        setattr(self, f"layer{i + 1}", tnn.Sequential(*blocks))
      self.fc = tnn.Linear(cin, 10)

    def forward(self, x):
      x = tnn.functional.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 3, 2, 1)
      outs = []
      for i in range(len(layers)):
        x = getattr(self, f"layer{i + 1}")(x)
        outs.append(x)
      return outs

  net = Net()
  gen = torch.Generator().manual_seed(0)
  with torch.no_grad():
    for m in net.modules():  # non-trivial BN statistics and affine
      if isinstance(m, tnn.BatchNorm2d):
        m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
        m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
        m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
        m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
  return net.eval()


def _nhwc(t):
  return t.detach().numpy().transpose(0, 2, 3, 1)


@pytest.mark.parametrize("arch,norm", [("resnet18", "frozen_bn"), ("resnext", "bn")])
def test_torch_resnet_matches_flax(arch, norm, rand_vars, tmp_path):
  torch = pytest.importorskip("torch")
  torch.manual_seed(0)
  if arch == "resnet18":
    net = _torch_resnet(torch, True, (2, 2, 2, 2), 8)
    flax_net = ResNet(depth=18, base_channels=8, norm=norm)
  else:  # grouped 3x3 convs
    net = _torch_resnet(torch, False, (1, 1, 1, 1), 16, groups=4, width_per_group=8)
    flax_net = ResNet(
        depth=50, groups=4, width_per_group=8, base_channels=16, stage_sizes=(1, 1, 1, 1), norm=norm
    )
  path = tmp_path / "resnet.pth"
  torch.save({"state_dict": net.state_dict(), "epoch": 3}, path)
  x = torch.randn(2, 3, 64, 64)
  variables = rand_vars(flax_net, jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32), seed=1)
  new, report = import_pretrained(variables, path, strict=True)
  assert "fc.weight" in report["skipped"]
  got = flax_net.apply(new, jnp.asarray(_nhwc(x)))
  with torch.no_grad():
    ref = net(x)
  for k, r in zip(("c2", "c3", "c4", "c5"), ref):
    np.testing.assert_allclose(np.asarray(got[k]), _nhwc(r), rtol=1e-4, atol=1e-4, err_msg=k)
  # Converted once to .npz, the same weights import without torch.
  assert convert_to_npz(path, tmp_path / "resnet.npz") == len(net.state_dict())
  _assert_trees_equal(import_pretrained(variables, tmp_path / "resnet.npz")[0], new)


def test_torch_mask_rcnn_parts_match_flax(rand_vars, tmp_path):
  torch = pytest.importorskip("torch")
  tnn, F = torch.nn, torch.nn.functional
  torch.manual_seed(1)
  c, fc, md, ncls = SPEC.fpn_channels, SPEC.fc_dim, SPEC.mask_dim, SPEC.num_classes
  body = _torch_resnet(torch, True, (2, 2, 2, 2), 8)
  del body.fc  # torchvision's detection backbone has no classifier

  def seq(*mods):
    return tnn.Sequential(*mods)

  class FPN(tnn.Module):

    def __init__(self):
      super().__init__()
      self.inner_blocks = tnn.ModuleList([seq(tnn.Conv2d(8 * 2**i, c, 1)) for i in range(4)])
      self.layer_blocks = tnn.ModuleList([seq(tnn.Conv2d(c, c, 3, padding=1)) for _ in range(4)])

    def forward(self, feats):
      last = self.inner_blocks[3](feats[3])
      outs = [self.layer_blocks[3](last)]
      for i in (2, 1, 0):
        lat = self.inner_blocks[i](feats[i])
        last = lat + F.interpolate(last, size=lat.shape[-2:], mode="nearest")
        outs.insert(0, self.layer_blocks[i](last))
      return outs + [F.max_pool2d(outs[-1], 1, 2, 0)]

  model = tnn.Module()
  model.backbone = tnn.Module()
  model.backbone.body, model.backbone.fpn = body, FPN()
  model.rpn = tnn.Module()
  model.rpn.head = tnn.Module()
  model.rpn.head.conv = seq(seq(tnn.Conv2d(c, c, 3, padding=1), tnn.ReLU()))
  model.rpn.head.cls_logits = tnn.Conv2d(c, 3, 1)
  model.rpn.head.bbox_pred = tnn.Conv2d(c, 12, 1)
  rh = model.roi_heads = tnn.Module()
  rh.box_head = tnn.Module()
  rh.box_head.fc6, rh.box_head.fc7 = tnn.Linear(c * 49, fc), tnn.Linear(fc, fc)
  rh.box_predictor = tnn.Module()
  rh.box_predictor.cls_score, rh.box_predictor.bbox_pred = tnn.Linear(fc, ncls), tnn.Linear(
      fc, 4 * ncls
  )
  rh.mask_head = seq(
      *[seq(tnn.Conv2d(c if i == 0 else md, md, 3, padding=1), tnn.ReLU()) for i in range(4)]
  )
  rh.mask_predictor = tnn.Module()
  rh.mask_predictor.conv5_mask = tnn.ConvTranspose2d(md, md, 2, 2, 0)
  rh.mask_predictor.mask_fcn_logits = tnn.Conv2d(md, ncls, 1)
  with torch.no_grad():
    for p in model.parameters():
      if p.ndim == 1:
        p.add_(torch.randn(p.shape) * 0.05)  # non-zero biases everywhere
  path = tmp_path / "maskrcnn.pth"
  torch.save({"model": model.state_dict()}, path)

  fresh = _vars(rand_vars, seed=2)
  new, report = import_pretrained(fresh, path, strict=True)
  assert all(k.endswith("num_batches_tracked") for k in report["skipped"])  # plain BatchNorm2d here
  assert report["loaded"] == len(jax.tree.leaves(fresh))
  flax_model = MaskRCNN(SPEC)

  x = torch.randn(1, 3, 64, 64)
  with torch.no_grad():
    pyramid = model.backbone.fpn(model.backbone.body(x))
    hidden = model.rpn.head.conv(pyramid[0])
    obj, dlt = model.rpn.head.cls_logits(hidden), model.rpn.head.bbox_pred(hidden)
    roi = torch.randn(3, c, 7, 7)
    h = F.relu(rh.box_head.fc7(F.relu(rh.box_head.fc6(roi.flatten(1)))))
    cls, box = rh.box_predictor.cls_score(h), rh.box_predictor.bbox_pred(h)
    mroi = torch.randn(3, c, 14, 14)
    mask = rh.mask_predictor.mask_fcn_logits(
        F.relu(rh.mask_predictor.conv5_mask(rh.mask_head(mroi)))
    )

  feats = flax_model.apply(new, jnp.asarray(_nhwc(x)), method=MaskRCNN.features)
  for i, k in enumerate(("p2", "p3", "p4", "p5", "p6")):
    np.testing.assert_allclose(
        np.asarray(feats[k]), _nhwc(pyramid[i]), rtol=1e-4, atol=1e-4, err_msg=k
    )
  rpn = flax_model.apply(new, {"p2": feats["p2"]}, method=lambda m, f: m.rpn(f))
  np.testing.assert_allclose(np.asarray(rpn.objectness["p2"]), _nhwc(obj), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(
      np.asarray(rpn.deltas["p2"]).reshape(_nhwc(dlt).shape), _nhwc(dlt), rtol=1e-4, atol=1e-4
  )
  head = flax_model.apply(new, jnp.asarray(_nhwc(roi)), method=lambda m, r: m.box_head(r))
  np.testing.assert_allclose(np.asarray(head.class_logits), cls.numpy(), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(
      np.asarray(head.box_deltas).reshape(3, -1), box.numpy(), rtol=1e-4, atol=1e-4
  )
  masks = flax_model.apply(new, jnp.asarray(_nhwc(mroi)), method=lambda m, r: m.mask_head(r))
  np.testing.assert_allclose(np.asarray(masks), _nhwc(mask)[..., 1:], rtol=1e-4, atol=1e-4)


def test_make_task_imports_pretrained_weights_inside_jitted_init(rand_vars, tmp_path):
  """config.model.pretrained: the training init (jitted, as create_train_state runs it)
  starts from the file's weights, not the random ones."""
  from pa_jax import experiment
  from pa_jax.data import pipeline

  original = _vars(rand_vars, seed=0)
  path = tmp_path / "pretrained.npz"
  np.savez(path, **to_torchvision(original))
  model = MaskRCNN(SPEC)
  batch = pipeline.stack_batch([experiment._empty_example(64, 4)])
  task = experiment.make_task(model, pretrained=str(path))
  variables = jax.jit(task.init)(jax.random.PRNGKey(5), batch)
  _assert_trees_equal(_np(variables["params"]), _np(original["params"]))
  _assert_trees_equal(_np(variables["frozen"]), _np(original["frozen"]))
