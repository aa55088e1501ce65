"""The torchvision -> flax name map and tensor layouts (`pa_jax.models.weight_names`).

Layouts are checked against direct numpy / lax implementations of torch's definitions;
tests/models/test_models_weights.py checks the import built on them, with torch where
present.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from pa_jax.models.roi_heads import BoxHead
from pa_jax.models.weight_names import FlaxTarget, convert_tensor, torchvision_to_flax_names

# ------------------------------------------------------------------------------- name map


def test_name_map_covers_torchvision_naming_old_and_new():
  keys = [
      "conv1.weight",
      "bn1.running_var",
      "bn1.num_batches_tracked",
      "fc.weight",
      "layer2.0.downsample.1.weight",
      "backbone.body.layer3.1.conv2.weight",
      "backbone.fpn.inner_blocks.0.0.weight",
      "backbone.fpn.inner_blocks.0.weight",
      "backbone.fpn.layer_blocks.3.0.bias",
      "rpn.head.conv.0.0.weight",
      "rpn.head.conv.weight",
      "rpn.head.cls_logits.bias",
      "rpn.head.bbox_pred.weight",
      "roi_heads.box_head.fc6.weight",
      "roi_heads.box_predictor.cls_score.weight",
      "roi_heads.mask_head.0.0.weight",
      "roi_heads.mask_head.mask_fcn1.weight",
      "roi_heads.mask_head.mask_fcn4.0.bias",
      "roi_heads.mask_predictor.conv5_mask.weight",
      "roi_heads.mask_predictor.mask_fcn_logits.bias",
      "roi_heads.box_head.0.0.weight",
      "something.else",
  ]
  m = torchvision_to_flax_names(keys)
  assert m["conv1.weight"] == FlaxTarget(("backbone", "conv1", "kernel"), "conv")
  assert m["bn1.running_var"] == FlaxTarget(("backbone", "bn1", "var"), "vector")
  assert m["bn1.num_batches_tracked"] is None and m["fc.weight"] is None
  assert m["layer2.0.downsample.1.weight"].path == ("backbone", "layer2_0", "downsample_1", "scale")
  assert m["backbone.body.layer3.1.conv2.weight"].path == (
      "backbone",
      "layer3_1",
      "conv2",
      "kernel",
  )
  assert m["backbone.fpn.inner_blocks.0.0.weight"] == m["backbone.fpn.inner_blocks.0.weight"]
  assert m["backbone.fpn.inner_blocks.0.weight"].path == ("fpn", "lateral2", "kernel")
  assert m["backbone.fpn.layer_blocks.3.0.bias"].path == ("fpn", "output5", "bias")
  assert (
      m["rpn.head.conv.0.0.weight"]
      == m["rpn.head.conv.weight"]
      == FlaxTarget(("rpn", "conv", "kernel"), "conv")
  )
  assert m["rpn.head.cls_logits.bias"].path == ("rpn", "objectness", "bias")
  assert m["rpn.head.bbox_pred.weight"].path == ("rpn", "deltas", "kernel")
  assert m["roi_heads.box_head.fc6.weight"].kind == "fc6"
  assert m["roi_heads.box_predictor.cls_score.weight"] == FlaxTarget(
      ("box_head", "cls_score", "kernel"), "linear"
  )
  assert m["roi_heads.mask_head.0.0.weight"] == m["roi_heads.mask_head.mask_fcn1.weight"]
  assert m["roi_heads.mask_head.mask_fcn4.0.bias"].path == ("mask_head", "mask_fcn4", "bias")
  assert m["roi_heads.mask_predictor.conv5_mask.weight"].kind == "conv_transpose"
  assert m["roi_heads.mask_predictor.mask_fcn_logits.bias"].path == (
      "mask_head",
      "mask_logits",
      "bias",
  )
  assert "something.else" not in m and "roi_heads.box_head.0.0.weight" not in m


# ------------------------------------------------------------- layouts vs reference maths


def test_layout_conversions_match_torch_semantics_numpy():
  """Each conversion against a direct numpy/lax implementation of torch's definition."""
  rng = np.random.default_rng(0)
  # Grouped conv: torch weight [O, I/G, kh, kw] on NCHW, via lax in torch's own layout.
  x = rng.normal(size=(1, 8, 9, 9)).astype(np.float32)
  w = rng.normal(size=(12, 2, 3, 3)).astype(np.float32)
  ref = jax.lax.conv_general_dilated(
      x,
      w,
      (2, 2),
      ((1, 1), (1, 1)),
      dimension_numbers=("NCHW", "OIHW", "NCHW"),
      feature_group_count=4,
  )
  conv = nn.Conv(12, (3, 3), (2, 2), ((1, 1), (1, 1)), feature_group_count=4, use_bias=False)
  out = conv.apply({"params": {"kernel": convert_tensor("conv", w)}}, x.transpose(0, 2, 3, 1))
  np.testing.assert_allclose(
      np.asarray(out), np.asarray(ref).transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-5
  )

  # fc6: torch flattens RoI features [R, C, H, W]; our box head flattens [R, H, W, C].
  c, s, fc = 16, 7, 32
  feats = rng.normal(size=(3, c, s, s)).astype(np.float32)
  w6 = rng.normal(size=(fc, c * s * s)).astype(np.float32) * 0.05
  ref6 = np.maximum(feats.reshape(3, -1) @ w6.T, 0)
  head = BoxHead(2, fc, num_fcs=1)
  shapes = jax.eval_shape(lambda: head.init(jax.random.PRNGKey(0), jnp.zeros((1, s, s, c))))
  hv = jax.tree.map(lambda t: np.zeros(t.shape, t.dtype), shapes)
  hv["params"]["fc6"]["kernel"] = convert_tensor("fc6", w6, fc6_channels=c)
  hv["params"]["cls_score"]["kernel"] = np.eye(fc, 2, dtype=np.float32)  # logits = first 2 units
  logits = head.apply(hv, feats.transpose(0, 2, 3, 1)).class_logits
  np.testing.assert_allclose(np.asarray(logits), ref6[:, :2], rtol=1e-4, atol=1e-4)

  # ConvTranspose 2x2/2: torch scatters out[o, 2y+i, 2x+j] += in[c, y, x] * W[c, o, i, j].
  xt = rng.normal(size=(1, 4, 5, 6)).astype(np.float32)
  wt = rng.normal(size=(4, 3, 2, 2)).astype(np.float32)
  reft = np.einsum("ncyx,coij->noyixj", xt, wt).reshape(1, 3, 10, 12)
  deconv = nn.ConvTranspose(3, (2, 2), strides=(2, 2), padding="VALID", use_bias=False)
  outt = deconv.apply(
      {"params": {"kernel": convert_tensor("conv_transpose", wt)}}, xt.transpose(0, 2, 3, 1)
  )
  np.testing.assert_allclose(np.asarray(outt), reft.transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-5)
  # ... and the flip matters: without it the result differs.
  unflipped = wt.transpose(2, 3, 0, 1)
  bad = deconv.apply({"params": {"kernel": unflipped}}, xt.transpose(0, 2, 3, 1))
  assert not np.allclose(np.asarray(bad), reft.transpose(0, 2, 3, 1), atol=1e-3)
