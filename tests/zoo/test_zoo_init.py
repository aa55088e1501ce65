"""`model.init`: a new run starts from a zoo model's variables; the partial module's own
subtrees are initialised fresh when the file lacks them; any other difference is one line
naming model.init. The annotation assistant's round 1 uses the shipped default when it
fits, and trains from scratch (one log line) when it does not."""

from __future__ import annotations

import logging

import jax
import numpy as np
import pytest

from pa_jax import experiment
from pa_jax.errors import InputError
from pa_jax.train.state import create_train_state, make_data_mesh
from pa_jax.zoo import init as zoo_init
from pa_jax.zoo import model_file, registry

from .conftest import ship, toy_config


def _start(cfg, stats, abstract: bool = False):
  """The TrainState a new run of `cfg` starts from (what `train.loop` builds before step 1)."""
  task = experiment.training_task(cfg, experiment.build_model(cfg, stats))
  return create_train_state(task, cfg, jax.random.PRNGKey(cfg.seed), experiment.example_batch(cfg),
                            make_data_mesh(jax.devices()[:1]), abstract=abstract)


def test_module_on_fine_tune_starts_from_the_file_and_inits_the_partial_subtrees(
    toy_model, toy_data, capsys):
  cfg = toy_config(toy_data, partial=True)
  cfg.model.init = str(toy_model)
  meta = model_file.read_meta(toy_model)
  state = _start(cfg, meta["dataset"])
  start = model_file.flatten({"params": jax.device_get(state.params)})
  loaded = model_file.flatten(model_file.read_variables(toy_model, meta))
  for k, x in loaded.items():  # every array of the file: its value, not a random one
    np.testing.assert_array_equal(start[k], x, err_msg=k)
  fresh = sorted({"/".join(k.split("/")[:2]) for k in set(start) - set(loaded)})
  assert fresh == ["params/attention_p2", "params/centerness"]
  assert all(k.startswith(zoo_init.PARTIAL_SUBTREES) for k in set(start) - set(loaded))
  assert all(np.all(np.isfinite(start[k])) for k in start)
  assert (f"model.init: params/attention_p2, params/centerness not in {toy_model} (the "
          "partial-annotation module): freshly initialised") in capsys.readouterr().out


def test_another_architecture_is_one_line_naming_model_init_and_a_path(toy_model, toy_data):
  cfg = toy_config(toy_data)
  cfg.model.init = str(toy_model)
  cfg.model.fpn_channels = 8
  with pytest.raises(InputError) as e:
    _start(cfg, model_file.read_meta(toy_model)["dataset"], abstract=True)
  text = str(e.value)
  assert "\n" not in text and text.startswith(f"model.init: {toy_model} does not fit")
  assert "params/fpn/" in text and "in the file" in text and "more)" in text
  assert text.endswith("or train from scratch with --config.model.init=''")


def test_extra_or_missing_arrays_outside_the_partial_module_are_refused():
  have = {"params/a/k": np.zeros((2, 2)), "params/centerness/k": np.zeros((1,))}
  assert zoo_init.fit(have, {"params/a/k": np.ones((2, 2))}, "m.npz") == ["params/centerness"]
  with pytest.raises(InputError, match="params/centerness/k not in this config's model"):
    zoo_init.fit({"params/a/k": np.zeros((2, 2))}, have, "m.npz")
  with pytest.raises(InputError, match="params/a/k not in the file"):
    zoo_init.fit(have, {"params/centerness/k": np.zeros((1,))}, "m.npz")


def test_init_and_pretrained_together_or_an_unknown_name_fail_before_any_data(shipped):
  from configs import base

  m = base.toy_sized(base.get_config()).model
  m.norm, m.freeze_at = "group_norm", 0
  m.init, m.pretrained = "zoo:x", "resnet.pth"
  with pytest.raises(InputError, match="^model.init: 'zoo:x' and model.pretrained 'resnet.pth'"):
    experiment.check_backbone_init(m)
  m.pretrained = ""
  with pytest.raises(InputError, match="^model.init: unknown model 'x'; shipped models: none"):
    experiment.check_backbone_init(m)
  m.init, m.norm, m.freeze_at = "", "frozen_bn", 2  # unchanged without model.init
  with pytest.raises(InputError, match="^model.norm"):
    experiment.check_backbone_init(m)


def _annotate_toy():
  """configs/annotate.py at toy size, round 1 asking for the shipped default model."""
  from configs import annotate, base

  c = base.toy_sized(annotate.get_config())
  c.model.init = f"zoo:{registry.DEFAULT_MODEL}"
  return c


def test_annotate_round_1_starts_from_the_default_when_it_fits(shipped, toy_model, caplog):
  from pa_jax.annotate import training
  from pa_jax.annotate.session import resolve_config

  cfg = _annotate_toy()
  assert cfg.model.partial.enabled  # the default model may lack the module: fresh subtrees
  assert resolve_config(cfg, from_scratch=True).model.init == ""
  model = experiment.build_model(cfg, model_file.read_meta(toy_model)["dataset"])
  caplog.set_level(logging.INFO, "pa_jax.annotate")
  # Not in the checkout: round 1 trains from scratch, and says why.
  assert training._first_start(cfg, model, 1) == "" and cfg.model.init == ""
  assert "not starting from the shipped model" in caplog.text
  assert "not in this checkout yet" in caplog.text
  # In the checkout and fitting (the module's subtrees start fresh): round 1 starts from it.
  ship(toy_model, shipped, registry.DEFAULT_MODEL)
  cfg.model.init = f"zoo:{registry.DEFAULT_MODEL}"
  assert training._first_start(cfg, model, 1) == f"zoo:{registry.DEFAULT_MODEL}"
  assert cfg.model.init == f"zoo:{registry.DEFAULT_MODEL}"
  assert f"annotate round 1: starting from zoo:{registry.DEFAULT_MODEL}" in caplog.text
