"""The PA module's released-code choices as config fields, and old runs keeping theirs.

New configs take the release's values; a config.json saved before the fields existed is
upgraded in one place (`pa_jax.train.run_config.upgrade_stored`, used by
`experiment.load_config` and the resume check) to the values that run was trained with.
"""

from __future__ import annotations

import copy
import json

import pytest

from configs import base
from pa_jax import experiment
from pa_jax.models.mask_rcnn import ModelSpec
from pa_jax.train import checkpoint as ckpt
from pa_jax.train import run_config

NEW_FIELDS = ("centerbox_weights", "centerbox_beta", "connectivity", "attention_zero_init",
              "attention_mask_padding")


def _spec(cfg) -> ModelSpec:
  return ModelSpec.from_config(cfg.model, anchor_wh=(12.0, 10.0))


def _pa_config():
  c = base.get_config()
  c.model.partial.enabled = True
  return c


def _stored_before_the_fields(cfg) -> dict:
  """config.json as a run saved before the fields existed wrote it."""
  stored = json.loads(ckpt.config_json(cfg))
  for f in NEW_FIELDS:
    del stored["model"]["partial"][f]
  return stored


def test_new_configs_take_the_release_values():
  s = _spec(_pa_config())
  assert s.centerbox_weights == (10.0, 10.0, 5.0, 5.0)
  assert s.centerbox_beta == pytest.approx(1.0 / 9.0)
  assert s.connectivity == 4
  assert s.attention_zero_init is False and s.attention_mask_padding is True
  # ModelSpec's own defaults agree with the config's.
  d = ModelSpec()
  assert all(getattr(d, f) == getattr(s, f) for f in NEW_FIELDS)


def test_old_run_config_loads_with_the_values_it_trained_with(tmp_path):
  stored = _stored_before_the_fields(_pa_config())
  (tmp_path / "config.json").write_text(json.dumps(stored))
  s = _spec(experiment.load_config(tmp_path))
  assert s.centerbox_weights == (1.0, 1.0, 1.0, 1.0)
  assert s.centerbox_beta == pytest.approx(1.0 / 9.0)
  assert s.connectivity == 8
  assert s.attention_zero_init is True and s.attention_mask_padding is False
  # A run saved with the fields keeps what it saved, whatever the legacy table says.
  saved = json.loads(ckpt.config_json(_pa_config()))
  saved["model"]["partial"]["connectivity"] = 4
  (tmp_path / "config.json").write_text(json.dumps(saved))
  assert _spec(experiment.load_config(tmp_path)).connectivity == 4


def test_upgrade_fills_only_missing_fields_and_copies():
  stored = _stored_before_the_fields(_pa_config())
  before = copy.deepcopy(stored)
  out = run_config.upgrade_stored(stored)
  assert stored == before  # the input is not changed
  p = out["model"]["partial"]
  assert p["centerbox_weights"] == [1.0, 1.0, 1.0, 1.0]  # JSON form, as config.json holds it
  assert p["connectivity"] == 8 and p["attention_zero_init"] is True
  assert p["attention_mask_padding"] is False
  assert run_config.upgrade_stored(out) == out  # idempotent
  partial = {k for k in run_config.LEGACY_VALUES if k.startswith("model.partial.")}
  assert partial == {f"model.partial.{f}" for f in NEW_FIELDS}


def test_resuming_an_old_pa_run_names_the_changed_rules():
  stored = _stored_before_the_fields(_pa_config())
  changes = run_config.config_changes(stored, _pa_config())
  assert changes == [
      "model.partial.attention_mask_padding: False -> True",
      "model.partial.attention_zero_init: True -> False",
      "model.partial.centerbox_weights: [1.0, 1.0, 1.0, 1.0] -> [10.0, 10.0, 5.0, 5.0]",
      "model.partial.connectivity: 8 -> 4"]
  # With the old values passed it resumes.
  c = _pa_config()
  c.model.partial.centerbox_weights = (1.0, 1.0, 1.0, 1.0)
  c.model.partial.connectivity = 8
  c.model.partial.attention_zero_init = True
  c.model.partial.attention_mask_padding = False
  assert run_config.config_changes(stored, c) == []


def test_resuming_an_old_baseline_run_ignores_the_module_fields():
  c = base.get_config()  # partial.enabled False
  assert run_config.config_changes(_stored_before_the_fields(c), c) == []
  c2 = base.get_config()
  c2.model.partial.enabled = True
  assert run_config.config_changes(_stored_before_the_fields(c), c2)[-1].startswith(
      "model.partial.enabled: False -> True")


def test_bad_connectivity_is_refused():
  c = _pa_config()
  c.model.partial.connectivity = 6
  with pytest.raises(ValueError, match="model.partial.connectivity"):
    _spec(c)
