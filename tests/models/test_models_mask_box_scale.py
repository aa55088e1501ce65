"""model.roi.mask_box_scale: masks predicted (and trained) in the box scaled about its
centre; `Detections.mask_boxes` is that frame. Only the mask branch may change."""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pa_jax.data import pipeline, synthetic
from pa_jax.models.mask_rcnn import MaskRCNN, ModelSpec
from pa_jax.ops.boxes import scale_boxes

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))
from configs import base  # noqa: E402


def _spec(scale: float) -> ModelSpec:
  cfg = base.toy_sized(base.cpu_sized(base.get_config()))
  cfg.model.roi.mask_box_scale = scale
  return ModelSpec.from_config(cfg.model)


@pytest.fixture(scope="module")
def batch():
  exs = []
  for i in range(2):
    img, lab = synthetic.synthetic_image(i, 64, 64, n_nuclei=6, radius=(5, 9))
    exs.append(pipeline.TrainExample(str(i), pipeline.normalize_image(img), lab, lab))
  return jax.tree.map(jnp.asarray, pipeline.BatchSource(exs, 2, 64, 32).batch(0))


def test_config_field_reaches_the_spec():
  assert _spec(1.0).mask_box_scale == 1.0 and _spec(1.2).mask_box_scale == 1.2
  # a config saved before the field existed
  cfg = base.toy_sized(base.get_config())
  del cfg.model.roi["mask_box_scale"]
  assert ModelSpec.from_config(cfg.model).mask_box_scale == 1.0


def test_predict_mask_boxes_are_the_scaled_boxes(batch, rand_vars):
  one, wide = MaskRCNN(_spec(1.0)), MaskRCNN(_spec(1.2))
  variables = rand_vars(one, batch, jax.random.PRNGKey(1))

  def predict(model):
    return jax.jit(lambda v, im, hw: model.apply(v, im, hw, method=MaskRCNN.predict))(
        variables, batch.image, batch.image_size
    )

  d1, d12 = predict(one), predict(wide)
  assert np.asarray(d1.valid).any()  # something to compare
  np.testing.assert_array_equal(d1.mask_boxes, d1.boxes)
  # the box branch is unchanged by the mask frame ...
  np.testing.assert_allclose(d12.boxes, d1.boxes, rtol=1e-6, atol=1e-4)
  np.testing.assert_allclose(d12.scores, d1.scores, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(d12.valid, d1.valid)
  # ... and the frame is the box x1.2 about its centre (not clipped to the image)
  np.testing.assert_allclose(d12.mask_boxes, scale_boxes(d12.boxes, 1.2), rtol=1e-6, atol=1e-5)
  v = np.asarray(d12.valid)
  b, mb = np.asarray(d12.boxes)[v], np.asarray(d12.mask_boxes)[v]
  np.testing.assert_allclose(mb[:, 2:] - mb[:, :2], 1.2 * (b[:, 2:] - b[:, :2]), atol=1e-4)
  # the masks are the head's output in another frame: they differ, and stay 0 off `valid`
  assert not np.allclose(np.asarray(d12.masks)[v], np.asarray(d1.masks)[v])
  assert not np.asarray(d12.masks)[~v].any()


def test_loss_compiles_with_a_scaled_mask_frame(batch, rand_vars):
  """Training's jit with the scaled frame (the box branch is checked equal in predict)."""
  wide = MaskRCNN(_spec(1.2))
  variables = rand_vars(wide, batch, jax.random.PRNGKey(1))
  loss, aux = jax.jit(wide.apply)(variables, batch, jax.random.PRNGKey(2))
  assert np.isfinite(float(loss))
  assert float(aux["roi_positives_per_image"]) > 0 and float(aux["loss_mask"]) > 0
  assert np.isclose(
      float(loss), sum(float(v) for k, v in aux.items() if k.startswith("loss_")), rtol=1e-5
  )
