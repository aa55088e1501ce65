"""Static-shape batching: shapes, padding, slot relabelling, flips, determinism, sharding."""

import numpy as np
import pytest

from pa_jax.data import pipeline
from pa_jax.errors import InputError


def _example(h=50, w=70, n=6, seed=0, full=True):
  rng = np.random.default_rng(seed)
  lab = np.zeros((h, w), np.int32)
  for i in range(n):
    y, x = rng.integers(0, h - 6), rng.integers(0, w - 6)
    lab[y:y + 5, x:x + 5] = 10 * (i + 1)
  img = rng.random((h, w, 3)).astype(np.float32)
  return pipeline.TrainExample(f"e{seed}", img, lab, lab.copy() if full else None)


def test_instance_boxes_match_numpy_reference():
  lab = np.zeros((20, 30), np.int32)
  lab[2:5, 3:9] = 7
  lab[10, 20] = 2  # one-pixel nucleus
  ids, boxes = pipeline.instance_boxes(lab)
  np.testing.assert_array_equal(ids, [2, 7])
  np.testing.assert_array_equal(boxes, [[20, 10, 21, 11], [3, 2, 9, 5]])
  ids0, boxes0 = pipeline.instance_boxes(np.zeros((4, 4), np.int32))
  assert ids0.shape == (0,) and boxes0.shape == (0, 4)


@pytest.mark.parametrize("hw", [(50, 70), (100, 40), (64, 64)])
def test_canvas_example_static_shapes_and_slots(hw):
  ex = _example(*hw)
  out = pipeline.canvas_example(ex, 64, 16, np.random.default_rng(0), True, True)
  assert out["image"].shape == (64, 64, 3) and out["image"].dtype == np.float32
  assert out["labels"].shape == (64, 64) and out["labels"].dtype == np.int32
  assert out["boxes"].shape == (16, 4) and out["valid"].shape == (16,)
  n = int(out["valid"].sum())
  # label value k is slot k-1 and the slot's box is that nucleus' box
  assert set(np.unique(out["labels"])) - {0} == set(range(1, n + 1))
  for k in range(1, n + 1):
    ys, xs = np.nonzero(out["labels"] == k)
    np.testing.assert_array_equal(out["boxes"][k - 1], [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
  assert not out["valid"][n:].any() and np.all(out["boxes"][n:] == 0)
  h, w = out["image_size"]
  assert np.all(out["image"][h:] == 0) and np.all(out["image"][:, w:] == 0)


def test_no_nuclei_is_valid():
  ex = _example(n=0)
  out = pipeline.canvas_example(ex, 64, 8, np.random.default_rng(0), True, True)
  assert not out["valid"].any() and not out["labels"].any()


def test_too_many_instances_is_a_clear_error():
  with pytest.raises(InputError, match="max_instances"):
    pipeline.canvas_example(_example(n=12), 64, 4, np.random.default_rng(0), False, False)


def test_flips_move_image_and_labels_together():
  ex = _example(64, 64)
  seen = set()
  for s in range(16):
    out = pipeline.canvas_example(ex, 64, 16, np.random.default_rng(s), True, True)
    for fh in (False, True):
      for fv in (False, True):
        img = ex.image[:, ::-1] if fh else ex.image
        img = img[::-1] if fv else img
        if np.array_equal(out["image"], img):
          seen.add((fh, fv))
          lab = ex.labels[:, ::-1] if fh else ex.labels
          lab = lab[::-1] if fv else lab
          np.testing.assert_array_equal(out["labels"] > 0, lab > 0)
  assert len(seen) == 4  # all four flip combinations occur


def test_global_indices_cover_each_epoch_once_and_are_pure():
  n, b = 10, 4
  idx = np.concatenate([pipeline.global_indices(s, b, n, seed=1) for s in range(5)])
  assert sorted(idx[:10]) == list(range(10)) and sorted(idx[10:20]) == list(range(10))
  np.testing.assert_array_equal(pipeline.global_indices(3, b, n, 1), idx[12:16])


def test_batch_source_resumes_identically_and_hosts_partition_the_batch():
  exs = [_example(seed=i) for i in range(5)]
  src = pipeline.BatchSource(exs, global_batch=4, canvas=64, max_instances=16, seed=0)
  it = src.iterate(0, prefetch=2)
  first = [next(it) for _ in range(3)]
  resumed = next(src.iterate(2, prefetch=0))
  np.testing.assert_array_equal(first[2].image, resumed.image)
  np.testing.assert_array_equal(first[2].labels, resumed.labels)
  assert first[0].image.shape == (4, 64, 64, 3) and first[0].boxes.shape == (4, 16, 4)
  halves = [pipeline.BatchSource(exs, 4, 64, 16, seed=0, process_index=p, process_count=2).batch(1)
            for p in (0, 1)]
  np.testing.assert_array_equal(np.concatenate([h.image for h in halves]), src.batch(1).image)


def test_batch_size_must_divide_hosts_and_canvas_by_32():
  with pytest.raises(ValueError, match="divide"):
    pipeline.BatchSource([_example()], 3, 64, 8, process_count=2)
  with pytest.raises(InputError, match="multiple of 32"):
    pipeline.BatchSource([_example()], 2, 60, 8)


def test_normalize_image_gray_16bit_and_rgb():
  g16 = (np.arange(100, dtype=np.uint16).reshape(10, 10) * 30)
  out = pipeline.normalize_image(g16)
  assert out.shape == (10, 10, 3) and out.dtype == np.float32
  assert out.min() == 0.0 and out.max() == 1.0
  rgb = np.full((4, 4, 3), 255, np.uint8)
  np.testing.assert_allclose(pipeline.normalize_image(rgb, "dtype"), 1.0)


def test_shard_batch_places_rows_on_the_mesh():
  import jax

  exs = [_example(seed=i) for i in range(2)]
  b = pipeline.BatchSource(exs, 2, 64, 8).batch(0)
  mesh = jax.make_mesh((jax.device_count(),), ("data",))
  g = pipeline.shard_batch(b, mesh)
  assert g.image.shape == (2, 64, 64, 3)
  np.testing.assert_array_equal(np.asarray(g.labels), b.labels)


def test_unannotated_boxes_are_the_full_nuclei_missing_from_the_partial_labels():
  ex = _example(64, 64, n=6)
  partial = ex.labels.copy()
  dropped = [v for v in np.unique(partial) if v][:2]
  partial[np.isin(partial, dropped)] = 0
  ex2 = pipeline.TrainExample("p", ex.image, partial, ex.labels)
  out = pipeline.canvas_example(ex2, 64, 16, np.random.default_rng(0), False, False)
  _, full_boxes = pipeline.instance_boxes(ex.labels)
  ids, _ = pipeline.instance_boxes(ex.labels)
  want = full_boxes[np.isin(ids, dropped)]
  got = out["unannotated_boxes"][out["unannotated_valid"]]
  np.testing.assert_array_equal(np.sort(got, axis=0), np.sort(want, axis=0))
  none = pipeline.canvas_example(pipeline.TrainExample("n", ex.image, partial, None), 64, 16,
                                 np.random.default_rng(0), False, False)
  assert not none["unannotated_valid"].any() and not none["has_full"]
