"""Shared fixtures of the bad-input / fault suite: run the CLI as a user does, check that
it failed in one line naming the file, and that what was written before is untouched."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUN_PY = ROOT / "run.py"


def run_cli(*args: str, cwd: os.PathLike | str | None = None, timeout: float = 600,
            env: dict | None = None) -> subprocess.CompletedProcess:
  """`python run.py ARGS` in a subprocess (text output), as a user would type it."""
  full_env = {**os.environ, "JAX_PLATFORMS": "cpu", **(env or {})}
  return subprocess.run([sys.executable, str(RUN_PY), *map(str, args)], cwd=cwd,
                        capture_output=True, text=True, timeout=timeout, env=full_env)


def error_line(proc: subprocess.CompletedProcess, code: int = 2, *names: str) -> str:
  """Asserts `proc` failed with `code`, with stderr of exactly one line, no traceback,
  naming each of `names` (file names, fields); returns that line."""
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert proc.returncode == code, (proc.returncode, proc.stdout[-2000:], proc.stderr[-4000:])
  assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
  assert len(lines) == 1, proc.stderr[-4000:]
  for name in names:
    assert str(name) in lines[0], (name, lines[0])
  return lines[0]


def snapshot(folder: os.PathLike | str) -> dict[str, str]:
  """{relative path: sha256} of every file below `folder` (links not followed)."""
  folder = Path(folder)
  out = {}
  for p in sorted(folder.rglob("*")):
    if p.is_file() and not p.is_symlink():
      out[str(p.relative_to(folder))] = hashlib.sha256(p.read_bytes()).hexdigest()
  return out


@pytest.fixture
def small_disk():
  """A folder on a freshly mounted small tmpfs (a disk that fills up), as a factory:
  `small_disk(size_kib)` -> Path. Needs root (mount); skipped otherwise."""
  mounts = []

  def make(size_kib: int) -> Path:
    if os.geteuid() != 0:
      pytest.skip("a small tmpfs needs root")
    where = Path("/tmp") / f"pa_jax_small_disk_{uuid.uuid4().hex[:8]}"
    where.mkdir()
    rc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={int(size_kib)}k", "tmpfs",
                         str(where)], capture_output=True).returncode
    if rc != 0:
      where.rmdir()
      pytest.skip("cannot mount a tmpfs here")
    mounts.append(where)
    return where

  yield make
  for where in mounts:
    subprocess.run(["umount", "-l", str(where)], capture_output=True)
    try:
      where.rmdir()
    except OSError:
      pass
