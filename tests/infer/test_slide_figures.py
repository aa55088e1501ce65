"""Slide summary accumulator (numbers against numpy), figures and the static HTML report."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from pa_jax.annotate.nuclei import STATE_COLORS, Nucleus, make_table
from pa_jax.annotate.stream_export import NucleusRecord
from pa_jax.data.synthetic import synthetic_image
from pa_jax.infer import html_report as H
from pa_jax.infer import slide_figures as SF


@pytest.fixture(scope="module")
def example():
  image, labels = synthetic_image(11, 120, 150, 25)
  labels = labels.astype(np.int32)
  ids = [int(k) for k in np.unique(labels) if k]
  rng = np.random.default_rng(0)
  nuclei = make_table(labels, "proposed", "m", scores={k: float(rng.random()) for k in ids})
  for k in ids[:5]:
    nuclei[k] = Nucleus(k, "confirmed", None, "human")
  nuclei[ids[5]] = Nucleus(ids[5], "rejected", 0.1, "m")
  return image, labels, nuclei


def _records(labels, nuclei, image):
  for k, sl in enumerate(ndimage.find_objects(labels), start=1):
    if sl is None:
      continue
    n = nuclei[k]
    yield NucleusRecord(k, (sl[0].start, sl[1].start, sl[0].stop, sl[1].stop),
                        labels[sl] == k, n.score, n.state, n.source,
                        (float(image[labels == k].mean()),))


def test_stats_match_numpy(example):
  image, labels, nuclei = example
  s = SF.SlideSummary((240, 300), downsample=2.0, cell_px=40, pixel_size_um=0.5)
  for rec in _records(labels, nuclei, image):
    s.add(rec)
  ids = sorted(nuclei)
  areas = np.array([(labels == k).sum() * 4.0 for k in ids])  # downsample 2: 4 px each
  scores = np.array([nuclei[k].score for k in ids if nuclei[k].score is not None])
  means = np.array([image[labels == k].mean() for k in ids])
  st = s.stats
  assert st.counts == {"confirmed": 5, "proposed": len(ids) - 6, "rejected": 1}
  assert np.array_equal(st.area_hist, np.histogram(areas, SF.AREA_EDGES)[0])
  assert np.array_equal(st.score_hist, np.histogram(scores, SF.SCORE_EDGES)[0])
  assert np.array_equal(st.intensity_hist[0], np.histogram(means, np.linspace(0, 256, 65))[0])
  assert st.mean_area() == pytest.approx(areas.mean())
  assert st.mean_score() == pytest.approx(scores.mean())
  # density: centroids at full resolution (x2) in 40-px cells of the 240 x 300 region
  cy, cx = zip(*ndimage.center_of_mass(labels > 0, labels, ids))
  cy, cx = (np.array(cy) + 0.5) * 2, (np.array(cx) + 0.5) * 2
  ref = np.histogram2d(cy, cx, bins=[np.arange(0, 241, 40), np.arange(0, 301, 40) + 0])[0]
  assert s.grid.shape == (6, 8)
  assert np.array_equal(s.grid[:, :7], ref[:, :7]) and s.grid.sum() == len(ids)
  dens, unit = s.density()
  assert unit == "nuclei per mm²"
  # a full 40x40-px cell is 20x20 µm = 4e-4 mm²; the last column is 20 px wide
  assert dens[0, 0] == pytest.approx(s.grid[0, 0] / 4e-4)
  assert dens[0, 7] == pytest.approx(s.grid[0, 7] / 2e-4)


def test_density_without_pixel_size_is_per_100px_square():
  s = SF.SlideSummary((50, 50), cell_px=50)
  s.add(NucleusRecord(1, (10, 10, 12, 12), np.ones((2, 2), bool), None, "proposed", "x"))
  dens, unit = s.density()
  assert unit == "nuclei per 100×100 px" and dens[0, 0] == pytest.approx(1 / 0.25)


def test_out_of_range_values_land_in_the_end_bins():
  st = SF.NucleusStats()
  st.add("proposed", 1e9, 1.0, (300.0,))
  st.add("proposed", 0.5, 0.0, (-1.0,))
  assert st.area_hist[-1] == 1 and st.area_hist[0] == 1
  assert st.score_hist[-1] == 1 and st.score_hist[0] == 1
  assert st.intensity_hist[0, -1] == 1 and st.intensity_hist[0, 0] == 1


def test_merge_equals_one_accumulator(example):
  image, labels, nuclei = example
  recs = list(_records(labels, nuclei, image))
  a, b, both = SF.NucleusStats(), SF.NucleusStats(), SF.NucleusStats()
  for i, r in enumerate(recs):
    for st in ((a if i % 2 else b), both):
      st.add(r.state, float(r.mask.sum()), r.score, r.mean_intensity)
  a.merge(b)
  assert a.counts == both.counts and a.mean_area() == pytest.approx(both.mean_area())
  for name in ("area_hist", "score_hist", "intensity_hist"):
    assert np.array_equal(getattr(a, name), getattr(both, name))


def test_thumbnail_tiles_and_nuclei_land_in_place():
  """A 400x600 region at offset (100, 200), read at downsample 2 in two tiles."""
  level = np.arange(200 * 300, dtype=np.float32).reshape(200, 300)
  s = SF.SlideSummary((400, 600), offset=(100, 200), downsample=2.0, thumb_size=60)
  assert s.thumb_shape == (40, 60)  # scale 0.1
  s.add_thumbnail_tile(100, 200, level[:, :150], 2.0)
  s.add_thumbnail_tile(100, 500, level[:, 150:], 2.0)  # x0 = 200 + 150 * 2
  assert s.thumb_filled.all()
  # thumbnail pixel (i, j) has its centre at region (10 i + 5, 10 j + 5) = level / 2
  i, j = np.mgrid[0:40, 0:60]
  want = level[(10 * i + 5) // 2, (10 * j + 5) // 2]
  assert np.array_equal(s.thumb[..., 0], want)
  mask = np.zeros((20, 30), bool)
  mask[5:15, 10:25] = True  # level rows 45..54, cols 70..84 → region y 90..110, x 140..170
  s.add(NucleusRecord(7, (40, 60, 60, 90), mask, 0.8, "proposed", "x"))
  painted = np.argwhere(s.id_map == 7)
  assert painted[:, 0].min() == 9 and painted[:, 0].max() == 10
  assert painted[:, 1].min() == 14 and painted[:, 1].max() == 16
  tiny = NucleusRecord(8, (0, 0, 1, 1), np.ones((1, 1), bool), None, "confirmed", "x")
  s.add(tiny)  # 2x2 full-res px: no thumbnail centre inside, its centroid pixel is marked
  assert np.argwhere(s.id_map == 8).tolist() == [[0, 0]]


def test_overlay_colours_by_state_and_score():
  s = SF.SlideSummary((40, 40), thumb_size=40)
  s.add_thumbnail_tile(0, 0, np.zeros((40, 40), np.uint8))
  m = np.ones((10, 10), bool)
  s.add(NucleusRecord(1, (0, 0, 10, 10), m, 0.9, "proposed", "x"))
  s.add(NucleusRecord(2, (20, 20, 30, 30), m, None, "confirmed", "x"))
  by_state = SF.overlay_rgb(s, "state")
  assert tuple(by_state[9, 5]) == STATE_COLORS["proposed"]  # outline: the full colour
  assert tuple(by_state[25, 25]) == tuple(round(0.45 * c) for c in STATE_COLORS["confirmed"])
  assert tuple(by_state[35, 5]) == (0, 0, 0)
  by_score = SF.overlay_rgb(s, "score")
  assert tuple(by_score[20, 20]) == (160, 160, 160)  # no score: gray
  assert by_score[0, 0, 1] > by_score[0, 0, 2]  # viridis at 0.9 is yellow-green
  with pytest.raises(ValueError):
    SF.overlay_rgb(s, "area")


def test_pngs_decode(example):
  image, labels, nuclei = example
  s = H.summary_from_labels(labels, nuclei, image, pixel_size_um=0.25)
  for png in (SF.overlay_png(s, "state"), SF.overlay_png(s, "score"), SF.density_png(s),
              SF.histograms_png(s.stats, 0.25)):
    im = Image.open(io.BytesIO(png))
    assert im.format == "PNG" and min(im.size) > 100


def test_slide_report_is_self_contained(tmp_path, example):
  image, labels, nuclei = example
  s = H.summary_from_labels(labels, nuclei, image)
  path = H.write_slide_report(tmp_path / "report.html", s, meta={"slide": "a<b>.tif"})
  text = path.read_text()
  assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
  assert "a&lt;b&gt;.tif" in text  # escaped
  assert len(re.findall(r'src="data:image/png;base64,', text)) == 4
  # nothing fetched from anywhere: no http(s) link, no script, no external file
  assert not re.search(r"https?://|<script|src=\"(?!data:)", text)
  assert f"<td>slide</td><td>{len(nuclei)}</td>" in text


def test_predict_report_from_written_outputs(tmp_path, example):
  from pa_jax.annotate import formats as F
  from pa_jax.data.readers import Record
  from pa_jax import fileio

  image, labels, nuclei = example
  fileio.write_png(tmp_path / "a.png", image)
  fileio.write_png(tmp_path / "b.png", image)
  out = tmp_path / "out"
  F.export_all(out, "a", labels, nuclei, ("label",))
  F.export_all(out, "b", labels, nuclei, ("csv",))  # measurements only: no overlay
  recs = [Record("a", tmp_path / "a.png", None), Record("b", tmp_path / "b.png", None),
          Record("c", tmp_path / "c.png", None)]
  path = H.write_predict_report(out, recs, skipped=[(str(tmp_path / "c.png"), "unreadable")])
  text = path.read_text()
  n = len(nuclei)
  assert f"<td>all images</td><td>{2 * n}</td>" in text
  assert f"<td>a</td><td>{n}</td><td>{n - 6}</td><td>5</td><td>1</td>" in text
  assert f"<td>b</td><td>{n}</td>" in text
  assert text.count('src="data:image/png;base64,') == 2  # histograms + overlay of 'a'
  assert "unreadable" in text
