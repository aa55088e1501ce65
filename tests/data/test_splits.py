"""Seeded validation carve: per-group counts, determinism, other splits untouched."""

import collections
import random
from pathlib import Path

import pytest

from pa_jax.data import splits
from pa_jax.data.records import Record


def _records(groups: dict[str, int], split="train", prefix=""):
  return [Record(f"{prefix}{g}_{i}", Path(f"{prefix}{g}_{i}.png"), Path(f"l_{g}_{i}.png"),
                 split=split, group=g)
          for g, n in groups.items() for i in range(n)]


def _val_ids(records):
  return {r.id for r in records if r.split == splits.VALIDATION}


def _per_group(records, split):
  return collections.Counter(r.group for r in records if r.split == split)


def test_fraction_is_taken_per_group():
  recs = _records({"a": 4, "b": 4, "c": 4})
  out = splits.carve_validation(recs, 0.25, seed=0)
  assert _per_group(out, "val") == {"a": 1, "b": 1, "c": 1}
  assert _per_group(out, "train") == {"a": 3, "b": 3, "c": 3}
  # round(0.3 * 10) = 3, round(0.3 * 5) = round(1.5) = 2 (banker's rounding of 1.5 -> 2)
  out = splits.carve_validation(_records({"a": 10, "b": 5}), 0.3, seed=1)
  assert _per_group(out, "val") == {"a": 3, "b": 2}


def test_order_ids_and_other_fields_are_kept():
  recs = _records({"a": 4, "b": 6})
  out = splits.carve_validation(recs, 0.5, seed=3)
  assert [r.id for r in out] == [r.id for r in recs]
  for r, o in zip(recs, out):
    assert (o.image_path, o.label_path, o.group) == (r.image_path, r.label_path, r.group)
    assert o.split in ("train", "val")


def test_group_of_one_stays_train_and_a_group_never_goes_all_to_val():
  recs = _records({"solo": 1, "pair": 2, "trio": 3})
  for frac in (0.1, 0.5, 0.9, 0.99):
    for seed in range(5):
      out = splits.carve_validation(recs, frac, seed=seed)
      val = _per_group(out, "val")
      train = _per_group(out, "train")
      assert val["solo"] == 0 and train["solo"] == 1
      # at least one carved from every group of >= 2, never all of it
      assert val["pair"] == 1 and train["pair"] == 1
      assert 1 <= val["trio"] <= 2 and train["trio"] >= 1


def test_tiny_fraction_still_carves_one_per_group():
  out = splits.carve_validation(_records({"a": 20, "b": 3}), 0.01, seed=0)
  assert _per_group(out, "val") == {"a": 1, "b": 1}


def test_carve_does_not_depend_on_input_order():
  recs = _records({"a": 7, "b": 5, "c": 9})
  ref = _val_ids(splits.carve_validation(recs, 0.3, seed=4))
  for s in range(5):
    shuffled = list(recs)
    random.Random(s).shuffle(shuffled)
    out = splits.carve_validation(shuffled, 0.3, seed=4)
    assert _val_ids(out) == ref
    assert [r.id for r in out] == [r.id for r in shuffled]  # order of the input kept


def test_carve_is_deterministic_and_seed_changes_it():
  recs = _records({"a": 12, "b": 12})
  a = _val_ids(splits.carve_validation(recs, 0.25, seed=0))
  assert a == _val_ids(splits.carve_validation(recs, 0.25, seed=0))
  others = [_val_ids(splits.carve_validation(recs, 0.25, seed=s)) for s in range(1, 6)]
  assert all(len(o) == len(a) == 6 for o in others)
  # C(12, 3)^2 = 48400 possible carves: five other seeds all equal to seed 0's would be a bug.
  assert any(o != a for o in others)


def test_other_splits_are_untouched():
  train = _records({"a": 4, "b": 4})
  test = _records({"a": 4, "b": 4}, split="test", prefix="t")
  recs = train[:2] + test + train[2:]
  out = splits.carve_validation(recs, 0.5, seed=0)
  by_id = {r.id: r for r in out}
  for r in test:
    assert by_id[r.id] is r  # the same record object, not a replaced copy
  assert _per_group(out, "test") == {"a": 4, "b": 4}
  assert _per_group(out, "val") == {"a": 2, "b": 2}
  # carving another split: the train records stay train
  out = splits.carve_validation(recs, 0.5, seed=0, split="test")
  assert _per_group(out, "train") == {"a": 4, "b": 4}
  assert _per_group(out, "val") == {"a": 2, "b": 2}
  assert all(r.id.startswith("t") for r in out if r.split == "val")


def test_fraction_zero_is_identity():
  recs = _records({"a": 4, "b": 4})
  out = splits.carve_validation(recs, 0.0, seed=0)
  assert out == recs and all(o is r for o, r in zip(out, recs))


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5])
def test_invalid_fraction_raises(fraction):
  with pytest.raises(ValueError, match="fraction"):
    splits.carve_validation(_records({"a": 4}), fraction)
