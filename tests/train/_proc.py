"""Subprocess helpers for the training tests."""

import os
import socket
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def env(devices: int | None = None) -> dict:
  e = dict(os.environ)
  e["PYTHONPATH"] = os.pathsep.join([ROOT, HERE] + [p for p in [e.get("PYTHONPATH")] if p])
  e["JAX_PLATFORMS"] = "cpu"
  flags = [f for f in e.get("XLA_FLAGS", "").split() if "device_count" not in f]
  if devices:
    flags.append(f"--xla_force_host_platform_device_count={devices}")
  e["XLA_FLAGS"] = " ".join(flags)
  for k in ("PA_JAX_COORDINATOR", "PA_JAX_NUM_PROCESSES", "PA_JAX_PROCESS_ID",
            "JAX_COORDINATOR_ADDRESS"):
    e.pop(k, None)
  return e


def script(name: str, *args: str, devices: int | None = None, **kw) -> subprocess.Popen:
  return subprocess.Popen([sys.executable, os.path.join(HERE, name), *map(str, args)],
                          env=env(devices), cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, **kw)


def run(name: str, *args: str, devices: int | None = None, timeout: float = 240):
  p = script(name, *args, devices=devices)
  out, err = p.communicate(timeout=timeout)
  return p.returncode, out, err


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]
