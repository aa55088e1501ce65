"""Nucleus table: states, JSON, painting with id assignment."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pa_jax.annotate.nuclei import (Nucleus, complete_table, make_table, paint_instances,
                                    parse_state, table_from_json, table_to_json)


def test_nucleus_json_round_trip_and_states():
  t = {3: Nucleus(3, "proposed", 0.8, "pa_jax round 1"), 5: Nucleus(5)}
  back = table_from_json(json.loads(json.dumps(table_to_json(t))))
  assert back == t and back[5].state == "confirmed" and back[5].score is None
  with pytest.raises(ValueError):
    Nucleus(1, "maybe")
  assert parse_state(" Rejected ") == "rejected" and parse_state("Tumor") == "confirmed"


def test_make_and_complete_table():
  labels = np.array([[0, 2], [7, 7]], np.int32)
  t = make_table(labels, "proposed", "classical", scores=[0.1] * 7)
  assert sorted(t) == [2, 7] and t[7].score == 0.1 and t[2].source == "classical"
  c = complete_table(labels, {7: t[7], 9: Nucleus(9)}, default_source="human")
  assert sorted(c) == [2, 7] and c[2] == Nucleus(2, "confirmed", None, "human")


def test_paint_instances_ids_and_overlaps():
  big = (np.repeat(np.arange(4), 4), np.tile(np.arange(4), 4))  # 4x4 at the origin
  small = (np.array([1, 1]), np.array([1, 2]))
  hidden = (np.array([0]), np.array([0]))
  labels, ids = paint_instances([big, small, small, hidden], [5, 5, None, 2], (6, 6))
  # 5 is taken by the first: the second gets a fresh id; the third paints over it;
  # the 1-pixel one wins its pixel over the big one (smaller painted last)
  assert ids[0] == 5 and ids[3] == 2 and labels[0, 0] == 2
  assert ids[1] is None and ids[2] == 7 and labels[1, 1] == 7
  assert labels.dtype == np.int32 and np.count_nonzero(labels == 5) == 13


def test_pixels_by_label_matches_per_label_masks():
  from pa_jax.annotate.nuclei import pixels_by_label

  rng = np.random.default_rng(0)
  lab = rng.choice([0, 0, 3, 7, 70000, 12], size=(17, 23)).astype(np.int32)
  got = pixels_by_label(lab)
  assert sorted(got) == [3, 7, 12, 70000]
  for k, idx in got.items():
    np.testing.assert_array_equal(idx, np.flatnonzero(lab.ravel() == k))
  assert pixels_by_label(np.zeros((4, 4), np.int32)) == {}


def test_label_maps_past_65535_ids_are_written_as_tiff(tmp_path):
  from pa_jax import fileio
  from pa_jax.annotate import formats as F
  from pa_jax.data.readers import read_label_map

  lab = np.zeros((8, 8), np.int32)
  lab[1:3, 1:3] = 70001  # ids only grow in the annotation loop
  lab[5:7, 5:7] = 4
  assert fileio.label_map_path(tmp_path / "a.png", lab).name == "a.tif"
  assert fileio.label_map_path(tmp_path / "a.png", lab % 60000).name == "a.png"
  written = F.export_all(tmp_path, "a", lab, make_table(lab), ["label"], "polygon")
  tif = [p for p in written if p.suffix == ".tif"]
  assert tif and np.array_equal(read_label_map(tif[0]), lab)
