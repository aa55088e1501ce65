"""What a person looks at after a round: outline overlays and the Markdown report.

`overlay` draws the review states on the image (the colours of
`pa_jax.annotate.nuclei.STATE_COLORS`); `round_report` assembles a round's report dict
(docs/annotate.md, "report.json"); `markdown` renders it with the history of earlier
rounds.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from skimage.segmentation import find_boundaries

from pa_jax.annotate.nuclei import STATE_COLORS
from pa_jax.annotate.review import COUNT_KEYS, EditCounts, ImageState, total_counts
from pa_jax.data.pipeline import normalize_image


def overlay(image: np.ndarray, st: ImageState) -> np.ndarray:
  """uint8 RGB [H, W, 3]: `image` (uint8/uint16 [H, W(, 3)]) with confirmed (green),
  proposed (yellow) and rejected (red) outlines; confirmed drawn last, so it wins."""
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


def _fmt(v: float | None) -> str:
  return "n/a" if v is None else f"{v:.3f}"


def markdown(report: Mapping, history: Sequence[Mapping]) -> str:
  """round_k/report.md: training, hold-out, a row per image, the edits, the history."""
  t, h = report["totals"], report["holdout"]
  lines = [f"# Annotation round {report['round']}", "",
           f"Training: {report['training']['steps']} steps from {report['training']['from']}, "
           f"{report['training']['seconds']} s; prediction {report['prediction_seconds']} s.", "",
           f"Hold-out ({h['nuclei']} confirmed nuclei, {h['fraction']:.0%}): recall@0.5 "
           f"{_fmt(h['recall'])}, mean IoU {_fmt(h['mean_iou'])}."
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
                 f"{x['totals']['rejected']} | {_fmt(x['holdout']['recall'])} | "
                 f"{_fmt(x['holdout']['mean_iou'])} |")
  return "\n".join(lines) + "\n"


def round_report(r: int, rows: list, ious: list, hold: float, target_recall: float | None,
                  n_steps: int, train_s: float, fine_tuned: bool, pred_s: float,
                  start: str = "") -> dict:
  """report.json of round r, without 'seconds' (the caller adds it); key order is the file's.

  rows: per-image dicts (counts, heldout, heldout_recovered, merge, edits); ious: the best
  IoU of every held-out nucleus; hold: the hold-out fraction; start: the zoo model a
  round that is not fine-tuned started from ('' = scratch).
  """
  holdout = {"fraction": hold, "nuclei": len(ious),
             "recall": float(np.mean([v > 0.5 for v in ious])) if ious else None,
             "mean_iou": float(np.mean(ious)) if ious else None}
  stopped = None
  if target_recall is not None and holdout["recall"] is not None \
      and holdout["recall"] >= target_recall:
    stopped = f"hold-out recall {holdout['recall']:.3f} >= target {target_recall}"
  totals = total_counts(rows, COUNT_KEYS + ("heldout", "heldout_recovered"))
  edit_totals = total_counts([x.get("edits", {}) for x in rows], EditCounts().as_dict())
  training_ = {"steps": n_steps, "seconds": round(train_s, 1),
               "from": f"round {r - 1}" if fine_tuned else (start or "scratch")}
  return {"round": r, "images": rows, "totals": totals, "edits": edit_totals,
          "holdout": holdout, "training": training_, "prediction_seconds": round(pred_s, 1),
          "stopped": stopped}
