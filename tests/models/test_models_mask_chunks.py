"""Inference mask head in fixed-size chunks (`masks_in_chunks`, `ModelSpec.mask_batch`)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pa_jax.models.mask_rcnn import MaskRCNN, ModelSpec, masks_in_chunks


def _fake_head(calls):
  """A per-box mask function [B, M, 4] -> [B, M, 3, 3] that records every run (not trace)."""

  def fn(boxes):
    jax.debug.callback(lambda: calls.append(1))
    base = jnp.tanh(0.01 * boxes.sum(-1))[..., None, None]
    return base + jnp.arange(9, dtype=jnp.float32).reshape(3, 3)

  return fn


@pytest.mark.parametrize(
    "k,chunk,n_valid,runs",
    [
        (10, 3, (0, 7), 3),  # 7 valid in 3-slot chunks: 3 runs, slots 9.. never computed
        (10, 3, (2, 1), 1),  # few detections: one chunk
        (10, 3, (0, 0), 0),  # nothing valid: the head never runs
        (10, 64, (10, 4), 1),  # chunk larger than K: one run of K slots
        (2000, 256, (2000, 1500), 8),  # 2,000 nuclei: every mask, in ceil(2000 / 256) runs
    ],
)
def test_chunks_equal_all_slots_and_skip_the_rest(k, chunk, n_valid, runs):
  rng = np.random.default_rng(k + chunk)
  boxes = rng.uniform(0, 100, (2, k, 4)).astype(np.float32)
  valid = np.arange(k)[None, :] < np.array(n_valid)[:, None]
  calls = []
  fn = _fake_head(calls)
  got = np.asarray(jax.jit(lambda b, v: masks_in_chunks(fn, b, v, chunk))(boxes, valid))
  jax.effects_barrier()
  assert len(calls) == runs
  full = np.asarray(fn(jnp.asarray(boxes)))
  jax.effects_barrier()
  assert got.shape == (2, k, 3, 3)
  np.testing.assert_allclose(got[valid], full[valid], atol=1e-6)
  assert not got[~valid].any()  # invalid slots: 0, never a stale or padding mask


def test_valid_slots_need_not_be_a_prefix():
  boxes = np.random.default_rng(0).uniform(0, 50, (1, 9, 4)).astype(np.float32)
  valid = np.zeros((1, 9), bool)
  valid[0, [1, 8]] = True
  calls = []
  fn = _fake_head(calls)
  got = np.asarray(jax.jit(lambda b, v: masks_in_chunks(fn, b, v, 4))(boxes, valid))
  jax.effects_barrier()
  assert len(calls) == 3  # up to the last valid slot (8): chunks 0, 1, 2
  np.testing.assert_allclose(got[valid], np.asarray(fn(jnp.asarray(boxes)))[valid], atol=1e-6)


# A tiny random model with no suppression (NMS IoU 1: only boxes with IoU > 1 would be
# dropped) and score threshold 0, so nearly every proposal is a valid detection. (The
# 2,000-detection case runs `masks_in_chunks` above: the full model at that size takes
# minutes on a shared 2-core CPU, mostly NMS.)
SPEC = ModelSpec(
    backbone="resnet18",
    backbone_width=8,
    norm="group_norm",
    fpn_channels=16,
    anchor_sizes=(8, 16, 32, 64, 128),
    rpn_pre_nms_topk_test=60,
    rpn_post_nms_topk_test=120,
    rpn_nms_iou=1.0,
    fc_dim=16,
    mask_dim=8,
    max_detections=120,
    score_threshold=0.0,
    nms_iou=1.0,
)


def test_model_masks_match_one_call_on_all_slots():
  image = jax.random.uniform(jax.random.PRNGKey(0), (2, 64, 64, 3))
  hw = jnp.asarray([[64, 64], [40, 56]], jnp.int32)
  variables = jax.jit(
      lambda x, s: MaskRCNN(SPEC).init(jax.random.PRNGKey(1), x, s, method=MaskRCNN.predict)
  )(image, hw)

  def predict(chunk):
    model = MaskRCNN(dataclasses.replace(SPEC, mask_batch=chunk))
    return jax.jit(lambda v, x, s: model.apply(v, x, s, method=MaskRCNN.predict))(
        variables, image, hw
    )

  chunked, whole = predict(16), predict(10_000)  # 16-slot chunks vs one call on all slots
  valid = np.asarray(chunked.valid)
  assert (valid.sum(1) > 16).all()  # every image needs several chunks
  np.testing.assert_array_equal(valid, np.asarray(whole.valid))
  np.testing.assert_allclose(np.asarray(chunked.boxes), np.asarray(whole.boxes))
  np.testing.assert_allclose(
      np.asarray(chunked.masks)[valid], np.asarray(whole.masks)[valid], atol=1e-5
  )
  assert not np.asarray(chunked.masks)[~valid].any()


# ------------------------------------------------------------------ training: loss chunks
from pa_jax.models.mask_chunks import mask_loss_in_chunks  # noqa: E402


def _weighted_sum_loss(calls, w):
  """A chunk loss sum(pos * tanh(boxes @ w)) that records every run; 0 with no positive."""

  def fn(boxes, pos):
    jax.debug.callback(lambda: calls.append(1))
    return jnp.sum(jnp.where(pos[..., None], jnp.tanh(boxes * w), 0.0))

  return fn


@pytest.mark.parametrize(
    "s,chunk,n_pos,runs",
    [
        (128, 32, (21, 9), 1),  # the paper-size case: 21 positives, one chunk of 32 runs
        (128, 32, (128, 3), 4),  # a full image: every chunk
        (10, 3, (0, 7), 3),  # unequal chunks (3 x 4 slots, 2 padded), 7 positives: all 3
        (10, 4, (0, 0), 0),  # no positive anywhere: the head never runs, loss 0
        (64, 0, (5, 5), 1),  # chunk 0: one unconditional call on all slots
        (64, 100, (0, 0), 1),  # chunk >= S: the same
    ],
)
def test_loss_chunks_equal_one_call_and_skip_the_rest(s, chunk, n_pos, runs):
  rng = np.random.default_rng(s + chunk)
  boxes = jnp.asarray(rng.uniform(0, 3, (2, s, 4)).astype(np.float32))
  pos = jnp.asarray(np.arange(s)[None, :] < np.array(n_pos)[:, None])
  w = jnp.asarray([0.5, -1.0, 2.0, 0.25])
  calls = []

  def loss(w):
    return mask_loss_in_chunks(_weighted_sum_loss(calls, w), pos, (boxes, pos), chunk)

  value, grad = jax.jit(jax.value_and_grad(loss))(w)
  jax.effects_barrier()
  # Each run calls the loss in the forward pass once (the backward reuses its residuals).
  assert len(calls) == runs
  # The independent reference: numpy over the positive slots of all images at once.
  b, p = np.asarray(boxes), np.asarray(pos)
  ref = np.where(p[..., None], np.tanh(b * np.asarray(w)), 0.0).sum()
  ref_grad = np.where(p[..., None], b * (1 - np.tanh(b * np.asarray(w)) ** 2), 0.0).sum((0, 1))
  np.testing.assert_allclose(float(value), ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(grad), ref_grad, rtol=1e-5, atol=1e-5)


def test_loss_chunks_with_scattered_positives():
  # Not a prefix: a positive in the last slot still runs the last chunk; chunks without one
  # are skipped and contribute nothing.
  boxes = jnp.ones((1, 12, 4))
  pos = np.zeros((1, 12), bool)
  pos[0, [0, 11]] = True
  calls = []
  got = jax.jit(
      lambda: mask_loss_in_chunks(_weighted_sum_loss(calls, 1.0), jnp.asarray(pos),
                                  (boxes, jnp.asarray(pos)), 4)
  )()
  jax.effects_barrier()
  assert len(calls) == 2
  np.testing.assert_allclose(float(got), 2 * 4 * np.tanh(1.0), rtol=1e-6)


def test_model_mask_loss_and_gradients_match_one_call_on_all_slots():
  # The real training loss: 16 mask slots per image (32 RoIs x 0.5) in chunks of 4, the
  # trailing ones skipped, against one call on all 16; same loss, same gradient of every
  # parameter.
  from pa_jax.data import pipeline, synthetic

  exs = []
  for i in range(2):
    img, lab = synthetic.synthetic_image(i, 64, 64, n_nuclei=3, radius=(5, 9))
    exs.append(pipeline.TrainExample(str(i), pipeline.normalize_image(img), lab, lab))
  batch = jax.tree.map(jnp.asarray, pipeline.BatchSource(exs, 2, 64, 16).batch(0))
  spec = dataclasses.replace(
      SPEC, roi_batch_per_image=32, roi_positive_fraction=0.5, rpn_pre_nms_topk_train=60,
      rpn_post_nms_topk_train=60,
  )
  variables = MaskRCNN(spec).init(jax.random.PRNGKey(1), batch, jax.random.PRNGKey(3))

  def loss_and_grads(chunk):
    model = MaskRCNN(dataclasses.replace(spec, mask_train_chunk=chunk))

    def f(params):
      _, aux = model.apply({**variables, "params": params}, batch, jax.random.PRNGKey(3))
      return aux["loss_mask"], aux

    (lm, aux), g = jax.jit(jax.value_and_grad(f, has_aux=True))(variables["params"])
    return float(lm), aux, g

  chunked, aux, g_chunked = loss_and_grads(4)
  whole, _, g_whole = loss_and_grads(0)
  assert 0 < float(aux["roi_positives_per_image"]) < 16  # some chunks really are skipped
  assert chunked > 0
  np.testing.assert_allclose(chunked, whole, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(g_chunked), jax.tree.leaves(g_whole)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
  head = g_chunked["mask_head"]
  assert any(np.abs(np.asarray(x)).max() > 0 for x in jax.tree.leaves(head))
