"""Training-crop augmentation of `pipeline.canvas_example` (zoom, rotations, jitter) and the
size normalisation of `load_training_examples`."""

import math

import numpy as np
import pytest

from pa_jax import fileio
from pa_jax.data import diameter, partial_views, pipeline, readers

FIELDS = ("image", "labels", "boxes", "valid", "negative_boxes", "negative_valid", "image_size",
          "unannotated_boxes", "unannotated_valid", "has_full")


def _example(h, w, n=6, seed=0, side=5, zoom=1.0):
  """Random image with up to n separate (1 px apart) squares labelled 10, 20, ..."""
  rng = np.random.default_rng(seed)
  lab = np.zeros((h, w), np.int32)
  placed = 0
  for _ in range(50 * n):
    if placed == n:
      break
    y, x = rng.integers(0, h - side - 1), rng.integers(0, w - side - 1)
    if not lab[max(0, y - 1):y + side + 1, max(0, x - 1):x + side + 1].any():
      placed += 1
      lab[y:y + side, x:x + side] = 10 * placed
  img = rng.random((h, w, 3)).astype(np.float32)
  neg = np.roll(lab, 3, axis=0)
  return pipeline.TrainExample(f"e{seed}", img, lab, lab.copy(), neg, zoom=zoom)


def _assert_same(a, b):
  assert set(a) == set(b) == set(FIELDS)
  for k in FIELDS:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _reference_crop_flip(ex, canvas, rng, flip_h, flip_v):
  """The paper pipeline's geometry, written out: a random crop (y0 then x0 drawn only on
  the sides larger than the canvas), then a horizontal and a vertical flip with p = 1/2."""
  h, w = ex.labels.shape
  y0 = int(rng.integers(0, h - canvas + 1)) if h > canvas else 0
  x0 = int(rng.integers(0, w - canvas + 1)) if w > canvas else 0
  img = ex.image[y0:y0 + canvas, x0:x0 + canvas]
  lab = ex.labels[y0:y0 + canvas, x0:x0 + canvas]
  if flip_h and rng.random() < 0.5:
    img, lab = img[:, ::-1], lab[:, ::-1]
  if flip_v and rng.random() < 0.5:
    img, lab = img[::-1], lab[::-1]
  return img, lab


# ------------------------------------------------------------------ default = paper


@pytest.mark.parametrize("hw", [(50, 70), (100, 40), (64, 64), (130, 90)])
def test_default_augmentation_is_the_paper_pipeline_bit_for_bit(hw):
  for s in range(8):
    ex = _example(*hw, seed=s)
    for fh in (True, False):
      for fv in (True, False):
        old = pipeline.canvas_example(ex, 64, 16, np.random.default_rng(s), fh, fv)
        new = pipeline.canvas_example(ex, 64, 16, np.random.default_rng(s), fh, fv,
                                      pipeline.Augmentation(flip_h=fh, flip_v=fv))
        _assert_same(old, new)
        img, lab = _reference_crop_flip(ex, 64, np.random.default_rng(s), fh, fv)
        ch, cw = lab.shape
        np.testing.assert_array_equal(new["image"][:ch, :cw], img)
        np.testing.assert_array_equal(new["labels"][:ch, :cw] > 0, lab > 0)
        np.testing.assert_array_equal(new["image_size"], [ch, cw])
  # The default Augmentation() is the paper's flips: equal to aug=None with both flips on.
  ex = _example(*hw, seed=99)
  _assert_same(pipeline.canvas_example(ex, 64, 16, np.random.default_rng(5), True, True),
               pipeline.canvas_example(ex, 64, 16, np.random.default_rng(5), False, False,
                                       pipeline.Augmentation()))


def test_batch_source_with_default_augmentation_gives_the_same_batches():
  exs = [_example(70, 50, seed=i) for i in range(3)]
  a = pipeline.BatchSource(exs, 2, 64, 16, seed=3).batch(4)
  b = pipeline.BatchSource(exs, 2, 64, 16, seed=3, augmentation=pipeline.Augmentation()).batch(4)
  for field in a.__dataclass_fields__:
    np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)


# ------------------------------------------------------------------ zoom


def _boxes_by_source_id(out, source_labels):
  """{source id: out box} via the out slot that covers that source nucleus."""
  res = {}
  n = int(out["valid"].sum())
  for k in range(1, n + 1):
    ids = np.unique(source_labels[out["labels"] == k])
    assert len(ids) == 1
    res[int(ids[0])] = out["boxes"][k - 1]
  return res


def test_zoom_two_doubles_nuclei_and_matches_zoom_image_of_the_crop():
  """A 30 x 26 source fits in the ceil(64 / 2) = 32 window: no crop, the whole image
  zoomed 2x fills 60 x 52 of the canvas."""
  ex = _example(30, 26, n=4, seed=1, zoom=2.0)
  out = pipeline.canvas_example(ex, 64, 16, np.random.default_rng(0), False, False)
  np.testing.assert_array_equal(out["image_size"], [60, 52])
  np.testing.assert_array_equal(out["image"][:60, :52], diameter.zoom_image(ex.image, 2.0))
  assert not out["image"][60:].any() and not out["image"][:, 52:].any()
  up = np.kron(ex.labels, np.ones((2, 2), np.int32))  # nearest x2, an independent reference
  np.testing.assert_array_equal(out["labels"][:60, :52] > 0, up > 0)
  ids, src_boxes = pipeline.instance_boxes(ex.labels)
  got = _boxes_by_source_id({**out, "labels": out["labels"][:60, :52]}, up)
  assert sorted(got) == ids.tolist()
  for i, b in zip(ids, src_boxes):
    np.testing.assert_allclose(got[int(i)], 2 * b, atol=1.0)
    w, h = got[int(i)][2] - got[int(i)][0], got[int(i)][3] - got[int(i)][1]
    assert abs(w - 2 * (b[2] - b[0])) <= 1 and abs(h - 2 * (b[3] - b[1])) <= 1


@pytest.mark.parametrize("zoom,window", [(2.0, 32), (2.5, 26), (3.0, 22), (0.5, 128)])
def test_zoomed_crop_is_zoom_image_of_a_window_and_labels_stay_on_it(zoom, window):
  """A larger source: a random window of ceil(64 / zoom) px is zoomed and cut to the canvas.
  Labels must be zoomed with the image, also when window * zoom overshoots the canvas
  (2.5: 65 px, 3: 66 px)."""
  assert window == math.ceil(64 / zoom)
  ex = _example(160, 150, n=40, seed=2, side=7, zoom=zoom)
  for s in range(3):
    out = pipeline.canvas_example(ex, 64, 64, np.random.default_rng(s), False, False)
    full = round(window * zoom)
    ch = cw = min(64, full)
    np.testing.assert_array_equal(out["image_size"], [ch, cw])
    # The window's corner: the first two draws (a fixed zoom draws nothing); the image
    # check below fails for any other window of this random image.
    rng = np.random.default_rng(s)
    y0, x0 = int(rng.integers(0, 160 - window + 1)), int(rng.integers(0, 150 - window + 1))
    crop_img = ex.image[y0:y0 + window, x0:x0 + window]
    crop_lab = ex.labels[y0:y0 + window, x0:x0 + window]
    np.testing.assert_array_equal(out["image"][:ch, :cw],
                                  diameter.zoom_image(crop_img, zoom)[:ch, :cw])
    # reference label zoom: the source pixel under each output pixel centre
    src = np.minimum(((np.arange(ch) + 0.5) / zoom).astype(int), window - 1)
    ref = crop_lab[src[:, None], src[None, :]]
    np.testing.assert_array_equal(out["labels"][:ch, :cw] > 0, ref > 0)
    got = _boxes_by_source_id({**out, "labels": out["labels"][:ch, :cw]}, ref)
    for i, b in zip(*pipeline.instance_boxes(crop_lab)):
      inside = b[0] > 0 and b[1] > 0 and b[2] * zoom < cw - 1 and b[3] * zoom < ch - 1
      if inside and int(i) in got:  # whole in the window and in the canvas
        np.testing.assert_allclose(got[int(i)], zoom * b, atol=1.0)


def test_scale_jitter_composes_with_the_example_zoom():
  ex1 = _example(160, 150, n=20, seed=3)
  ex2 = _example(160, 150, n=20, seed=3, zoom=2.0)
  # a fixed jitter draws nothing: zoom 1 x jitter 2 is zoom 2 x no jitter
  for s in range(3):
    a = pipeline.canvas_example(ex1, 64, 32, np.random.default_rng(s), True, True,
                                pipeline.Augmentation(scale_jitter=(2.0, 2.0)))
    b = pipeline.canvas_example(ex2, 64, 32, np.random.default_rng(s), True, True)
    _assert_same(a, b)
    c = pipeline.canvas_example(ex2, 64, 32, np.random.default_rng(s), True, True,
                                pipeline.Augmentation(scale_jitter=(0.5, 0.5)))
    _assert_same(c, pipeline.canvas_example(ex1, 64, 32, np.random.default_rng(s), True, True))


# ------------------------------------------------------------------ rotations, jitter


def _encoded_example(h, w, seed=0):
  """Channel 0 encodes the label id (id / 64), channels 1, 2 are noise: a pixel's
  image value tells which nucleus it belongs to."""
  ex = _example(h, w, n=5, seed=seed, side=6)
  lab = pipeline.readers.relabel_sequential(ex.labels)
  img = np.random.default_rng(seed).random((h, w, 3)).astype(np.float32)
  img[..., 0] = lab / 64.0
  return pipeline.TrainExample("enc", img, lab, lab.copy())


_SYMMETRIES = {f"rot{k}{'_flip' if f else ''}": (lambda a, k=k, f=f: np.rot90(a[:, ::-1] if f else a, k))
               for k in range(4) for f in (False, True)}


def test_rotate90_keeps_image_and_labels_aligned_and_reaches_all_8_symmetries():
  ex = _encoded_example(64, 64)
  aug = pipeline.Augmentation(rotate90=True)
  seen = set()
  for s in range(64):
    out = pipeline.canvas_example(ex, 64, 16, np.random.default_rng(s), True, True, aug)
    ids = np.rint(out["image"][..., 0] * 64).astype(int)
    np.testing.assert_array_equal(out["labels"] > 0, ids > 0)
    for k in range(1, int(out["valid"].sum()) + 1):
      assert len(np.unique(ids[out["labels"] == k])) == 1  # one source nucleus per slot
    match = [n for n, g in _SYMMETRIES.items() if np.array_equal(out["image"], g(ex.image))]
    assert len(match) == 1
    seen.add(match[0])
    np.testing.assert_array_equal(out["labels"] > 0, _SYMMETRIES[match[0]](ex.labels) > 0)
  assert seen == set(_SYMMETRIES)


def test_rotate90_of_a_non_square_crop_swaps_its_size():
  ex = _encoded_example(40, 56, seed=4)
  aug = pipeline.Augmentation(flip_h=False, flip_v=False, rotate90=True)
  sizes = set()
  for s in range(16):
    out = pipeline.canvas_example(ex, 64, 16, np.random.default_rng(s), False, False, aug)
    h, w = out["image_size"]
    sizes.add((int(h), int(w)))
    ids = np.rint(out["image"][:h, :w, 0] * 64).astype(int)
    np.testing.assert_array_equal(out["labels"][:h, :w] > 0, ids > 0)
    assert not out["image"][h:].any() and not out["image"][:, w:].any()
    assert not out["labels"][h:].any() and not out["labels"][:, w:].any()
    k = [k for k in range(4) if np.array_equal(out["image"][:h, :w], np.rot90(ex.image, k))]
    assert len(k) == 1
  assert sizes == {(40, 56), (56, 40)}


def test_photometric_jitter_keeps_the_geometry():
  """Jitter draws come after the geometry: same crop, flips and labels as without it."""
  ex = _example(90, 100, seed=5)
  plain = pipeline.Augmentation(rotate90=True)
  jit = pipeline.Augmentation(rotate90=True, intensity=0.3, stain=0.1)
  for s in range(4):
    a = pipeline.canvas_example(ex, 64, 16, np.random.default_rng(s), True, True, plain)
    b = pipeline.canvas_example(ex, 64, 16, np.random.default_rng(s), True, True, jit)
    for k in FIELDS:
      if k != "image":
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert not np.array_equal(a["image"], b["image"])
    assert b["image"].min() >= 0.0 and b["image"].max() <= 1.0


# ------------------------------------------------------------------ load_training_examples


def _write(root, name, labels):
  fileio.write_png(root / "images" / f"{name}.png",
                   np.where(labels > 0, 200, 20).astype(np.uint8))
  fileio.write_label_map(root / "labels" / f"{name}.png", labels)


def test_load_training_examples_sets_zoom_from_the_median_diameter(tmp_path):
  sq = np.zeros((64, 64), np.int32)  # three squares of side 10: diameter 2 sqrt(100 / pi)
  for i, (y, x) in enumerate([(2, 2), (30, 5), (40, 40)], start=1):
    sq[y:y + 10, x:x + 10] = i
  rect = np.zeros((64, 64), np.int32)  # areas 16, 64, 64 -> median area 64
  rect[0:4, 0:4], rect[10:18, 10:18], rect[30:34, 30:46] = 1, 2, 3
  _write(tmp_path, "a_squares", sq)
  _write(tmp_path, "b_rects", rect)
  _write(tmp_path, "c_empty", np.zeros((64, 64), np.int32))
  recs = readers.open_dataset(tmp_path, require_labels=True)
  assert [r.id for r in recs] == ["a_squares", "b_rects", "c_empty"]
  view = partial_views.ViewSpec()
  d_a, d_b = 2 * math.sqrt(100 / math.pi), 2 * math.sqrt(64 / math.pi)  # 11.28, 9.03
  exs = pipeline.load_training_examples(recs, view, target_diameter=30.0)
  zooms = [ex.zoom for ex in exs]
  np.testing.assert_allclose(zooms[:2], [30 / d_a, 30 / d_b], rtol=1e-12)
  # no nuclei: the median of the others' median diameters
  np.testing.assert_allclose(zooms[2], 30 / np.median([d_a, d_b]), rtol=1e-12)
  # clamped, and 0 = native scale
  big = pipeline.load_training_examples(recs, view, target_diameter=1000.0)
  assert [ex.zoom for ex in big] == [diameter.MAX_ZOOM] * 3
  assert [ex.zoom for ex in pipeline.load_training_examples(recs, view)] == [1.0] * 3


def test_load_training_examples_without_any_nucleus_keeps_native_scale(tmp_path):
  _write(tmp_path, "e0", np.zeros((32, 32), np.int32))
  _write(tmp_path, "e1", np.zeros((32, 32), np.int32))
  recs = readers.open_dataset(tmp_path, require_labels=True)
  exs = pipeline.load_training_examples(recs, partial_views.ViewSpec(), target_diameter=30.0)
  assert [ex.zoom for ex in exs] == [1.0, 1.0]
