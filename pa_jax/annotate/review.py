"""The review rules of the annotation loop: pure functions on one image's state.

Review states (`pa_jax.annotate.nuclei.Nucleus.state`):
  confirmed  drawn by a person or accepted: the training labels (minus a hold-out);
  proposed   suggested by the model: unannotated for the loss (ignored, like any nucleus
             nobody labelled), replaced by the next round's predictions;
  rejected   a proposal the person deleted (or a shape classified "rejected"): its region
             is a hard negative (`TrainExample.negatives`) and nothing is proposed there
             again.

`apply_edits` reads what a person changed, `merge_predictions` adds a round's predictions
as proposals, `split_holdout` / `training_labels` / `holdout_scores` estimate recall on
nuclei kept out of training, `image_counts` / `total_counts` feed the reports. Nothing here
reads or writes a file; everything is tested on synthetic label maps
(tests/annotate/test_annotate_loop.py).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from pa_jax.annotate.nuclei import Nucleus, pixels_by_label
from pa_jax.errors import InputError
from pa_jax.evaluation.metrics import contingency

HUMAN = "human"


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
  if labels is None:  # not edited: only accept_proposals can change anything
    return _accepted(prev, accept_proposals)
  counts = EditCounts()
  labels = np.asarray(labels, np.int32)
  if labels.shape != prev.labels.shape:
    raise InputError(prev.id, f"edited annotation is {labels.shape} but the image is "
                     f"{prev.labels.shape}")
  file_nuclei = dict(nuclei or {})
  file_area, match = _match(prev, labels, match_iou)
  used = set(match.values())

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


def _accepted(prev: ImageState, accept_proposals: bool) -> tuple[ImageState, EditCounts]:
  """`apply_edits` of an image whose file was not edited."""
  counts = EditCounts()
  st = copy.deepcopy(prev)
  if accept_proposals:
    for k, n in st.nuclei.items():
      if n.state == "proposed":
        st.nuclei[k] = dataclasses.replace(n, state="confirmed")
        counts.accepted += 1
  return st, counts


def _match(prev: ImageState, labels: np.ndarray, match_iou: float
           ) -> tuple[dict[int, int], dict[int, int]]:
  """(areas of the file's labels, {file id: written id}): first the same id where the two
  overlap, then by geometry, best IoU >= `match_iou` first, one-to-one."""
  prev_area, file_area, inter = _overlap(prev.labels, labels)
  match: dict[int, int] = {}
  used: set[int] = set()
  for f in sorted(file_area):
    if f in prev.nuclei and inter.get((f, f), 0) > 0:
      match[f] = f
      used.add(f)
  cands = sorted(((n / (prev_area[p] + file_area[f] - n), p, f) for (p, f), n in inter.items()
                  if f not in match and p not in used), reverse=True)
  for iou, p, f in cands:
    if iou < match_iou or f in match or p in used:
      continue
    match[f] = p
    used.add(p)
  return file_area, match


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
