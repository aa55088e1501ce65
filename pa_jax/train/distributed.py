"""Multi-host start-up: `jax.distributed.initialize()` when asked for, else nothing.

Call `maybe_initialize_distributed()` first thing in a program (before any JAX
computation: JAX refuses to initialise the distributed runtime afterwards); `train()`
calls it again, which is then a no-op.

What asks for it (first match wins):
  1. arguments `coordinator`, `num_processes`, `process_id`;
  2. env `PA_JAX_COORDINATOR` (host:port of process 0), `PA_JAX_NUM_PROCESSES`,
     `PA_JAX_PROCESS_ID` (all three);
  3. env `JAX_COORDINATOR_ADDRESS` (JAX's own variable), or a recognised cluster:
     SLURM with more than one task (`SLURM_NTASKS` > 1), Open MPI
     (`OMPI_COMM_WORLD_SIZE` > 1), or `PA_JAX_DISTRIBUTED=auto` (e.g. Cloud TPU pods):
     `jax.distributed.initialize()` then auto-detects everything.
Otherwise a single process is assumed. On CPU the cross-process collectives use gloo
(`jax_cpu_collectives_implementation`, already JAX's default here; set explicitly).
"""

from __future__ import annotations

import os

import jax

from pa_jax.errors import InputError


def _env_int(name: str) -> int | None:
  v = os.environ.get(name)
  if v is None or v == "":
    return None
  try:
    return int(v)
  except ValueError:
    raise InputError(name, f"{v!r} is not an integer") from None


def _cluster_requested() -> bool:
  if os.environ.get("JAX_COORDINATOR_ADDRESS"):
    return True
  if os.environ.get("PA_JAX_DISTRIBUTED", "").lower() == "auto":
    return True
  for var in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
    try:
      if int(os.environ.get(var, "1")) > 1:
        return True
    except ValueError:
      pass
  return False


def maybe_initialize_distributed(coordinator: str | None = None,
                                 num_processes: int | None = None,
                                 process_id: int | None = None) -> bool:
  """Initialises multi-process JAX if requested; returns True when running distributed."""
  if jax.distributed.is_initialized():
    return True
  coordinator = coordinator or os.environ.get("PA_JAX_COORDINATOR") or None
  if num_processes is None:
    num_processes = _env_int("PA_JAX_NUM_PROCESSES")
  if process_id is None:
    process_id = _env_int("PA_JAX_PROCESS_ID")
  explicit = coordinator is not None
  if not explicit and not _cluster_requested():
    if num_processes not in (None, 1):
      raise InputError("PA_JAX_COORDINATOR", "a multi-process run needs the coordinator "
                       "address (host:port of process 0)")
    return False
  if explicit and (num_processes is None or process_id is None):
    raise InputError("PA_JAX_COORDINATOR", "set together with PA_JAX_NUM_PROCESSES and "
                     "PA_JAX_PROCESS_ID")
  try:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  except Exception:  # pragma: no cover - flag renamed/removed in another JAX version
    pass
  if explicit:
    jax.distributed.initialize(coordinator_address=coordinator,
                               num_processes=int(num_processes), process_id=int(process_id))
  else:
    jax.distributed.initialize()
  return True


def is_main_process() -> bool:
  """True on process 0 (the one that writes logs, config and metadata)."""
  return jax.process_index() == 0
