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
