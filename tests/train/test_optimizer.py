"""Optimiser: weight-decay mask, warm-up/schedule values, gradient clipping."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import train_toy as T
from pa_jax.errors import InputError
from pa_jax.train.optimizer import (learning_rate_at, learning_rate_fn, make_optimizer,
                                    weight_decay_mask)


def _params():
  return {"conv": {"kernel": jnp.ones((3, 3, 2, 2)), "bias": jnp.ones((2,))},
          "norm": {"scale": jnp.ones((2,)), "bias": jnp.ones((2,))},
          "dense": {"kernel": jnp.ones((4, 3))}}


def _update(tc, params, grads, steps=1, trainable=None):
  tx = make_optimizer(tc, trainable)
  opt = tx.init(params)
  for _ in range(steps):
    upd, opt = tx.update(grads, opt, params)
    params = optax.apply_updates(params, upd)
  return params


def test_frozen_leaves_get_no_weight_decay_and_never_move():
  tc = T.toy_config(learning_rate=1.0, weight_decay=0.1, momentum=0.9, warmup_steps=0,
                    clip_grad_norm=0.0).train
  p = _params()
  frozen_conv = lambda params: {"conv": {"kernel": False, "bias": False},  # noqa: E731
                                "norm": {"scale": True, "bias": True}, "dense": {"kernel": True}}
  zeros = jax.tree.map(jnp.zeros_like, p)
  out = _update(tc, p, zeros, steps=3, trainable=frozen_conv)
  np.testing.assert_array_equal(out["conv"]["kernel"], p["conv"]["kernel"])
  assert float(out["dense"]["kernel"][0, 0]) < 0.9  # still decayed: 3 steps with momentum


def test_backbone_freezing_needs_pretrained_weights():
  from configs import base
  from pa_jax.experiment import check_backbone_init

  m = base.get_config().model  # paper config: frozen_bn, freeze_at 2, no weights file
  with pytest.raises(InputError, match="model.norm.*pretrained"):
    check_backbone_init(m)
  m.norm = "group_norm"
  with pytest.raises(InputError, match="model.freeze_at.*random weights"):
    check_backbone_init(m)
  m.freeze_at = 0
  check_backbone_init(m)
  m.norm, m.freeze_at, m.pretrained = "frozen_bn", 2, "weights.pth"
  check_backbone_init(m)


def test_weight_decay_only_on_kernels():
  tc = T.toy_config(learning_rate=1.0, weight_decay=0.1, momentum=0.9, warmup_steps=0,
                    clip_grad_norm=0.0).train
  p = _params()
  assert weight_decay_mask(p) == {"conv": {"kernel": True, "bias": False},
                                  "norm": {"scale": False, "bias": False},
                                  "dense": {"kernel": True}}
  zeros = jax.tree.map(jnp.zeros_like, p)
  out = _update(tc, p, zeros)
  np.testing.assert_allclose(out["conv"]["kernel"], 0.9, rtol=1e-6)
  np.testing.assert_allclose(out["dense"]["kernel"], 0.9, rtol=1e-6)
  for leaf in (out["conv"]["bias"], out["norm"]["scale"], out["norm"]["bias"]):
    np.testing.assert_array_equal(leaf, 1.0)  # biases and norm parameters untouched


def test_warmup_then_constant():
  tc = T.toy_config(learning_rate=0.1, warmup_steps=4, schedule="constant", steps=100).train
  got = [learning_rate_at(tc, s) for s in range(6)]
  np.testing.assert_allclose(got, [0.025, 0.05, 0.075, 0.1, 0.1, 0.1], rtol=1e-6)
  assert learning_rate_at(tc, 99) == pytest.approx(0.1)
  tc0 = T.toy_config(learning_rate=0.1, warmup_steps=0).train
  assert learning_rate_at(tc0, 0) == pytest.approx(0.1)


def test_cosine_and_step_schedules():
  tc = T.toy_config(learning_rate=0.1, warmup_steps=10, schedule="cosine", steps=110).train
  assert learning_rate_at(tc, 9) == pytest.approx(0.1)
  assert learning_rate_at(tc, 10) == pytest.approx(0.1)
  assert learning_rate_at(tc, 60) == pytest.approx(0.05, rel=1e-5)
  assert learning_rate_at(tc, 110) == pytest.approx(0.0, abs=1e-7)
  ts = T.toy_config(learning_rate=0.1, warmup_steps=0, schedule="step", steps=90).train
  assert learning_rate_at(ts, 59) == pytest.approx(0.1)
  assert learning_rate_at(ts, 60) == pytest.approx(0.01)
  assert learning_rate_at(ts, 80) == pytest.approx(0.001)
  # the optax schedule inside the optimiser is the same function (traced)
  f = jax.jit(learning_rate_fn(ts))
  assert float(f(jnp.int32(60))) == pytest.approx(0.01)


def test_sgd_applies_the_schedule():
  tc = T.toy_config(learning_rate=0.1, warmup_steps=4, weight_decay=0.0, momentum=0.0,
                    clip_grad_norm=0.0).train
  p = {"w": jnp.zeros((2, 2))}
  g = {"w": jnp.ones((2, 2))}
  out = _update(tc, p, g, steps=2)  # -(0.025 + 0.05)
  np.testing.assert_allclose(out["w"], -0.075, rtol=1e-6)


def test_global_norm_clipping():
  p = {"a": jnp.zeros((2, 2)), "b": jnp.zeros((3,))}
  g = {"a": jnp.full((2, 2), 30.0), "b": jnp.full((3,), 40.0)}
  norm = float(optax.tree.norm(g))
  kw = dict(learning_rate=1.0, warmup_steps=0, weight_decay=0.0, momentum=0.0)
  clipped = _update(T.toy_config(clip_grad_norm=2.0, **kw).train, p, g)
  assert float(optax.tree.norm(clipped)) == pytest.approx(2.0, rel=1e-5)
  # direction preserved
  np.testing.assert_allclose(clipped["a"][0, 0] / clipped["b"][0], 30.0 / 40.0, rtol=1e-5)
  free = _update(T.toy_config(clip_grad_norm=0.0, **kw).train, p, g)
  assert float(optax.tree.norm(free)) == pytest.approx(norm, rel=1e-5)


def test_bad_optimizer_config_is_one_line():
  with pytest.raises(InputError, match=r"^train.schedule: 'linear' is not one of"):
    learning_rate_fn(T.toy_config(schedule="linear").train)
  with pytest.raises(InputError, match=r"^train.clip_grad_norm"):
    make_optimizer(T.toy_config(clip_grad_norm=-1.0).train)
