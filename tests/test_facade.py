"""`import pa_jax`: the facade's names, loaded lazily (no JAX until one is used)."""

from __future__ import annotations

import subprocess
import sys

import pytest

import pa_jax
from pa_jax.errors import InputError


def test_import_pa_jax_loads_no_jax_and_names_resolve_lazily():
  code = ("import sys, pa_jax\n"
          "print([m for m in ('jax', 'flax', 'pa_jax.infer.classical') if m in sys.modules])\n"
          "pa_jax.segment_classical\n"
          "print('pa_jax.infer.classical' in sys.modules)\n")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       check=True).stdout.split("\n")
  assert out[:2] == ["[]", "True"]


def test_facade_names_are_the_library_objects():
  from pa_jax import experiment
  from pa_jax.annotate.session import Session
  from pa_jax.infer.classical import segment_classical
  from pa_jax.infer.predictor import Predictor

  assert pa_jax.InputError is InputError
  assert pa_jax.Predictor is Predictor and pa_jax.Session is Session
  assert pa_jax.segment_classical is segment_classical and pa_jax.load_run is experiment.load_run
  assert set(pa_jax.__all__) <= set(dir(pa_jax))
  with pytest.raises(AttributeError, match="no attribute 'predictor_for'"):
    pa_jax.predictor_for


def test_load_predictor_of_a_missing_run_is_one_line(tmp_path):
  with pytest.raises(InputError) as e:
    pa_jax.load_predictor(tmp_path / "no_run")
  assert "no_run" in str(e.value) and "\n" not in str(e.value)
