"""A scripted annotator: reviews the files of `OUTPUT/current/` the way a person would,
using the full labels as the truth (for the "Done when" experiment, `bench/annotate_sim.py`).

Per image, on the GeoJSON the loop wrote (what a QuPath user edits):
  1. every proposed nucleus that matches a true nucleus with IoU >= `match_iou` is
     confirmed (its state set, its outline kept as the model drew it);
  2. every other proposal is deleted (the loop turns it into a rejected region);
  3. up to `add_per_round` missed true nuclei are drawn as new shapes (no state: the loop
     reads them as confirmed human nuclei). Missed = no kept nucleus matches it at
     `match_iou`. A person first redraws the nuclei whose poor outlines they just
     deleted, so true nuclei under a deleted proposal come first; the rest follow in a
     seeded random order. The new shape is the true mask minus pixels of kept nuclei,
     skipped when less than half of it is free.
Confirmed nuclei are left alone. Only the `.geojson` is rewritten (atomically).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

import numpy as np

from pa_jax.annotate.nuclei import Nucleus, pixels_by_label


@dataclasses.dataclass
class ReviewCounts:
  confirmed: int = 0  # proposals accepted
  deleted: int = 0    # proposals deleted (→ rejected)
  added: int = 0      # missed nuclei drawn
  missed: int = 0     # true nuclei still without a matching kept nucleus after the review

  def as_dict(self) -> dict:
    return dataclasses.asdict(self)


def _best_iou(a: np.ndarray, b: np.ndarray) -> dict[int, tuple[float, int]]:
  """For every label of `a`: (best IoU with a label of `b`, that label) — (0, 0) if none."""
  from pa_jax.evaluation.metrics import contingency

  t = contingency(a, b)
  best = {int(k): (0.0, 0) for k in t.gt_labels}
  for i, j, iou in zip(t.gi, t.pj, t.iou):
    if iou > best[int(t.gt_labels[i])][0]:
      best[int(t.gt_labels[i])] = (float(iou), int(t.pred_labels[j]))
  return best


def review_image(labels: np.ndarray, nuclei: dict, truth: np.ndarray, *, add_per_round: int = 5,
                 match_iou: float = 0.5, rng: np.random.Generator | None = None
                 ) -> tuple[np.ndarray, dict, ReviewCounts]:
  """The reviewed (labels, nuclei) of one image; pure (see the module docstring)."""
  rng = rng if rng is not None else np.random.default_rng(0)
  labels = np.asarray(labels, np.int32).copy()
  nuclei = {k: dataclasses.replace(n) for k, n in nuclei.items()}
  counts = ReviewCounts()
  best = _best_iou(labels, np.asarray(truth))
  own = pixels_by_label(labels)  # per-nucleus pixels: one sort, not one pass per nucleus
  deleted = np.zeros(labels.shape, bool)
  top = int(labels.max(initial=0))
  for k in sorted(best):
    n = nuclei.get(k) or Nucleus(k)
    if n.state != "proposed":
      continue
    if best[k][0] >= match_iou:
      nuclei[k] = dataclasses.replace(n, state="confirmed")
      counts.confirmed += 1
    else:
      idx = own.get(k, np.zeros(0, np.int64))
      deleted.reshape(-1)[idx] = True
      labels.reshape(-1)[idx] = 0
      nuclei.pop(k, None)
      counts.deleted += 1
  truth_best = _best_iou(np.asarray(truth), labels)
  missed = [t for t, (iou, _) in truth_best.items() if iou < match_iou]
  under = set(np.unique(np.asarray(truth)[deleted]).tolist()) - {0}
  order = rng.permutation(len(missed)) if missed else []
  ranked = sorted((0 if missed[i] in under else 1, r, missed[i]) for r, i in enumerate(order))
  nid = top + 1
  truth_px = pixels_by_label(truth) if ranked else {}
  flat = labels.reshape(-1)
  for _, _, t in ranked:
    if counts.added >= add_per_round:
      break
    idx = truth_px[t]
    free = idx[flat[idx] == 0]
    if 2 * free.size < idx.size:
      continue
    flat[free] = nid
    nuclei[nid] = Nucleus(nid, "confirmed", None, "human")
    nid += 1
    counts.added += 1
  counts.missed = sum(1 for iou, _ in _best_iou(np.asarray(truth), labels).values()
                      if iou < match_iou)
  return labels, nuclei, counts


def review_current(output: os.PathLike | str, truths: dict[str, np.ndarray], *,
                   add_per_round: int = 5, match_iou: float = 0.5, seed: int = 0,
                   contours: str = "polygon") -> dict:
  """Reviews every image of `output/current/` (its GeoJSON); returns counts per image and
  in total. `truths`: image id → full label map."""
  from pa_jax.annotate import formats as F

  current = Path(output) / "current"
  rows, total = [], ReviewCounts()
  for image_id in sorted(truths):
    truth = truths[image_id]
    path = current / f"{image_id}.geojson"
    labels, nuclei = F.read_annotations(path, image_id, truth.shape)
    digest = hashlib.sha256(f"review:{seed}:{image_id}:{os.readlink(current)}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    labels, nuclei, c = review_image(labels, nuclei, truth, add_per_round=add_per_round,
                                     match_iou=match_iou, rng=rng)
    F.export_all(current, image_id, labels, nuclei, ("geojson",), contours)
    rows.append(dict(id=image_id, **c.as_dict()))
    for k, v in c.as_dict().items():
      setattr(total, k, getattr(total, k) + v)
  return {"images": rows, "totals": total.as_dict()}
