"""The composed detector: losses under jit, prediction shapes, the regression guard."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pa_jax.data import pipeline, synthetic
from pa_jax.models.mask_rcnn import MaskRCNN, ModelSpec

TINY = ModelSpec(
    backbone="resnet18",
    backbone_width=8,
    norm="group_norm",
    fpn_channels=16,
    anchor_sizes=((8, 11.3), (16, 22.6), (32, 45.3), (64, 90.5), (128, 181.0)),
    rpn_pre_nms_topk_train=200,
    rpn_post_nms_topk_train=100,
    rpn_pre_nms_topk_test=200,
    rpn_post_nms_topk_test=100,
    rpn_batch_per_image=64,
    roi_batch_per_image=64,
    fc_dim=32,
    mask_dim=16,
    max_detections=50,
    max_pa_boxes=32,
    key_channels=8,
    value_channels=8,
    anchor_wh=(16.0, 16.0),
)


def _batch(n=2, canvas=64, full=True, seed=0):
  exs = []
  for i in range(n):
    img, lab = synthetic.synthetic_image(seed + i, canvas, canvas, n_nuclei=6, radius=(5, 9))
    exs.append(pipeline.TrainExample(str(i), pipeline.normalize_image(img), lab, lab))
  return jax.tree.map(jnp.asarray, pipeline.BatchSource(exs, n, canvas, 16).batch(0))


@pytest.fixture(scope="module")
def batch():
  return _batch()


def _init(spec, batch, seed=0):
  model = MaskRCNN(spec)
  return model, jax.jit(model.init)(jax.random.PRNGKey(seed), batch, jax.random.PRNGKey(1))


def test_losses_are_finite_under_jit_and_predict_has_static_shapes(batch):
  model, variables = _init(TINY, batch)
  loss, aux = jax.jit(model.apply)(variables, batch, jax.random.PRNGKey(2))
  for k in ("loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box", "loss_mask"):
    assert np.isfinite(float(aux[k])), k
  assert np.isclose(
      float(loss), sum(float(v) for k, v in aux.items() if k.startswith("loss_")), rtol=1e-5
  )
  det = jax.jit(lambda v, im, hw: model.apply(v, im, hw, method=MaskRCNN.predict))(
      variables, batch.image, batch.image_size
  )
  assert det.boxes.shape == (2, 50, 4) and det.masks.shape == (2, 50, 28, 28)
  assert det.valid.dtype == jnp.bool_ and det.pa_boxes.shape == (2, 0, 4)
  b = np.asarray(det.boxes)[np.asarray(det.valid)]
  assert np.all(b[:, 2] <= 64) and np.all(b[:, 0] >= 0)


def test_no_nuclei_gives_finite_losses():
  b = _batch()
  empty = b.replace(
      labels=jnp.zeros_like(b.labels), valid=jnp.zeros_like(b.valid), boxes=jnp.zeros_like(b.boxes)
  )
  for spec in (TINY, dataclasses.replace(TINY, partial=True)):
    model, variables = _init(spec, empty)
    loss, aux = jax.jit(model.apply)(variables, empty, jax.random.PRNGKey(3))
    assert np.isfinite(float(loss)), spec.partial
    assert float(aux["loss_box"]) == 0.0 and float(aux["loss_mask"]) == 0.0


def test_regression_guard_module_off_is_exactly_the_baseline(batch):
  """partial=False: no PA parameter, no PA field has any effect, bit for bit."""
  base_model, base_vars = _init(TINY, batch)
  odd = dataclasses.replace(
      TINY,
      partial=False,
      attention_levels=("p2", "p3"),
      key_channels=4,
      center_scale=0.9,
      pa_threshold=0.1,
      max_pa_boxes=7,
      anchor_wh=(99.0, 3.0),
      components_backend="host",
      rpn_ignore_iou=0.01,
      roi_ignore_iou=0.01,
      centerness_loss_weight=5.0,
  )
  odd_model, odd_vars = _init(odd, batch)
  assert jax.tree.structure(base_vars) == jax.tree.structure(odd_vars)
  jax.tree.map(np.testing.assert_array_equal, base_vars, odd_vars)
  flat = jax.tree_util.tree_flatten_with_path(base_vars["params"])[0]
  assert not any("attention" in str(p) or "centerness" in str(p) for p, _ in flat)
  rng = jax.random.PRNGKey(7)
  l1, a1 = jax.jit(base_model.apply)(base_vars, batch, rng)
  l2, a2 = jax.jit(odd_model.apply)(odd_vars, batch, rng)
  assert float(l1) == float(l2)
  assert a1.keys() == a2.keys()
  for k in a1:
    assert float(a1[k]) == float(a2[k]), k
  pred = lambda m, v: jax.jit(lambda v, i, s: m.apply(v, i, s, method=MaskRCNN.predict))(  # noqa
      v, batch.image, batch.image_size
  )
  jax.tree.map(
      np.testing.assert_array_equal, pred(base_model, base_vars), pred(odd_model, odd_vars)
  )


def test_module_on_shares_every_baseline_parameter(batch):
  """The PA model is the baseline plus attention + centerness parameters (same init)."""
  _, base_vars = _init(TINY, batch)
  _, pa_vars = _init(dataclasses.replace(TINY, partial=True), batch)
  base_flat = dict(jax.tree_util.tree_flatten_with_path(base_vars["params"])[0])
  pa_flat = dict(jax.tree_util.tree_flatten_with_path(pa_vars["params"])[0])
  extra = set(pa_flat) - set(base_flat)
  assert extra and all("attention" in str(p) or "centerness" in str(p) for p in extra)
  for p, v in base_flat.items():
    np.testing.assert_array_equal(v, pa_flat[p])


@pytest.mark.parametrize("backend", ["device", "host"])
def test_module_on_with_every_nucleus_annotated_trains(batch, backend):
  import optax

  spec = dataclasses.replace(TINY, partial=True, components_backend=backend)
  model, variables = _init(spec, batch)
  tx = optax.sgd(0.01, momentum=0.9)
  params, opt = variables["params"], tx.init(variables["params"])

  @jax.jit
  def step(params, opt, k):
    (loss, aux), g = jax.value_and_grad(
        lambda p: model.apply({**variables, "params": p}, batch, k), has_aux=True
    )(params)
    g = jax.tree.map(lambda x: jnp.clip(x, -1, 1), g)
    upd, opt = tx.update(g, opt, params)
    return optax.apply_updates(params, upd), opt, loss, aux

  losses = []
  for i in range(15):
    params, opt, loss, aux = step(params, opt, jax.random.PRNGKey(i))
    losses.append(float(loss))
  assert all(np.isfinite(losses))
  assert np.mean(losses[-3:]) < np.mean(losses[:3])
  assert "loss_centerness" in aux and "pa_boxes_per_image" in aux


def test_bfloat16_compute_keeps_losses_and_outputs_float32(batch):
  """compute_dtype='bfloat16' (the paper configs' default): the same float32 parameters, bf16
  convolutions, but the losses, the predicted scores and boxes stay float32 and close to
  the float32 model's (softmaxes, losses and norm statistics are computed in float32)."""
  model, variables = _init(TINY, batch)
  bf16 = MaskRCNN(dataclasses.replace(TINY, compute_dtype="bfloat16"))
  rng = jax.random.PRNGKey(2)
  l32, a32 = jax.jit(model.apply)(variables, batch, rng)
  l16, a16 = jax.jit(bf16.apply)(variables, batch, rng)
  assert l16.dtype == jnp.float32 and all(v.dtype == jnp.float32 for v in a16.values())
  assert np.isfinite(float(l16))
  # bf16 keeps 8 bits of mantissa: a few per cent on a sum of losses of a random net.
  np.testing.assert_allclose(float(l16), float(l32), rtol=0.1)
  det = jax.jit(lambda v, im, hw: bf16.apply(v, im, hw, method=MaskRCNN.predict))(
      variables, batch.image, batch.image_size
  )
  assert det.boxes.dtype == jnp.float32 and det.scores.dtype == jnp.float32
  assert det.masks.dtype == jnp.float32
