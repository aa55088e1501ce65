"""Whole slides in `run.py predict`: which images are streamed, and one slide streamed
into the outputs asked for.

A TIFF larger than `STREAM_ABOVE_PIXELS` at the level read, or any image when `stream`, a
`level` / `region` or an OME format is asked for, is read window by window
(pa_jax/data/slide.py) and segmented tile by tile with streaming stitching
(pa_jax/infer/streaming.py). `predict_slide` writes finished rows and nuclei as they come:
`label` / `ome-tiff` as a tiled OME-TIFF label image `{id}_labels.ome.tif`, `ome-zarr` as
`{id}.ome.zarr` (image + NGFF labels), `geojson` / `csv` through the streaming writers of
pa_jax/annotate/stream_export.py, then `{id}.slide.json`, an overlay, a density map and a
per-slide report. `coco` and `roi` need the whole label map (`check_streamable`).
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from pa_jax import fileio
from pa_jax.data import slide as slide_io
from pa_jax.data.intensity import intensity_range
from pa_jax.errors import InputError

# Formats only a streamed image writes (the label image in a slide viewer's format).
STREAM_FORMATS = ("ome-tiff", "ome-zarr")
# A TIFF with more pixels than this (at the level and region read) is streamed: below it
# the whole image, the model's 3-channel copy (3 bytes a pixel for 8-bit, 6 for 16-bit;
# a zoomed model's float32 temporaries are 12 at the zoomed size) and the int32 label map
# stay under ~0.4 GB unzoomed; above it they grow with the slide.
STREAM_ABOVE_PIXELS = 4096 * 4096
# What predict.json and {id}.slide.json say of the nucleus size where no model zoomed.
NO_SCALE = {"diameter_px": None, "diameter_source": None, "zoom": None}


def check_streamable(formats: Sequence[str], attention: bool) -> None:
  whole = [f for f in formats if f in ("coco", "roi")]
  if whole:
    raise InputError("format", f"{', '.join(whole)} need the whole label map in memory; a "
                     "streamed slide writes label (an OME-TIFF), ome-tiff, ome-zarr, geojson, "
                     "csv")
  if attention:
    raise InputError("attention", "attention maps are not written for streamed slides")


def open_streamed(path: Path, stream: bool | None, forced: bool, level: int, region,
                   channel, plane) -> slide_io.Slide | None:
  """The image opened for streaming, or None when it takes the in-memory path."""
  if stream is False or (not forced and not slide_io.is_tiff(path)):
    return None
  try:
    sl = slide_io.open_slide(path, level=level, region=region, channel=channel, plane=plane)
  except InputError:
    if forced:
      raise
    return None  # the in-memory reader decides (and words) what is wrong with the file
  if forced or sl.shape[0] * sl.shape[1] > STREAM_ABOVE_PIXELS:
    return sl
  sl.close()
  return None


def slide_intensity(sl: slide_io.Slide, mode: str) -> np.ndarray:
  """The slide's intensity range, float32 [2, C] (row 0 maps to 0, row 1 to 1): ONE scale
  for every tile, which travel to the device as their own uint8 / uint16 pixels with it
  (`data.intensity.device_image`, `Predictor.run_tiles`).

  `normalize_image` takes its percentiles from the image it is given; a tile's own would
  make neighbouring tiles disagree, so 'percentile' takes the 0.5 / 99.5 % per channel of
  a sample of the region (`sample_pixels`) once. 'dtype' maps the dtype's maximum to 1
  and reads nothing. Both as `data.intensity.intensity_range` computes them."""
  if mode not in ("percentile", "dtype"):
    raise InputError("data.normalize", f"unknown normalisation {mode!r} (percentile, dtype)")
  pixels = sample_pixels(sl) if mode == "percentile" else np.zeros((1, sl.channels), sl.dtype)
  return intensity_range(pixels[:, None, :], mode)  # the sample as an [N, 1, C] image


def sample_pixels(sl: slide_io.Slide, side: int = 256, grid: int = 8) -> np.ndarray:
  """Pixels [N, C] of up to grid x grid evenly spaced side² windows of the region."""
  H, W = sl.shape
  ys = np.unique(np.linspace(0, max(H - side, 0), grid).astype(int))
  xs = np.unique(np.linspace(0, max(W - side, 0), grid).astype(int))
  parts = [sl.read(y, x, min(H, y + side), min(W, x + side)) for y in ys for x in xs]
  return np.concatenate([p.reshape(-1, sl.channels) for p in parts])


def predict_slide(out: Path, image_id: str, sl: slide_io.Slide, segment_tiles: Callable,
                   layout: dict, formats: Sequence[str], slide_formats: Sequence[str],
                   source: str, contours: str, progress: bool,
                   scale: dict | None = None) -> dict:
  """Streams one slide into the outputs asked for; returns what `{id}.slide.json` says.

  `scale`: {"diameter_px", "diameter_source", "zoom"} the slide was segmented at (a model's,
  `slide_zoom.slide_zoom`); None / all null for the classical method."""
  from tqdm import tqdm

  from pa_jax.annotate.stream_export import (CSVStreamWriter, GeoJSONStreamWriter,
                                             NucleusRecord)
  from pa_jax.infer import html_report, slide_figures
  from pa_jax.infer.label_writers import OmeTiffLabelWriter, OmeZarrWriter
  from pa_jax.infer.streaming import stream_segment

  H, W = sl.shape
  ds = float(np.mean(sl.downsample))
  off, ps, ps_level = sl.offset_level0, sl.pixel_size_um, sl.pixel_size_level_um
  band_sinks: list[Callable] = []
  nucleus_sinks: list[Callable] = []
  files = []
  summary = slide_figures.SlideSummary(
      (round(H * sl.downsample[0]), round(W * sl.downsample[1])), offset=off, downsample=ds,
      pixel_size_um=ps, intensity_range=(0.0, 65536.0 if sl.dtype == np.uint16 else 256.0))
  t0 = time.perf_counter()
  with contextlib.ExitStack() as stack:
    if "label" in formats or "ome-tiff" in slide_formats:
      files.append(f"{image_id}_labels.ome.tif")
      w = stack.enter_context(OmeTiffLabelWriter(out / files[-1], (H, W), name=image_id,
                                                 pixel_size_um=ps_level))
      band_sinks.append(w.write)
    if "ome-zarr" in slide_formats:
      files.append(f"{image_id}.ome.zarr")
      z = stack.enter_context(OmeZarrWriter(out / files[-1], (H, W), channels=sl.channels,
                                            dtype=sl.dtype, pixel_size_um=ps_level,
                                            image_name=image_id))
      band_sinks.append(z.write)
    vector = dict(downsample=ds, offset=off, pixel_size_um=ps, contours=contours)
    if "geojson" in formats:
      files.append(f"{image_id}.geojson")
      g = stack.enter_context(GeoJSONStreamWriter(out / files[-1], image_id=image_id,
                                                  **vector))
      nucleus_sinks.append(g.add)
    if "csv" in formats:
      files.append(f"{image_id}.csv")
      c = stack.enter_context(CSVStreamWriter(out / files[-1], **vector))
      nucleus_sinks.append(c.add)
    nucleus_sinks.append(summary.add)
    band_sinks.append(lambda b: summary.add_thumbnail_tile(off[0] + b.y0 * sl.downsample[0],
                                                           off[1], b.image))
    bar = stack.enter_context(tqdm(desc=image_id[:24], unit="tile", disable=not progress))

    def on_nucleus(n) -> None:
      rec = NucleusRecord(n.id, n.box, n.mask, n.score, "proposed", source, n.mean_intensity)
      for sink in nucleus_sinks:
        sink(rec)

    def on_band(b) -> None:
      for sink in band_sinks:
        sink(b)

    def on_progress(done: int, total: int) -> None:
      bar.total = total
      bar.update(done - bar.n)

    stats = stream_segment(sl.read, H, W, segment_tiles, on_band=on_band,
                           on_nucleus=on_nucleus, on_progress=on_progress, **layout)
  seconds = time.perf_counter() - t0
  info = {"file": str(sl.path), "level": sl.level, "levels": sl.levels,
          "level_shape": list(sl.level_shape), "downsample": list(sl.downsample),
          "region_level0": {"y": off[0], "x": off[1], "height": H * sl.downsample[0],
                            "width": W * sl.downsample[1]},
          "shape": [H, W], "pixel_size_um": None if ps is None else list(ps),
          "nuclei": stats.kept, "tiling": {**vars(stats), **layout},
          "seconds": round(seconds, 3), "source": source, **(scale or NO_SCALE),
          "files": files}
  fileio.write_json(out / f"{image_id}.slide.json", info)
  slide_figures.write_overlay_png(out / f"{image_id}_overlay.png", summary)
  slide_figures.write_density_png(out / f"{image_id}_density.png", summary)
  html_report.write_slide_report(out / f"{image_id}_report.html", summary,
                                 title=f"pa_jax slide report: {image_id}",
                                 meta={k: info[k] for k in ("file", "level", "shape",
                                                            "pixel_size_um", "nuclei",
                                                            "source") + (
                                     tuple(NO_SCALE) if info["zoom"] is not None else ())})
  return info
