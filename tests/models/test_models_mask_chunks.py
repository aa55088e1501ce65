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
