"""Dock widget: the annotation assistant (`run.py annotate`) in napari.

Opens an annotation project over a folder of images through
`pa_jax.annotate.session.Session`, the API the CLI runs on, and shows one image at a time:

  "pa_jax image"   the image;
  "pa_jax review"  a Labels layer of the confirmed and proposed nuclei and the rejected
                   regions (`Session.review_map`), coloured by review state (confirmed
                   green, proposed yellow, rejected red; `Session.colors`).

Editing follows `Session.apply_edit`'s rules: painting on a nucleus confirms it (with its
new outline), painting with a new label draws a confirmed nucleus, erasing a proposal
(e.g. the fill tool with label 0) rejects it. Edits are handed to the session when the
image changes, on "Apply edits", before "Save edits" and before a round, all at once,
so a proposal erased in several strokes is one rejection. "Confirm selected" /
"Reject selected" act on the layer's selected label (`Session.set_state`). "Run next
round" runs `Session.next_round` (train, predict, merge, write: what
`run.py annotate --rounds 1` does) in a napari thread worker with a progress bar; the
layer is read-only meanwhile.
"""

from __future__ import annotations

import functools

import napari
import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, Label, ProgressBar, PushButton
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error

from pa_jax.errors import PaJaxError
from pa_jax.napari import colors
from pa_jax.napari.progress import error_line, progress_steps, show_report

IMAGE_LAYER = "pa_jax image"
REVIEW_LAYER = "pa_jax review"
LEGEND = "green: confirmed · yellow: proposed · red: rejected"


def summary(report: dict) -> str:
  """One status line from a `Session.status()` or round report."""
  t = report["totals"]
  line = (f"round {report['round']}: {t['confirmed']} confirmed, {t['proposed']} proposed, "
          f"{t['rejected']} rejected")
  recall = (report.get("holdout") or {}).get("recall")
  return line + ("" if recall is None else f"; hold-out recall {recall:.3f}")


class AnnotateWidget(Container):
  """Project folders -> review layers of one image; confirm / reject / next round."""

  def __init__(self, viewer: napari.viewer.Viewer):
    super().__init__()
    self.viewer = viewer
    self.session = None   # pa_jax.annotate.session.Session once opened
    self.worker = None    # the running (or last) round's napari worker
    self.shown: str | None = None  # image id in the layers
    self.images_dir = FileEdit(label="images", mode="d", nullable=True)
    self.project_dir = FileEdit(label="project", mode="d", nullable=True)
    self.annotations_dir = FileEdit(label="first annotations", mode="d", nullable=True,
                                    tooltip="the person's partial annotation; read only "
                                    "when the project is new (no state.json)")
    self.open_button = PushButton(text="Open project")
    # Choices from a callable: napari resets a docked widget's choices on layer changes.
    self.image = ComboBox(label="image", choices=self._image_ids)
    self.confirm_button = PushButton(text="Confirm selected")
    self.reject_button = PushButton(text="Reject selected")
    self.accept_button = PushButton(text="Confirm all proposed")
    self.apply_button = PushButton(text="Apply edits")
    self.save_button = PushButton(text="Save edits to current/")
    self.round_button = PushButton(text="Run next round")
    self.progress = ProgressBar(label="progress", min=0, max=1, value=0)
    self.legend = Label(value=LEGEND)
    self.status = Label(value="open a project")
    self.extend([self.images_dir, self.project_dir, self.annotations_dir, self.open_button,
                 self.image, self.legend, self.confirm_button, self.reject_button,
                 self.accept_button, self.apply_button, self.save_button, self.round_button,
                 self.progress, self.status])
    self._actions = [self.image, self.confirm_button, self.reject_button, self.accept_button,
                     self.apply_button, self.save_button, self.round_button]
    self.open_button.changed.connect(self.open)
    self.image.changed.connect(self._on_image)
    self.confirm_button.changed.connect(functools.partial(self.set_selected, "confirmed"))
    self.reject_button.changed.connect(functools.partial(self.set_selected, "rejected"))
    self.accept_button.changed.connect(self.confirm_all_proposed)
    self.apply_button.changed.connect(self.apply_edits)
    self.save_button.changed.connect(self.save)
    self.round_button.changed.connect(self.next_round)
    self._enable(False)

  # ------------------------------------------------------------------------ helpers

  def _say(self, text: str, error: bool = False) -> None:
    self.status.value = text
    if error:
      show_error(text)

  def _enable(self, on: bool) -> None:
    for w in self._actions:
      w.enabled = on

  def _guard(self, fn, *args):
    """fn(*args), with a pa_jax error shown as one line instead of raised."""
    try:
      return fn(*args)
    except PaJaxError as e:
      self._say(str(e), error=True)
      return None

  def _image_ids(self, _widget=None) -> list[str]:
    return self.session.image_ids if self.session is not None else []

  @property
  def review_layer(self):
    return self.viewer.layers[REVIEW_LAYER] if REVIEW_LAYER in self.viewer.layers else None

  # ----------------------------------------------------------------------- project

  def open(self, _value=None):
    """Opens the project (`Session.open`) and shows its first image; returns the session."""
    from pa_jax.annotate.session import Session

    if self.images_dir.value is None or self.project_dir.value is None:
      self._say("choose the images folder and the project folder", error=True)
      return None
    project = self.project_dir.value
    # No config: an existing project continues with its own (Session.stored_config).
    session = self._guard(lambda: Session.open(self.images_dir.value, project,
                                               self.annotations_dir.value))
    if session is None:
      return None
    self.session, self.shown = session, None
    self.image.reset_choices()
    self._enable(bool(session.image_ids))
    if session.image_ids:
      self.image.value = session.image_ids[0]
      self.show(session.image_ids[0])
    self._say(summary(session.status()))
    return session

  def _on_image(self, image_id) -> None:
    if self.session is not None and image_id and image_id != self.shown:
      self.apply_edits()
      self.show(image_id)

  def show(self, image_id: str) -> None:
    """Puts `image_id`'s image and review map into the two layers (created once)."""
    s = self.session
    image, review = s.image(image_id), s.review_map(image_id)
    if IMAGE_LAYER in self.viewer.layers:
      layer = self.viewer.layers[IMAGE_LAYER]
      if layer.rgb != (image.ndim == 3):  # rgb is fixed at creation
        self.viewer.layers.remove(layer)
    if IMAGE_LAYER in self.viewer.layers:
      self.viewer.layers[IMAGE_LAYER].data = image
      self.viewer.layers[IMAGE_LAYER].reset_contrast_limits()
    else:
      self.viewer.add_image(image, name=IMAGE_LAYER, rgb=image.ndim == 3)
    if self.review_layer is None:
      self.viewer.add_labels(review, name=REVIEW_LAYER, opacity=0.6)
    else:
      self.review_layer.data = review
    self.shown = image_id
    self._recolour()

  def _recolour(self) -> None:
    """State colours, features and a fresh label to draw with, from the session."""
    layer, i = self.review_layer, self.shown
    layer.colormap = colors.state_colormap(self.session.colors(i))
    layer.features = colors.features(self.session.nuclei(i))
    st = self.session.states[i]
    layer.selected_label = int(max(getattr(st, "next_id", 1), layer.data.max() + 1))

  # ------------------------------------------------------------------------- edits

  def apply_edits(self, _value=None):
    """Hands the layer's edits of the shown image to `Session.apply_edit`; returns its
    EditCounts (None when nothing changed)."""
    layer = self.review_layer
    if self.session is None or self.shown is None or layer is None:
      return None
    edited = np.asarray(layer.data)
    if np.array_equal(edited, self.session.review_map(self.shown)):
      return None
    counts = self._guard(self.session.apply_edit, self.shown, edited.astype(np.int32))
    layer.data = self.session.review_map(self.shown)  # erased proposals come back red
    self._recolour()
    if counts is not None:
      self._say(summary(self.session.status()))
    return counts

  def set_selected(self, state: str, _value=None):
    """Confirms or rejects the layer's selected label (`Session.set_state`)."""
    if self.session is None or self.review_layer is None:
      return None
    self.apply_edits()
    k = int(self.review_layer.selected_label)
    if k not in self.session.states[self.shown].nuclei:
      self._say(f"label {k} is no nucleus of {self.shown}: pick one with the label picker",
                error=True)
      return None
    counts = self._guard(self.session.set_state, self.shown, [k], state)
    self.show(self.shown)
    self._say(f"nucleus {k}: {state}; " + summary(self.session.status()))
    return counts

  def confirm_all_proposed(self, _value=None):
    """Confirms every proposal of the shown image as it stands."""
    if self.session is None or self.shown is None:
      return None
    self.apply_edits()
    ids = [k for k, n in self.session.nuclei(self.shown).items() if n.state == "proposed"]
    counts = self._guard(self.session.set_state, self.shown, ids, "confirmed")
    self.show(self.shown)
    self._say(summary(self.session.status()))
    return counts

  def save(self, _value=None) -> list:
    """Writes the edits into the project's current/ files (`Session.save_edits`)."""
    if self.session is None:
      return []
    self.apply_edits()
    written = self._guard(self.session.save_edits) or []
    self._say(f"saved {len(written)} files to {self.session.output / 'current'}" if written
              else "nothing to save (edits are saved once a round has been run)")
    return written

  # ------------------------------------------------------------------------- rounds

  def next_round(self, _value=None):
    """Runs `Session.next_round` in a thread worker; returns the worker."""
    if self.session is None:
      self._say("open a project first", error=True)
      return None
    self.apply_edits()
    self._enable(False)
    self.open_button.enabled = False
    if self.review_layer is not None:
      self.review_layer.editable = False  # the round replaces the states it read
    self.progress.value = 0
    self._say(f"round {self.session.round + 1}: training ...")
    self.worker = create_worker(progress_steps, self.session.next_round, _start_thread=False,
                                _connect={"yielded": self._on_progress,
                                          "returned": self._on_round,
                                          "errored": self._on_error,
                                          "finished": self._on_finished})
    self.worker.start()
    return self.worker

  def _on_progress(self, report: tuple) -> None:
    stage, done, total = show_report(self.progress, report)
    self.status.value = f"round {self.session.round + 1}: {stage} {done}/{total}"

  def _on_round(self, report: dict) -> None:
    self.show(self.shown or self.session.image_ids[0])
    self._say(summary(report))

  def _on_error(self, err: BaseException) -> None:
    self._say(error_line(err), error=True)

  def _on_finished(self) -> None:
    self._enable(True)
    self.open_button.enabled = True
    if self.review_layer is not None:
      self.review_layer.editable = True
