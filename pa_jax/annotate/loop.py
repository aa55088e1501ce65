"""The annotation loop (`run.py annotate`): train → predict → merge → review, in rounds.

A person annotates some nuclei; each round trains (round 1) or fine-tunes (later rounds)
the partial-annotation model on what is confirmed, predicts every image and merges the
predictions into the annotation as *proposals*. The person reviews the files in
`OUTPUT/current/` (Fiji, QuPath, any editor of the chosen formats) and runs the same
command again; the loop picks up the edits. See docs/annotate.md for the whole story.

Review states (`pa_jax.annotate.nuclei.Nucleus.state`):
  confirmed  drawn by a person or accepted: the training labels (minus a hold-out);
  proposed   suggested by the model: unannotated for the loss (ignored, like any nucleus
             nobody labelled), replaced by the next round's predictions;
  rejected   a proposal the person deleted (or a shape classified "rejected"): its region
             is a hard negative (`TrainExample.negatives`) and nothing is proposed there
             again.

Layout of OUTPUT:
  state.json            the commit point: round, per-image nucleus tables, file hashes
  state/r{k}/           label maps of round k: {id}_labels.tif (what was written to
                        current/), {id}_rejected.tif (rejected regions); 32-bit TIFF,
                        ids only grow (projects from before read as .png too)
  current -> .current/r{k}   the files to edit (a symlink, swapped atomically)
  round_{k}/            annotations/, overlays/{id}.png, report.md, report.json
  train/round_{k}/      the training run of round k (checkpoints, metrics.jsonl)

Crash safety: every file goes through `pa_jax.fileio` atomic writers; the files of round
k are written to new folders first, `state.json` is replaced last (the commit), then the
`current` link is swapped. A crash at any point leaves `state.json` and the folder it
names consistent; rerunning the command redoes the unfinished round (training resumes
from its checkpoints when its data did not change).

Pure functions (`apply_edits`, `merge_predictions`, `split_holdout`, `holdout_scores`,
`image_counts`) hold the rules and are tested on synthetic label maps.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from pa_jax import fileio
from pa_jax.annotate.nuclei import Nucleus, STATE_COLORS, pixels_by_label
from pa_jax.errors import InputError

STATE_VERSION = 1
HUMAN = "human"
DEFAULT_FORMATS = ("geojson", "roi", "label")


# =============================================================================== state


@dataclasses.dataclass
class ImageState:
  """The annotation of one image between rounds.

  labels: int32 (H, W), the confirmed and proposed nuclei (what current/ holds).
  nuclei: {id: Nucleus} for every label of `labels` (confirmed | proposed).
  rejected: int32 (H, W), rejected regions, each its own id (may overlap `labels` where
    a person later drew a nucleus; confirmed pixels always win).
  rejected_nuclei: {id: Nucleus} (state 'rejected') for every label of `rejected`.
  next_id: the next unused id (ids are never reused within an image).
  """

  id: str
  labels: np.ndarray
  nuclei: dict
  rejected: np.ndarray
  rejected_nuclei: dict
  next_id: int

  @classmethod
  def initial(cls, image_id: str, labels: np.ndarray, nuclei: Mapping[int, Nucleus] | None = None
              ) -> "ImageState":
    """From a person's annotation: every nucleus confirmed unless its file says otherwise
    ('rejected' shapes become rejected regions, 'proposed' ones stay proposals)."""
    labels = np.asarray(labels, np.int32)
    shape = labels.shape
    empty = cls(image_id, np.zeros(shape, np.int32), {}, np.zeros(shape, np.int32), {},
                int(labels.max(initial=0)) + 1)
    nuclei = dict(nuclei or {})
    keep, rej = {}, {}
    for k in _ids(labels):
      n = nuclei.get(k)
      state = n.state if n is not None else "confirmed"
      src = (n.source if n is not None and n.source else HUMAN)
      entry = Nucleus(k, state, None if n is None else n.score, src)
      (rej if state == "rejected" else keep)[k] = entry
    empty.labels = np.where(np.isin(labels, list(keep)), labels, 0).astype(np.int32)
    empty.nuclei = keep
    empty.rejected = np.where(np.isin(labels, list(rej)), labels, 0).astype(np.int32)
    empty.rejected_nuclei = rej
    return empty

  def confirmed_ids(self) -> list[int]:
    return sorted(k for k, n in self.nuclei.items() if n.state == "confirmed")

  def confirmed_map(self) -> np.ndarray:
    return np.where(np.isin(self.labels, self.confirmed_ids()), self.labels, 0).astype(np.int32)

  def negatives(self) -> np.ndarray | None:
    """Rejected regions minus confirmed pixels (the training negatives), or None."""
    if not self.rejected.any():
      return None
    neg = np.where(self.confirmed_map() > 0, 0, self.rejected).astype(np.int32)
    return neg if neg.any() else None


def _ids(labels: np.ndarray) -> list[int]:
  u = np.unique(labels)
  return [int(k) for k in u if k != 0]


def _areas(labels: np.ndarray) -> dict[int, int]:
  u, c = np.unique(labels, return_counts=True)
  return {int(k): int(n) for k, n in zip(u, c) if k != 0}


def _overlap(a: np.ndarray, b: np.ndarray) -> tuple[dict[int, int], dict[int, int],
                                                     dict[tuple[int, int], int]]:
  """(areas of a's labels, areas of b's labels, {(label in a, label in b): overlapping
  pixels} for every overlapping pair), all from one contingency table of the two maps."""
  from pa_jax.evaluation.metrics import contingency

  t = contingency(a, b)
  area_a = {int(k): int(n) for k, n in zip(t.gt_labels, t.gt_area)}
  area_b = {int(k): int(n) for k, n in zip(t.pred_labels, t.pred_area)}
  pairs = {(int(t.gt_labels[i]), int(t.pred_labels[j])): int(n)
           for i, j, n in zip(t.gi, t.pj, t.inter)}
  return area_a, area_b, pairs


# ======================================================================== edit pick-up


@dataclasses.dataclass
class EditCounts:
  accepted: int = 0      # proposals the person confirmed (or --accept-proposals)
  rejected: int = 0      # proposals deleted / classified rejected
  added: int = 0         # new shapes drawn by the person
  deleted: int = 0       # confirmed nuclei the person removed
  reshaped: int = 0      # kept nuclei whose outline changed
  unrejected: int = 0    # rejected regions dropped because a person drew a nucleus there

  def as_dict(self) -> dict:
    return dataclasses.asdict(self)


def apply_edits(prev: ImageState, labels: np.ndarray | None,
                nuclei: Mapping[int, Nucleus] | None, *, accept_proposals: bool = False,
                match_iou: float = 0.5) -> tuple[ImageState, EditCounts]:
  """The state after a person edited the files written from `prev`.

  `labels`/`nuclei`: what the edited file holds (None = the file was not edited).
  Rules: a file nucleus is the written nucleus with the same id when they overlap,
  otherwise the written nucleus it overlaps with IoU >= `match_iou`; the file's geometry
  always wins. A written proposal missing from the file → rejected (its written mask
  joins the rejected regions); one the file marks confirmed (or any remaining one with
  `accept_proposals`) → confirmed, source kept; one marked rejected → rejected. A file
  shape matching nothing is new: confirmed, source 'human' (or a rejected region when
  the file marks it rejected). A written confirmed nucleus missing from the file is
  removed (a person deleted it; not a negative). Rejected regions of which a confirmed
  nucleus now covers half or more are dropped ("un-rejected").
  """
  counts = EditCounts()
  st = copy.deepcopy(prev)
  if labels is None:  # not edited: only --accept-proposals can change anything
    if accept_proposals:
      for k, n in st.nuclei.items():
        if n.state == "proposed":
          st.nuclei[k] = dataclasses.replace(n, state="confirmed")
          counts.accepted += 1
    return st, counts

  labels = np.asarray(labels, np.int32)
  if labels.shape != prev.labels.shape:
    raise InputError(prev.id, f"edited annotation is {labels.shape} but the image is "
                     f"{prev.labels.shape}")
  file_nuclei = dict(nuclei or {})
  prev_area, file_area, inter = _overlap(prev.labels, labels)
  match: dict[int, int] = {}  # file id -> prev id
  used: set[int] = set()
  for f in sorted(file_area):  # 1) same id and overlapping
    if f in prev.nuclei and inter.get((f, f), 0) > 0:
      match[f] = f
      used.add(f)
  cands = sorted(((n / (prev_area[p] + file_area[f] - n), p, f) for (p, f), n in inter.items()
                  if f not in match and p not in used), reverse=True)
  for iou, p, f in cands:  # 2) geometry, best IoU first, one-to-one
    if iou < match_iou or f in match or p in used:
      continue
    match[f] = p
    used.add(p)

  new_labels = np.zeros_like(labels)
  new_nuclei: dict[int, Nucleus] = {}
  new_rejected = prev.rejected.copy()
  new_rej_nuclei = dict(prev.rejected_nuclei)
  next_id = prev.next_id

  def reject(idx: np.ndarray, score, source: str) -> None:
    """Flat pixels `idx` become a new rejected region (where none is yet)."""
    nonlocal next_id
    rid = next_id
    next_id += 1
    flat = new_rejected.reshape(-1)
    flat[idx[flat[idx] == 0]] = rid
    new_rej_nuclei[rid] = Nucleus(rid, "rejected", score, source)

  file_px, prev_px = pixels_by_label(labels), pixels_by_label(prev.labels)
  new_flat = new_labels.reshape(-1)
  for f in sorted(file_area):
    fpx = file_px[f]
    fstate = file_nuclei[f].state if f in file_nuclei else "confirmed"
    if f in match:
      p = match[f]
      old = prev.nuclei[p]
      if fstate == "rejected":
        reject(fpx, old.score, old.source)
        counts.rejected += 1
        continue
      state = old.state
      if old.state == "proposed" and (fstate == "confirmed" or accept_proposals):
        state = "confirmed"
        counts.accepted += 1
      if not np.array_equal(fpx, prev_px[p]):  # matched ⇒ p overlaps, so it has pixels
        counts.reshaped += 1
      new_flat[fpx] = p
      new_nuclei[p] = dataclasses.replace(old, state=state)
    else:
      if fstate == "rejected":
        reject(fpx, None, HUMAN)
        continue
      nid = next_id
      next_id += 1
      new_flat[fpx] = nid
      new_nuclei[nid] = Nucleus(nid, "confirmed", None, HUMAN)
      counts.added += 1
  for p, old in prev.nuclei.items():
    if p in used:
      continue
    if old.state == "proposed":
      reject(prev_px.get(p, np.zeros(0, np.int64)), old.score, old.source)
      counts.rejected += 1
    else:
      counts.deleted += 1

  st = ImageState(prev.id, new_labels, new_nuclei, new_rejected, new_rej_nuclei, next_id)
  counts.unrejected = _unreject(st)
  return st, counts


def _unreject(st: ImageState) -> int:
  """Drops rejected regions of which confirmed nuclei cover half or more; returns how many."""
  if not st.rejected.any():
    return 0
  conf = st.confirmed_map() > 0
  areas = _areas(st.rejected)
  covered = _areas(np.where(conf, st.rejected, 0))
  gone = [r for r, a in areas.items() if covered.get(r, 0) * 2 >= a]
  if gone:
    st.rejected = np.where(np.isin(st.rejected, gone), 0, st.rejected).astype(np.int32)
    for r in gone:
      st.rejected_nuclei.pop(r, None)
  return len(gone)


# ============================================================================== merge


@dataclasses.dataclass
class MergeCounts:
  predicted: int = 0
  proposed: int = 0
  dropped_confirmed: int = 0  # overlapped a confirmed nucleus
  dropped_rejected: int = 0   # at a rejected region
  dropped_small: int = 0      # too small once confirmed pixels were cut out

  def as_dict(self) -> dict:
    return dataclasses.asdict(self)


def merge_predictions(st: ImageState, pred: np.ndarray, scores: Mapping[int, float],
                      source: str, *, confirmed_overlap: float = 0.2,
                      rejected_iou: float = 0.5, min_area: int = 8
                      ) -> tuple[ImageState, MergeCounts]:
  """Confirmed nuclei + the new predictions as proposals (old proposals are replaced).

  A prediction is dropped when more than `confirmed_overlap` of its pixels lie on
  confirmed nuclei (human wins), when its IoU with a rejected region is >= `rejected_iou`
  or at least half of it lies inside one (never proposed again at that place), or when
  fewer than `min_area` pixels remain after cutting out confirmed pixels. Kept ones get
  fresh ids, state 'proposed', their detection score and `source`.
  """
  pred = np.asarray(pred, np.int32)
  conf = st.confirmed_map()
  out = ImageState(st.id, conf.copy(), {k: st.nuclei[k] for k in st.confirmed_ids()},
                   st.rejected.copy(), dict(st.rejected_nuclei), st.next_id)
  counts = MergeCounts()
  rej_area, p_area, rej_pairs = _overlap(st.rejected, pred)
  counts.predicted = len(p_area)
  on_conf = _areas(np.where(conf > 0, pred, 0))
  at_rejected = set()
  for (r, p), n in rej_pairs.items():
    iou = n / (rej_area[r] + p_area[p] - n)
    if iou >= rejected_iou or 2 * n >= p_area[p]:
      at_rejected.add(p)
  order = sorted(p_area, key=lambda p: (-float(scores.get(p, 0.0)), p))
  pred_px = pixels_by_label(pred)
  out_flat = out.labels.reshape(-1)
  for p in order:
    if on_conf.get(p, 0) > confirmed_overlap * p_area[p]:
      counts.dropped_confirmed += 1
      continue
    if p in at_rejected:
      counts.dropped_rejected += 1
      continue
    # Its pixels off confirmed nuclei (predictions are disjoint: only those are taken).
    idx = pred_px[p][out_flat[pred_px[p]] == 0]
    if idx.size < min_area:
      counts.dropped_small += 1
      continue
    nid = out.next_id
    out.next_id += 1
    out_flat[idx] = nid
    out.nuclei[nid] = Nucleus(nid, "proposed", scores.get(p), source)
    counts.proposed += 1
  return out, counts


# =========================================================================== hold-out


def split_holdout(states: Sequence[ImageState], fraction: float, seed: int, round_: int
                  ) -> dict[str, list[int]]:
  """Held-out confirmed nuclei of a round: {image id: sorted ids}.

  One seeded draw over all confirmed nuclei of all images, seeded by (seed, round) and
  independent of image order: round(fraction · N) nuclei (at least 1 when fraction > 0 and
  N >= 2; never all of them).
  """
  pool = sorted((s.id, k) for s in states for k in s.confirmed_ids())
  out: dict[str, list[int]] = {s.id: [] for s in states}
  n = len(pool)
  if fraction <= 0 or n < 2:
    return out
  k = int(min(n - 1, max(1, np.floor(fraction * n + 0.5))))
  digest = hashlib.sha256(f"holdout:{int(seed)}:{int(round_)}".encode()).digest()
  rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
  for i in np.sort(rng.permutation(n)[:k]):
    image_id, nid = pool[int(i)]
    out[image_id].append(nid)
  for v in out.values():
    v.sort()
  return out


def training_labels(st: ImageState, heldout: Iterable[int]) -> np.ndarray:
  """Confirmed nuclei minus the held-out ones (proposed = unannotated)."""
  keep = [k for k in st.confirmed_ids() if k not in set(heldout)]
  return np.where(np.isin(st.labels, keep), st.labels, 0).astype(np.int32)


def holdout_scores(st: ImageState, heldout: Sequence[int], pred: np.ndarray) -> list[float]:
  """Best IoU of each held-out nucleus with the predicted nuclei (0 when none overlaps)."""
  if not heldout:
    return []
  gt = np.where(np.isin(st.labels, list(heldout)), st.labels, 0)
  g_area, p_area, pairs = _overlap(gt, np.asarray(pred))
  best = {k: 0.0 for k in heldout}
  for (g, p), n in pairs.items():
    best[g] = max(best[g], n / (g_area[g] + p_area[p] - n))
  return [best[k] for k in heldout]


# ============================================================================= counts


def image_counts(st: ImageState) -> dict:
  conf = [n for n in st.nuclei.values() if n.state == "confirmed"]
  human = sum(1 for n in conf if n.source == HUMAN)
  return {"confirmed": len(conf), "confirmed_human": human, "confirmed_accepted": len(conf) - human,
          "proposed": sum(1 for n in st.nuclei.values() if n.state == "proposed"),
          "rejected": len(st.rejected_nuclei)}


COUNT_KEYS = ("confirmed", "confirmed_human", "confirmed_accepted", "proposed", "rejected")


def total_counts(rows: Sequence[Mapping[str, Any]], keys: Iterable[str]) -> dict:
  return {k: int(sum(int(r.get(k, 0) or 0) for r in rows)) for k in keys}


# ======================================================================= file formats


def export_image(folder: Path, image_id: str, labels: np.ndarray, nuclei: Mapping[int, Nucleus],
                 formats: Sequence[str], contours: str, coco=None,
                 file_name: str | None = None) -> list[Path]:
  """Writes one image's annotation in `formats` (`pa_jax.annotate.formats`); returns the
  files written (COCO goes to `coco`, a CocoCollector, written once per folder)."""
  from pa_jax.annotate import formats as F

  return [Path(p) for p in F.export_all(folder, image_id, labels, dict(nuclei), tuple(formats),
                                        contours, coco=coco, file_name=file_name)]


def read_image_annotation(path: Path, image_id: str, shape: tuple[int, int]
                          ) -> tuple[np.ndarray, dict[int, Nucleus]] | None:
  """(labels, nuclei) of one image from a folder or a file in any supported format;
  None when the image has no annotation there. Shapes without a state are confirmed,
  without a source 'human'."""
  from pa_jax.annotate import formats as F

  got = F.read_annotations(path, image_id, tuple(shape), default_source=HUMAN)
  if got is None:
    return None
  labels, nuclei = got
  return np.asarray(labels, np.int32), dict(nuclei or {})


def _sha(path: Path) -> str:
  return hashlib.sha256(path.read_bytes()).hexdigest()


def _image_files(folder: Path, image_id: str) -> list[tuple[str, Path]]:
  """(format, path) of the files that can hold `image_id`'s annotation in a folder the
  loop wrote, in read priority: the richest format first."""
  from pa_jax.annotate import formats as F
  from pa_jax.annotate.label_io import sidecar_path

  paths = F.output_paths(folder, image_id)
  label = paths["label"] if paths["label"].is_file() else paths["label"].with_suffix(".tif")
  return [("geojson", paths["geojson"]), ("roi", paths["roi"]), ("label", label),
          ("label", sidecar_path(label)), ("coco", paths["coco"])]


def edited_file(folder: Path, image_id: str, written: Mapping[str, str]) -> Path | None:
  """The file of `image_id` in `folder` that a person changed since the loop wrote it
  (`written`: file name → sha256), the richest format first (GeoJSON > ROI zip > label
  map with its `.nuclei.json` states > COCO); None when nothing changed. A changed
  `.nuclei.json` (states edited in the table) means its label map is read. Files the loop
  did not write (the measurements CSV) and deleted files are not edits."""
  for fmt, p in _image_files(folder, image_id):
    if p.name not in written or not p.is_file():
      continue
    if written[p.name] != _sha(p):
      if p.name.endswith(".nuclei.json"):
        return _image_files(folder, image_id)[2][1]
      return p
  return None


# ============================================================================ overlays


def overlay(image: np.ndarray, st: ImageState) -> np.ndarray:
  """uint8 RGB: the image with confirmed (green), proposed (yellow), rejected (red) outlines."""
  from skimage.segmentation import find_boundaries

  from pa_jax.data.pipeline import normalize_image

  rgb = (normalize_image(image) * 255).astype(np.uint8)
  for state in ("rejected", "proposed", "confirmed"):
    if state == "rejected":
      lab = st.rejected
    else:
      ids = [k for k, n in st.nuclei.items() if n.state == state]
      lab = np.where(np.isin(st.labels, ids), st.labels, 0)
    if lab.any():
      rgb[find_boundaries(lab, mode="inner")] = STATE_COLORS[state]
  return rgb


# ======================================================================= persistence


def _state_to_json(st: ImageState) -> dict:
  from pa_jax.annotate.nuclei import table_to_json

  return {"id": st.id, "next_id": st.next_id, "nuclei": table_to_json(st.nuclei),
          "rejected": table_to_json(st.rejected_nuclei)}


def _state_from_json(d: Mapping, labels: np.ndarray, rejected: np.ndarray) -> ImageState:
  from pa_jax.annotate.nuclei import table_from_json

  return ImageState(d["id"], labels, table_from_json(d["nuclei"]), rejected,
                    table_from_json(d["rejected"]), int(d["next_id"]))


def load_state(output: Path) -> dict | None:
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


def _load_image_states(output: Path, data: Mapping) -> dict[str, ImageState]:
  from pa_jax.data import readers

  folder = output / data["state_dir"]
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


def _point_current(output: Path, target_rel: str) -> None:
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


# ============================================================================ training


def _fingerprint(examples, steps: int, prev_round: int | None) -> str:
  h = hashlib.sha256(f"{steps}:{prev_round}".encode())
  for ex in examples:
    h.update(ex.id.encode())
    h.update(np.ascontiguousarray(ex.labels).tobytes())
    if ex.negatives is not None:
      h.update(np.ascontiguousarray(ex.negatives).tobytes())
  return h.hexdigest()


def train_round(cfg, examples, stats: Mapping, workdir: Path, round_: int,
                prev_variables=None, progress: bool = True):
  """Trains round 1 from scratch (train.steps) or fine-tunes `prev_variables`
  (annotate.finetune_steps). Resumes `workdir` when its data fingerprint matches,
  otherwise starts it afresh. Returns (model, variables, seconds)."""
  from pa_jax import experiment
  from pa_jax.train import loop

  cfg = copy.deepcopy(cfg)
  with cfg.unlocked():
    cfg.seed = int(cfg.seed) + round_ - 1
    if prev_variables is not None:
      cfg.train.steps = int(cfg.annotate.finetune_steps)
      cfg.train.warmup_steps = min(int(cfg.annotate.finetune_warmup_steps), cfg.train.steps)
    cfg.train.checkpoint_every = min(int(cfg.train.checkpoint_every), int(cfg.train.steps))
    cfg.train.eval_every = 0
  model = experiment.build_model(cfg, stats)
  # Round 1 as `run.py train` would (pretrained import, backbone checks); later rounds
  # start from the previous round's variables. Both keep the frozen-stage decay mask.
  task = experiment.training_task(cfg, model, start_variables=prev_variables)
  base_round = round_ - 1 if prev_variables is not None else None
  fp = _fingerprint(examples, int(cfg.train.steps), base_round)
  marker = workdir / "annotate_round.json"
  if workdir.exists():
    try:
      old = json.loads(marker.read_text()).get("fingerprint")
    except (OSError, json.JSONDecodeError):
      old = None
    if old != fp:
      shutil.rmtree(workdir)
  fileio.write_json(marker, {"round": round_, "fingerprint": fp})
  batches = experiment.batch_source(cfg, examples)
  t0 = time.time()
  state = loop.train(task, batches, cfg, workdir, run_metadata={"dataset": dict(stats),
                     "annotate_round": round_}, progress=progress)
  seconds = time.time() - t0
  return model, {**state.variables, "params": state.params}, seconds, int(cfg.train.steps)


# =============================================================================== main


@dataclasses.dataclass
class _Image:
  id: str
  image: np.ndarray  # raw uint8/uint16 as read
  file_name: str


def _load_images(images) -> list[_Image]:
  from pa_jax.data import readers

  records = readers.open_dataset(images)
  return [_Image(r.id, readers.read_image(r.image_path), r.image_path.name) for r in records]


def _pick_up(output: Path, data: Mapping, states: dict[str, ImageState], accept: bool,
             match_iou: float) -> tuple[dict[str, ImageState], dict[str, dict]]:
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


@dataclasses.dataclass
class Session:
  """What an invocation starts from: the images, the states after the person's edits."""

  by_id: dict          # image id -> _Image
  states: dict         # image id -> ImageState (edits applied, nothing written yet)
  edits: dict          # image id -> EditCounts dict (+ 'file': the edited file read)
  round: int           # rounds done so far
  stats: dict | None   # training-label statistics of round 1 (the centerness anchor)
  history: list


def open_session(images, annotations, output, accept_proposals: bool = False,
                 match_iou: float = 0.5) -> Session:
  """Reads the images and the annotation state; applies the edits found in `current/`
  (first invocation: reads `annotations`). Writes nothing except repairing the
  `current` link after a crash between the commit and the link swap."""
  output = Path(output).absolute()
  imgs = _load_images(images)
  by_id = {im.id: im for im in imgs}
  data = load_state(output)
  if data is None:
    states = {}
    for im in imgs:
      got = None if annotations is None else read_image_annotation(Path(annotations), im.id,
                                                                   im.image.shape[:2])
      labels, nuclei = got if got is not None else (np.zeros(im.image.shape[:2], np.int32), {})
      states[im.id] = ImageState.initial(im.id, labels, nuclei)
    return Session(by_id, states, {i: {} for i in states}, 0, None, [])
  missing = [d["id"] for d in data["images"] if d["id"] not in by_id]
  if missing:
    raise InputError(images, f"image {missing[0]!r} of {output / 'state.json'} is missing")
  _point_current(output, data["current_dir"])
  states = _load_image_states(output, data)
  states, edits = _pick_up(output, data, states, accept_proposals, match_iou)
  for im in imgs:  # images added to the folder since: start unannotated
    if im.id not in states:
      states[im.id] = ImageState.initial(im.id, np.zeros(im.image.shape[:2], np.int32))
      edits[im.id] = {}
  return Session(by_id, states, edits, int(data["round"]), data.get("dataset"),
                 list(data.get("history", [])))


def annotate_main(images, annotations, output, rounds: int = 1,
                  target_recall: float | None = None, formats: Sequence[str] = DEFAULT_FORMATS,
                  contours: str = "polygon", config=None, holdout_fraction: float | None = None,
                  seed: int = 0, steps: int | None = None, accept_proposals: bool = False,
                  progress: bool = True, overwrite: bool = False) -> dict:
  """Runs `rounds` rounds of the annotation loop in `output` (`_annotate`, which documents
  the other arguments); returns the last report.

  The output is a persistent project updated round after round, so it is checked rather
  than staged (pa_jax.outputs.check_output): never `images` or `annotations` or inside
  them, and a non-empty folder must be an annotation project (state.json) unless
  `overwrite`. `overwrite` replaces a non-empty folder that is no project: its old
  contents come back if the command fails. An existing project is always continued,
  never replaced, `overwrite` or not: it holds the person's edits (delete the folder to
  start afresh).
  """
  from pa_jax import outputs

  if rounds < 0:
    raise InputError("rounds", f"{rounds} must be >= 0")
  out = Path(output).absolute()
  project = (out / "state.json").is_file()
  outputs.check_output(out, [images, annotations], overwrite=overwrite, is_own=project)
  if rounds == 0 and not project:
    raise InputError(output, "no annotation project here yet (no state.json), so there is "
                     "nothing to report; run at least one round (`rounds` >= 1) to start one")
  run = functools.partial(_annotate, images, annotations, output, rounds,
                          target_recall=target_recall, formats=formats, contours=contours,
                          config=config, holdout_fraction=holdout_fraction, seed=seed,
                          steps=steps, accept_proposals=accept_proposals, progress=progress)
  if project:
    return run()
  # A first round, into a new or empty folder (or one `overwrite` replaces): staged in place,
  # so a crash or Ctrl-C before its state.json leaves the folder as it was, not half a
  # project that the next run would refuse as "not empty".
  created = [p for p in (out, *out.parents) if not p.exists()]
  try:
    out.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise outputs.write_error(e, out) from None
  try:
    with outputs.replaced_in_place(out):
      return run()
  except BaseException:
    for p in created:  # innermost first; a failed first run leaves no folder behind
      with contextlib.suppress(OSError):
        p.rmdir()
    raise


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


def _annotate(images, annotations, output, rounds: int = 1,
              target_recall: float | None = None, formats: Sequence[str] = DEFAULT_FORMATS,
              contours: str = "polygon", config=None, holdout_fraction: float | None = None,
              seed: int = 0, steps: int | None = None, accept_proposals: bool = False,
              progress: bool = True) -> dict:
  """`annotate_main` once its output is checked.

  images: folder of images (or a dataset folder). annotations: the person's partial
    annotation (folder of label maps / GeoJSON / ROI zips / CSV, any supported format),
    read only on the first invocation; later invocations read the edited `output/current/`.
  rounds: rounds to run now (0 = only pick up the edits and report, nothing written).
  target_recall: stop once the hold-out recall reaches it.
  formats/contours: what `current/` and `round_k/annotations/` hold.
  config: ml_collections config (default `configs/annotate.py`); holdout_fraction
    (default config.annotate.holdout_fraction), seed, steps (round-1 training steps;
    fine-tuning rounds use steps // 2) override it.
  accept_proposals: every proposal still present in the files counts as confirmed.
  Returns the report dict of the last round (see docs/annotate.md), with `stopped`.
  """
  from pa_jax.data import pipeline
  from pa_jax import experiment

  from configs import annotate as annotate_config
  from pa_jax.annotate import contours as C
  from pa_jax.annotate.formats import parse_formats

  defaults = annotate_config.get_config()
  cfg = copy.deepcopy(config if config is not None else defaults)
  with cfg.unlocked():
    if "annotate" not in cfg:  # any experiment config: the loop's own fields default
      cfg.annotate = defaults.annotate
    cfg.seed = int(seed)
    if steps is not None:
      cfg.train.steps = int(steps)
      cfg.annotate.finetune_steps = max(1, int(steps) // 2)
  ac = cfg.annotate
  hold = float(ac.holdout_fraction if holdout_fraction is None else holdout_fraction)
  output = Path(output).absolute()
  formats = parse_formats(formats)
  C.check_contour_mode(contours)
  session = open_session(images, annotations, output, accept_proposals, float(ac.match_iou))
  by_id, states, edits = session.by_id, session.states, session.edits
  done, stats, history = session.round, session.stats, session.history
  order = sorted(states)
  if not done and annotations is not None:
    check_annotations_matched(images, annotations, states)
  if done and annotations is not None and progress:
    print(f"annotate: {output / 'state.json'} exists (round {done}); reading the edits in "
          f"{output / 'current'}, not {annotations}")

  if rounds <= 0:
    rows = [dict(id=i, **image_counts(states[i]), edits=edits.get(i, {})) for i in order]
    return {"round": done, "images": rows, "totals": total_counts(rows, COUNT_KEYS),
            "stopped": "rounds=0"}

  prev_vars = None
  report = {}
  for r in range(done + 1, done + rounds + 1):
    t_round = time.time()
    heldout = split_holdout([states[i] for i in order], hold, seed, r)
    examples = []
    for i in order:
      lab = training_labels(states[i], heldout[i])
      examples.append(pipeline.TrainExample(i, pipeline.normalize_image(by_id[i].image,
                                            cfg.data.normalize), lab, None,
                                            states[i].negatives()))
    if stats is None:
      stats = experiment.dataset_statistics(examples)
    prev_dir = output / "train" / f"round_{r - 1}"
    if r > 1 and prev_vars is None and (prev_dir / "config.json").is_file():
      _, _, prev_vars, _ = experiment.load_run(prev_dir)
    elif r > 1 and prev_vars is None and progress:
      print(f"annotate round {r}: no {prev_dir}; training from scratch")
    if progress:
      n_train = sum(len(_ids(ex.labels)) for ex in examples)
      print(f"annotate round {r}: training on {n_train} confirmed nuclei "
            f"({sum(map(len, heldout.values()))} held out), "
            f"{sum(len(s.rejected_nuclei) for s in states.values())} rejected regions")
    fine_tuned = prev_vars is not None
    model, variables, train_s, n_steps = train_round(
        cfg, examples, stats, output / "train" / f"round_{r}", r,
        prev_variables=prev_vars, progress=progress)
    prev_vars = variables

    from pa_jax.infer.predictor import predictor_for

    predictor = predictor_for(cfg, model, variables)
    t_pred = time.time()
    rows, ious = [], []
    merged = {}
    for i in order:
      pred, scores = predictor.predict_scored(by_id[i].image)
      h_ious = holdout_scores(states[i], heldout[i], pred)
      ious.extend(h_ious)
      merged[i], mc = merge_predictions(
          states[i], pred, scores, f"pa_jax round {r}",
          confirmed_overlap=float(ac.confirmed_overlap), rejected_iou=float(ac.rejected_iou),
          min_area=int(ac.min_area))
      rows.append(dict(id=i, **image_counts(merged[i]), heldout=len(h_ious),
                       heldout_recovered=int(sum(v > 0.5 for v in h_ious)),
                       merge=mc.as_dict(), edits=edits.get(i, {})))
    pred_s = time.time() - t_pred
    holdout = {"fraction": hold, "nuclei": len(ious),
               "recall": float(np.mean([v > 0.5 for v in ious])) if ious else None,
               "mean_iou": float(np.mean(ious)) if ious else None}
    stopped = None
    if target_recall is not None and holdout["recall"] is not None \
        and holdout["recall"] >= target_recall:
      stopped = f"hold-out recall {holdout['recall']:.3f} >= target {target_recall}"
    totals = total_counts(rows, COUNT_KEYS + ("heldout", "heldout_recovered"))
    edit_totals = total_counts([x.get("edits", {}) for x in rows], EditCounts().as_dict())
    training = {"steps": n_steps, "seconds": round(train_s, 1),
                "from": f"round {r - 1}" if fine_tuned else "scratch"}
    report = {"round": r, "images": rows, "totals": totals, "edits": edit_totals,
              "holdout": holdout, "training": training,
              "prediction_seconds": round(pred_s, 1), "stopped": stopped,
              "seconds": round(time.time() - t_round, 1)}
    history = [h for h in history if h.get("round") != r] + [
        {k: report[k] for k in ("round", "totals", "edits", "holdout", "training", "stopped")}]
    _write_round(output, r, order, merged, by_id, report, history, formats, contours, stats,
                 seed, hold)
    states, edits = {}, {}
    for i in order:  # rounds run back to back: nobody edited in between
      states[i], c = apply_edits(merged[i], None, None, accept_proposals=accept_proposals)
      edits[i] = c.as_dict()
    if progress:
      rec = "n/a" if holdout["recall"] is None else f"{holdout['recall']:.3f}"
      miou = "n/a" if holdout["mean_iou"] is None else f"{holdout['mean_iou']:.3f}"
      print(f"annotate round {r}: {totals['confirmed']} confirmed, {totals['proposed']} "
            f"proposed, {totals['rejected']} rejected; hold-out recall {rec}, mean IoU "
            f"{miou}; edit {output / 'current'}")
    if stopped:
      break
  return report


def _markdown(report: Mapping, history: Sequence[Mapping]) -> str:
  t, h = report["totals"], report["holdout"]
  fmt = lambda v: "n/a" if v is None else f"{v:.3f}"
  lines = [f"# Annotation round {report['round']}", "",
           f"Training: {report['training']['steps']} steps from {report['training']['from']}, "
           f"{report['training']['seconds']} s; prediction {report['prediction_seconds']} s.", "",
           f"Hold-out ({h['nuclei']} confirmed nuclei, {h['fraction']:.0%}): recall@0.5 "
           f"{fmt(h['recall'])}, mean IoU {fmt(h['mean_iou'])}."
           + (f" Stopped: {report['stopped']}." if report.get("stopped") else ""), "",
           "| image | confirmed | human | accepted | proposed | rejected | held out | recovered |",
           "|---|---|---|---|---|---|---|---|"]
  for r in report["images"] + [dict(id="**total**", **t)]:
    lines.append(f"| {r['id']} | {r['confirmed']} | {r['confirmed_human']} | "
                 f"{r['confirmed_accepted']} | {r['proposed']} | {r['rejected']} | "
                 f"{r['heldout']} | {r['heldout_recovered']} |")
  lines += ["", "Edits picked up before this round: " + ", ".join(
      f"{k} {v}" for k, v in report["edits"].items()), "", "## History", "",
      "| round | confirmed | proposed | rejected | hold-out recall | mean IoU |",
      "|---|---|---|---|---|---|"]
  for x in history:
    lines.append(f"| {x['round']} | {x['totals']['confirmed']} | {x['totals']['proposed']} | "
                 f"{x['totals']['rejected']} | {fmt(x['holdout']['recall'])} | "
                 f"{fmt(x['holdout']['mean_iou'])} |")
  return "\n".join(lines) + "\n"


def _write_round(output: Path, r: int, order, merged: Mapping[str, ImageState], by_id,
                 report: Mapping, history, formats, contours, stats, seed, hold) -> None:
  """Writes round r; `state.json` last (the commit), then swaps the `current` link."""
  round_dir = output / f"round_{r}"
  cur_rel = f".current/r{r}"
  cur_dir = output / cur_rel
  state_rel = f"state/r{r}"
  if cur_dir.exists():  # left over by a crash in this round
    shutil.rmtree(cur_dir)
  from pa_jax.annotate.formats import COCO_FILENAME, CocoCollector

  files = {}
  coco = CocoCollector(cur_dir / COCO_FILENAME) if "coco" in formats else None
  archive = round_dir / "annotations"  # the round's copy of what `current` holds
  archive.mkdir(parents=True, exist_ok=True)
  for i in order:
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
  if coco is not None:
    coco.write()
    fileio.write_bytes(archive / COCO_FILENAME, (cur_dir / COCO_FILENAME).read_bytes())
    digest = _sha(cur_dir / COCO_FILENAME)
    for i in order:
      files[i][COCO_FILENAME] = digest
  fileio.write_json(round_dir / "report.json", report)
  fileio.write_text(round_dir / "report.md", _markdown(report, history))
  data = {"version": STATE_VERSION, "round": r, "current_dir": cur_rel, "state_dir": state_rel,
          "seed": int(seed), "holdout_fraction": hold, "formats": list(formats),
          "contours": contours, "dataset": dict(stats), "history": list(history),
          "images": [dict(_state_to_json(merged[i]), files=files[i]) for i in order]}
  fileio.write_json(output / "state.json", data)  # the commit
  _point_current(output, cur_rel)
