"""The napari-free parts of the plugin: state colours, layer arrays, the progress adapter,
the model list and the reader's layer tuples."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from pa_jax.annotate.label_io import sidecar_path, write_label_map
from pa_jax.annotate.nuclei import STATE_COLORS, Nucleus
from pa_jax.errors import InputError
from pa_jax.infer.classical import segment_classical
from pa_jax.napari import colors, engines, reader
from pa_jax.napari.layer_image import library_image
from pa_jax.napari.progress import progress_steps


def test_state_colormap_by_state_with_new_labels_confirmed():
  nuclei = {1: Nucleus(1, "confirmed"), 2: Nucleus(2, "proposed", 0.7, "m"),
            5: Nucleus(5, "rejected")}
  cmap = colors.state_colormap(colors.table_colors(nuclei))
  np.testing.assert_allclose(cmap[2], [1.0, 200 / 255, 0.0, 1.0])
  np.testing.assert_allclose(cmap[5][:3], np.array(STATE_COLORS["rejected"]) / 255)
  np.testing.assert_allclose(cmap[None][:3], np.array(STATE_COLORS["confirmed"]) / 255)
  assert cmap[0][3] == 0.0 and set(cmap) == {None, 0, 1, 2, 5}
  f = colors.features(nuclei)
  assert f["index"] == [1, 2, 5] and f["state"] == ["confirmed", "proposed", "rejected"]
  assert np.isnan(f["score"][0]) and f["score"][1] == 0.7 and f["source"][1] == "m"


def test_library_image_shapes_and_refusals():
  rgba = np.zeros((8, 9, 4), np.uint8)
  assert library_image(rgba, True, "x").shape == (8, 9, 3)
  assert library_image([np.zeros((8, 9), np.uint16), np.zeros((4, 4))], False, "m").shape == (8, 9)
  assert library_image(np.ones((4, 4), bool), False, "b").dtype == np.uint8
  with pytest.raises(InputError, match=r"layer 'z': has shape \(2, 8, 9\)"):
    library_image(np.zeros((2, 8, 9)), False, "z")
  with pytest.raises(InputError, match="not numbers"):
    library_image(np.array([["a"]]), False, "s")


def test_progress_steps_relays_reports_result_and_errors():
  seen_threads = []

  def call(on_progress):
    seen_threads.append(threading.current_thread())
    for k in range(3):
      on_progress("step", k, 3)
    return "done"

  gen = progress_steps(call)
  assert list(_drain(gen)) == [("step", 0, 3), ("step", 1, 3), ("step", 2, 3), ("return", "done")]
  assert seen_threads[0] is not threading.current_thread()

  def fails(on_progress):
    on_progress("a", 1, 2)
    raise InputError("x", "broken")

  gen = progress_steps(fails)
  assert next(gen) == ("a", 1, 2)
  with pytest.raises(InputError, match="x: broken"):
    next(gen)


def _drain(gen):
  while True:
    try:
      yield next(gen)
    except StopIteration as stop:
      yield ("return", stop.value)
      return


def test_segment_with_the_classical_choice_is_the_library_call():
  from pa_jax.data import synthetic

  image, _ = synthetic.synthetic_image(3, 96, 96, n_nuclei=8)
  reports = []
  out = engines.segment(engines.CLASSICAL, None, image,
                        on_progress=lambda *a: reports.append(a))
  np.testing.assert_array_equal(out.labels, segment_classical(image))
  assert out.source == "classical" and out.scores == {} and out.attention is None
  assert reports == [("load", 0, 2), ("segment", 1, 2), ("done", 2, 2)]
  with pytest.raises(InputError, match="attention: the classical floor has no attention"):
    engines.segment(engines.CLASSICAL, None, image, attention=True)
  with pytest.raises(InputError, match="unknown model 'zoo'"):
    engines.segment("zoo", None, image)
  assert engines.CHOICES[engines.TRAINED_RUN].needs_folder
  with pytest.raises(InputError, match="choose the folder of a trained run"):
    engines.segment(engines.TRAINED_RUN, None, image)


def _write_states(folder, stem="a"):
  labels = np.zeros((20, 30), np.int32)
  labels[2:6, 2:6], labels[10:15, 10:15], labels[3:8, 20:25] = 1, 2, 3
  nuclei = {1: Nucleus(1, "confirmed", None, "human"), 2: Nucleus(2, "proposed", 0.8, "pa_jax"),
            3: Nucleus(3, "rejected", 0.4, "pa_jax")}
  write_label_map(folder / f"{stem}.png", labels, nuclei)
  return labels, nuclei


def test_reader_accepts_label_maps_with_states_only(tmp_path):
  labels, nuclei = _write_states(tmp_path)
  from pa_jax import fileio

  fileio.write_png(tmp_path / "plain.png", np.zeros((5, 5), np.uint8))
  assert reader.get_reader(str(tmp_path / "plain.png")) is None  # napari's own reader
  assert reader.get_reader(str(tmp_path / "missing.png")) is None
  for p in (tmp_path / "a.png", sidecar_path(tmp_path / "a.png"), tmp_path):
    fn = reader.get_reader(str(p))
    assert fn is reader.read_layers
    [(data, kwargs, kind)] = fn(str(p))
    assert kind == "labels" and kwargs["name"] == "a"
    np.testing.assert_array_equal(data, labels)
    for k, n in nuclei.items():
      np.testing.assert_allclose(kwargs["colormap"][k][:3], np.array(STATE_COLORS[n.state]) / 255)
    assert kwargs["features"]["state"] == ["confirmed", "proposed", "rejected"]
    assert kwargs["metadata"]["pa_jax_states"] == {1: "confirmed", 2: "proposed", 3: "rejected"}


def test_reader_bad_sidecar_is_one_line(tmp_path):
  _write_states(tmp_path)
  sidecar_path(tmp_path / "a.png").write_text("{not json", encoding="utf-8")
  with pytest.raises(InputError) as e:
    reader.read_layers(str(tmp_path / "a.png"))
  assert str(e.value).startswith(f"{tmp_path / 'a.nuclei.json'}: invalid JSON at line 1")
  assert "\n" not in str(e.value)
