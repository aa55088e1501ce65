"""`per_device.per_image_on_prefix`: the slot axis cut to the valid prefix, exactly."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pa_jax.ops import boxes as box_ops
from pa_jax.ops.matching import match
from pa_jax.ops.per_device import per_image, per_image_on_prefix, prefix_sizes


def test_prefix_sizes():
  assert prefix_sizes(256) == (32, 64, 128, 256)
  assert prefix_sizes(300) == (32, 64, 128, 256, 300)
  assert prefix_sizes(32) == (32,)
  assert prefix_sizes(20) == (20,)
  assert prefix_sizes(64, smallest=64) == (64,)


def _anchor_match(gt, valid, anchors, seen):
  """Anchor matching of one image, recording the slot count it was traced for on each run."""
  jax.debug.callback(lambda m: seen.append(int(m)), gt.shape[0])
  matched, assignment = match(box_ops.pairwise_iou(gt, anchors), valid, 0.7, 0.3, True)
  # Ground truth per anchor: the box itself, so the output has no slot axis.
  return gt[matched] * (assignment[:, None] == 1), assignment


@pytest.mark.parametrize(
    "valid_counts,expect_slots",
    [
        ((20, 7), 32),  # typical: 20 nuclei in 256 slots -> matched against 32
        ((40, 0), 64),
        ((0, 0), 32),  # nothing valid: the shortest cut, every anchor negative
        ((256, 3), 256),  # a full image: all slots
        ((129, 1), 256),
    ],
)
def test_equal_to_all_slots_and_cut_to_the_valid_prefix(valid_counts, expect_slots):
  rng = np.random.default_rng(sum(valid_counts))
  m, a = 256, 500
  xy = rng.uniform(0, 100, (2, m, 2))
  gt = jnp.asarray(np.concatenate([xy, xy + rng.uniform(4, 20, (2, m, 2))], -1), jnp.float32)
  valid = jnp.asarray(np.arange(m)[None] < np.array(valid_counts)[:, None])
  xy = rng.uniform(0, 100, (a, 2))
  anchors = jnp.asarray(np.concatenate([xy, xy + rng.uniform(4, 20, (a, 2))], -1), jnp.float32)
  seen = []
  fn = lambda g, v, k: _anchor_match(g, v, anchors, seen)  # noqa: E731
  cut = jax.jit(lambda g, v, k: per_image_on_prefix(fn, v, (g, v), (k,)))(gt, valid, valid[:, 0])
  jax.effects_barrier()
  assert seen and set(seen) == {expect_slots}  # only the chosen branch ran
  seen.clear()
  whole = jax.jit(lambda g, v, k: per_image(fn, g, v, k))(gt, valid, valid[:, 0])
  jax.effects_barrier()
  for x, y in zip(jax.tree.leaves(cut), jax.tree.leaves(whole)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_scattered_valid_slots_use_the_last_one():
  valid = np.zeros((1, 128), bool)
  valid[0, [0, 70]] = True
  gt = jnp.tile(jnp.asarray([[0.0, 0.0, 8.0, 8.0]]), (1, 128, 1))
  seen = []

  def fn(g, v):
    jax.debug.callback(lambda m: seen.append(int(m)), g.shape[0])
    return jnp.sum(jnp.where(v[:, None], g, 0.0))

  got = jax.jit(lambda g, v: per_image_on_prefix(fn, v, (g, v), ()))(gt, jnp.asarray(valid))
  jax.effects_barrier()
  assert seen == [128]  # slot 70 is valid: the 64-slot cut would drop it
  assert float(got[0]) == 2 * 16.0
