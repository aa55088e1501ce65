"""The PA pieces composed the way the model uses them, under one jit over a batch."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pa_jax.ops.boxes import pairwise_iou
from pa_jax.ops.matching import match
from pa_jax.partial.ignore import ignore_near_pa_boxes
from pa_jax.partial.pa_boxes import pa_boxes
from pa_jax.partial.targets import centerness_losses, centerness_targets, sample_pixels


@pytest.mark.parametrize("backend", ["device", "host"])
def test_batch_step_compiles_and_runs(backend):
  b, H, W, m = 2, 64, 64, 8
  rng = np.random.default_rng(0)
  labels = np.zeros((b, H, W), np.int32)
  boxes = np.zeros((b, m, 4), np.float32)
  valid = np.zeros((b, m), bool)
  for i in range(b):
    for k in range(3 + i):
      y, x = rng.integers(0, 52, 2)
      labels[i, y:y + 10, x:x + 12] = k + 1
      boxes[i, k] = [x, y, x + 12, y + 10]
      valid[i, k] = True
  anchor_wh = jnp.array([12.0, 10.0])
  anchors = jnp.asarray(np.stack(np.meshgrid(np.arange(0, 64, 8.0), np.arange(0, 64, 8.0)), -1)
                        .reshape(-1, 2))
  anchors = jnp.concatenate([anchors, anchors + 12.0], -1)

  @functools.partial(jax.jit, static_argnames=())
  def step(key, logits, deltas, labels, boxes, valid):
    target, box_t = jax.vmap(lambda l, bx, v: centerness_targets(l, bx, v, (16, 16)))(
        labels, boxes, valid)
    sampled = sample_pixels(key, target)
    l_c, l_b, stats = centerness_losses(logits, deltas, target, box_t, sampled, anchor_wh, 4)
    pa, _, pa_ok = jax.vmap(lambda lg, d: pa_boxes(lg, d, anchor_wh, 4, jnp.array([H, W]),
                                                   max_boxes=32, backend=backend))(logits, deltas)
    _, assign = jax.vmap(lambda bx, v: match(pairwise_iou(bx, anchors), v, 0.7, 0.3, True))(
        boxes, valid)
    assign = jax.vmap(lambda a, p, ok: ignore_near_pa_boxes(a, anchors, p, ok, 0.3))(
        assign, pa, pa_ok)
    return l_c + l_b, stats, pa_ok, assign

  logits = jnp.asarray(rng.normal(0, 4, (b, 16, 16)), jnp.float32)
  deltas = jnp.asarray(rng.normal(0, 0.2, (b, 16, 16, 4)), jnp.float32)
  loss, stats, pa_ok, assign = step(jax.random.key(0), logits, deltas, labels, boxes, valid)
  assert np.isfinite(float(loss)) and float(stats["num_sampled"]) > 0
  assert pa_ok.shape == (b, 32) and assign.shape == (b, anchors.shape[0])
  grads = jax.grad(lambda lg, d: step(jax.random.key(0), lg, d, labels, boxes, valid)[0],
                   argnums=(0, 1))(logits, deltas)
  assert all(np.all(np.isfinite(g)) for g in grads)
