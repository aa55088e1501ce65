"""Tests of pa_jax.ops.anchors."""

import math

import numpy as np
import pytest

from pa_jax.ops import anchors as A


def ref_level(h, w, stride, size, ratios, offset):
  out = []
  for y in range(h):
    for x in range(w):
      for r in ratios:
        aw = math.sqrt(size * size / r)
        ah = r * aw
        cx, cy = (x + offset) * stride, (y + offset) * stride
        out.append([cx - aw / 2, cy - ah / 2, cx + aw / 2, cy + ah / 2])
  return np.array(out)


@pytest.mark.parametrize("offset", [0.0, 0.5])
def test_against_reference(offset):
  shapes = A.feature_shapes(50, 33, strides=(4, 8, 16, 32, 64))
  assert shapes == [(13, 9), (7, 5), (4, 3), (2, 2), (1, 1)]
  levels = A.generate_anchors(shapes, offset=offset)
  assert len(levels) == 5
  for (h, w), stride, size, got in zip(shapes, (4, 8, 16, 32, 64), (8, 16, 32, 64, 128), levels):
    assert got.dtype == np.float32 and got.shape == (h * w * 3, 4)
    np.testing.assert_allclose(got, ref_level(h, w, stride, size, (0.5, 1, 2), offset),
                               rtol=1e-6, atol=1e-4)


def test_hand_computed_and_layout():
  (lvl,) = A.generate_anchors([(2, 3)], strides=(4,), sizes=(8,))
  # cell (y=1, x=2), ratio 1 (a=1) is centred on (8, 4) with side 8.
  np.testing.assert_allclose(lvl.reshape(2, 3, 3, 4)[1, 2, 1], [4, 0, 12, 8])
  # Every anchor of size s has area s**2.
  area = (lvl[:, 2] - lvl[:, 0]) * (lvl[:, 3] - lvl[:, 1])
  np.testing.assert_allclose(area, 64, rtol=1e-5)
  # Several sizes per level: (size, ratio) order, ratio fastest.
  cell = A.cell_anchors((8, 16), ratios=(1.0, 2.0))
  assert cell.shape == (4, 4) and A.num_anchors_per_location((8, 16), (1.0, 2.0)) == 4
  np.testing.assert_allclose(cell[2], [-8, -8, 8, 8])


def test_concat_levels():
  levels = A.generate_anchors([(2, 2), (1, 1)], strides=(4, 8), sizes=(8, 16))
  allb, ids = A.concat_levels(levels)
  assert allb.shape == (15, 4) and ids.dtype == np.int32
  np.testing.assert_array_equal(ids, [0] * 12 + [1] * 3)
  np.testing.assert_array_equal(allb[12:], levels[1])


def test_bad_lengths():
  with pytest.raises(ValueError):
    A.generate_anchors([(2, 2)], strides=(4, 8), sizes=(8,))
