"""pa_jax.partial.training: the PA module's share of a training step."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from pa_jax.data import pipeline, synthetic
from pa_jax.partial import training as T


@dataclasses.dataclass(frozen=True)
class Spec:  # the ModelSpec fields the package reads
  anchor_wh: tuple = (12.0, 12.0)
  anchor_strides: tuple = (4, 8, 16, 32, 64)
  center_scale: float = 0.3
  pa_num_pixels: int = 32
  pa_positive_fraction: float = 0.5
  pa_threshold: float = 0.5
  max_pa_boxes: int = 16
  components_backend: str = "device"
  roi_ignore_iou: float = 0.5
  centerness_loss_weight: float = 1.0
  centerbox_loss_weight: float = 2.0
  hard_negatives: bool = False
  centerbox_weights: tuple = (10.0, 10.0, 5.0, 5.0)
  centerbox_beta: float = 1.0 / 9.0
  connectivity: int = 4


def _batch(n=2, canvas=64):
  exs = []
  for i in range(n):
    img, lab = synthetic.synthetic_image(i, canvas, canvas, n_nuclei=4, radius=(4, 7))
    exs.append(pipeline.TrainExample(str(i), pipeline.normalize_image(img), lab, lab))
  return jax.tree.map(jnp.asarray, pipeline.BatchSource(exs, n, canvas, 8).batch(0))


def _heads(batch, seed=0):
  b, h, w = batch.image.shape[0], batch.image.shape[1] // 4, batch.image.shape[2] // 4
  k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
  return 3.0 * jax.random.normal(k1, (b, h, w)), 0.1 * jax.random.normal(k2, (b, h, w, 4))


def test_partial_terms_keys_order_and_finite():
  batch = _batch()
  logits, deltas = _heads(batch)
  keys = []

  def terms(*args):  # records the insertion order, which the jit output (sorted) loses
    out = T.partial_terms(Spec(), *args)
    keys.extend(out[0])
    return out

  aux, boxes, valid = jax.jit(terms)(logits, deltas, batch, jax.random.PRNGKey(1))
  assert keys[:5] == ["loss_centerness", "loss_centerbox", "pa_boxes_per_image",
                      "pa_unannotated_per_image", "pa_unannotated_covered"]
  assert all(k.startswith("pa_") for k in keys[5:]) and "pa_num_sampled" in keys
  assert all(np.isfinite(float(v)) for v in aux.values())
  assert boxes.shape == (2, 16, 4) and valid.shape == (2, 16) and valid.dtype == jnp.bool_
  assert float(aux["pa_boxes_per_image"]) == float(np.mean(np.sum(np.asarray(valid), 1)))
  assert {"pa_unannotated_whole_covered", "pa_unannotated_whole_per_image"} <= set(keys)
  # The weight applies to the box term.
  aux1, _, _ = T.partial_terms(dataclasses.replace(Spec(), centerbox_loss_weight=1.0), logits,
                               deltas, batch, jax.random.PRNGKey(1))
  np.testing.assert_allclose(float(aux["loss_centerbox"]), 2 * float(aux1["loss_centerbox"]),
                             rtol=1e-6)


def test_pa_boxes_carry_no_gradient():
  batch = _batch()
  logits, deltas = _heads(batch)
  g = jax.grad(lambda d: jnp.sum(T.training_pa_boxes(Spec(), logits, d, batch)[0]))(deltas)
  assert float(jnp.max(jnp.abs(g))) == 0.0


def test_hard_negatives_suppress_pa_boxes_and_join_the_rois():
  batch = _batch()
  logits, deltas = _heads(batch)
  boxes, valid = T.training_pa_boxes(Spec(), logits, deltas, batch)
  assert np.asarray(valid).sum() > 0
  # Reject exactly the PA boxes of image 0.
  m = batch.negative_boxes.shape[1]
  neg = jnp.zeros_like(batch.negative_boxes).at[0, :min(m, 16)].set(boxes[0, :min(m, 16)])
  neg_valid = jnp.zeros_like(batch.negative_valid).at[0, :min(m, 16)].set(valid[0, :min(m, 16)])
  hard = batch.replace(negative_boxes=neg, negative_valid=neg_valid)
  spec = dataclasses.replace(Spec(), hard_negatives=True)
  _, valid_h = T.training_pa_boxes(spec, logits, deltas, hard)
  assert not np.asarray(valid_h)[0, :min(m, 16)].any()
  np.testing.assert_array_equal(np.asarray(valid_h)[1], np.asarray(valid)[1])
  rois, rois_valid = T.extra_rois(spec, boxes, valid_h, hard)
  assert [r.shape[1] for r in rois] == [16, m] and rois_valid[1] is hard.negative_valid
  rois, _ = T.extra_rois(Spec(), boxes, valid, hard)
  assert len(rois) == 1


def _np_iou(a, b):
  lt = np.maximum(a[:, None, :2], b[None, :, :2])
  rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
  inter = np.prod(np.clip(rb - lt, 0, None), -1)
  area = lambda x: np.prod(x[:, 2:] - x[:, :2], -1)  # noqa: E731
  return inter / np.maximum(area(a)[:, None] + area(b)[None] - inter, 1e-9)


def test_whole_coverage_counts_only_nuclei_no_edge_cuts():
  """`pa_unannotated_whole_covered` equals a numpy count over the unannotated nuclei that
  touch no edge of the real image, with the step's own PA boxes."""
  exs = []
  for i in range(2):  # a quarter-like partial view: the first nucleus annotated, 5 not
    img, full = synthetic.synthetic_image(i, 64, 64, n_nuclei=6, radius=(4, 7))
    first = np.unique(full[full > 0])[0]
    exs.append(pipeline.TrainExample(str(i), pipeline.normalize_image(img),
                                     np.where(full == first, full, 0), full))
  batch = jax.tree.map(jnp.asarray, pipeline.BatchSource(exs, 2, 64, 8).batch(0))
  true_boxes = np.asarray(batch.unannotated_boxes)
  un_boxes = true_boxes.copy()
  un_valid = np.asarray(batch.unannotated_valid)
  size = np.asarray(batch.image_size)
  for k in range(2):  # one unannotated nucleus per image moved onto the left edge
    i = np.flatnonzero(un_valid[k])
    assert i.size >= 2
    un_boxes[k, i[0], 2] -= un_boxes[k, i[0], 0]
    un_boxes[k, i[0], 0] = 0.0
  batch = dataclasses.replace(batch, unannotated_boxes=jnp.asarray(un_boxes))
  # Centerness forced high on one stride-4 pixel at each unannotated nucleus' centre, zero
  # box deltas: PA boxes of the anchor's 12 x 12 px on those nuclei (sizes 8-14 px).
  logits = np.full((2, 16, 16), -8.0, np.float32)
  for k in range(2):
    for x0, y0, x1, y1 in true_boxes[k][un_valid[k]]:
      logits[k, int((y0 + y1) / 8), int((x0 + x1) / 8)] = 8.0
  deltas = jnp.zeros((2, 16, 16, 4))
  aux, boxes, valid = T.partial_terms(Spec(), jnp.asarray(logits), deltas, batch,
                                      jax.random.PRNGKey(1))
  covered = total = 0
  for k in range(2):
    whole = un_valid[k] & (un_boxes[k, :, 0] > 0) & (un_boxes[k, :, 1] > 0) & \
        (un_boxes[k, :, 2] < size[k, 1]) & (un_boxes[k, :, 3] < size[k, 0])
    assert whole.sum() < un_valid[k].sum()
    pa = np.asarray(boxes[k])[np.asarray(valid[k])]
    total += whole.sum()
    if len(pa):
      covered += int(np.sum(_np_iou(un_boxes[k][whole], pa).max(axis=1) >= 0.5))
  assert 0 < covered < total
  np.testing.assert_allclose(float(aux["pa_unannotated_whole_covered"]), covered / total,
                             rtol=1e-6)
  assert float(aux["pa_unannotated_whole_per_image"]) == total / 2
