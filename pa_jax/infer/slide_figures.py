"""Per-slide summary figures, accumulated nucleus by nucleus in bounded memory.

The slide pipeline never holds the slide, its label map or its list of nuclei, so the
figures are built as the nuclei stream past (`SlideSummary.add(rec)`, the same
`stream_export.NucleusRecord` the GeoJSON/CSV writers take) together with the pixels of
the tiles it reads (`add_thumbnail_tile`). Memory is fixed by `thumb_size` and the grid,
never by the slide or the number of nuclei:

* `NucleusStats`: counts by review state; fixed-bin histograms of area (log bins, full-
  resolution pixels), score ([0, 1]) and mean intensity per channel (`intensity_range`);
  exact sums for the means. Mergeable (`merge`), for a report over many images.
* a thumbnail (float32 [th, tw, C], long side <= `thumb_size`) sampled at thumbnail pixel
  centres from the tiles, and the nuclei painted into it: state code, score and id per
  thumbnail pixel (a nucleus smaller than a thumbnail pixel marks its centroid's pixel);
* a density grid: nucleus centroids counted in square cells of `cell_px` full-resolution
  pixels; `density()` is nuclei per mm² when the pixel size is known, else per
  100 x 100 px.

Coordinates follow the streaming writers: `offset` = (y, x) of the region's origin in
full-resolution pixels, `downsample` = the factor of the level the records' boxes are in.

Rendering (`overlay_rgb`, `write_overlay_png`, `write_density_png`, `histograms_png`) uses
matplotlib's Agg backend; no display is needed.
"""

from __future__ import annotations

import io
import math
from typing import Sequence

import numpy as np

from pa_jax.annotate.measurements import check_pixel_size
from pa_jax.annotate.nuclei import STATE_COLORS, STATES

__all__ = ["NucleusStats", "SlideSummary", "AREA_EDGES", "SCORE_EDGES", "overlay_rgb",
           "write_overlay_png", "write_density_png", "histograms_png"]

# Log-spaced area bins from 1 to 10^6 full-resolution px (10 per decade): a nucleus at 40x
# is ~50-500 px; values outside land in the end bins.
AREA_EDGES = np.logspace(0, 6, 61)
SCORE_EDGES = np.linspace(0.0, 1.0, 21)
_INTENSITY_BINS = 64


def _bin(edges: np.ndarray, value: float) -> int:
  """Index of the bin of `value` (clipped into the first / last bin)."""
  return int(np.clip(np.searchsorted(edges, value, side="right") - 1, 0, len(edges) - 2))


class NucleusStats:
  """Counts and histograms of nuclei (see the module docstring); O(bins) memory."""

  def __init__(self, intensity_range: tuple[float, float] = (0.0, 256.0)):
    self.counts = {s: 0 for s in STATES}
    self.area_hist = np.zeros(len(AREA_EDGES) - 1, np.int64)
    self.score_hist = np.zeros(len(SCORE_EDGES) - 1, np.int64)
    self.intensity_edges = np.linspace(*map(float, intensity_range), _INTENSITY_BINS + 1)
    self.intensity_hist: np.ndarray | None = None  # int64 [C, bins] once a value arrives
    self.area_sum = 0.0
    self.measured = 0  # nuclei with an area (a CSV-only source has none)
    self.score_sum = 0.0
    self.scored = 0

  @property
  def total(self) -> int:
    return sum(self.counts.values())

  def add(self, state: str, area_px: float | None, score: float | None,
          mean_intensity: Sequence[float] = ()) -> None:
    """One nucleus: its state, area in full-resolution px (None: unknown), score (None:
    unscored) and mean intensity per channel."""
    self.counts[state] += 1
    if area_px is not None:
      self.area_hist[_bin(AREA_EDGES, area_px)] += 1
      self.area_sum += float(area_px)
      self.measured += 1
    if score is not None and math.isfinite(score):
      self.score_hist[_bin(SCORE_EDGES, score)] += 1
      self.score_sum += float(score)
      self.scored += 1
    if len(mean_intensity):
      if self.intensity_hist is None:
        self.intensity_hist = np.zeros((len(mean_intensity), _INTENSITY_BINS), np.int64)
      for c, v in enumerate(mean_intensity[:len(self.intensity_hist)]):
        self.intensity_hist[c, _bin(self.intensity_edges, v)] += 1

  def merge(self, other: "NucleusStats") -> None:
    """Adds `other`'s nuclei (same intensity bins) to these."""
    for s in STATES:
      self.counts[s] += other.counts[s]
    self.area_hist += other.area_hist
    self.score_hist += other.score_hist
    self.area_sum += other.area_sum
    self.measured += other.measured
    self.score_sum += other.score_sum
    self.scored += other.scored
    if other.intensity_hist is not None:
      if self.intensity_hist is None:
        self.intensity_hist = np.zeros_like(other.intensity_hist)
      c = min(len(self.intensity_hist), len(other.intensity_hist))
      self.intensity_hist[:c] += other.intensity_hist[:c]

  def mean_area(self) -> float | None:
    return self.area_sum / self.measured if self.measured else None

  def mean_score(self) -> float | None:
    return self.score_sum / self.scored if self.scored else None


def _centre_rows(n_out: int, scale: float, start: float, step: float, length: int
                 ) -> tuple[np.ndarray, np.ndarray]:
  """Output pixels (of size 1/scale) whose centres fall on a run of `length` input pixels
  of size `step` starting at `start` → (output indices, input indices)."""
  lo = max(int(math.floor(start * scale)), 0)
  hi = min(int(math.ceil((start + length * step) * scale)) + 1, n_out)
  out = np.arange(lo, hi)
  src = np.floor(((out + 0.5) / scale - start) / step).astype(np.int64)
  ok = (src >= 0) & (src < length)
  return out[ok], src[ok]


class SlideSummary:
  """Counts, histograms, thumbnail with nuclei and density grid of one slide or region.

  shape: (height, width) of the region in full-resolution pixels. offset, downsample:
  as the streaming writers. pixel_size_um: µm per full-resolution pixel (number or
  (y, x)). thumb_size: long side of the thumbnail. cell_px: density cell side in
  full-resolution px (default: the region's long side / 48, at least 32).
  """

  def __init__(self, shape: Sequence[int], *, offset: Sequence[float] = (0, 0),
               downsample: float = 1.0, pixel_size_um: float | Sequence[float] | None = None,
               thumb_size: int = 1024, cell_px: int | None = None,
               intensity_range: tuple[float, float] = (0.0, 256.0)):
    self.shape = (int(shape[0]), int(shape[1]))
    if min(self.shape) < 1:
      raise ValueError(f"region shape must be positive, got {shape}")
    self.offset = (float(offset[0]), float(offset[1]))
    self.downsample = float(downsample)
    self.pixel_size_um = check_pixel_size(pixel_size_um)
    self.stats = NucleusStats(intensity_range)
    h, w = self.shape
    self.scale = min(1.0, thumb_size / max(h, w))
    th, tw = max(1, math.ceil(h * self.scale)), max(1, math.ceil(w * self.scale))
    self.thumb: np.ndarray | None = None  # float32 [th, tw, C] once a tile arrives
    self.thumb_filled = np.zeros((th, tw), bool)
    self.state_map = np.zeros((th, tw), np.uint8)  # 0 = none, else STATES index + 1
    self.score_map = np.full((th, tw), np.nan, np.float32)
    self.id_map = np.zeros((th, tw), np.int64)
    self.cell_px = int(cell_px or max(32, math.ceil(max(h, w) / 48)))
    self.grid = np.zeros((math.ceil(h / self.cell_px), math.ceil(w / self.cell_px)), np.int64)

  @property
  def thumb_shape(self) -> tuple[int, int]:
    return self.state_map.shape

  def add(self, rec) -> None:
    """One nucleus (`stream_export.NucleusRecord`): statistics, density, thumbnail paint."""
    mask = np.asarray(rec.mask, bool)
    rows, cols = np.nonzero(mask)
    if not rows.size:
      return
    d = self.downsample
    y0, x0 = rec.box[0], rec.box[1]
    self.stats.add(rec.state, rows.size * d * d, rec.score, tuple(rec.mean_intensity))
    cy, cx = (y0 + rows.mean() + 0.5) * d, (x0 + cols.mean() + 0.5) * d  # region-relative
    gy = min(int(cy // self.cell_px), self.grid.shape[0] - 1)
    gx = min(int(cx // self.cell_px), self.grid.shape[1] - 1)
    self.grid[max(gy, 0), max(gx, 0)] += 1
    th, tw = self.thumb_shape
    ti, si = _centre_rows(th, self.scale, y0 * d, d, mask.shape[0])
    tj, sj = _centre_rows(tw, self.scale, x0 * d, d, mask.shape[1])
    hit = mask[np.ix_(si, sj)] if ti.size and tj.size else np.zeros((0, 0), bool)
    if hit.any():
      ii, jj = np.nonzero(hit)
      ii, jj = ti[ii], tj[jj]
    else:  # smaller than a thumbnail pixel: mark the pixel of its centroid
      ii = np.array([min(int(cy * self.scale), th - 1)])
      jj = np.array([min(int(cx * self.scale), tw - 1)])
    self.state_map[ii, jj] = STATES.index(rec.state) + 1
    self.score_map[ii, jj] = np.nan if rec.score is None else rec.score
    self.id_map[ii, jj] = int(rec.id)

  def add_thumbnail_tile(self, y0: float, x0: float, pixels: np.ndarray,
                         downsample: float | None = None) -> None:
    """Samples a tile into the thumbnail. y0, x0: the tile's top-left in full-resolution
    pixels of the slide (like `offset`); pixels: [h, w] or [h, w, C] at `downsample`
    (default: the summary's). Only the first 3 channels are kept."""
    px = np.asarray(pixels)
    px = px[..., None] if px.ndim == 2 else px[..., :3]
    d = self.downsample if downsample is None else float(downsample)
    th, tw = self.thumb_shape
    if self.thumb is None:
      self.thumb = np.zeros((th, tw, px.shape[2]), np.float32)
    ti, si = _centre_rows(th, self.scale, y0 - self.offset[0], d, px.shape[0])
    tj, sj = _centre_rows(tw, self.scale, x0 - self.offset[1], d, px.shape[1])
    if ti.size and tj.size:
      c = min(px.shape[2], self.thumb.shape[2])
      self.thumb[ti[:, None], tj[None, :], :c] = px[np.ix_(si, sj)][..., :c]
      self.thumb_filled[ti[:, None], tj[None, :]] = True

  def density(self) -> tuple[np.ndarray, str]:
    """(float64 [gh, gw] nuclei per unit area, unit): per mm² with a pixel size, else per
    100 x 100 px. Edge cells are divided by their area inside the region."""
    h, w = self.shape
    c = self.cell_px
    ch = np.minimum(c, h - np.arange(self.grid.shape[0]) * c)
    cw = np.minimum(c, w - np.arange(self.grid.shape[1]) * c)
    area_px = ch[:, None].astype(np.float64) * cw[None, :]
    if self.pixel_size_um is not None:
      sy, sx = self.pixel_size_um
      return self.grid / (area_px * sy * sx * 1e-6), "nuclei per mm²"
    return self.grid / (area_px / 1e4), "nuclei per 100×100 px"

  def thumbnail_rgb(self) -> np.ndarray:
    """uint8 [th, tw, 3]: the thumbnail contrast-stretched per channel (1st-99.5th
    percentile of the filled pixels); gray where no tile was seen."""
    th, tw = self.thumb_shape
    out = np.full((th, tw, 3), 64, np.uint8)
    if self.thumb is None or not self.thumb_filled.any():
      return out
    t = self.thumb[self.thumb_filled]
    lo, hi = np.percentile(t, 1, axis=0), np.percentile(t, 99.5, axis=0)
    norm = np.clip((self.thumb - lo) / np.maximum(hi - lo, 1e-6), 0, 1)
    rgb = np.repeat(norm, 3, axis=2) if norm.shape[2] == 1 else norm
    if rgb.shape[2] == 2:
      rgb = np.concatenate([rgb, np.zeros_like(rgb[..., :1])], axis=2)
    out[self.thumb_filled] = (rgb[self.thumb_filled] * 255).round().astype(np.uint8)
    return out


def overlay_rgb(summary: SlideSummary, color_by: str = "state", alpha: float = 0.45
                ) -> np.ndarray:
  """uint8 [th, tw, 3]: the thumbnail with nuclei filled at `alpha` and outlined, coloured
  by review state (`STATE_COLORS`) or by score (viridis; no score = gray)."""
  import matplotlib

  if color_by not in ("state", "score"):
    raise ValueError(f"color_by must be 'state' or 'score', got {color_by!r}")
  base = summary.thumbnail_rgb().astype(np.float32)
  inside = summary.state_map > 0
  if color_by == "state":
    lut = np.array([(0, 0, 0)] + [STATE_COLORS[s] for s in STATES], np.float32)
    colors = lut[summary.state_map]
  else:
    cmap = matplotlib.colormaps["viridis"]
    s = summary.score_map
    colors = np.where(np.isfinite(s)[..., None],
                      cmap(np.nan_to_num(s, nan=0.0))[..., :3] * 255, 160.0).astype(np.float32)
  ids = summary.id_map
  edge = np.zeros_like(inside)
  edge[:-1] |= ids[:-1] != ids[1:]
  edge[1:] |= ids[1:] != ids[:-1]
  edge[:, :-1] |= ids[:, :-1] != ids[:, 1:]
  edge[:, 1:] |= ids[:, 1:] != ids[:, :-1]
  edge &= inside
  out = base.copy()
  out[inside] = (1 - alpha) * base[inside] + alpha * colors[inside]
  out[edge] = colors[edge]
  return out.round().astype(np.uint8)


def _figure_png(fig) -> bytes:
  import matplotlib.pyplot as plt

  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
  plt.close(fig)
  return buf.getvalue()


def overlay_png(summary: SlideSummary, color_by: str = "state", title: str = "") -> bytes:
  """PNG bytes of the overlay with a legend (states) or a colour bar (score)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from matplotlib.patches import Patch

  rgb = overlay_rgb(summary, color_by)
  th, tw = summary.thumb_shape
  h, w = summary.shape
  fig, ax = plt.subplots(figsize=(min(12, max(4, tw / 100)), min(12, max(3, th / 100)) + 0.6))
  ax.imshow(rgb, extent=(0, w, h, 0), interpolation="nearest")
  ax.set_xlabel("x (full-resolution px)")
  ax.set_ylabel("y (px)")
  if color_by == "state":
    c = summary.stats.counts
    ax.legend(handles=[Patch(color=np.array(STATE_COLORS[s]) / 255, label=f"{s} ({c[s]})")
                       for s in STATES], loc="upper right", fontsize=8, framealpha=0.8)
  else:
    sm = plt.cm.ScalarMappable(cmap="viridis", norm=plt.Normalize(0, 1))
    fig.colorbar(sm, ax=ax, fraction=0.04, label="score")
  ax.set_title(title or f"{summary.stats.total} nuclei, coloured by {color_by}", fontsize=10)
  return _figure_png(fig)


def density_png(summary: SlideSummary, title: str = "") -> bytes:
  """PNG bytes of the density heat map (nuclei per mm², or per 100×100 px)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  dens, unit = summary.density()
  h, w = summary.shape
  gh, gw = dens.shape
  fig, ax = plt.subplots(figsize=(min(12, max(4, gw / 8)), min(12, max(3, gh / 8)) + 0.6))
  im = ax.imshow(dens, cmap="magma", extent=(0, w, h, 0), interpolation="nearest")
  fig.colorbar(im, ax=ax, fraction=0.04, label=unit)
  ax.set_xlabel("x (full-resolution px)")
  ax.set_ylabel("y (px)")
  ax.set_title(title or f"nucleus density, {summary.cell_px}-px cells", fontsize=10)
  return _figure_png(fig)


def histograms_png(stats: NucleusStats, pixel_size_um: float | Sequence[float] | None = None
                   ) -> bytes:
  """PNG bytes: area (µm² when the pixel size is known), score and intensity histograms."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  ps = check_pixel_size(pixel_size_um)
  n = 2 + (stats.intensity_hist is not None)
  fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.2))
  edges, unit = AREA_EDGES, "px"
  if ps is not None:
    edges, unit = AREA_EDGES * ps[0] * ps[1], "µm²"
  axes[0].stairs(stats.area_hist, edges, fill=True, color="#4c72b0")
  axes[0].set_xscale("log")
  used = np.flatnonzero(stats.area_hist)
  if used.size:  # the bins span 1 px to 1 mm²: show the occupied decades only
    axes[0].set_xlim(edges[max(used[0] - 3, 0)], edges[min(used[-1] + 4, len(edges) - 1)])
  axes[0].set_xlabel(f"area ({unit})")
  axes[0].set_ylabel("nuclei")
  axes[1].stairs(stats.score_hist, SCORE_EDGES, fill=True, color="#55a868")
  axes[1].set_xlabel(f"score ({stats.scored} scored)")
  if stats.intensity_hist is not None:
    for c, hist in enumerate(stats.intensity_hist):
      axes[2].stairs(hist, stats.intensity_edges, label=f"channel {c}")
    axes[2].set_xlabel("mean intensity")
    axes[2].legend(fontsize=8)
  fig.tight_layout()
  return _figure_png(fig)


def write_overlay_png(path, summary: SlideSummary, color_by: str = "state") -> None:
  from pa_jax import fileio

  fileio.write_bytes(path, overlay_png(summary, color_by))


def write_density_png(path, summary: SlideSummary) -> None:
  from pa_jax import fileio

  fileio.write_bytes(path, density_png(summary))
