"""Predictor: compile sharing across instances, batch padding, the 3x3 post-process."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from pa_jax.data import intensity, pipeline, synthetic
from pa_jax.infer import predictor as P
from pa_jax.models.mask_rcnn import MaskRCNN, ModelSpec

SPEC = ModelSpec(backbone="resnet18", backbone_width=8, norm="group_norm", fpn_channels=16,
                 rpn_pre_nms_topk_test=50, rpn_post_nms_topk_test=20, fc_dim=16, mask_dim=8,
                 max_detections=10, score_threshold=0.0)


@functools.lru_cache(maxsize=None)  # init is most of a test's time; the tests only read it
def _model_and_variables(seed: int):
  img, lab = synthetic.synthetic_image(3, 64, 64, n_nuclei=4, radius=(5, 8))
  ex = pipeline.TrainExample("a", pipeline.normalize_image(img), lab, lab)
  batch = jax.tree.map(jnp.asarray, pipeline.BatchSource([ex], 1, 64, 8).batch(0))
  model = MaskRCNN(SPEC)
  return model, model.init(jax.random.PRNGKey(seed), batch, jax.random.PRNGKey(1)), img


def test_new_predictor_on_new_variables_reuses_the_compiled_program():
  model, v0, img = _model_and_variables(0)
  _, v1, _ = _model_and_variables(1)
  P._jitted_predict.cache_clear()
  a = P.Predictor(model, v0, min_score=0.0, dilate=False)
  a(img)
  misses = P._jitted_predict.cache_info().misses
  # A second Predictor (as periodic evaluation / the next annotation round builds) with
  # other weights and an equal model built from the same spec: no new program.
  b = P.Predictor(MaskRCNN(SPEC), v1, min_score=0.0, dilate=False)
  b(img)
  info = P._jitted_predict.cache_info()
  assert info.misses == misses and info.hits >= 1
  # ... and the shared jitted function itself traced once (a cache hit on a function that
  # retraces would still recompile).
  assert P._jitted_predict(model, (64, 64), 0.5, 0.0, None)._cache_size() == 1


def test_single_image_result_does_not_depend_on_the_tile_batch_size(monkeypatch):
  model, v, img = _model_and_variables(0)
  one = P.Predictor(model, v, min_score=0.0, batch_size=1).predict_scored(img)
  four = P.Predictor(model, v, min_score=0.0, batch_size=4).predict_scored(img)
  np.testing.assert_array_equal(one[0], four[0])
  assert one[1] == four[1]
  assert one[0].max() > 0  # the untrained net does draw nuclei (min_score 0)
  # A lone image runs as a batch of one whatever batch_size says, so the lines above only
  # guard that routing. The padding itself: a slot's result does not depend on what
  # fills the other slots (zeros, or other images), bit for bit. Batch *sizes* are not
  # compared numerically: XLA:CPU blocks the convolutions differently per size, and the
  # untrained net's near-tied scores (all about 0.49) move by ~1e-4 and swap paint order.
  p = P.Predictor(model, v, min_score=0.0, batch_size=4, mask_threshold=0.4)
  px, rng = intensity.device_image(img)
  alone = p._run_batch([px], 4, rng)
  crowd = p._run_batch([px, px[::-1].copy(), 255 - px, np.zeros_like(px)], 4, rng)
  np.testing.assert_array_equal(alone[0][0], crowd[0][0])
  np.testing.assert_array_equal(alone[1][0], crowd[1][0])
  assert alone[0][0].max() > 0
  # Tiled (tile 32 < 64 px image): the tiles reach the network in batches of 1 or 4 and
  # stitch into the same map. A deterministic stand-in for the network (bright blobs of
  # each tile) checks the routing exactly.
  from scipy import ndimage

  batches = []

  def blobs(self, images, batch, intensity=None):
    batches.append(len(images))
    labs = [ndimage.label(np.asarray(im)[..., 0] > 128)[0].astype(np.int32) for im in images]
    return labs, [np.ones(max(1, int(lab.max())), np.float32) for lab in labs]

  monkeypatch.setattr(P.Predictor, "_run_batch", blobs)
  t1 = P.Predictor(model, v, batch_size=1, tile_size=32, overlap=8)(img)
  assert set(batches) == {1}
  batches.clear()
  t4 = P.Predictor(model, v, batch_size=4, tile_size=32, overlap=8)(img)
  assert max(batches) == 4
  np.testing.assert_array_equal(t1, t4)
  assert t1.max() > 0


def test_mask_overlap_drops_whole_detections():
  """With mask_overlap < 1 some heavily overlapped detections of the untrained net go
  (raw label = score rank + 1); a pixel changes hands only where the detection it had was
  dropped (a lower-scoring one may then take it), and never becomes background otherwise."""
  model, v, img = _model_and_variables(0)
  x = pipeline.normalize_image(img)
  off, _ = P.Predictor(model, v, min_score=0.0, mask_threshold=0.4)._run_batch([x], 1)
  on, _ = P.Predictor(model, v, min_score=0.0, mask_threshold=0.4,
                      mask_overlap=0.5)._run_batch([x], 1)
  dropped = np.setdiff1d(np.unique(off), np.unique(on))
  assert 0 < len(dropped) < len(np.unique(off)) - 1
  assert np.all((on == off) | np.isin(off, dropped))


def test_dilate_labels_hand_case():
  lab = np.zeros((5, 7), np.int32)
  lab[2, 1] = 3
  lab[2, 5] = 9
  got = P.dilate_labels(lab)
  want = np.zeros((5, 7), np.int32)
  want[1:4, 0:3] = 3
  want[1:4, 4:7] = 9
  np.testing.assert_array_equal(got, want)
  # Touching growth: the pixel between two nuclei goes to the larger label; nucleus
  # pixels never change hands.
  lab = np.array([[2, 0, 5]], np.int32)
  np.testing.assert_array_equal(P.dilate_labels(lab), [[2, 5, 5]])
  assert not P.dilate_labels(np.zeros((3, 3), np.int32)).any()


def test_bucket_sides_and_canvas():
  assert P.bucket_sides(512) == (128, 192, 256, 384, 512)
  assert P.bucket_sides(512, 0) == (512,)
  assert P.bucket_sides(500, 1) == (256, 384, 512)  # rounded up to multiples of 32
  sides = P.bucket_sides(512)
  assert P.bucket_canvas(360, 360, sides) == (384, 384)  # dh360: the canvas as before
  assert P.bucket_canvas(1, 129, sides) == (128, 192)
  assert P.bucket_canvas(512, 600, sides) == (512, 608)  # beyond the largest: multiple of 32


def test_many_image_sizes_compile_once_per_canvas_bucket():
  model, v, _ = _model_and_variables(0)
  sizes = [(40, 50), (20, 20), (60, 70), (100, 100), (130, 140), (170, 190), (200, 210),
           (230, 250), (66, 66), (180, 100)]
  # Ten distinct multiple-of-32 canvases: without buckets, ten programs.
  assert len({P.canvas_for(h, w) for h, w in sizes}) == 10
  p = P.Predictor(model, v, min_score=0.0, dilate=False, tile_size=256, canvas_octaves=2)
  sides = P.bucket_sides(256)
  buckets = {P.bucket_canvas(h, w, sides) for h, w in sizes}
  assert len(buckets) == 7 and len(buckets) <= len(sides) ** 2
  P._jitted_predict.cache_clear()
  rng = np.random.default_rng(0)
  for h, w in sizes:
    labels = p(rng.integers(0, 255, (h, w), np.uint8))
    assert labels.shape == (h, w)
  # One jitted program per bucket canvas, each traced and compiled exactly once.
  assert P._jitted_predict.cache_info().misses == len(buckets)
  for canvas in buckets:
    assert P._jitted_predict(model, canvas, 0.5, 0.0, None)._cache_size() == 1


def test_configs_bucket_canvases_and_runs_saved_before_do_not():
  """Today's configs mask the padding and bucket the canvases; a stored config.json from
  before both fields (an older run, a shipped model) is read with neither, so it predicts
  as it was evaluated."""
  from configs import dh25_pa
  from pa_jax import experiment
  from pa_jax.models.spec import ModelSpec as Spec

  cfg = dh25_pa.get_config("cpu")
  assert cfg.model.mask_padding and cfg.predict.canvas_octaves == 2
  stored = cfg.to_dict()
  del stored["model"]["mask_padding"], stored["predict"]["canvas_octaves"]
  old = experiment.config_from_stored(stored)
  assert old.model.mask_padding is False and old.predict.canvas_octaves == 0
  assert Spec.from_config(old.model, (20.0, 20.0)).mask_padding is False
  assert Spec.from_config(cfg.model, (20.0, 20.0)).mask_padding is True
  model, v, _ = _model_and_variables(0)
  assert P.predictor_for(cfg, model, v).sides == P.bucket_sides(cfg.predict.tile_size, 2)
  assert P.predictor_for(old, model, v).sides == ()
