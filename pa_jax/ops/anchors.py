"""Anchor boxes for the FPN levels.

Anchors depend only on static shapes (feature map sizes, strides, sizes, ratios), so they are
computed once with numpy and enter a jitted function as constants.

Convention (detectron2 `DefaultAnchorGenerator`, whose weights we may import):
- a cell anchor of size `s` and aspect ratio `r = h / w` has area `s**2`, `w = sqrt(s**2 / r)`,
  `h = r * w`, and is centred on `(0, 0)`; no rounding (torchvision rounds to integers);
- the anchor of feature cell `(y, x)` of a level with stride `t` is shifted by
  `((x + offset) * t, (y + offset) * t)`. `offset=0.0` is detectron2's default and the default
  here: anchors are centred on the top-left corner of their stride-by-stride cell. Pass
  `offset=0.5` to centre them on the cell instead (both are documented detectron2 options);
- per level, anchors are ordered `(y, x, a)` with `a` fastest, so
  `anchors.reshape(H, W, A, 4)` lines up with a conv head's `[H, W, A * k]` output reshaped
  to `[H, W, A, k]`; cell anchors are ordered (size, ratio) with ratio fastest.

Boxes are float32 `(x0, y0, x1, y1)` absolute pixels.
"""

from __future__ import annotations

from typing import Sequence, Union

import numpy as np

SizeSpec = Union[float, Sequence[float]]


def feature_shapes(height: int, width: int,
                   strides: Sequence[int] = (4, 8, 16, 32, 64)) -> list[tuple[int, int]]:
  """Feature map sizes of a backbone whose stride-2 stages use SAME padding (ceil division).

  Args:
    height, width: canvas size in pixels (Python ints).
    strides: stride of each level.

  Returns:
    `[(H_l, W_l), ...]` with `H_l = ceil(height / stride_l)`.
  """
  return [(-(-height // s), -(-width // s)) for s in strides]


def cell_anchors(sizes: SizeSpec, ratios: Sequence[float] = (0.5, 1.0, 2.0)) -> np.ndarray:
  """Anchors of one feature cell, centred on (0, 0).

  Args:
    sizes: one size (sqrt of the area, pixels) or several.
    ratios: aspect ratios `h / w`.

  Returns:
    float32 `[len(sizes) * len(ratios), 4]` `(x0, y0, x1, y1)`, ordered (size, ratio).
  """
  sizes = (sizes,) if np.isscalar(sizes) else tuple(sizes)
  out = []
  for size in sizes:
    area = float(size) ** 2
    for ratio in ratios:
      w = np.sqrt(area / ratio)
      h = ratio * w
      out.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
  return np.asarray(out, dtype=np.float32).reshape(-1, 4)


def num_anchors_per_location(sizes: SizeSpec, ratios: Sequence[float] = (0.5, 1.0, 2.0)) -> int:
  """Number `A` of anchors per feature cell of a level with these sizes and ratios."""
  n_sizes = 1 if np.isscalar(sizes) else len(sizes)
  return n_sizes * len(ratios)


def generate_anchors(feature_shapes: Sequence[tuple[int, int]],
                     strides: Sequence[int] = (4, 8, 16, 32, 64),
                     sizes: Sequence[SizeSpec] = (8, 16, 32, 64, 128),
                     ratios: Sequence[float] = (0.5, 1.0, 2.0),
                     offset: float = 0.0) -> list[np.ndarray]:
  """Anchors of every FPN level.

  Args:
    feature_shapes: `[(H_l, W_l), ...]`, one per level (Python ints).
    strides: stride of each level in pixels.
    sizes: per level, one anchor size or a sequence of sizes (sqrt of area, pixels).
    ratios: aspect ratios `h / w`, shared by all levels.
    offset: anchor centre of cell `(y, x)` is `((x + offset) * stride, (y + offset) * stride)`;
      0.0 = detectron2 default (see the module docstring).

  Returns:
    list of float32 numpy arrays `[H_l * W_l * A, 4]`, `(x0, y0, x1, y1)` absolute pixels,
    ordered `(y, x, a)`.
  """
  if not len(feature_shapes) == len(strides) == len(sizes):
    raise ValueError(f"feature_shapes ({len(feature_shapes)}), strides ({len(strides)}) and "
                     f"sizes ({len(sizes)}) must have one entry per level")
  out = []
  for (h, w), stride, size in zip(feature_shapes, strides, sizes):
    base = cell_anchors(size, ratios)  # [A, 4]
    xs = (np.arange(w, dtype=np.float32) + offset) * stride
    ys = (np.arange(h, dtype=np.float32) + offset) * stride
    yy, xx = np.meshgrid(ys, xs, indexing="ij")  # y-major, so x varies fastest
    shifts = np.stack([xx, yy, xx, yy], axis=-1).reshape(-1, 1, 4)
    out.append((shifts + base[None]).reshape(-1, 4).astype(np.float32))
  return out


def concat_levels(per_level: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
  """Concatenates per-level anchors (or any per-level `[n_l, ...]` arrays) along axis 0.

  Args:
    per_level: `[n_l, ...]` arrays, one per level.

  Returns:
    `(concatenated [sum n_l, ...], level_ids [sum n_l] int32)` where `level_ids` is the index
    (0 = first level given) of the level each row came from.
  """
  level_ids = np.concatenate(
      [np.full((len(a),), i, dtype=np.int32) for i, a in enumerate(per_level)])
  return np.concatenate([np.asarray(a) for a in per_level], axis=0), level_ids
