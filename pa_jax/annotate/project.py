"""An annotation project on disk: state.json, the state maps, the editable files, a round.

Layout of OUTPUT:
  state.json            the commit point: round, per-image nucleus tables, file hashes
  state/r{k}/           label maps of round k: {id}_labels.tif (what was written to
                        current/), {id}_rejected.tif (rejected regions); 32-bit TIFF,
                        ids only grow (older projects read as .png too)
  current -> .current/r{k}   the files to edit (a symlink, swapped atomically)
  round_{k}/            annotations/, overlays/{id}.png, report.md, report.json
  train/round_{k}/      the training run of round k (checkpoints, metrics.jsonl)

Crash safety: every file goes through `pa_jax.fileio` atomic writers; `write_round` writes
the files of round k to new folders first, replaces `state.json` last (the commit), then
swaps the `current` link. A crash at any point leaves `state.json` and the folder it names
consistent; rerunning redoes the unfinished round.

Edits made outside pa_jax (QuPath, Fiji, any editor of the chosen formats) are found by
hash: `edited_file` returns the changed file of an image (the one edited last; of one
export, the exact label map), `pick_up_edits` applies it with `review.apply_edits`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from pa_jax import fileio
from pa_jax.annotate import formats as F
from pa_jax.annotate.label_io import sidecar_path
from pa_jax.annotate.nuclei import Nucleus, table_from_json, table_to_json
from pa_jax.annotate.report import markdown, overlay
from pa_jax.annotate.review import HUMAN, ImageState, apply_edits
from pa_jax.data import readers
from pa_jax.errors import InputError

STATE_VERSION = 1
DEFAULT_FORMATS = ("geojson", "roi", "label")


@dataclasses.dataclass
class ProjectImage:
  """One image of a project, as read from the images folder."""

  id: str
  image: np.ndarray  # raw uint8/uint16 [H, W] or [H, W, 3], as read
  file_name: str


def load_images(images) -> list[ProjectImage]:
  """Every image of a folder of images or a dataset folder, in the readers' order."""
  records = readers.open_dataset(images)
  return [ProjectImage(r.id, readers.read_image(r.image_path), r.image_path.name)
          for r in records]


# ======================================================================= file formats


def export_image(folder: Path, image_id: str, labels: np.ndarray, nuclei: Mapping[int, Nucleus],
                 formats: Sequence[str], contours: str, coco=None,
                 file_name: str | None = None) -> list[Path]:
  """Writes one image's annotation in `formats` (`pa_jax.annotate.formats`); returns the
  files written (COCO goes to `coco`, a CocoCollector, written once per folder)."""
  return [Path(p) for p in F.export_all(folder, image_id, labels, dict(nuclei), tuple(formats),
                                        contours, coco=coco, file_name=file_name)]


def read_image_annotation(path: Path, image_id: str, shape: tuple[int, int]
                          ) -> tuple[np.ndarray, dict[int, Nucleus]] | None:
  """(labels int32 [H, W], nuclei) of one image from a folder or a file in any supported
  format; None when the image has no annotation there. Shapes without a state are
  confirmed, without a source 'human'."""
  got = F.read_annotations(path, image_id, tuple(shape), default_source=HUMAN)
  if got is None:
    return None
  labels, nuclei = got
  return np.asarray(labels, np.int32), dict(nuclei or {})


def _sha(path: Path) -> str:
  return hashlib.sha256(path.read_bytes()).hexdigest()


def _image_files(folder: Path, image_id: str) -> list[tuple[str, Path]]:
  """(format, path) of the files that can hold `image_id`'s annotation in a folder the
  loop wrote, in read priority among files of one export: the label map (exact, pixel
  for pixel) and its `.nuclei.json` states first, then GeoJSON, ROI zip, COCO (outlines
  as polygons, rasterised back)."""
  paths = F.output_paths(folder, image_id)
  label = paths["label"] if paths["label"].is_file() else paths["label"].with_suffix(".tif")
  return [("label", label), ("label", sidecar_path(label)), ("geojson", paths["geojson"]),
          ("roi", paths["roi"]), ("coco", paths["coco"])]


def edited_file(folder: Path, image_id: str, written: Mapping[str, str]) -> Path | None:
  """The file of `image_id` in `folder` that a person changed since the loop wrote it
  (`written`: file name → sha256); None when nothing changed.

  Of several changed files, the one modified last holds the latest edit; files modified
  within `formats.SAME_EXPORT_SECONDS` of it were written together (one export, e.g. a
  GUI's save, `Session.save_edits`), and of those the label map is read: it holds the
  nuclei exactly, where a polygon outline read back can swallow a neighbour's pixels or a
  small rejected region. A changed `.nuclei.json` (states edited in the table) means its
  label map is read. Files the loop did not write (the measurements CSV) and deleted
  files are not edits."""
  files = _image_files(folder, image_id)
  changed = []  # (mtime, priority, file to read)
  for order, (_, p) in enumerate(files):
    if p.name in written and p.is_file() and written[p.name] != _sha(p):
      changed.append((p.stat().st_mtime, order, files[0][1] if order == 1 else p))
  if not changed:
    return None
  newest = max(t for t, _, _ in changed)
  return min((order, p) for t, order, p in changed
             if t >= newest - F.SAME_EXPORT_SECONDS)[1]


# ======================================================================= persistence


def _state_to_json(st: ImageState) -> dict:
  return {"id": st.id, "next_id": st.next_id, "nuclei": table_to_json(st.nuclei),
          "rejected": table_to_json(st.rejected_nuclei)}


def _state_from_json(d: Mapping, labels: np.ndarray, rejected: np.ndarray) -> ImageState:
  return ImageState(d["id"], labels, table_from_json(d["nuclei"]), rejected,
                    table_from_json(d["rejected"]), int(d["next_id"]))


def load_state(output: Path) -> dict | None:
  """The parsed OUTPUT/state.json, or None when there is no project there yet."""
  path = Path(output) / "state.json"
  if not path.is_file():
    return None
  try:
    data = json.loads(path.read_text())
  except (OSError, json.JSONDecodeError) as e:
    raise InputError(path, f"cannot read the annotation state ({e})") from None
  if data.get("version") != STATE_VERSION:
    raise InputError(path, f"state version {data.get('version')} is not {STATE_VERSION}")
  return data


def load_image_states(output: Path, data: Mapping) -> dict[str, ImageState]:
  """{image id: ImageState} as the round named by `data` (state.json) wrote them."""
  folder = Path(output) / data["state_dir"]
  out = {}
  for d in data["images"]:
    maps = []
    for kind in ("labels", "rejected"):
      # TIFF since ids may pass 65,535; projects saved before that wrote 16-bit PNG.
      path = readers.find_file(folder, f"{d['id']}_{kind}", (".tif", ".png"))
      if path is None:
        raise InputError(folder / f"{d['id']}_{kind}.tif", "missing from the saved annotation "
                         "state (the project folder was changed by hand?)")
      maps.append(readers.read_label_map(path))
    out[d["id"]] = _state_from_json(d, *maps)
  return out


def point_current(output: Path, target_rel: str) -> None:
  """Atomically (re)points OUTPUT/current at OUTPUT/target_rel."""
  link = output / "current"
  if link.is_symlink() and os.readlink(link) == target_rel:
    return
  if link.exists() and not link.is_symlink():
    raise InputError(link, "is a real folder; the annotation loop keeps a link here "
                     "(move it away and rerun)")
  tmp = output / f".current.link.{os.getpid()}"
  if tmp.is_symlink():
    tmp.unlink()
  try:
    os.symlink(target_rel, tmp)
    os.replace(tmp, link)
  except OSError as e:
    raise InputError(link, f"cannot point the 'current' link at {target_rel} "
                     f"({e.strerror or e}); the folder itself is complete") from None


# ====================================================================== reading edits


def initial_states(imgs: Sequence[ProjectImage], annotations) -> dict[str, ImageState]:
  """First invocation: each image's state from the person's annotation (None: none)."""
  states = {}
  for im in imgs:
    got = None if annotations is None else read_image_annotation(Path(annotations), im.id,
                                                                 im.image.shape[:2])
    labels, nuclei = got if got is not None else (np.zeros(im.image.shape[:2], np.int32), {})
    states[im.id] = ImageState.initial(im.id, labels, nuclei)
  return states


def pick_up_edits(output: Path, data: Mapping, states: Mapping[str, ImageState], accept: bool,
                  match_iou: float) -> tuple[dict[str, ImageState], dict[str, dict]]:
  """The states after the edits found in OUTPUT/current, and per image the EditCounts
  dict plus 'file': the edited file's name (None when nothing changed)."""
  folder = output / data["current_dir"]
  written = {d["id"]: d.get("files", {}) for d in data["images"]}
  new, edits = {}, {}
  for image_id, st in states.items():
    f = edited_file(folder, image_id, written.get(image_id, {}))
    if f is None:
      new[image_id], c = apply_edits(st, None, None, accept_proposals=accept)
    else:
      got = read_image_annotation(f, image_id, st.labels.shape)
      labels, nuclei = got if got is not None else (np.zeros_like(st.labels), {})
      new[image_id], c = apply_edits(st, labels, nuclei, accept_proposals=accept,
                                     match_iou=match_iou)
    edits[image_id] = dict(c.as_dict(), file=None if f is None else f.name)
  return new, edits


def _annotation_files(annotations: Path) -> list[Path]:
  """The files of a person's annotation folder and its direct sub-folders."""
  if annotations.is_file():
    return [annotations]
  return sorted(p for p in annotations.rglob("*")
                if p.is_file() and not p.name.startswith(".")
                and len(p.relative_to(annotations).parts) <= 2)


def check_annotations_matched(images, annotations, states: Mapping[str, ImageState]) -> None:
  """On a first invocation where no image got an annotation: one line naming the images
  and annotations folders and the annotation files that match no image name (instead
  of training's later 'no annotated nucleus in the training images')."""
  if any(st.nuclei or st.rejected_nuclei for st in states.values()):
    return
  annotations = Path(annotations)
  if not annotations.exists():
    raise InputError(annotations, "annotations not found")
  ids = sorted(states)
  files = _annotation_files(annotations)
  unmatched = [p.name for p in files if not any(p.name.startswith(i) for i in ids)]
  example = f"{ids[0]}.geojson" if ids else "IMAGE.geojson"
  if unmatched:
    shown = ", ".join(unmatched[:3]) + (f" and {len(unmatched) - 3} more"
                                         if len(unmatched) > 3 else "")
    raise InputError(annotations, f"no annotation matches an image of {images}: "
                     f"{len(unmatched)} of the {len(files)} files here match no image name "
                     f"({shown}); name each file after its image, e.g. {example}")
  raise InputError(annotations, f"holds no annotated nucleus for the images of {images} "
                   f"({len(files)} files read); annotate a few nuclei per image, e.g. in "
                   f"{example}")


# ======================================================================= one round


def write_round(output: Path, r: int, order: Sequence[str], merged: Mapping[str, ImageState],
                by_id: Mapping[str, ProjectImage], report: Mapping, history: Sequence[Mapping],
                formats: Sequence[str], contours: str, stats: Mapping, seed: int, hold: float,
                on_image=None) -> None:
  """Writes round r; `state.json` last (the commit), then swaps the `current` link.

  on_image: called with (done, total) after each image's files are written, or None.
  """
  round_dir = output / f"round_{r}"
  cur_rel = f".current/r{r}"
  cur_dir = output / cur_rel
  state_rel = f"state/r{r}"
  if cur_dir.exists():  # left over by a crash in this round
    shutil.rmtree(cur_dir)
  files = {}
  coco = F.CocoCollector(cur_dir / F.COCO_FILENAME) if "coco" in formats else None
  archive = round_dir / "annotations"  # the round's copy of what `current` holds
  archive.mkdir(parents=True, exist_ok=True)
  for n, i in enumerate(order):
    st = merged[i]
    # Exported once (contours, spline fits) into `current`, then copied to the round's
    # archive: the two folders hold the same bytes.
    written = export_image(cur_dir, i, st.labels, st.nuclei, formats, contours, coco,
                           by_id[i].file_name)
    for p in written:
      fileio.write_bytes(archive / p.name, p.read_bytes())  # atomic, like every write here
    fileio.write_png(round_dir / "overlays" / f"{i}.png", overlay(by_id[i].image, st))
    files[i] = {p.name: _sha(p) for p in written}
    # TIFF: ids only grow (each round's proposals get fresh ones), past a PNG's 65,535.
    fileio.write_label_map(output / state_rel / f"{i}_labels.tif", st.labels)
    fileio.write_label_map(output / state_rel / f"{i}_rejected.tif", st.rejected)
    if on_image is not None:
      on_image(n + 1, len(order))
  if coco is not None:
    coco.write()
    fileio.write_bytes(archive / F.COCO_FILENAME, (cur_dir / F.COCO_FILENAME).read_bytes())
    digest = _sha(cur_dir / F.COCO_FILENAME)
    for i in order:
      files[i][F.COCO_FILENAME] = digest
  fileio.write_json(round_dir / "report.json", report)
  fileio.write_text(round_dir / "report.md", markdown(report, history))
  data = {"version": STATE_VERSION, "round": r, "current_dir": cur_rel, "state_dir": state_rel,
          "seed": int(seed), "holdout_fraction": hold, "formats": list(formats),
          "contours": contours, "dataset": dict(stats), "history": list(history),
          "images": [dict(_state_to_json(merged[i]), files=files[i]) for i in order]}
  fileio.write_json(output / "state.json", data)  # the commit
  point_current(output, cur_rel)
