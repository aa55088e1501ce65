"""Model tiles of a streamed slide, at the nucleus size the model was trained at.

A model trained with `data.diameter` sees every image zoomed so that its median nucleus
has that diameter (`data.diameter`, `Predictor.predict_scored`). A slide is streamed tile
by tile in its own pixels, so the zoom is applied per tile: the slide's zoom is fixed once
(from `predict.diameter`, or estimated by the predictor on a window at the centre of the
slide), the tile grid is laid out in slide pixels at `tile_size / zoom` (so that a zoomed
tile is about `tile_size`) with `overlap / zoom`, each tile is zoomed, segmented with the
predictor's compiled program and its label map brought back to the tile's size (nearest
neighbour: raw labels keep their score ranks).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from pa_jax.data import diameter as diam

# The window the slide's nucleus size is estimated on: large enough for dozens of nuclei at
# 40x, small enough to cost a few seconds.
ESTIMATE_SIDE = 1024


def slide_zoom(predictor, sl, norm: Callable[[np.ndarray], np.ndarray]) -> float:
  """The zoom of a slide for `predictor` (1.0 for a model trained at native scale), chosen
  as for an image (`Predictor.choose_zoom`: an estimate within 10 % of a trial zoom takes
  that zoom) on the window at the slide's centre; the predictor's last_* then describe
  this slide."""

  def centre_window() -> np.ndarray:
    H, W = sl.shape
    h, w = min(H, ESTIMATE_SIDE), min(W, ESTIMATE_SIDE)
    y0, x0 = (H - h) // 2, (W - w) // 2
    return norm(sl.read(y0, x0, y0 + h, x0 + w))

  zoom, _ = predictor.choose_zoom(centre_window)  # the window's pass is not the slide's
  return zoom


def zoomed_layout(layout: dict, zoom: float) -> dict:
  """The streaming tile grid in slide pixels for tiles that are `layout`'s once zoomed."""
  if zoom == 1.0:
    return layout
  tile = max(32, int(round(layout["tile_size"] / zoom / 32)) * 32)
  overlap = min(tile - 1, int(math.ceil(layout["overlap"] / zoom)))
  return {**layout, "tile_size": tile, "overlap": overlap}


def model_tiles(predictor, norm: Callable[[np.ndarray], np.ndarray], zoom: float = 1.0
                ) -> Callable:
  """Tiles -> [(raw label map int32 [h, w], {label: score})] with the predictor's compiled
  program; the raw label v is the detection of score rank v - 1 (`Predictor.run_tiles`).
  Each tile is zoomed by `zoom` first and its labels brought back to [h, w]."""

  def run(tiles: list[np.ndarray]) -> list:
    out = []
    for tile, (lab, scores) in zip(tiles, predictor.run_tiles(
        [diam.zoom_image(norm(t), zoom) for t in tiles])):
      lab = diam.resize_labels(lab, tile.shape[:2])
      out.append((lab, {int(v): float(scores[v - 1]) for v in np.unique(lab) if v}))
    return out

  return run
