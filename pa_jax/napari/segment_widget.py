"""Dock widget: segment the chosen image layer with a model of `engines.CHOICES`.

Like stardist-napari's and cellpose-napari's widgets it holds no segmentation logic: the
layer's array goes to `engines.segment` (the library calls of `run.py predict`) in a
napari thread worker, so the viewer stays responsive; the progress bar follows the
stages it reports, and the result comes back as layers:

  "{image} nuclei"     Labels: the instance label map, with score/state/source features
                       (every nucleus 'proposed': a machine's output to review);
  "{image} attention"  Image: the merged attention of the predicted nuclei (the paper's
                       Fig. 1), only for partial-annotation runs when asked for.

A layer of that name is updated in place on a rerun. Problems are one line in the
widget's status and a napari notification, never a traceback.
"""

from __future__ import annotations

import functools

import napari
import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, Label, ProgressBar, PushButton
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error

from pa_jax.annotate.nuclei import Nucleus
from pa_jax.errors import PaJaxError
from pa_jax.napari import colors, engines
from pa_jax.napari.layer_image import library_image
from pa_jax.napari.progress import error_line, progress_steps, show_report


def attention_limits(att: np.ndarray) -> tuple[float, float]:
  """Contrast limits of an attention map: it is a distribution over all positions
  (values ~1/N), so scale to its own 99.5th percentile, as `write_attention_png` does."""
  hi = float(np.percentile(att, 99.5)) if att.size else 1.0
  return 0.0, max(hi, 1e-12)


class SegmentWidget(Container):
  """Image layer + model choice (+ run folder) -> Labels layer (+ attention layer)."""

  def __init__(self, viewer: napari.viewer.Viewer):
    super().__init__()
    self.viewer = viewer
    self.worker = None  # the running (or last) napari worker, for tests and callers
    self.image = ComboBox(label="image", choices=self._image_layers)
    self.model = ComboBox(label="model", choices=list(engines.CHOICES),
                          value=engines.CLASSICAL)
    self.folder = FileEdit(label="run folder", mode="d", nullable=True)
    self.attention = CheckBox(text="attention map (partial-annotation runs)", value=False)
    self.run_button = PushButton(text="Segment")
    self.progress = ProgressBar(label="progress", min=0, max=1, value=0)
    self.status = Label(label="", value="")
    self.extend([self.image, self.model, self.folder, self.attention, self.run_button,
                 self.progress, self.status])
    self.model.changed.connect(self._on_model)
    self.run_button.changed.connect(self.start)
    viewer.layers.events.inserted.connect(self.image.reset_choices)
    viewer.layers.events.removed.connect(self.image.reset_choices)
    viewer.layers.selection.events.active.connect(self._follow_active)
    self._on_model()
    self._follow_active()

  def _image_layers(self, _widget=None) -> list[tuple[str, napari.layers.Image]]:
    return [(layer.name, layer) for layer in self.viewer.layers
            if isinstance(layer, napari.layers.Image)]

  def _follow_active(self, _event=None) -> None:
    """The image to segment follows the layer selected in the viewer."""
    active = self.viewer.layers.selection.active
    if isinstance(active, napari.layers.Image):
      self.image.reset_choices()
      self.image.value = active

  def _on_model(self, _value=None) -> None:
    choice = engines.CHOICES[self.model.value]
    self.folder.visible = choice.needs_folder
    self.attention.visible = choice.attention

  def _say(self, text: str, error: bool = False) -> None:
    self.status.value = text
    if error:
      show_error(text)

  def start(self, _value=None):
    """Starts segmenting in a thread worker; returns the worker (None on bad input)."""
    layer = self.image.value
    if layer is None:
      self._say("no image layer: open an image first", error=True)
      return None
    try:
      image = library_image(layer.data, layer.rgb, layer.name)
    except PaJaxError as e:
      self._say(str(e), error=True)
      return None
    choice = self.model.value
    folder = self.folder.value if engines.CHOICES[choice].needs_folder else None
    want_attention = bool(self.attention.value) and engines.CHOICES[choice].attention
    job = functools.partial(engines.segment, choice, folder, image, want_attention)
    # Our own `errored` handler: napari would re-raise in the GUI thread (a traceback).
    self.worker = create_worker(progress_steps, job, _start_thread=False, _connect={
        "yielded": self._on_progress, "errored": self._on_error,
        "returned": functools.partial(self._on_result, layer),
        "finished": lambda: setattr(self.run_button, "enabled", True)})
    self.run_button.enabled = False
    self.progress.value = 0
    self._say(f"segmenting {layer.name} ...")
    self.worker.start()
    return self.worker

  def _on_progress(self, report: tuple) -> None:
    stage, done, total = show_report(self.progress, report)
    self.status.value = f"{stage} ({done}/{total})"

  def _on_error(self, err: BaseException) -> None:
    self._say(error_line(err), error=True)

  def _on_result(self, layer, result: engines.Segmentation) -> None:
    nuclei = {k: Nucleus(k, "proposed", result.scores.get(k), result.source)
              for k in map(int, np.unique(result.labels)) if k}
    meta = {"pa_jax_source": result.source}
    name = f"{layer.name} nuclei"
    kwargs = dict(features=colors.features(nuclei), metadata=meta, scale=layer.scale[-2:],
                  translate=layer.translate[-2:])
    if name in self.viewer.layers:
      out = self.viewer.layers[name]
      out.data, out.features = result.labels, kwargs["features"]
      out.metadata.update(meta)
    else:
      self.viewer.add_labels(result.labels, name=name, opacity=0.5, **kwargs)
    if result.attention is not None:
      att_name = f"{layer.name} attention"
      limits = attention_limits(result.attention)
      if att_name in self.viewer.layers:
        self.viewer.layers[att_name].data = result.attention
        self.viewer.layers[att_name].contrast_limits = limits
      else:
        self.viewer.add_image(result.attention, name=att_name, colormap="inferno",
                              blending="additive", contrast_limits=limits, opacity=0.7,
                              scale=layer.scale[-2:], translate=layer.translate[-2:])
    self._say(f"{len(nuclei)} nuclei ({result.source})")
