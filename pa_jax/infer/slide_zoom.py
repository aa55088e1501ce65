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
from pa_jax.data.intensity import device_image

# The window the slide's nucleus size is estimated on: large enough for dozens of nuclei at
# 40x, small enough to cost a few seconds.
ESTIMATE_SIDE = 1024


def slide_zoom(predictor, sl, intensity: np.ndarray) -> float:
  """The zoom of a slide for `predictor` (1.0 for a model trained at native scale), chosen
  as for an image (`Predictor.choose_zoom`: an estimate within 10 % of a trial zoom takes
  that zoom) on the window at the slide's centre, scaled by the slide's `intensity`
  (float32 [2, C], `slide_predict.slide_intensity`); the predictor's last_* then describe
  this slide."""

  def centre_window() -> tuple[np.ndarray, np.ndarray]:
    H, W = sl.shape
    h, w = min(H, ESTIMATE_SIDE), min(W, ESTIMATE_SIDE)
    y0, x0 = (H - h) // 2, (W - w) // 2
    return device_image(sl.read(y0, x0, y0 + h, x0 + w), intensity=intensity)

  zoom, _ = predictor.choose_zoom(centre_window)  # the window's pass is not the slide's
  return zoom


def zoomed_layout(layout: dict, zoom: float) -> dict:
  """The streaming tile grid in slide pixels for tiles that are `layout`'s once zoomed."""
  if zoom == 1.0:
    return layout
  tile = max(32, int(round(layout["tile_size"] / zoom / 32)) * 32)
  overlap = min(tile - 1, int(math.ceil(layout["overlap"] / zoom)))
  return {**layout, "tile_size": tile, "overlap": overlap}


def model_tiles(predictor, intensity: np.ndarray, zoom: float = 1.0) -> Callable:
  """uint8 / uint16 tiles of a slide whose range is `intensity` (float32 [2, C]) ->
  [(raw label map int32 [h, w], {label: score})] with the predictor's compiled program;
  the raw label v is the detection of score rank v - 1 (`Predictor.run_tiles`). The tiles
  travel to the device as integers; each is zoomed by `zoom` first
  (`data.diameter.zoom_pixels`) and its labels brought back to [h, w]."""

  def run(tiles: list[np.ndarray]) -> list:
    raw = [device_image(t, intensity=intensity) for t in tiles]
    rng = raw[0][1] if raw else None  # [2, 3]: one range for all the slide's tiles
    zoomed = [diam.zoom_pixels(px, zoom, rng) for px, _ in raw]
    out = []
    for tile, (lab, scores) in zip(tiles, predictor.run_tiles(zoomed, rng)):
      lab = diam.resize_labels(lab, tile.shape[:2])
      out.append((lab, {int(v): float(scores[v - 1]) for v in np.unique(lab) if v}))
    return out

  return run
