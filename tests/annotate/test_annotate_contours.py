"""Contours: exact pixel outlines, closed cubic splines, adaptive control points."""

from __future__ import annotations

import numpy as np
import pytest

from pa_jax.annotate import contours as C
from pa_jax.data import coco
from pa_jax.data.synthetic import synthetic_image


def _iou(a, b):
  return np.count_nonzero(a & b) / np.count_nonzero(a | b)


def _ellipse(h, w, cy, cx, a, b, theta):
  yy, xx = np.mgrid[:h, :w] + 0.5
  c, s = np.cos(theta), np.sin(theta)
  u = ((xx - cx) * c + (yy - cy) * s) / a
  v = (-(xx - cx) * s + (yy - cy) * c) / b
  return u * u + v * v <= 1.0


def test_rasteriser_matches_coco_convention():
  square = np.array([[2, 2], [6, 2], [6, 6], [2, 6]], float)
  m = C.polygon_to_mask(square, 10, 10)
  assert np.array_equal(m, coco.polygons_to_mask([square.ravel().tolist()], 10, 10))
  assert m.sum() == 16 and m[2:6, 2:6].all()
  # clipping: a polygon partly outside the image keeps its inside part
  assert C.polygon_to_mask(square - 4, 10, 10).sum() == 4


def test_mask_contour_is_exact_and_oriented():
  _, labels = synthetic_image(3, 96, 96, 15)
  for k in range(1, labels.max() + 1):
    m = labels == k
    p = C.mask_contour(m)
    assert p.ndim == 2 and p.shape[1] == 2 and not np.array_equal(p[0], p[-1])
    assert C._signed_area(p) > 0
    assert np.array_equal(C.polygon_to_mask(p, *m.shape), m)
  one = np.zeros((5, 5), bool)
  one[2, 3] = True
  p = C.mask_contour(one)
  assert np.allclose(np.sort(p, axis=0).min(0), [3.0, 2.0])  # edge midpoints around (3.5, 2.5)
  assert np.array_equal(C.polygon_to_mask(p, 5, 5), one)
  assert C.mask_contour(np.zeros((4, 4), bool)).shape == (0, 2)


def test_spline_polygon_is_closed_interpolating():
  cp = np.array([[10, 10], [30, 12], [28, 30], [12, 28]], float)
  poly = C.spline_polygon(cp, samples_per_segment=8)
  assert poly.shape == (32, 2)
  assert np.allclose(poly[::8], cp)  # passes through every anchor
  # periodic: the closing step is as smooth as the others
  steps = np.diff(np.concatenate([poly, poly[:1]]), axis=0)
  turn = np.abs(np.diff(np.concatenate([steps, steps[:1]]), axis=0)).max()
  assert turn < 2.0
  assert C.spline_polygon(cp[:2]).shape == (2, 2)  # degenerate input is returned


def test_fit_ellipse_few_points_irregular_more():
  ks = []
  for i, (a, b, th) in enumerate([(12, 8, 0.3), (18, 11, 1.2), (7, 5, 2.0), (25, 16, 0.7)]):
    m = _ellipse(64, 64, 32.3, 31.7, a, b, th)
    cp = C.fit_spline_contour(m)
    assert _iou(C.polygon_to_mask(C.spline_polygon(cp), 64, 64), m) >= 0.95, i
    assert len(cp) <= 8, (i, len(cp))
    ks.append(len(cp))
  yy, xx = np.mgrid[:96, :96] + 0.5
  r, th = np.hypot(yy - 48, xx - 48), np.arctan2(yy - 48, xx - 48)
  star = r < 24 + 9 * np.cos(5 * th)
  cp = C.fit_spline_contour(star)
  assert _iou(C.polygon_to_mask(C.spline_polygon(cp), 96, 96), star) >= 0.95
  assert len(cp) > max(ks)


def test_fit_synthetic_nuclei_and_bounds():
  _, labels = synthetic_image(0, 128, 128, 20)
  out = C.label_map_contours(labels, "spline")
  assert sorted(out) == list(range(1, labels.max() + 1))
  for k, cp in out.items():
    m = labels == k
    assert 4 <= len(cp) <= 32
    assert _iou(C.polygon_to_mask(C.spline_polygon(cp), *m.shape), m) >= 0.9, k
  m = labels == 1
  assert len(C.fit_spline_contour(m, min_points=3, max_points=5, target_iou=1.0)) <= 5
  assert C.fit_spline_contour(np.zeros((8, 8), bool)).shape == (0, 2)
  with pytest.raises(ValueError):
    C.label_map_contours(labels, "bezier")
