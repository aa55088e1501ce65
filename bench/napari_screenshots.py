"""Screenshots of the napari plugin, rendered by the real viewer (docs/napari.md).

  docs/figures/napari_segment.png    the "Segment nuclei" widget docked, its result on a
                                     dsb2018 fluorescence image (classical floor, or the
                                     trained run given with --workdir)
  docs/figures/napari_annotate.png   the "Annotation assistant" on a round-1 project over
                                     dsb2018 images: nuclei coloured by review state

The annotation project is made here unless --project is given: `--images` dsb2018 test
images (256x256 fluorescence) with 25 % of their nuclei as the person's annotation
(`partial_views.keep_instances`, the DH25 rule, seed 0), then one round of
`Session.next_round` with configs/annotate.py for `--steps` steps (the assistant's own
code; ~10 min on a 2-core CPU for 120 steps). The viewer runs on Xvfb (started through
pyvirtualdisplay, from requirements-napari.txt, when DISPLAY is unset) with Qt's xcb
platform: the offscreen platform renders no OpenGL canvas. Debian/Ubuntu packages:
xvfb libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1.

  python bench/napari_screenshots.py --scratch /tmp/napari_shots
  python bench/napari_screenshots.py --scratch /tmp/napari_shots --project /tmp/napari_shots/project
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))
# Qt's offscreen platform cannot show an OpenGL canvas ("QOpenGLWidget is not supported
# on this platform": screenshots come out black); its X11 platform on Xvfb can, headless.
os.environ.setdefault("QT_QPA_PLATFORM", "xcb")


# dsb2018 test images, 256x256 fluorescence, 28-54 nuclei each.
IMAGE_IDS = ("356d9903d16074f152fe8f2f0ef555d9959c53264228eae7373cad5cf35d4e85",
             "003cee89357d9fe13516167fd67b609a164651b21934585648c740d2c3d86dc1",
             "23830d0e51245fc0c9e410efa4c17d2a7d83a0104a3777130119ab892de47a4e",
             "37ed50eea5a1e0bade3e6753793b6caeb061cd4c2f365658c257f69cab1f6288")
WINDOW = (1280, 760)
MAX_BYTES = 300_000


def ensure_display():
  """An Xvfb display for napari's OpenGL canvas when there is no X server (else None)."""
  if os.environ.get("DISPLAY"):
    return None
  from pyvirtualdisplay import Display

  display = Display(backend="xvfb", size=(WINDOW[0] + 200, WINDOW[1] + 200))
  display.start()
  return display


def wait(worker) -> None:
  """Runs the Qt event loop until a napari worker's `finished` has been delivered (its
  results are then in the widget: they come through the same queued signals first)."""
  from qtpy.QtWidgets import QApplication

  done = []
  worker.finished.connect(lambda: done.append(True))
  while not done:
    QApplication.processEvents()
    time.sleep(0.05)


def window_with_canvas(viewer):
  """PIL RGB image of the whole window with the rendered canvas pasted in (a grab of the
  window may leave the OpenGL canvas blank; `canvas_only=True` renders it)."""
  from PIL import Image
  from qtpy.QtCore import QPoint

  viewer.reset_view()
  window = viewer.window._qt_window
  canvas = viewer.window._qt_viewer.canvas.native
  shot = Image.fromarray(viewer.screenshot(canvas_only=False, flash=False)).convert("RGB")
  scene = Image.fromarray(viewer.screenshot(canvas_only=True, flash=False)).convert("RGB")
  pos = canvas.mapTo(window, QPoint(0, 0))
  ratio = shot.width / window.width()  # device pixels per window pixel
  box = (round(pos.x() * ratio), round(pos.y() * ratio))
  size = (round(canvas.width() * ratio), round(canvas.height() * ratio))
  shot.paste(scene.resize(size, Image.LANCZOS), box)
  return shot


def save_png(viewer, path: Path) -> int:
  """The whole window (canvas, layer list, docked widget) as a PNG under MAX_BYTES;
  returns its size in bytes."""
  from PIL import Image
  from qtpy.QtWidgets import QApplication

  QApplication.processEvents()
  shot = window_with_canvas(viewer)
  width = shot.width
  while True:
    img = shot if width == shot.width else shot.resize(
        (width, round(shot.height * width / shot.width)), Image.LANCZOS)
    buf = io.BytesIO()
    img.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(buf, "PNG", optimize=True)
    if buf.tell() <= MAX_BYTES or width < 640:
      break
    width = int(width * 0.85)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(buf.getvalue())
  return buf.tell()


def new_viewer():
  import napari
  from qtpy.QtWidgets import QApplication

  viewer = napari.Viewer(show=True, title="napari + pa_jax")  # on Xvfb: nothing visible
  viewer.window._qt_window.resize(*WINDOW)
  QApplication.processEvents()
  return viewer


def segment_figure(dataset: Path, image_id: str, workdir: str | None, out: Path) -> str:
  from pa_jax.data.readers import read_image
  from pa_jax.napari import engines
  from pa_jax.napari.segment_widget import SegmentWidget

  viewer = new_viewer()
  image = read_image(dataset / "images" / f"{image_id}.png")
  viewer.add_image(image, name=image_id[:8])
  widget = SegmentWidget(viewer)
  viewer.window.add_dock_widget(widget, name="Segment nuclei (pa_jax)", area="right")
  if workdir:
    widget.model.value = engines.TRAINED_RUN
    widget.folder.value = workdir
  worker = widget.start()
  if worker is None:
    raise SystemExit(f"error: {widget.status.value}")
  wait(worker)
  if "nuclei (" not in widget.status.value:
    raise SystemExit(f"error: {widget.status.value}")
  viewer.layers[f"{image_id[:8]} nuclei"].contour = 0
  status = widget.status.value
  size = save_png(viewer, out)
  viewer.close()
  return f"{out}: {status}, {size / 1000:.0f} KB"


def make_project(dataset: Path, scratch: Path, ids, steps: int) -> tuple[Path, Path]:
  """images/ + annots/ (25 % of each image's nuclei, seed 0) and one real round."""
  from pa_jax import fileio
  from pa_jax.annotate.session import Session, resolve_config
  from pa_jax.data.partial_views import image_rng, keep_instances
  from pa_jax.data.readers import read_label_map

  images, annots, project = scratch / "images", scratch / "annots", scratch / "project"
  for i in ids:
    fileio.write_bytes(images / f"{i}.png", (dataset / "images" / f"{i}.png").read_bytes())
    labels = read_label_map(dataset / "labels" / f"{i}.png")
    fileio.write_label_map(annots / f"{i}.png", keep_instances(labels, 0.25,
                                                               image_rng(0, i, "keep")))
  session = Session.open(images, project, annots, config=resolve_config(steps=steps))
  report = session.next_round(on_progress=lambda stage, done, total: print(
      f"  {stage} {done}/{total}", flush=True) if done in (0, total) or stage != "train"
      else None)
  print(f"round 1: {report['totals']}", flush=True)
  return images, project


def annotate_figure(images: Path, project: Path, out: Path) -> str:
  from pa_jax.napari.annotate_widget import REVIEW_LAYER, AnnotateWidget

  viewer = new_viewer()
  widget = AnnotateWidget(viewer)
  widget.native.setMaximumWidth(430)  # long image ids would squeeze the canvas
  viewer.window.add_dock_widget(widget, name="Annotation assistant (pa_jax)", area="right")
  widget.images_dir.value, widget.project_dir.value = images, project
  if widget.open() is None:
    raise SystemExit(f"error: {widget.status.value}")
  # One edit of each kind, so the figure shows all three states: reject the first
  # proposal (through the widget's own button).
  s = widget.session
  shown = s.review_map(widget.shown)
  proposed = sorted((-(shown == k).sum(), k) for k, n in s.nuclei(widget.shown).items()
                    if n.state == "proposed")  # the largest first: visible in the figure
  if proposed:
    viewer.layers[REVIEW_LAYER].selected_label = proposed[0][1]
    widget.set_selected("rejected")
  viewer.layers[REVIEW_LAYER].contour = 0
  status = widget.status.value
  size = save_png(viewer, out)
  viewer.close()
  return f"{out}: {status}, {size / 1000:.0f} KB"


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--dataset", default=str(ROOT.parent / "shared" / "datasets" / "dsb2018"))
  ap.add_argument("--workdir", default=None, help="trained run for the segment figure "
                  "(default: the classical floor)")
  ap.add_argument("--project", default=None, help="an existing annotation project over "
                  "SCRATCH/images (default: make one in SCRATCH)")
  ap.add_argument("--scratch", default="/tmp/pa_jax_napari_shots")
  ap.add_argument("--steps", type=int, default=120, help="round-1 training steps")
  ap.add_argument("--output", default=str(ROOT / "docs" / "figures"))
  ap.add_argument("--only", choices=("segment", "annotate"), default=None)
  args = ap.parse_args(argv)
  dataset, scratch, out = Path(args.dataset), Path(args.scratch), Path(args.output)
  display = ensure_display()
  try:
    if args.only in (None, "segment"):
      print(segment_figure(dataset, IMAGE_IDS[0], args.workdir, out / "napari_segment.png"))
    if args.only in (None, "annotate"):
      if args.project:
        images, project = scratch / "images", Path(args.project)
      else:
        images, project = make_project(dataset, scratch, IMAGE_IDS, args.steps)
      print(annotate_figure(images, project, out / "napari_annotate.png"))
  finally:
    if display is not None:
      display.stop()
  return 0


if __name__ == "__main__":
  sys.exit(main())
