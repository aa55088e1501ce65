"""RPN, centerness, box and mask heads: output structures and shapes."""

import jax
import jax.numpy as jnp
import numpy as np

from pa_jax.models.partial import CenternessHead, CenternessOutput
from pa_jax.models.roi_heads import BoxHead, BoxHeadOutput, MaskHead
from pa_jax.models.rpn import RPNHead, RPNOutput


def _pyramid(c=16, b=2):
  sizes = {"p2": (16, 24), "p3": (8, 12), "p4": (4, 6), "p5": (2, 3), "p6": (1, 2)}
  keys = jax.random.split(jax.random.PRNGKey(0), len(sizes))
  return {k: jax.random.normal(kk, (b, *hw, c)) for (k, hw), kk in zip(sizes.items(), keys)}


def test_rpn_head_shapes_and_shared_weights(rand_vars):
  feats = _pyramid()
  head = RPNHead(num_anchors=3)
  variables = rand_vars(head, feats)
  assert set(variables["params"]) == {"conv", "objectness", "deltas"}  # one set for all levels
  assert variables["params"]["conv"]["kernel"].shape == (3, 3, 16, 16)
  out = jax.jit(head.apply)(variables, feats)
  assert isinstance(out, RPNOutput)
  for k, f in feats.items():
    b, h, w, c = f.shape
    assert out.objectness[k].shape == (b, h, w, 3) and out.objectness[k].dtype == jnp.float32
    assert out.deltas[k].shape == (b, h, w, 3, 4)
    assert out.hidden[k].shape == (b, h, w, c)
    assert bool((out.hidden[k] >= 0).all())  # after ReLU
  # Same weights on every level: feeding P3's input as "p2" gives P3's outputs.
  swapped = jax.jit(head.apply)(variables, {"p2": feats["p3"]})
  np.testing.assert_allclose(
      np.asarray(swapped.objectness["p2"]), np.asarray(out.objectness["p3"]), rtol=1e-6
  )


def test_centerness_head_on_rpn_hidden_p2(rand_vars):
  feats = _pyramid()
  rpn = RPNHead()
  hidden = jax.jit(rpn.apply)(rand_vars(rpn, feats), feats).hidden["p2"]
  head = CenternessHead()
  variables = jax.jit(head.init)(jax.random.PRNGKey(2), hidden)
  out = jax.jit(head.apply)(variables, hidden)
  assert isinstance(out, CenternessOutput)
  assert out.logits.shape == (2, 16, 24) and out.deltas.shape == (2, 16, 24, 4)
  p = variables["params"]
  assert p["centerness"]["kernel"].shape == (1, 1, 16, 1) and p["box"]["kernel"].shape == (
      1,
      1,
      16,
      4,
  )


def test_box_head_shapes(rand_vars):
  rois = jax.random.normal(jax.random.PRNGKey(3), (5, 7, 7, 8))
  head = BoxHead(num_classes=2, fc_dim=32)
  variables = rand_vars(head, rois)
  out = jax.jit(head.apply)(variables, rois)
  assert isinstance(out, BoxHeadOutput)
  assert out.class_logits.shape == (5, 2) and out.box_deltas.shape == (5, 2, 4)
  assert variables["params"]["fc6"]["kernel"].shape == (7 * 7 * 8, 32)
  agnostic = BoxHead(num_classes=3, fc_dim=32, class_agnostic=True)
  out = jax.jit(agnostic.apply)(rand_vars(agnostic, rois), rois)
  assert out.class_logits.shape == (5, 3) and out.box_deltas.shape == (5, 1, 4)


def test_mask_head_shapes(rand_vars):
  rois = jax.random.normal(jax.random.PRNGKey(5), (3, 14, 14, 8))
  head = MaskHead(num_classes=2, conv_dim=16)
  variables = rand_vars(head, rois)
  out = jax.jit(head.apply)(variables, rois)
  assert out.shape == (3, 28, 28, 1) and out.dtype == jnp.float32
  assert set(variables["params"]) == {
      "mask_fcn1",
      "mask_fcn2",
      "mask_fcn3",
      "mask_fcn4",
      "conv5_mask",
      "mask_logits",
  }
  three = MaskHead(num_classes=3, conv_dim=16)
  assert jax.jit(three.apply)(rand_vars(three, rois), rois).shape == (3, 28, 28, 2)


def test_full_size_head_parameter_counts():
  from pa_jax.models.params import count_parameters

  def count(module, shape):
    return count_parameters(
        jax.eval_shape(
            lambda x: jax.jit(module.init)(jax.random.PRNGKey(0), x),
            jax.ShapeDtypeStruct(shape, jnp.float32),
        )["params"]
    )

  # torchvision/maskrcnn-benchmark sizes with 256-channel FPN features and 2 classes.
  assert count(BoxHead(2), (1, 7, 7, 256)) == (12544 * 1024 + 1024) + (1024 * 1024 + 1024) + (
      1024 * 2 + 2
  ) + (1024 * 8 + 8)
  assert count(MaskHead(2), (1, 14, 14, 256)) == 4 * (9 * 256 * 256 + 256) + (
      4 * 256 * 256 + 256
  ) + (256 + 1)
  assert count(CenternessHead(), (1, 8, 8, 256)) == 257 + 1028
