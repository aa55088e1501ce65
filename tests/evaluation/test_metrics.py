"""Metrics: hand-computed cases, empty-case rules, invariances, and agreement with a slow
per-pair reference written here independently of the vectorised code."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pa_jax.evaluation import metrics as M

THRESHOLDS = [0.5 + 0.05 * i for i in range(10)]


# ------------------------------------------------------------------ slow reference
# Loops over nuclei with boolean masks; shares nothing with pa_jax.evaluation.metrics.


def ref_iou_table(gt, pred):
  g_ids = sorted(int(v) for v in set(gt.ravel().tolist()) if v != 0)
  p_ids = sorted(int(v) for v in set(pred.ravel().tolist()) if v != 0)
  g_masks = [gt == g for g in g_ids]
  p_masks = [pred == p for p in p_ids]
  inter = [[int(np.logical_and(a, b).sum()) for b in p_masks] for a in g_masks]
  union = [[int(np.logical_or(a, b).sum()) for b in p_masks] for a in g_masks]
  g_area = [int(a.sum()) for a in g_masks]
  p_area = [int(b.sum()) for b in p_masks]
  return g_area, p_area, inter, union


def ref_max_matching(iou, t):
  """Maximum bipartite matching of pairs with IoU > t (Kuhn's augmenting paths)."""
  n_g = len(iou)
  n_p = len(iou[0]) if n_g else 0
  owner = [-1] * n_p  # pred index -> gt index

  def augment(g, seen):
    for p in range(n_p):
      if iou[g][p] > t and not seen[p]:
        seen[p] = True
        if owner[p] == -1 or augment(owner[p], seen):
          owner[p] = g
          return True
    return False

  for g in range(n_g):
    augment(g, [False] * n_p)
  return [(owner[p], p) for p in range(n_p) if owner[p] != -1]


def ref_metrics(gt, pred, prf_iou=0.5):
  g_area, p_area, inter, union = ref_iou_table(gt, pred)
  n_g, n_p = len(g_area), len(p_area)
  iou = [[inter[i][j] / union[i][j] for j in range(n_p)] for i in range(n_g)]
  if n_g == 0 and n_p == 0:
    return dict(map=1.0, aji=1.0, ncs=1.0, precision=1.0, recall=1.0, f1=1.0, pq=1.0,
                aji_c=0, aji_u=0, n_gt=0, n_pred=0)
  # mAP
  scores = []
  for t in THRESHOLDS:
    tp = len(ref_max_matching(iou, t))
    scores.append(tp / (tp + (n_p - tp) + (n_g - tp)))
  # AJI
  c = u = 0
  used = set()
  for i in range(n_g):
    best, best_iou = -1, 0.0
    for j in range(n_p):
      if inter[i][j] > 0 and iou[i][j] > best_iou:
        best, best_iou = j, iou[i][j]
    if best == -1:
      u += g_area[i]
    else:
      c += inter[i][best]
      u += union[i][best]
      used.add(best)
  for j in range(n_p):
    if j not in used:
      u += p_area[j]
  # NCS
  if n_g:
    ncs = sum(g_area[i] * max(iou[i], default=0.0) for i in range(n_g)) / sum(g_area)
  else:
    ncs = 0.0
  # P / R / F1 / PQ
  matches = ref_max_matching(iou, prf_iou)
  tp = len(matches)
  precision = tp / n_p if n_p else 0.0
  recall = tp / n_g if n_g else 0.0
  f1 = 2 * precision * recall / (precision + recall) if tp else 0.0
  matches05 = ref_max_matching(iou, 0.5)
  if matches05:
    f1_05 = 2 * len(matches05) / (n_g + n_p)
    pq = f1_05 * sum(iou[i][j] for i, j in matches05) / len(matches05)
  else:
    pq = 0.0
  return dict(map=sum(scores) / len(scores), aji=c / u, ncs=ncs, precision=precision,
              recall=recall, f1=f1, pq=pq, aji_c=c, aji_u=u, n_gt=n_g, n_pred=n_p)


# ----------------------------------------------------------------- hand-made maps


def blank(h=20, w=30):
  return np.zeros((h, w), np.int32)


def square_pair():
  gt = blank()
  gt[0:10, 0:10] = 1
  gt[10:20, 15:25] = 2
  return gt


def check(got: dict, want: dict):
  for k, v in want.items():
    assert got[k] == pytest.approx(v, abs=1e-12), (k, got[k], v)


def test_perfect_match():
  gt = square_pair()
  pred = np.where(gt == 1, 7, np.where(gt == 2, 3, 0)).astype(np.int32)
  check(M.image_metrics(gt, pred), dict(map=1, aji=1, ncs=1, precision=1, recall=1, f1=1,
                                        pq=1, n_gt=2, n_pred=2, aji_c=200, aji_u=200))


def test_empty_prediction():
  gt = square_pair()
  check(M.image_metrics(gt, blank()), dict(map=0, aji=0, ncs=0, precision=0, recall=0,
                                           f1=0, pq=0, n_gt=2, n_pred=0, aji_c=0,
                                           aji_u=200))


def test_empty_ground_truth():
  pred = square_pair()
  check(M.image_metrics(blank(), pred), dict(map=0, aji=0, ncs=0, precision=0, recall=0,
                                             f1=0, pq=0, n_gt=0, n_pred=2, aji_c=0,
                                             aji_u=200))


def test_both_empty():
  check(M.image_metrics(blank(), blank()), dict(map=1, aji=1, ncs=1, precision=1, recall=1,
                                                f1=1, pq=1, n_gt=0, n_pred=0))
  assert M.aji_counts(blank(), blank()) == (0, 0)
  assert M.precision_recall_f1(blank(), blank(), iou=0.3) == (1.0, 1.0, 1.0)


def test_merged_prediction_covering_two_nuclei():
  gt = blank()
  gt[0:10, 0:10] = 1
  gt[0:10, 10:20] = 2
  pred = blank()
  pred[0:10, 0:20] = 5  # IoU with each nucleus is exactly 0.5: not a match (IoU > t)
  # AJI: both nuclei pick the merged prediction: C = 100 + 100, U = 200 + 200.
  check(M.image_metrics(gt, pred), dict(map=0, aji=0.5, ncs=0.5, precision=0, recall=0,
                                        f1=0, pq=0, n_gt=2, n_pred=1, aji_c=200,
                                        aji_u=400))


def test_one_nucleus_split_in_two():
  gt = blank()
  gt[0:10, 0:20] = 1  # 200 px
  pred = blank()
  pred[0:10, 0:12] = 1  # 120 px, IoU 0.6
  pred[0:10, 12:20] = 2  # 80 px, IoU 0.4
  # mAP: matched at t = 0.50, 0.55 (0.6 > 0.6 is false): 2 x 1 / (1 + 1 + 0) / 10 = 0.1.
  # AJI: C = 120, U = 200 + 80 (the unused half) = 280.
  check(M.image_metrics(gt, pred), dict(map=0.1, aji=120 / 280, ncs=0.6, precision=0.5,
                                        recall=1, f1=2 / 3, pq=2 / 3 * 0.6, n_gt=1, n_pred=2,
                                        aji_c=120, aji_u=280))


def test_false_positive():
  gt = blank()
  gt[0:10, 0:10] = 1
  pred = gt.copy()
  pred[15:20, 20:25] = 2  # 25 px, touches nothing
  check(M.image_metrics(gt, pred), dict(map=0.5, aji=100 / 125, ncs=1, precision=0.5,
                                        recall=1, f1=2 / 3, pq=2 / 3, n_gt=1, n_pred=2))


def test_partial_overlap_thresholds():
  gt = blank()
  gt[0:10, 0:10] = 1
  pred = blank()
  pred[0:10, 0:8] = 4  # IoU 0.8: matched for t = 0.50 ... 0.75 (6 of 10 thresholds)
  check(M.image_metrics(gt, pred), dict(map=0.6, aji=0.8, ncs=0.8, precision=1, recall=1,
                                        f1=1, pq=0.8))


def test_individual_functions_match_image_metrics():
  gt = blank()
  gt[0:10, 0:20] = 1
  gt[12:20, 0:8] = 2
  pred = blank()
  pred[0:10, 0:12] = 1
  pred[0:10, 12:20] = 2
  pred[13:20, 1:9] = 9
  m = M.image_metrics(gt, pred)
  assert M.dsb_map(gt, pred) == m["map"]
  assert M.aji(gt, pred) == m["aji"]
  assert M.ncs(gt, pred) == m["ncs"]
  assert M.precision_recall_f1(gt, pred) == (m["precision"], m["recall"], m["f1"])
  assert M.panoptic_quality(gt, pred) == m["pq"]
  assert M.aji_counts(gt, pred) == (m["aji_c"], m["aji_u"])
  assert set(m) == {"map", "aji", "ncs", "precision", "recall", "f1", "pq", "n_gt",
                    "n_pred", "aji_c", "aji_u"}


def test_low_iou_threshold_uses_maximum_matching():
  # At IoU > 0.1 a greedy "best pair first" would match S1-A and leave B unmatched;
  # the maximum matching is S2-A, S1-B.
  gt = blank()
  gt[0:10, 0:10] = 1  # A
  gt[0:10, 10:20] = 2  # B
  pred = blank()
  pred[0:10, 4:16] = 1  # S1: 60 px of A, 60 of B
  pred[0:10, 0:3] = 2  # S2: 30 px of A, IoU 0.3
  assert M.precision_recall_f1(gt, pred, iou=0.1) == (1.0, 1.0, 1.0)
  assert M.precision_recall_f1(gt, pred, iou=0.5) == (0.0, 0.0, 0.0)


# ------------------------------------------------------------------ input checks


@pytest.mark.parametrize("gt,pred,msg", [
    (np.zeros((4, 4), np.int32), np.zeros((4, 5), np.int32), "shape"),
    (np.zeros((4, 4), np.float32), np.zeros((4, 4), np.int32), "integer"),
    (np.zeros((4, 4), np.int32), np.zeros((4, 4), bool), "integer"),
    (np.zeros((4, 4, 3), np.int32), np.zeros((4, 4, 3), np.int32), "2-D"),
    (np.full((4, 4), -1, np.int32), np.zeros((4, 4), np.int32), "negative"),
])
def test_bad_inputs_raise_value_error(gt, pred, msg):
  for fn in (M.image_metrics, M.dsb_map, M.aji, M.ncs, M.precision_recall_f1,
             M.panoptic_quality, M.contingency):
    with pytest.raises(ValueError, match=msg):
      fn(gt, pred)


# ------------------------------------------------------------- random label maps


def random_rects(rng, h, w, n, labels=None):
  out = np.zeros((h, w), np.int64)
  labels = labels if labels is not None else rng.permutation(np.arange(1, n + 1))
  rects = []
  for k in range(n):
    y, x = rng.integers(0, h - 3), rng.integers(0, w - 3)
    hh, ww = rng.integers(3, 14), rng.integers(3, 14)
    out[y:y + hh, x:x + ww] = labels[k]
    rects.append((y, x, hh, ww))
  return out, rects


def random_pair(seed, h=40, w=48):
  rng = np.random.default_rng(seed)
  n = int(rng.integers(0, 12))
  gt, rects = random_rects(rng, h, w, n)
  pred = np.zeros_like(gt)
  lab = 1
  for (y, x, hh, ww) in rects:
    r = rng.random()
    if r < 0.15:
      continue  # missed nucleus
    jitter = int(rng.integers(0, 3))  # 0: exact copy, 1: slight, 2: strong disagreement
    dy, dx = rng.integers(-jitter, jitter + 1, size=2)
    dh, dw = rng.integers(-jitter, jitter + 1, size=2)
    y0, x0 = max(y + dy, 0), max(x + dx, 0)
    if r < 0.3 and hh >= 4:  # split in two
      pred[y0:y0 + hh // 2, x0:x0 + ww + dw] = lab
      pred[y0 + hh // 2:y0 + hh + dh, x0:x0 + ww + dw] = lab + 1
      lab += 2
    else:
      pred[y0:y0 + hh + dh, x0:x0 + ww + dw] = lab
      lab += 1
  for _ in range(int(rng.integers(0, 4))):  # false positives (may merge nuclei)
    y, x = rng.integers(0, h - 3), rng.integers(0, w - 3)
    pred[y:y + rng.integers(3, 15), x:x + rng.integers(3, 15)] = lab
    lab += 1
  values = rng.permutation(np.arange(1, lab + 1))  # arbitrary, non-consecutive values
  pred = np.where(pred > 0, values[np.maximum(pred - 1, 0)] * 3, 0)
  return gt, pred


@pytest.mark.parametrize("seed", range(40))
def test_agrees_with_slow_reference(seed):
  gt, pred = random_pair(seed)
  want = ref_metrics(gt, pred)
  got = M.image_metrics(gt, pred)
  for k, v in want.items():
    assert got[k] == pytest.approx(v, abs=1e-12), (k, got[k], v)
  for t in (0.1, 0.3, 0.7):
    p, r, f1 = M.precision_recall_f1(gt, pred, iou=t)
    ref = ref_metrics(gt, pred, prf_iou=t)
    assert (p, r, f1) == pytest.approx((ref["precision"], ref["recall"], ref["f1"]), abs=1e-12)


@pytest.mark.parametrize("seed", range(10))
def test_invariant_to_label_permutation_and_values(seed):
  gt, pred = random_pair(100 + seed)
  base = M.image_metrics(gt, pred)
  rng = np.random.default_rng(seed)
  for big in (False, True):  # big values exercise the np.unique (non-LUT) path
    def relabel(a):
      ids = np.unique(a)
      ids = ids[ids > 0]
      new = rng.permutation(ids.size) + 1
      if big:
        new = new * 1_000_003 + 2**31 - 10**9 * 2
      lut = dict(zip(ids.tolist(), new.tolist()))
      out = np.zeros(a.shape, np.int64)
      for k, v in lut.items():
        out[a == k] = v
      return out

    got = M.image_metrics(relabel(gt), relabel(pred))
    for k in base:
      assert got[k] == pytest.approx(base[k], abs=1e-12), k


def test_dtypes_accepted():
  gt, pred = random_pair(7)
  base = M.image_metrics(gt, pred)
  for dt in (np.uint16, np.int32, np.uint32, np.int64, np.uint64):
    got = M.image_metrics(gt.astype(dt), pred.astype(dt))
    assert got == base


def test_contingency_sparse_path_against_pixel_count():
  # Many small nuclei on both sides: the dense table would have 10^8 cells, so the pair
  # counting goes through the sparse path. Reference: a dict over pixels.
  h = w = 200
  yy, xx = np.mgrid[0:h, 0:w]
  gt = (yy // 2) * (w // 2) + (xx // 2) + 1
  pred = ((yy + 1) // 2) * (w // 2 + 1) + ((xx + 1) // 2) + 1
  t = M.contingency(gt, pred)
  assert t.n_gt == 10_000 and t.n_pred == 101 * 101
  counts = {}
  for g, p in zip(gt.ravel().tolist(), pred.ravel().tolist()):
    counts[(g, p)] = counts.get((g, p), 0) + 1
  got = {(int(t.gt_labels[i]), int(t.pred_labels[j])): int(c)
         for i, j, c in zip(t.gi, t.pj, t.inter)}
  assert got == counts
  # An interior 2x2 nucleus meets each shifted 2x2 prediction in 1 pixel: IoU 1 / 7
  # (1 / 4 against a 1-pixel prediction at the corner).
  assert math.isclose(t.iou.max(), 0.25) and np.isclose(np.median(t.iou), 1 / 7)
