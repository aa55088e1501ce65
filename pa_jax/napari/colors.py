"""Review states as Labels-layer colours (`pa_jax.annotate.nuclei.STATE_COLORS`).

A napari `Labels` layer takes `colormap={label: RGBA}` (a `DirectLabelColormap`); the key
None is the colour of every label not listed. New labels a person paints are drawn
nuclei, i.e. confirmed, so None maps to the confirmed colour and a fresh stroke shows its
state at once.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from pa_jax.annotate.nuclei import STATE_COLORS, Nucleus

TRANSPARENT = np.zeros(4, np.float32)


def rgba(rgb: tuple[int, int, int], alpha: float = 1.0) -> np.ndarray:
  """float32 [4] in [0, 1] from an RGB 0-255 triple."""
  return np.array([*(c / 255.0 for c in rgb), alpha], np.float32)


def state_colormap(colors: Mapping[int, tuple[int, int, int]], default_state: str = "confirmed"
                   ) -> dict[int | None, np.ndarray]:
  """{label: float32 RGBA [4]} for a Labels layer; 0 is transparent, None (unlisted labels)
  takes `default_state`'s colour.

  colors: {label: RGB 0-255}, e.g. `Session.colors(image_id)` or `table_colors(nuclei)`.
  """
  out: dict[int | None, np.ndarray] = {None: rgba(STATE_COLORS[default_state]),
                                       0: TRANSPARENT.copy()}
  for k, rgb in colors.items():
    if int(k) != 0:
      out[int(k)] = rgba(rgb)
  return out


def table_colors(nuclei: Mapping[int, Nucleus]) -> dict[int, tuple[int, int, int]]:
  """{label: RGB 0-255} of a nuclei table by review state."""
  return {int(k): STATE_COLORS[n.state] for k, n in nuclei.items()}


def features(nuclei: Mapping[int, Nucleus]) -> dict[str, list]:
  """Columns of a Labels layer's `features` (one row per nucleus, `index` = its label), so
  napari's status bar shows the state, score and source of the nucleus under the cursor."""
  ids = sorted(int(k) for k in nuclei)
  return {"index": ids, "state": [nuclei[k].state for k in ids],
          "score": [np.nan if nuclei[k].score is None else nuclei[k].score for k in ids],
          "source": [nuclei[k].source for k in ids]}
