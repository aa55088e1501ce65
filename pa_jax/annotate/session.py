"""The annotation assistant as a library: one `Session` API for `run.py annotate` and a GUI.

A session is an annotation project folder (`pa_jax.annotate.project` documents its
layout) opened over a folder of images: per image, a label map of confirmed and proposed
nuclei, the rejected regions, and a review state per nucleus
(`pa_jax.annotate.nuclei.STATES`, coloured by `STATE_COLORS`). Edits come from files a
person changed in OUTPUT/current (picked up by `Session.open`) or from a GUI
(`apply_edit`, `set_state`); `run_round` trains, predicts and merges, `write_round`
commits. The rules themselves are `pa_jax.annotate.review`'s.

The session never prints: it logs to the `pa_jax.annotate` logger and reports progress
through `on_progress(stage, done, total)` with stage "train" (steps), "predict" and
"write" (images). The CLI (`pa_jax.annotate.loop.annotate_main`) attaches the printing.

Example (a GUI's "next round" button, without the CLI)::

  from pa_jax.annotate.session import Session

  s = Session.open("images/", "project/", annotations="partial/")  # or an existing project
  for i in s.image_ids:
    image, shown, colors = s.image(i), s.review_map(i), s.colors(i)  # int32 [H, W], {id: rgb}
  edited = s.review_map("im0").copy()
  edited[10:20, 10:20] = edited.max() + 1          # paint a new nucleus: confirmed, 'human'
  edited[edited == 7] = 0                           # erase proposal 7: rejected
  s.apply_edit("im0", edited)
  s.save_edits()                 # optional: current/ holds the edits, as if made in QuPath
  report = s.next_round(on_progress=lambda stage, done, total: print(stage, done, total))

`next_round` is `write_round(run_round(...))`; a round writes exactly what
`run.py annotate --rounds 1` writes.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from configs import annotate as annotate_config
from pa_jax import experiment, outputs
from pa_jax.annotate import contours as C
from pa_jax.annotate import project, training
from pa_jax.annotate.formats import parse_formats
from pa_jax.annotate.nuclei import STATE_COLORS, Nucleus, pixels_by_label
from pa_jax.annotate.report import round_report
from pa_jax.annotate.review import (COUNT_KEYS, HUMAN, EditCounts, ImageState, apply_edits,
                                    holdout_scores, image_counts, merge_predictions,
                                    split_holdout, total_counts, training_labels)
from pa_jax.data.pipeline import TrainExample, training_pixels
from pa_jax.data.sources import integer_transfer
from pa_jax.errors import InputError
from pa_jax.infer import predictor as predictor_mod

log = logging.getLogger("pa_jax.annotate")

Progress = Callable[[str, int, int], None]


@dataclasses.dataclass
class RoundResult:
  """A round trained, predicted and merged, not yet written (`Session.write_round`)."""

  round: int
  report: dict                     # report.json of the round (docs/annotate.md)
  merged: dict[str, ImageState]    # image id -> state with the round's proposals
  history: list                    # state.json's history including this round
  stats: dict                      # training-label statistics (the centerness anchor)
  variables: Any                   # trained variables (the next round fine-tunes them)


def _tell(on_progress: Progress | None, stage: str, done: int, total: int) -> None:
  if on_progress is not None:
    on_progress(stage, done, total)


def resolve_config(config=None, seed: int = 0, steps: int | None = None,
                   from_scratch: bool = False):
  """A copy of `config` (default configs/annotate.py) with the loop's fields, `seed`,
  `steps` (round-1 steps; fine-tuning rounds use steps // 2) and `from_scratch` (no
  `model.init`: round 1 starts from random weights, not a zoo model) applied."""
  defaults = annotate_config.get_config()
  cfg = copy.deepcopy(config if config is not None else defaults)
  with cfg.unlocked():
    if "annotate" not in cfg:  # any experiment config: the loop's own fields default
      cfg.annotate = defaults.annotate
    cfg.seed = int(seed)
    if steps is not None:
      cfg.train.steps = int(steps)
      cfg.annotate.finetune_steps = max(1, int(steps) // 2)
    if from_scratch:
      cfg.model.init = ""
  return cfg


def stored_config(output: Path):
  """The config of the project's newest training round (OUTPUT/train/round_k/config.json),
  or None before the first round.

  A later round fine-tunes the model the earlier ones trained, so a caller that names no
  config (a GUI has no --config field) must continue with theirs: configs/annotate.py
  could describe another network, whose parameters would not fit the checkpoint."""
  def round_of(path: Path) -> int:
    k = path.parent.name.split("_")[-1]
    return int(k) if k.isdigit() else -1

  runs = sorted(Path(output).glob("train/round_*/config.json"), key=round_of)
  return experiment.load_config(runs[-1].parent) if runs else None


def _add_counts(old: Mapping, new: EditCounts) -> dict:
  out = dict(old)
  for k, v in new.as_dict().items():
    out[k] = int(out.get(k, 0)) + v
  return out


class Session:
  """An open annotation project. Build one with `Session.open`.

  Attributes: output (Path), round (rounds committed), formats, contours, seed,
  holdout_fraction, accept_proposals, config (the resolved ml_collections config).
  """

  def __init__(self, output: Path, images: Sequence[project.ProjectImage],
               states: dict[str, ImageState], edits: dict[str, dict], round_: int,
               stats: dict | None, history: list, config, *, formats: Sequence[str],
               contours: str, seed: int, holdout_fraction: float, accept_proposals: bool):
    self.output = output
    self._images = {im.id: im for im in images}
    self._states = states
    self.edits = edits
    self.round = round_
    self.stats = stats
    self.history = history
    self.config = config
    self.formats = tuple(formats)
    self.contours = contours
    self.seed = int(seed)
    self.holdout_fraction = float(holdout_fraction)
    self.accept_proposals = bool(accept_proposals)
    self._variables = None  # the last written round's, so the next one fine-tunes them
    self._dirty: set[str] = set()  # images edited through apply_edit/set_state

  # --------------------------------------------------------------------------- opening

  @classmethod
  def open(cls, images, output, annotations=None, *, config=None, seed: int | None = None,
           steps: int | None = None, holdout_fraction: float | None = None,
           formats: Sequence[str] | str | None = None, contours: str | None = None,
           accept_proposals: bool = False, from_scratch: bool = False) -> "Session":
    """Opens the project in `output` over the images in `images` (a folder of images or a
    dataset folder), applying the edits found in OUTPUT/current; with no project there yet
    (no state.json), starts one from `annotations` (the person's partial annotation, any
    supported format; None: nothing annotated). Writes nothing except repairing the
    `current` link after a crash between a commit and the link swap.

    seed / formats / contours default to the project's (state.json), else 0 /
    DEFAULT_FORMATS / "polygon"; config to the project's newest round's (`stored_config`),
    else configs/annotate.py; holdout_fraction to config.annotate.holdout_fraction;
    config, seed, steps, from_scratch: see `resolve_config`. accept_proposals: every
    proposal still present in the files counts as confirmed. Raises InputError on bad
    input.
    """
    out = Path(output).absolute()
    outputs.check_output(out, [images, annotations], is_own=(out / "state.json").is_file())
    formats = None if formats is None else parse_formats(formats)
    if contours is not None:
      C.check_contour_mode(contours)
    imgs = project.load_images(images)
    data = project.load_state(out)
    old = data or {}
    if config is None and data is not None:
      config = stored_config(out)
    cfg = resolve_config(config, old.get("seed", 0) if seed is None else seed, steps,
                         from_scratch)
    formats = formats or tuple(old.get("formats", project.DEFAULT_FORMATS))
    contours = contours or old.get("contours", "polygon")
    hold = cfg.annotate.holdout_fraction if holdout_fraction is None else holdout_fraction
    opts = dict(formats=formats, contours=contours, seed=cfg.seed, holdout_fraction=hold,
                accept_proposals=accept_proposals)
    if data is None:
      states = project.initial_states(imgs, annotations)
      return cls(out, imgs, states, {i: {} for i in states}, 0, None, [], cfg, **opts)
    ids = {im.id for im in imgs}
    missing = [d["id"] for d in data["images"] if d["id"] not in ids]
    if missing:
      raise InputError(images, f"image {missing[0]!r} of {out / 'state.json'} is missing")
    project.point_current(out, data["current_dir"])
    states = project.load_image_states(out, data)
    states, edits = project.pick_up_edits(out, data, states, accept_proposals,
                                          float(cfg.annotate.match_iou))
    for im in imgs:  # images added to the folder since: start unannotated
      if im.id not in states:
        states[im.id] = ImageState.initial(im.id, np.zeros(im.image.shape[:2], np.int32))
        edits[im.id] = {}
    if annotations is not None:
      log.info("annotate: %s exists (round %d); reading the edits in %s, not %s",
               out / "state.json", int(data["round"]), out / "current", annotations)
    return cls(out, imgs, states, edits, int(data["round"]), data.get("dataset"),
               list(data.get("history", [])), cfg, **opts)

  # ----------------------------------------------------------------------- per image

  @property
  def image_ids(self) -> list[str]:
    """The image ids, sorted (the order of every report)."""
    return sorted(self._states)

  @property
  def states(self) -> dict[str, ImageState]:
    """{image id: ImageState}: the review state now (edits applied, nothing written)."""
    return self._states

  def image(self, image_id: str) -> np.ndarray:
    """The raw image, uint8/uint16 [H, W] or [H, W, 3], as read."""
    return self._images[self._known(image_id)].image

  def labels(self, image_id: str) -> np.ndarray:
    """int32 [H, W]: the confirmed and proposed nuclei (what current/ holds)."""
    return self._states[self._known(image_id)].labels

  def review_map(self, image_id: str) -> np.ndarray:
    """int32 [H, W]: `labels` with the rejected regions where no nucleus is, for a GUI's
    labels layer (nucleus and rejected-region ids never collide)."""
    st = self._states[self._known(image_id)]
    return np.where(st.labels > 0, st.labels, st.rejected).astype(np.int32)

  def nuclei(self, image_id: str) -> dict[int, Nucleus]:
    """{id: Nucleus} of every id in `review_map` (states confirmed, proposed, rejected)."""
    st = self._states[self._known(image_id)]
    return {**st.rejected_nuclei, **st.nuclei}

  def colors(self, image_id: str) -> dict[int, tuple[int, int, int]]:
    """{id: RGB 0-255} of every id in `review_map`, by review state (STATE_COLORS)."""
    return {k: STATE_COLORS[n.state] for k, n in self.nuclei(image_id).items()}

  def _known(self, image_id: str) -> str:
    if image_id not in self._states:
      ids = self.image_ids
      shown = ", ".join(ids[:5]) + (", ..." if len(ids) > 5 else "")
      raise InputError("image_id", f"{image_id!r} is not an image of this project ({shown})")
    return image_id

  # --------------------------------------------------------------------------- edits

  def apply_edit(self, image_id: str, edited: np.ndarray,
                 states: Mapping[int, str] | None = None) -> EditCounts:
    """Takes an edited `review_map(image_id)` (int32 [H, W]) from a GUI.

    Paint = confirm or draw: a nucleus whose pixels changed becomes confirmed with its new
    outline; a new id is a new confirmed nucleus (source 'human'). Delete = reject: a
    proposal erased entirely becomes a rejected region; an erased confirmed nucleus is
    removed. Rejected regions left as shown stay rejected; painting beyond one draws a
    nucleus there. `states` ({id: state}) sets states explicitly (as a GeoJSON
    classification would). The rules are `review.apply_edits`'s, as for files edited in
    QuPath or Fiji. Returns the counts (added to `edits[image_id]`).
    """
    st = self._states[self._known(image_id)]
    edited = np.asarray(edited)
    if edited.shape != st.labels.shape or edited.dtype.kind not in "iu":
      raise InputError(image_id, f"edited label map is {edited.dtype} {edited.shape}; "
                       f"expected integer labels of shape {st.labels.shape}")
    if edited.size and (edited.min() < 0 or edited.max() >= 2**31):
      raise InputError(image_id, f"edited label map holds {edited.min()}..{edited.max()}; "
                       "labels are 0 (background) to 2**31 - 1")
    labels, nuclei = _edit_from_review_map(st, self.review_map(image_id),
                                           edited.astype(np.int32), states or {})
    new, counts = apply_edits(st, labels, nuclei, match_iou=float(self.config.annotate.match_iou))
    self._states[image_id] = new
    self.edits[image_id] = _add_counts(self.edits.get(image_id, {}), counts)
    self._dirty.add(image_id)
    return counts

  def set_state(self, image_id: str, ids: Iterable[int], state: str) -> EditCounts:
    """Confirms or rejects nuclei by id without changing their outlines (a GUI's
    confirm / reject buttons). state: 'confirmed' or 'rejected'."""
    if state not in ("confirmed", "rejected"):
      raise InputError("state", f"{state!r} must be 'confirmed' or 'rejected'")
    st = self._states[self._known(image_id)]
    return self.apply_edit(image_id, self.review_map(image_id),
                           {int(k): state for k in ids if int(k) in st.nuclei})

  def save_edits(self) -> list[Path]:
    """Writes the images edited through `apply_edit` / `set_state` into OUTPUT/current in
    the project's formats, as a person editing them in QuPath would: the next
    `Session.open` (or `run.py annotate`) picks them up. Returns the files written."""
    if self.round == 0 or not self._dirty:
      return []  # before round 1 there is no current/ yet: run a round to save
    data = project.load_state(self.output)
    folder = self.output / data["current_dir"]
    fmts = tuple(f for f in self.formats if f != "coco")  # one COCO file holds every image
    written = []
    for i in sorted(self._dirty):
      st = self._states[i]
      written += project.export_image(folder, i, st.labels, st.nuclei, fmts, self.contours,
                                      None, self._images[i].file_name)
    self._dirty.clear()
    return written

  def status(self) -> dict:
    """The report of the state now, without running a round: per image the counts and
    the edits picked up; 'totals'. (`run.py annotate --rounds 0`.)"""
    rows = [dict(id=i, **image_counts(self._states[i]), edits=self.edits.get(i, {}))
            for i in self.image_ids]
    return {"round": self.round, "images": rows, "totals": total_counts(rows, COUNT_KEYS)}

  # -------------------------------------------------------------------------- rounds

  def run_round(self, on_progress: Progress | None = None, target_recall: float | None = None,
                progress_bar: bool = False) -> RoundResult:
    """Trains (round 1: from scratch or `model.init`, `training.train_round`; later:
    fine-tunes the previous round), predicts every image and merges the predictions as
    proposals. Writes only the training run (OUTPUT/train/round_k); `write_round` commits
    the rest. `target_recall`: the report's 'stopped' says so once the hold-out recall
    reaches it. `progress_bar`: the training's tqdm bar on stderr (the CLI's)."""
    cfg, ac, r, order = self.config, self.config.annotate, self.round + 1, self.image_ids
    t_round = time.time()
    heldout = split_holdout([self._states[i] for i in order], self.holdout_fraction,
                            self.seed, r)
    keep_integers = integer_transfer(cfg)  # as `run.py train`: stretched on the device
    examples = []
    for i in order:
      pixels, rng = training_pixels(self._images[i].image, cfg.data.normalize, keep_integers)
      examples.append(TrainExample(i, pixels, training_labels(self._states[i], heldout[i]),
                                   None, self._states[i].negatives(), intensity=rng))
    stats = self.stats if self.stats is not None else experiment.dataset_statistics(examples)
    prev = self._previous_variables(r)
    log.info("annotate round %d: training on %d confirmed nuclei (%d held out), %d rejected "
             "regions", r, sum(len(np.unique(ex.labels[ex.labels > 0])) for ex in examples),
             sum(map(len, heldout.values())),
             sum(len(s.rejected_nuclei) for s in self._states.values()))
    planned = int(ac.finetune_steps if prev is not None else cfg.train.steps)
    _tell(on_progress, "train", 0, planned)
    trained = training.train_round(cfg, examples, stats, self.output / "train" / f"round_{r}",
                                   r, prev_variables=prev, progress=progress_bar)
    model, variables, train_s, n_steps = trained[:4]  # test doubles return these four
    _tell(on_progress, "train", n_steps, n_steps)
    predictor = predictor_mod.predictor_for(cfg, model, variables)
    t_pred = time.time()
    rows, ious, merged = [], [], {}
    for n, i in enumerate(order):
      pred, scores = predictor.predict_scored(self._images[i].image)
      h_ious = holdout_scores(self._states[i], heldout[i], pred)
      ious.extend(h_ious)
      merged[i], mc = merge_predictions(
          self._states[i], pred, scores, f"pa_jax round {r}",
          confirmed_overlap=float(ac.confirmed_overlap), rejected_iou=float(ac.rejected_iou),
          min_area=int(ac.min_area))
      rows.append(dict(id=i, **image_counts(merged[i]), heldout=len(h_ious),
                       heldout_recovered=int(sum(v > 0.5 for v in h_ious)),
                       merge=mc.as_dict(), edits=self.edits.get(i, {})))
      _tell(on_progress, "predict", n + 1, len(order))
    report = round_report(r, rows, ious, self.holdout_fraction, target_recall,
                           n_steps, train_s, prev is not None, time.time() - t_pred,
                           start=getattr(trained, "start", ""))
    report["seconds"] = round(time.time() - t_round, 1)
    history = [h for h in self.history if h.get("round") != r] + [
        {k: report[k] for k in ("round", "totals", "edits", "holdout", "training", "stopped")}]
    return RoundResult(r, report, merged, history, dict(stats), variables)

  def _previous_variables(self, r: int):
    """The variables round r fine-tunes: the last written round's, else its saved run;
    None for round 1 or when that run is gone (then round r trains from scratch)."""
    if r == 1 or self._variables is not None:
      return self._variables
    prev_dir = self.output / "train" / f"round_{r - 1}"
    if (prev_dir / "config.json").is_file():
      return experiment.load_run(prev_dir)[2]
    log.info("annotate round %d: no %s; training from scratch", r, prev_dir)
    return None

  def write_round(self, result: RoundResult, on_progress: Progress | None = None) -> dict:
    """Commits a round (`project.write_round`: exports, overlays, reports, state.json,
    the `current` link) and continues from it; returns its report."""
    if result.round != self.round + 1:
      raise InputError("result", f"round {result.round} does not follow round {self.round}")
    order = self.image_ids
    project.write_round(self.output, result.round, order, result.merged, self._images,
                        result.report, result.history, self.formats, self.contours,
                        result.stats, self.seed, self.holdout_fraction,
                        on_image=lambda d, t: _tell(on_progress, "write", d, t))
    self.round, self.stats, self.history = result.round, result.stats, result.history
    self._variables = result.variables
    self._dirty.clear()
    for i in order:  # rounds may run back to back: nobody edited in between
      self._states[i], c = apply_edits(result.merged[i], None, None,
                                       accept_proposals=self.accept_proposals)
      self.edits[i] = c.as_dict()
    t, h = result.report["totals"], result.report["holdout"]
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    log.info("annotate round %d: %d confirmed, %d proposed, %d rejected; hold-out recall %s, "
             "mean IoU %s; edit %s", result.round, t["confirmed"], t["proposed"], t["rejected"],
             fmt(h["recall"]), fmt(h["mean_iou"]), self.output / "current")
    return result.report

  def next_round(self, on_progress: Progress | None = None,
                 target_recall: float | None = None) -> dict:
    """`run_round` then `write_round`: one whole round; returns its report."""
    return self.write_round(self.run_round(on_progress, target_recall), on_progress)


def _edit_from_review_map(st: ImageState, shown: np.ndarray, edited: np.ndarray,
                          states: Mapping[int, str]) -> tuple[np.ndarray, dict[int, Nucleus]]:
  """(labels, nuclei) as an edited file would hold them, for `apply_edits`.

  shown: the review map the GUI was given; edited: what came back. Rejected regions stay
  in `st.rejected`, so they leave the map unless painted beyond; a changed nucleus is
  marked confirmed (painting on it is the person's confirmation).
  """
  labels = edited.copy()
  flat = labels.reshape(-1)
  shown_px, nuclei = pixels_by_label(shown), {}
  for k, px in pixels_by_label(edited).items():
    same = k in shown_px and np.array_equal(px, shown_px[k])
    if k in st.rejected_nuclei and k not in st.nuclei:
      if same or np.isin(px, shown_px.get(k, ())).all():  # left or erased: still rejected
        flat[px] = 0
        continue
      nuclei[k] = Nucleus(k, states.get(k, "confirmed"), None, HUMAN)
    elif k in st.nuclei:
      old = st.nuclei[k]
      nuclei[k] = dataclasses.replace(old, state=states.get(
          k, old.state if same else "confirmed"))
    else:
      nuclei[k] = Nucleus(k, states.get(k, "confirmed"), None, HUMAN)
  return labels, nuclei
