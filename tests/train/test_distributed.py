"""Distributed start-up decisions (without starting anything)."""

import pytest

from pa_jax.errors import InputError
from pa_jax.train import distributed


@pytest.fixture
def clean_env(monkeypatch):
  for k in ("PA_JAX_COORDINATOR", "PA_JAX_NUM_PROCESSES", "PA_JAX_PROCESS_ID",
            "JAX_COORDINATOR_ADDRESS", "PA_JAX_DISTRIBUTED", "SLURM_NTASKS",
            "OMPI_COMM_WORLD_SIZE"):
    monkeypatch.delenv(k, raising=False)
  return monkeypatch


def test_single_process_by_default(clean_env):
  assert distributed.maybe_initialize_distributed() is False
  assert distributed.is_main_process()


def test_incomplete_settings_are_one_line_errors(clean_env):
  clean_env.setenv("PA_JAX_COORDINATOR", "localhost:1234")
  with pytest.raises(InputError, match="PA_JAX_NUM_PROCESSES"):
    distributed.maybe_initialize_distributed()
  clean_env.delenv("PA_JAX_COORDINATOR")
  clean_env.setenv("PA_JAX_NUM_PROCESSES", "2")
  with pytest.raises(InputError, match="coordinator"):
    distributed.maybe_initialize_distributed()
  clean_env.setenv("PA_JAX_NUM_PROCESSES", "two")
  with pytest.raises(InputError, match="not an integer"):
    distributed.maybe_initialize_distributed()


def test_cluster_detection(clean_env):
  assert not distributed._cluster_requested()
  clean_env.setenv("SLURM_NTASKS", "1")
  assert not distributed._cluster_requested()
  clean_env.setenv("SLURM_NTASKS", "4")
  assert distributed._cluster_requested()
