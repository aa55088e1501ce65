"""The annotation loop: merge rules, edit pick-up, hold-out, reports, crash safety, and one
tiny end-to-end round with real training."""

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest

from pa_jax import fileio
from pa_jax.annotate import formats as F
from pa_jax.annotate import loop
from pa_jax.annotate import project
from pa_jax.annotate import review
from pa_jax.annotate import simulate
from pa_jax.annotate import training
from pa_jax.annotate.review import ImageState, apply_edits, merge_predictions
from pa_jax.annotate.nuclei import Nucleus
from pa_jax.data.synthetic import partial_annotation_folders
from pa_jax.errors import InputError


def _box(lab, k, y, x, h, w):
  lab[y:y + h, x:x + w] = k
  return lab


def _state(shape=(64, 64)):
  """Confirmed 1, proposals 2 and 3, rejected region 20."""
  lab = np.zeros(shape, np.int32)
  _box(lab, 1, 2, 2, 10, 10)
  _box(lab, 2, 20, 2, 10, 10)
  _box(lab, 3, 40, 2, 10, 10)
  rej = _box(np.zeros(shape, np.int32), 20, 40, 40, 10, 10)
  nuclei = {1: Nucleus(1, "confirmed", None, "human"),
            2: Nucleus(2, "proposed", 0.9, "pa_jax round 1"),
            3: Nucleus(3, "proposed", 0.8, "pa_jax round 1")}
  return ImageState("a", lab, nuclei, rej, {20: Nucleus(20, "rejected", 0.7, "pa_jax round 1")}, 21)


# ------------------------------------------------------------------------------ merge


def test_merge_human_wins_overlap_dropped_rejected_never_reproposed():
  st = _state()
  pred = np.zeros((64, 64), np.int32)
  _box(pred, 1, 3, 3, 10, 10)    # mostly on confirmed 1 → dropped
  _box(pred, 2, 41, 41, 10, 10)  # IoU 0.68 with rejected region → dropped
  _box(pred, 3, 2, 12, 10, 10)   # touches confirmed 1 by nothing; free → proposed
  _box(pred, 4, 20, 30, 10, 10)  # free → proposed
  _box(pred, 5, 60, 60, 2, 2)    # tiny → dropped (min_area)
  scores = {1: 0.99, 2: 0.98, 3: 0.6, 4: 0.7, 5: 0.9}
  out, c = merge_predictions(st, pred, scores, "pa_jax round 2", min_area=8)
  assert (c.predicted, c.proposed, c.dropped_confirmed, c.dropped_rejected, c.dropped_small) == \
      (5, 2, 1, 1, 1)
  # human pixels and ids untouched; the old proposals 2, 3 are gone (replaced)
  assert np.array_equal(out.labels == 1, st.labels == 1)
  assert out.nuclei[1] == st.nuclei[1]
  assert 2 not in out.nuclei and 3 not in out.nuclei
  new = [k for k, n in out.nuclei.items() if n.state == "proposed"]
  assert sorted(new) == [21, 22] and out.next_id == 23  # fresh ids, never reused
  assert {out.nuclei[k].score for k in new} == {0.7, 0.6}
  assert all(out.nuclei[k].source == "pa_jax round 2" for k in new)
  assert np.array_equal(out.rejected, st.rejected) and 20 in out.rejected_nuclei


def test_merge_cuts_confirmed_pixels_out_of_a_slightly_overlapping_prediction():
  st = _state()
  pred = _box(np.zeros((64, 64), np.int32), 7, 2, 11, 10, 10)  # 1 column (10 %) on nucleus 1
  out, c = merge_predictions(st, pred, {7: 0.9}, "m", confirmed_overlap=0.2)
  assert c.proposed == 1
  k = next(k for k, n in out.nuclei.items() if n.state == "proposed")
  assert (out.labels == k).sum() == 90 and np.array_equal(out.labels == 1, st.labels == 1)
  out, c = merge_predictions(st, pred, {7: 0.9}, "m", confirmed_overlap=0.05)
  assert c.proposed == 0 and c.dropped_confirmed == 1


def test_majority_inside_a_rejected_region_is_dropped_even_at_low_iou():
  st = _state()
  pred = _box(np.zeros((64, 64), np.int32), 1, 42, 42, 4, 4)  # small, inside region 20
  _, c = merge_predictions(st, pred, {1: 0.9}, "m", min_area=1)
  assert c.dropped_rejected == 1 and c.proposed == 0


# -------------------------------------------------------------------------- edit pick-up


def test_edits_deleted_proposal_rejected_state_change_confirmed_new_shape_human():
  st = _state()
  lab = st.labels.copy()
  lab[lab == 2] = 0                       # proposal 2 deleted
  _box(lab, 1, 2, 2, 10, 12)              # confirmed 1 reshaped (geometry wins)
  _box(lab, 9, 2, 40, 8, 8)               # new shape
  nuclei = {1: Nucleus(1, "confirmed", None, "human"),
            3: Nucleus(3, "confirmed", 0.8, "pa_jax round 1"),   # state set by the person
            9: Nucleus(9, "confirmed", None, "human")}
  new, c = apply_edits(st, lab, nuclei)
  assert (c.rejected, c.accepted, c.added, c.reshaped, c.deleted) == (1, 1, 1, 1, 0)
  assert new.nuclei[3].state == "confirmed" and new.nuclei[3].source == "pa_jax round 1"
  assert new.nuclei[1].state == "confirmed" and (new.labels == 1).sum() == 120
  added = [k for k in new.nuclei if k not in (1, 3)]
  assert added == [21] and new.nuclei[21].source == "human" and new.next_id > 21
  rid = [k for k in new.rejected_nuclei if k != 20]
  assert len(rid) == 1 and np.array_equal(new.rejected == rid[0], st.labels == 2)
  assert new.rejected_nuclei[rid[0]].state == "rejected"
  assert new.negatives() is not None and (new.negatives() > 0).sum() == 200


def test_edits_match_by_geometry_when_ids_change_and_accept_flag():
  st = _state()
  lab = np.zeros_like(st.labels)
  for old, new_id in ((1, 5), (2, 6), (3, 7)):  # a tool renumbered every shape
    lab[st.labels == old] = new_id
  nuclei = {5: Nucleus(5), 6: Nucleus(6, "proposed"), 7: Nucleus(7, "proposed")}
  new, c = apply_edits(st, lab, nuclei)
  assert sorted(new.nuclei) == [1, 2, 3] and c.added == 0 and c.rejected == 0
  assert [new.nuclei[k].state for k in (1, 2, 3)] == ["confirmed", "proposed", "proposed"]
  new, c = apply_edits(st, lab, nuclei, accept_proposals=True)
  assert c.accepted == 2 and all(n.state == "confirmed" for n in new.nuclei.values())
  new, c = apply_edits(st, None, None, accept_proposals=True)  # file untouched
  assert c.accepted == 2


def test_drawing_a_nucleus_over_a_rejected_region_unrejects_it():
  st = _state()
  lab = st.labels.copy()
  _box(lab, 30, 40, 40, 10, 10)
  new, c = apply_edits(st, lab, {k: n for k, n in st.nuclei.items()})
  assert c.unrejected == 1 and 20 not in new.rejected_nuclei and not new.rejected.any()


def test_rejected_shape_in_file_becomes_a_rejected_region():
  st = _state()
  nuclei = dict(st.nuclei)
  nuclei[3] = Nucleus(3, "rejected", 0.8, "pa_jax round 1")
  new, c = apply_edits(st, st.labels, nuclei)
  assert c.rejected == 1 and 3 not in new.nuclei and len(new.rejected_nuclei) == 2


# ------------------------------------------------------------------------------ hold-out


def test_holdout_is_seeded_and_excluded_from_training_labels():
  states = []
  for j in range(3):
    lab = np.zeros((64, 64), np.int32)
    for k in range(1, 11):
      _box(lab, k, (k - 1) * 6, j * 10, 5, 5)
    states.append(ImageState.initial(f"im{j}", lab))
  a = review.split_holdout(states, 0.1, seed=0, round_=1)
  assert a == review.split_holdout(list(reversed(states)), 0.1, seed=0, round_=1)
  assert sum(map(len, a.values())) == 3
  others = [review.split_holdout(states, 0.1, seed=0, round_=r) for r in range(2, 6)]
  assert any(o != a for o in others)
  for st in states:
    train = review.training_labels(st, a[st.id])
    assert set(np.unique(train)) - {0} == set(st.confirmed_ids()) - set(a[st.id])
  assert review.holdout_scores(states[0], [1], states[0].labels) == [1.0]
  assert review.holdout_scores(states[0], [1], np.zeros((64, 64), np.int32)) == [0.0]


# ----------------------------------------------------- whole invocations (fake model)


@pytest.fixture
def fake_model(monkeypatch):
  """Training is skipped; prediction returns the image's true labels (or `wrong` ones)."""
  calls = {"train": 0}

  def fake_train(cfg, examples, stats, workdir, round_, prev_variables=None, progress=True):
    calls["train"] += 1
    calls["examples"] = examples
    return None, None, 0.0, 0

  class P:
    def predict_scored(self, image):
      lab = calls["predict"](image)
      return lab, {k: 0.9 for k in np.unique(lab) if k}

  import pa_jax.infer.predictor as predictor_mod

  monkeypatch.setattr(training, "train_round", fake_train)
  monkeypatch.setattr(predictor_mod, "predictor_for", lambda cfg, model, variables: P())
  monkeypatch.setattr("pa_jax.experiment.load_run", lambda w: (None, None, None, 0))
  return calls


def _by_image(truths, images):
  from pa_jax.data import readers

  table = {readers.read_image(images / f"{i}.png").tobytes(): t for i, t in truths.items()}
  return lambda image: table[image.tobytes()]


def test_rounds_counts_add_up_and_edits_are_picked_up(tmp_path, fake_model):
  images, annots, truths = partial_annotation_folders(tmp_path)
  fake_model["predict"] = _by_image(truths, images)
  out = tmp_path / "out"
  rep = loop.annotate_main(images, annots, out, rounds=1, progress=False)
  t = rep["totals"]
  assert t["confirmed"] == t["confirmed_human"] + t["confirmed_accepted"] == 4
  for k in review.COUNT_KEYS + ("heldout", "heldout_recovered"):
    assert t[k] == sum(r[k] for r in rep["images"])
  assert t["proposed"] == sum(len(np.unique(x)) - 1 for x in truths.values()) - 4
  assert rep["holdout"]["nuclei"] == 1 and rep["holdout"]["recall"] == 1.0
  assert (out / "current").is_symlink() and (out / "current" / "im0.geojson").is_file()
  for name in ("report.md", "report.json", "overlays/im0.png", "annotations/im0_rois.zip"):
    assert (out / "round_1" / name).is_file()
  assert json.loads((out / "round_1" / "report.json").read_text())["round"] == 1
  # training labels: confirmed minus the held-out one; proposals absent
  ex = fake_model["examples"]
  assert sum(len(np.unique(e.labels)) - 1 for e in ex) == 3
  # As `run.py train`: the 8-bit PNGs stay integers, stretched on the device by their range.
  assert all(e.image.dtype == np.uint8 and e.intensity.shape == (2, 3) for e in ex)

  # the person deletes every proposal of im0 and confirms every proposal of im1
  rev0 = F.read_annotations(out / "current" / "im0.geojson", "im0", (64, 64))
  lab, nuc = rev0
  keep = [k for k, n in nuc.items() if n.state == "confirmed"]
  F.export_all(out / "current", "im0", np.where(np.isin(lab, keep), lab, 0),
               {k: nuc[k] for k in keep}, ("geojson",))
  lab, nuc = F.read_annotations(out / "current" / "im1.png", "im1", (64, 64))
  F.export_all(out / "current", "im1", lab,
               {k: dataclasses.replace(n, state="confirmed") for k, n in nuc.items()}, ("label",))
  status = loop.annotate_main(images, None, out, rounds=0, progress=False)
  assert status["round"] == 1
  n0 = len(np.unique(truths["im0"])) - 1
  n1 = len(np.unique(truths["im1"])) - 1
  rows = {r["id"]: r for r in status["images"]}
  assert rows["im0"]["rejected"] == n0 - 2 and rows["im0"]["proposed"] == 0
  assert rows["im1"]["confirmed"] == n1 and rows["im1"]["confirmed_accepted"] == n1 - 2

  rep2 = loop.annotate_main(images, None, out, rounds=1, progress=False)
  rows = {r["id"]: r for r in rep2["images"]}
  # rejected places are never proposed again (the fake model predicts them again)
  assert rows["im0"]["proposed"] == 0 and rows["im0"]["merge"]["dropped_rejected"] == n0 - 2
  assert rows["im1"]["confirmed"] == n1 and rows["im1"]["proposed"] == 0
  assert rep2["edits"]["rejected"] == n0 - 2 and rep2["edits"]["accepted"] == n1 - 2
  assert os.readlink(out / "current") == ".current/r2"
  # the rejected regions were negatives of round 2's training
  ex = {e.id: e for e in fake_model["examples"]}
  assert ex["im0"].negatives is not None and ex["im1"].negatives is None
  hist = json.loads((out / "state.json").read_text())["history"]
  assert [h["round"] for h in hist] == [1, 2]


def test_coco_only_edits_are_picked_up(tmp_path, fake_model):
  images, annots, truths = partial_annotation_folders(tmp_path)
  fake_model["predict"] = _by_image(truths, images)
  out = tmp_path / "out"
  rep = loop.annotate_main(images, annots, out, rounds=1, progress=False, formats="coco")
  path = out / "current" / "annotations.json"
  coco = json.loads(path.read_text())
  drop = next(a for a in coco["annotations"] if a["state"] == "proposed")
  coco["annotations"] = [a for a in coco["annotations"] if a is not drop]
  fileio.write_json(path, coco)
  status = loop.annotate_main(images, None, out, rounds=0, progress=False)
  assert status["totals"]["rejected"] == 1
  assert status["totals"]["proposed"] == rep["totals"]["proposed"] - 1


def test_simulated_annotator_reaches_every_nucleus(tmp_path, fake_model):
  images, annots, truths = partial_annotation_folders(tmp_path)
  fake_model["predict"] = lambda image: np.zeros(image.shape[:2], np.int32)  # useless model
  out = tmp_path / "out"
  loop.annotate_main(images, annots, out, rounds=1, progress=False, holdout_fraction=0.0)
  res = simulate.review_current(out, truths, add_per_round=10)
  assert res["totals"]["added"] == sum(len(np.unique(t)) - 1 for t in truths.values()) - 4
  assert res["totals"]["missed"] == 0
  status = loop.annotate_main(images, None, out, rounds=0, progress=False)
  assert status["totals"]["confirmed"] == status["totals"]["confirmed_human"] == \
      sum(len(np.unique(t)) - 1 for t in truths.values())


def test_review_image_confirms_good_deletes_bad_and_adds_missed():
  truth = np.zeros((40, 40), np.int32)
  _box(truth, 1, 0, 0, 10, 10)
  _box(truth, 2, 20, 0, 10, 10)
  _box(truth, 3, 20, 20, 10, 10)
  lab = np.zeros_like(truth)
  _box(lab, 1, 0, 0, 10, 9)       # IoU 0.9 → confirm
  _box(lab, 2, 20, 0, 4, 4)       # IoU 0.16 → delete; its true nucleus comes first
  _box(lab, 3, 0, 25, 5, 5)       # no nucleus → delete
  nuc = {k: Nucleus(k, "proposed", 0.9, "m") for k in (1, 2, 3)}
  out, n, c = simulate.review_image(lab, nuc, truth, add_per_round=1)
  assert (c.confirmed, c.deleted, c.added, c.missed) == (1, 2, 1, 1)
  assert n[1].state == "confirmed" and 2 not in n and 3 not in n
  new = [k for k in n if k != 1]
  assert np.array_equal(out == new[0], truth == 2) and n[new[0]].source == "human"


def test_project_saved_with_png_state_maps_still_resumes(tmp_path, fake_model):
  """Projects from before the TIFF state maps (16-bit PNG) open and continue; a state map
  that is missing altogether is a one-line error naming it."""
  from pa_jax.data import readers

  images, annots, truths = partial_annotation_folders(tmp_path)
  fake_model["predict"] = _by_image(truths, images)
  out = tmp_path / "out"
  loop.annotate_main(images, annots, out, rounds=1, progress=False)
  saved = {}
  for tif in sorted((out / "state" / "r1").glob("*.tif")):
    saved[tif.stem] = readers.read_label_map(tif)
    fileio.write_label_map(tif.with_suffix(".png"), saved[tif.stem])
    tif.unlink()
  assert sorted(saved) == ["im0_labels", "im0_rejected", "im1_labels", "im1_rejected"]
  rep = loop.annotate_main(images, None, out, rounds=1, progress=False)
  assert rep["round"] == 2
  (out / "state" / "r2" / "im1_labels.tif").unlink()
  with pytest.raises(InputError, match="im1_labels.tif: missing from the saved annotation"):
    loop.annotate_main(images, None, out, rounds=1, progress=False)


def test_a_crash_before_the_commit_leaves_state_and_current_intact(tmp_path, fake_model,
                                                                   monkeypatch):
  images, annots, truths = partial_annotation_folders(tmp_path)
  fake_model["predict"] = _by_image(truths, images)
  out = tmp_path / "out"
  loop.annotate_main(images, annots, out, rounds=1, progress=False)
  # the person edits: deletes all proposals of im0
  lab, nuc = F.read_annotations(out / "current" / "im0.geojson", "im0", (64, 64))
  keep = [k for k, n in nuc.items() if n.state == "confirmed"]
  F.export_all(out / "current", "im0", np.where(np.isin(lab, keep), lab, 0),
               {k: nuc[k] for k in keep}, ("geojson",))
  state_before = (out / "state.json").read_bytes()
  current_before = {p.name: p.read_bytes() for p in (out / "current").iterdir()}

  real = fileio.write_json

  def boom(path, obj):
    if Path(path).name == "state.json":
      raise OSError("disk full")
    return real(path, obj)

  monkeypatch.setattr(fileio, "write_json", boom)
  with pytest.raises(OSError):
    loop.annotate_main(images, None, out, rounds=1, progress=False)
  assert (out / "state.json").read_bytes() == state_before
  assert os.readlink(out / "current") == ".current/r1"
  assert {p.name: p.read_bytes() for p in (out / "current").iterdir()} == current_before

  # a crash in the middle of writing round 2's files
  calls = {"n": 0}
  real_export = project.export_image

  def flaky(*a, **k):
    calls["n"] += 1
    if calls["n"] == 2:  # one export per image: im0's files are written, im1's are not
      raise OSError("killed")
    return real_export(*a, **k)

  monkeypatch.setattr(fileio, "write_json", real)
  monkeypatch.setattr(project, "export_image", flaky)
  with pytest.raises(OSError, match="killed"):
    loop.annotate_main(images, None, out, rounds=1, progress=False)
  assert calls["n"] == 2  # the crash came where intended: im0 exported, im1 not
  half = out / ".current" / "r2"
  assert half.is_dir()  # the half-written round is left aside (cleared on the rerun)
  names = {p.name for p in half.iterdir()}
  assert any(n.startswith("im0") for n in names) and not any(n.startswith("im1") for n in names)
  assert (out / "state.json").read_bytes() == state_before
  assert {p.name: p.read_bytes() for p in (out / "current").iterdir()} == current_before

  monkeypatch.setattr(project, "export_image", real_export)
  rep = loop.annotate_main(images, None, out, rounds=1, progress=False)  # rerun: picks up edits
  assert rep["round"] == 2 and rep["edits"]["rejected"] == len(np.unique(truths["im0"])) - 3
  assert json.loads((out / "state.json").read_text())["round"] == 2


# ------------------------------------------------------------- tiny real end-to-end


def tiny_config():
  from configs import annotate, base

  c = base.toy_sized(annotate.get_config())
  c.annotate.finetune_steps = 1
  c.predict.score_threshold = 0.0  # an untrained net: draw whatever it finds
  return c


@pytest.fixture(scope="module")
def tiny_round1(tmp_path_factory):
  """One real round (2 training steps of a tiny model) on two synthetic images."""
  tmp = tmp_path_factory.mktemp("tiny")
  images, annots, truths = partial_annotation_folders(tmp)
  out = tmp / "out"
  rep = loop.annotate_main(images, annots, out, rounds=1, config=tiny_config(), progress=False,
                           formats="label,geojson")
  return images, truths, out, rep


def test_tiny_end_to_end_round(tiny_round1):
  images, truths, out, rep = tiny_round1
  assert rep["round"] == 1 and rep["training"]["steps"] == 2
  assert rep["training"]["from"] == "scratch"
  assert (out / "train" / "round_1" / "checkpoints").is_dir()
  t = rep["totals"]
  assert t["confirmed"] == 4 and t["heldout"] == 1 and t["rejected"] == 0
  assert t["proposed"] == sum(r["merge"]["proposed"] for r in rep["images"])
  for i in ("im0", "im1"):
    for name in (f"{i}.png", f"{i}.nuclei.json", f"{i}.geojson"):
      assert (out / "current" / name).is_file()
    assert (out / "round_1" / "overlays" / f"{i}.png").is_file()


def test_tiny_fine_tune_round_from_the_previous_run(tiny_round1):
  images, truths, out, _ = tiny_round1
  review = simulate.review_current(out, truths, add_per_round=2)
  rep = loop.annotate_main(images, None, out, rounds=1, config=tiny_config(), progress=False,
                           formats="label,geojson", target_recall=0.0)
  assert rep["round"] == 2 and rep["training"]["from"] == "round 1"
  assert rep["training"]["steps"] == 1 and rep["stopped"]
  assert rep["edits"]["added"] == review["totals"]["added"] >= 2
  assert rep["edits"]["accepted"] == review["totals"]["confirmed"]
  assert rep["edits"]["rejected"] == review["totals"]["deleted"]
  assert rep["totals"]["confirmed"] == 4 + review["totals"]["added"] + review["totals"]["confirmed"]


def test_predict_with_attention_from_the_round_1_run(tiny_round1, tmp_path):
  """`run.py predict --attention` on a trained partial-annotation run: label maps and one
  attention PNG per image, and the jitted attention equals the explicit N x N map."""
  from pa_jax import experiment
  from pa_jax.data.pipeline import normalize_image
  from pa_jax.data.readers import read_image
  from pa_jax.infer.attention import attention_map
  from pa_jax.models.mask_rcnn import MaskRCNN
  from pa_jax.predict import predict_command

  images, truths, out, _ = tiny_round1
  run = out / "train" / "round_1"
  dest = tmp_path / "pred"
  assert predict_command(str(images), str(dest), workdir=str(run), formats=("label",),
                         attention=True, progress=False) == 2
  for i in ("im0", "im1"):
    png = read_image(dest / f"{i}_attention.png")
    assert png.ndim == 3 and png.shape[0] > 100 and png.std() > 0
    assert (dest / f"{i}.png").is_file()

  import jax

  cfg, model, variables, _ = experiment.load_run(run)
  image = read_image(images / "im0.png")
  selected = truths["im0"] > 0
  with jax.default_matmul_precision("highest"):  # accelerators default to TF32 passes
    att = attention_map(model, variables, image, selected, cfg.data.normalize)
  assert att.shape == image.shape[:2] and np.all(np.isfinite(att)) and np.all(att >= 0)
  # 64 x 64 image = its canvas: each P2 cell is repeated 4 x 4 times, the P2 map sums to 1.
  np.testing.assert_allclose(att.sum() / 16.0, 1.0, rtol=1e-4)
  # Independent reference: the explicit attention map A = Q K^T (N x N, fine at 16 x 16)
  # from an un-jitted forward pass, rows of the selected cells averaged.
  x = normalize_image(image, cfg.data.normalize)[None]
  with jax.default_matmul_precision("highest"):
    _, st = model.apply(variables, x, method=MaskRCNN.attention_maps, mutable=["intermediates"])
  q = np.asarray(st["intermediates"]["attention_p2"]["queries"][0][0])
  k = np.asarray(st["intermediates"]["attention_p2"]["keys"][0][0])
  hk, wk, ck = k.shape
  q, k = q.reshape(hk * wk, ck), k.reshape(hk * wk, ck)
  rows = selected[2::4, 2::4].reshape(-1)
  want = (q @ k.T)[rows].mean(axis=0).reshape(hk, wk)
  np.testing.assert_allclose(att[::4, ::4], want, rtol=1e-4, atol=1e-7)


def test_round_training_refuses_frozen_backbone_without_weights(tmp_path):
  """An annotation round trains like `run.py train`: frozen BN with no pretrained file is
  refused at once (it used to train a silently crippled model here)."""
  cfg = tiny_config()
  cfg.model.norm = "frozen_bn"
  stats = {"images": 1, "annotated_nuclei": 1, "full_nuclei": 1, "median_width": 10.0,
           "median_height": 10.0}
  with pytest.raises(InputError, match="frozen_bn"):
    training.train_round(cfg, [], stats, tmp_path / "w", 1, progress=False)
  assert not (tmp_path / "w").exists()
