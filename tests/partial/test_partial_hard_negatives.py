"""pa_jax.partial.hard_negatives: rejected regions as explicit negatives."""

import jax
import jax.numpy as jnp
import numpy as np

from pa_jax.partial.hard_negatives import negatives_in_centerness, suppress_near


def test_ignored_cells_inside_a_rejected_box_become_negative():
  # 4x4 cells at stride 4: centres at 2, 6, 10, 14 px.
  target = jnp.array([[-1, -1, -1, -1],
                      [-1, 1, 0, -1],
                      [-1, -1, -1, -1],
                      [-1, -1, -1, -1]], jnp.int32)
  # Box [4, 0, 12, 8): centres x in {6, 10}, y in {2, 6} -> cells (0..1, 1..2).
  neg = jnp.array([[4.0, 0.0, 12.0, 8.0], [0.0, 8.0, 16.0, 16.0]], jnp.float32)
  out = np.asarray(jax.jit(negatives_in_centerness, static_argnums=3)(
      target, neg, jnp.array([True, False]), 4))
  want = np.array(target)
  want[0, 1:3] = 0   # ignored -> negative
  # (1, 1) stays positive, (1, 2) was already 0; the invalid second box changes nothing.
  np.testing.assert_array_equal(out, want)
  assert out.dtype == np.int32


def test_half_open_box_edges():
  target = -jnp.ones((1, 3), jnp.int32)  # centres x = 2, 6, 10
  neg = jnp.array([[2.0, 0.0, 10.0, 4.0]], jnp.float32)  # x0 = 2 inside, x1 = 10 outside
  out = np.asarray(negatives_in_centerness(target, neg, jnp.array([True]), 4))
  np.testing.assert_array_equal(out, [[0, 0, -1]])


def test_suppress_near_turns_off_boxes_overlapping_a_rejected_region():
  boxes = jnp.array([[0, 0, 10, 10], [0, 0, 10, 5], [20, 20, 30, 30], [0, 0, 10, 10]],
                    jnp.float32)
  valid = jnp.array([True, True, True, False])
  neg = jnp.array([[0, 0, 10, 10], [20, 20, 30, 30]], jnp.float32)
  # IoU with the first rejected box: 1, 0.5, 0, -; the second rejected box is padding.
  out = np.asarray(suppress_near(boxes, valid, neg, jnp.array([True, False]), 0.5))
  np.testing.assert_array_equal(out, [False, False, True, False])
  out = np.asarray(suppress_near(boxes, valid, neg, jnp.array([True, False]), 0.6))
  np.testing.assert_array_equal(out, [False, True, True, False])
  none = np.asarray(suppress_near(boxes, valid, neg, jnp.zeros(2, bool), 0.5))
  np.testing.assert_array_equal(none, np.asarray(valid))
