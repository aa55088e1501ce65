"""`model.mask_padding`: the network's output on an image does not depend on its canvas.

References are independent: numpy group statistics over the image's cells, the same
network run on the smallest canvas, and the unmasked network (which must differ, so the
tests can fail).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pa_jax.models.fpn import FPN
from pa_jax.models.mask_rcnn import MaskRCNN, ModelSpec
from pa_jax.models.norm import GroupNorm, make_norm, normalize
from pa_jax.models.padding import padding_mask, zero_padding
from pa_jax.models.proposals import generate_proposals
from pa_jax.models.resnet import ResNet


def test_padding_mask_by_hand():
  """Stride 4, image 9 x 5: rows 0-2 (0, 4, 8 < 9) and columns 0-1 (0, 4 < 5) are real."""
  m = np.asarray(padding_mask(jnp.array([[9, 5], [0, 0]]), (4, 3), 4))
  want = np.zeros((4, 3), bool)
  want[:3, :2] = True
  np.testing.assert_array_equal(m[0], want)
  assert not m[1].any()  # an empty slot: nothing is real


def test_zero_padding_keeps_dtype_and_none_is_identity():
  x = jnp.ones((1, 2, 2, 3), jnp.bfloat16)
  valid = jnp.array([[[True, False], [False, True]]])
  y = zero_padding(x, valid)
  assert y.dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(y[..., 0], np.float32), [[[1, 0], [0, 1]]])
  assert zero_padding(x, None) is x


def test_masked_group_norm_matches_numpy_on_the_image_cells():
  """Statistics over the valid cells only (numpy float64), per sample and group; a sample
  with no valid cell stays finite. (Zeroing outside: `normalize`, tested below.)"""
  rng = np.random.default_rng(0)
  x = rng.normal(3.0, 2.0, (3, 6, 5, 8)).astype(np.float32)
  x[0, 4:] = 1e3  # padding with values far from the image's: must not move the statistics
  valid = np.zeros((3, 6, 5), bool)
  valid[0, :4, :3] = True
  valid[1] = True
  v = {"params": {"scale": jnp.asarray(rng.uniform(0.5, 1.5, 8), jnp.float32),
                  "bias": jnp.asarray(rng.normal(0, 1, 8), jnp.float32)}}
  out = jax.jit(lambda v, x, m: GroupNorm(num_groups=4).apply(v, x, m))(v, x, valid)
  scale = np.asarray(v["params"]["scale"], np.float64)
  bias = np.asarray(v["params"]["bias"], np.float64)
  for b in (0, 1):
    cells = x[b][valid[b]].astype(np.float64)  # [n, 8]
    g = cells.reshape(-1, 4, 2)
    mean = g.mean(axis=(0, 2))
    var = g.var(axis=(0, 2))
    inv = 1 / np.sqrt(var + 1e-5)
    want = ((x[b].astype(np.float64).reshape(6, 5, 4, 2) - mean[:, None]) * inv[:, None]
            ).reshape(6, 5, 8) * scale + bias
    np.testing.assert_allclose(np.asarray(out[b])[valid[b]], want[valid[b]], rtol=2e-4,
                               atol=2e-4)
  assert np.isfinite(np.asarray(out[2])).all()
  # Unmasked (valid=None) is flax's group norm over every cell: different for sample 0.
  plain = GroupNorm(num_groups=4).apply(v, x)
  assert not np.allclose(np.asarray(plain[0])[valid[0]], np.asarray(out[0])[valid[0]], atol=1e-2)
  np.testing.assert_allclose(np.asarray(plain[1]), np.asarray(out[1]), rtol=1e-5, atol=1e-5)


def _canvas(image: np.ndarray, side: int) -> jnp.ndarray:
  c = np.zeros((1, side, side, image.shape[-1]), np.float32)
  c[0, : image.shape[0], : image.shape[1]] = image
  return jnp.asarray(c)


@pytest.mark.parametrize("norm,hw", [("group_norm", (45, 38)), ("frozen_bn", (45, 38)),
                                     ("group_norm", (64, 64)), ("group_norm", (63, 50))])
def test_backbone_and_fpn_do_not_see_the_canvas(norm, hw, rand_vars):
  """ResNet-18 + FPN: every real cell of C2..C5 and P2..P6 is the same on a 64² and a 128²
  canvas with `image_size`, and 0 outside; without it, not. Images that fill (64²) or nearly
  fill (63 rows) the small canvas reach its edge, where the stem's max pool and a
  BasicBlock's 3x3 conv read the cells beyond the image."""
  image = np.random.default_rng(1).random(hw + (3,)).astype(np.float32)
  size = jnp.array([hw], jnp.int32)
  net, fpn = ResNet(depth=18, base_channels=8, norm=norm), FPN(16)
  x64, x128 = _canvas(image, 64), _canvas(image, 128)
  v_net = rand_vars(net, x64)
  feats = net.apply(v_net, x64)
  v_fpn = rand_vars(fpn, feats, seed=2)

  @jax.jit
  def pyramid(x, s):
    c = net.apply(v_net, x, image_size=s)
    return {**c, **fpn.apply(v_fpn, c, s)}

  small, big = pyramid(x64, size), pyramid(x128, size)
  for name, a in small.items():
    stride = 64 // a.shape[1]
    m = np.asarray(padding_mask(size, a.shape[1:3], stride))[0]
    b = np.asarray(big[name])[0, : a.shape[1], : a.shape[2]]
    np.testing.assert_allclose(np.asarray(a)[0][m], b[m], rtol=1e-4, atol=1e-4, err_msg=name)
    big_m = np.asarray(padding_mask(size, big[name].shape[1:3], stride))[0]
    assert np.all(np.asarray(big[name])[0][~big_m] == 0), name
  # The same layers without image_size read the padding: the real cells change.
  c64, c128 = net.apply(v_net, x64), net.apply(v_net, x128)
  m = np.asarray(padding_mask(size, c64["c5"].shape[1:3], 32))[0]
  assert not np.allclose(np.asarray(c64["c5"])[0][m],
                         np.asarray(c128["c5"])[0, :2, :2][m], atol=1e-3)


def test_image_filling_the_canvas_is_unchanged_by_masking(rand_vars):
  """Nothing to mask: the masked backbone equals the plain one (float rounding only), so a
  model trained on full crops predicts full tiles as before."""
  x = jnp.asarray(np.random.default_rng(3).random((2, 64, 64, 3)), jnp.float32)
  net = ResNet(depth=18, base_channels=8, norm="group_norm")
  v = rand_vars(net, x)
  a = net.apply(v, x)
  b = net.apply(v, x, image_size=jnp.full((2, 2), 64, jnp.int32))
  for k in a:
    np.testing.assert_allclose(np.asarray(a[k]), np.asarray(b[k]), rtol=1e-4, atol=1e-4)


def test_normalize_without_valid_is_the_layer_alone(rand_vars):
  import flax.linen as nn

  class Wrap(nn.Module):
    @nn.compact
    def __call__(self, x, valid=None):
      return normalize(make_norm("group_norm", train=False), "gn", x, valid)

  x = jnp.asarray(np.random.default_rng(4).normal(size=(1, 4, 4, 32)), jnp.float32)
  v = Wrap().init(jax.random.PRNGKey(0), x)
  gn = GroupNorm(num_groups=32).apply({"params": v["params"]["gn"]}, x)
  np.testing.assert_array_equal(np.asarray(Wrap().apply(v, x)), np.asarray(gn))
  valid = jnp.zeros((1, 4, 4), bool).at[0, :2, :3].set(True)
  y = np.asarray(Wrap().apply(v, x, valid))
  assert np.all(y[0, 2:] == 0) and np.all(y[0, :, 3:] == 0) and np.any(y[0, :2, :3] != 0)


def test_anchors_centred_in_the_padding_propose_nothing():
  """`anchors_in_image`: the best-scoring anchor, centred beyond the image, is not proposed."""
  anchors = np.array([[0, 0, 8, 8], [20, 20, 36, 36], [4, 4, 12, 12]], np.float32)  # centres 4, 28, 8
  obj = jnp.array([1.0, 9.0, 2.0])
  dlt = jnp.zeros((3, 4))
  hw = jnp.array([24, 24], jnp.int32)
  for inside_only, want in ((False, 3), (True, 2)):
    _, scores, valid = generate_proposals([obj], [dlt], [anchors], hw, 3, 3, 0.99,
                                          anchors_in_image=inside_only)
    assert int(valid.sum()) == want
  assert float(scores[0]) == 2.0  # the in-image anchors keep their order


TINY = ModelSpec(backbone="resnet18", backbone_width=8, norm="group_norm", fpn_channels=16,
                 fc_dim=32, mask_dim=8, key_channels=8, value_channels=8, partial=True,
                 attention_levels=("p2",), rpn_pre_nms_topk_test=200,
                 rpn_post_nms_topk_test=100, max_detections=50, score_threshold=0.0,
                 anchor_wh=(12.0, 12.0), mask_padding=True)


@pytest.mark.parametrize("mask,hw", [(True, (70, 60)), (False, (70, 60))])
def test_whole_model_predicts_the_same_on_a_bigger_canvas(mask, hw, rand_vars):
  """MaskRCNN.predict (with the PA module) of a 70 x 60 image on a 96² and a 128² canvas:
  with `mask_padding` the same detections (boxes, scores, masks, PA boxes); without it the
  scores move (the test fails if the masking is lost)."""
  spec = dataclasses.replace(TINY, mask_padding=mask)
  model = MaskRCNN(spec)
  image = np.random.default_rng(5).random(hw + (3,)).astype(np.float32)
  size = jnp.array([hw], jnp.int32)
  v = rand_vars(model, _canvas(image, 96), size, method=MaskRCNN.predict, seed=6)
  run = jax.jit(lambda x: model.apply(v, x, size, method=MaskRCNN.predict))
  a, b = run(_canvas(image, 96)), run(_canvas(image, 128))
  n = int(a.valid.sum())
  assert n > 10
  same = (int(b.valid.sum()) == n
          and np.allclose(np.asarray(a.scores), np.asarray(b.scores), atol=1e-4))
  if not mask:
    assert not same
    return
  assert same
  # Tolerances at float rounding for these random weights, which amplify it: a 1e-6
  # relative change of the input moves their scores by 3e-5, boxes by 0.06 px and masks by
  # 0.03. Without the masking the two canvases differ by 0.3 in score, ~70 px and ~1.0
  # (other detections).
  np.testing.assert_allclose(np.asarray(a.boxes[0, :n]), np.asarray(b.boxes[0, :n]), atol=0.1)
  np.testing.assert_allclose(np.asarray(a.masks[0, :n]), np.asarray(b.masks[0, :n]), atol=0.03)
  np.testing.assert_array_equal(np.asarray(a.pa_valid), np.asarray(b.pa_valid))


def test_image_filling_the_small_canvas_pools_the_same_at_its_edge(rand_vars):
  """A 96 x 95 image fills its smallest canvas (96²): on 96² and 128² canvases the pyramid
  (attention included) and the RoI features of boxes on the image's bottom and right edges
  are the same, so the box and mask heads see the same input. (Whole detections of such an
  image also agree, but random weights turn rounding into up to 0.04 in a mask pixel, too
  loose a test.)"""
  model = MaskRCNN(TINY)
  hw = (96, 95)
  image = np.random.default_rng(5).random(hw + (3,)).astype(np.float32)
  size = jnp.array([hw], jnp.int32)
  v = rand_vars(model, _canvas(image, 96), size, method=MaskRCNN.predict, seed=6)
  boxes = jnp.array([[[60.0, 70.0, 95.0, 96.0], [0.0, 80.0, 40.0, 96.0], [80, 0, 95, 30],
                      [10.0, 10.0, 30.0, 30.0]]])

  def pooled(m, x):
    feats = m.features(x, size)
    extent = m._roi_extent(size)
    return feats, m._roi_features(feats, boxes, 7, extent), m._roi_features(feats, boxes, 14, extent)

  run = jax.jit(lambda x: model.apply(v, x, method=pooled))
  (fa, a7, a14), (fb, b7, b14) = run(_canvas(image, 96)), run(_canvas(image, 128))
  for k in fa:
    h, w = fa[k].shape[1:3]
    scale = float(jnp.abs(fa[k]).max())
    np.testing.assert_allclose(np.asarray(fa[k]), np.asarray(fb[k][:, :h, :w]),
                               atol=2e-4 * scale, err_msg=k)
  for a, b in ((a7, b7), (a14, b14)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-4 * float(jnp.abs(a).max()))
  # Without the extent, RoIAlign's maps end at the 128² canvas: the edge boxes change.
  no_extent = jax.jit(lambda x: model.apply(
      v, x, method=lambda m, x: m._roi_features(m.features(x, size), boxes, 7)))(
          _canvas(image, 128))
  assert not np.allclose(np.asarray(a7[:2]), np.asarray(no_extent[:2]), atol=1e-2)


def test_roi_align_ends_where_the_smallest_canvas_ends():
  """A 24-cell map (96 px at stride 4) and the same map zero-padded to 32 cells: RoIs that
  reach the edge pool the same with `extent_hw` = 96 px, not without (clamped to the last
  cell on the small map, interpolated toward the padding on the big one)."""
  from pa_jax.ops import roi_align as RA

  rng = np.random.default_rng(7)
  small = [jnp.asarray(rng.normal(size=(96 // 2**k, 96 // 2**k, 4)), jnp.float32)
           for k in (2, 3, 4, 5)]
  big = [jnp.pad(f, ((0, f.shape[0] // 3), (0, f.shape[1] // 3), (0, 0))) for f in small]
  boxes = jnp.array([[60.0, 70.0, 96.0, 96.0], [0.0, 80.0, 40.0, 95.5], [10, 10, 30, 30]])
  extent = jnp.array([96, 96], jnp.int32)
  a = RA.multilevel_roi_align(small, boxes, 7, (2, 3, 4, 5))
  b = RA.multilevel_roi_align(big, boxes, 7, (2, 3, 4, 5), extent_hw=extent)
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)
  c = RA.multilevel_roi_align(big, boxes, 7, (2, 3, 4, 5))
  assert not np.allclose(np.asarray(a[:2]), np.asarray(c[:2]), atol=1e-3)
  np.testing.assert_allclose(np.asarray(a[2]), np.asarray(c[2]), rtol=1e-6)  # away from the edge
  # The gradient reaches only the cells inside the extent, and both backward forms (the
  # CPU's scatter-adds, the accelerators' dense contractions) agree with the small map's.
  cot = jnp.asarray(rng.normal(size=a.shape), jnp.float32)
  loss = lambda maps, ext: jnp.sum(RA.multilevel_roi_align(  # noqa: E731
      maps, boxes, 7, (2, 3, 4, 5), extent_hw=ext) * cot)
  want = jax.grad(loss)(small, None)
  saved = RA.BACKWARD
  try:
    for form in ("scatter", "dense"):
      RA.BACKWARD = form
      g = jax.grad(loss)(big, extent)
      for gl, wl in zip(g, want):
        h, w = wl.shape[:2]
        assert np.all(np.asarray(gl)[h:] == 0) and np.all(np.asarray(gl)[:, w:] == 0), form
        np.testing.assert_allclose(np.asarray(gl)[:h, :w], np.asarray(wl), rtol=1e-5,
                                   atol=1e-6, err_msg=form)
  finally:
    RA.BACKWARD = saved
