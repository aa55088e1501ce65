"""Attention maps of the factorized self-attention (the paper's Fig. 1), for inspection.

For a set of selected pixels (the annotated nuclei of an image, or its predicted nuclei
when it has no annotation) the merged attention over all positions is
`keys · mean(selected queries)` (`models.attention.render_attention`), linear in the
number of positions — the N x N map is never built. Rendered at P2 (stride 4), upsampled
to the image and written as a PNG: the image in grey, the attention in colour, the
selected nuclei outlined.
"""

from __future__ import annotations

import functools
import io
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from pa_jax import fileio
from pa_jax.data.pipeline import normalize_image


def attention_map(model, variables, image: np.ndarray, selected: np.ndarray,
                  normalize: str = "percentile", level: str = "p2") -> np.ndarray:
  """float32 [H, W] merged attention of the `selected` (bool [H, W]) pixels on `level`.

  Raises ValueError when the model has no attention (partial module disabled).
  """
  from pa_jax.infer.predictor import canvas_for

  if not model.spec.partial or level not in model.spec.attention_levels:
    raise ValueError(f"this model has no attention on {level} (model.partial.enabled and "
                     "model.partial.attention_levels)")
  img = normalize_image(image, normalize)
  h, w = img.shape[:2]
  ch, cw = canvas_for(h, w)
  padded = np.zeros((ch, cw, 3), np.float32)
  padded[:h, :w] = img
  stride = 2 ** int(level[1:])
  sel = np.zeros((ch, cw), bool)
  sel[:h, :w] = selected
  # The pixel at the centre of each stride x stride cell stands for the cell.
  sel_small = sel[stride // 2::stride, stride // 2::stride]
  att = np.asarray(_jitted_attention(model, level)(variables, jnp.asarray(padded[None]),
                                                    jnp.array([[h, w]], jnp.int32),
                                                    jnp.asarray(sel_small)))
  up = np.repeat(np.repeat(att, stride, axis=0), stride, axis=1)[:h, :w]
  return up.astype(np.float32)


@functools.lru_cache(maxsize=8)
def _jitted_attention(model, level: str):
  """One jitted features + render program per (model, level), shared process-wide (like
  the predictor's): `predict --attention` calls it once per image, and an uncompiled
  forward pass would cost more than the prediction itself. Retraced per canvas shape."""
  from pa_jax.models.attention import render_attention
  from pa_jax.models.mask_rcnn import MaskRCNN

  @jax.jit
  def run(variables, image, image_size, selected_cells):
    _, state = model.apply(variables, image, image_size, method=MaskRCNN.attention_maps,
                           mutable=["intermediates"])
    inter = state["intermediates"][f"attention_{level}"]
    queries, keys = inter["queries"][0][0], inter["keys"][0][0]
    cells = selected_cells[:queries.shape[0], :queries.shape[1]]
    return render_attention(queries, keys, cells)

  return run


def write_attention_png(path: Path, image: np.ndarray, attention: np.ndarray,
                        selected_labels: np.ndarray, title: str = "") -> None:
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  from skimage.segmentation import find_boundaries

  img = normalize_image(image)[..., 0] if image.ndim == 2 else normalize_image(image).mean(-1)
  fig = Figure(figsize=(10, 5))
  FigureCanvasAgg(fig)
  ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
  rgb = np.stack([img] * 3, -1)
  rgb[find_boundaries(selected_labels, mode="inner")] = (1.0, 0.2, 0.2)
  ax1.imshow(rgb)
  ax1.set_title("selected nuclei (red)", fontsize=9)
  ax2.imshow(img, cmap="gray")
  # The merged attention is a distribution over all positions (values ~1/N): scale the
  # colours to its own range so the focus is visible.
  hi = float(np.percentile(attention, 99.5)) if attention.size else 1.0
  ax2.imshow(attention, cmap="inferno", alpha=0.6, vmin=0.0, vmax=max(hi, 1e-12))
  ax2.set_title(title or "merged attention of the selected nuclei", fontsize=9)
  for ax in (ax1, ax2):
    ax.axis("off")
  fig.tight_layout()
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=100)
  fileio.write_bytes(path, buf.getvalue())
