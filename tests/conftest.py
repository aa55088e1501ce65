import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

# The bench/ scripts are plain modules (run as `python bench/x.py`, which puts bench/ on the
# path); their tests import them the same way.
BENCH = str(Path(__file__).resolve().parents[1] / "bench")
if BENCH not in sys.path:
  sys.path.insert(0, BENCH)

# One XLA compilation cache for the whole test run, this process and every CLI subprocess it
# starts (they inherit the environment). Most of the suite's time is XLA:CPU compiling the
# same few toy-sized models again: each `run.py train/predict/annotate` subprocess and each
# fresh `jax.jit` of an equal program would recompile from scratch. The cache key is the
# program, the compile options and the jax/XLA version, so a hit is the same executable;
# results are unchanged. It is private to the run (removed at exit), so nothing leaks between
# runs, and a user's own JAX_COMPILATION_CACHE_DIR wins.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _cache = tempfile.mkdtemp(prefix="pa_jax_test_xla_cache_")
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
  # jax reads the variable when it is imported; a plugin may have imported it already.
  if "jax" in sys.modules:
    sys.modules["jax"].config.update("jax_compilation_cache_dir", _cache)

# XLA:CPU spends most of a toy model's compile time in LLVM's optimisation passes, not in
# XLA's HLO passes. The tests run each program a few times on tiny inputs, so code quality
# does not matter but compile time does: build with LLVM at -O0 (XLA's own flag for exactly
# this trade). HLO passes (fusion, buffer assignment, loop structure) still run, so the HLO
# and memory-analysis checks see the same programs as users do.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "true")
if "jax" in sys.modules:
  sys.modules["jax"].config.update(
      "jax_disable_most_optimizations", os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] == "true")


@pytest.fixture
def xla_optimized():
  """Full LLVM optimisation for a test that runs one program hundreds of times (training to
  convergence), where -O0 code would cost more than the compile it saves."""
  import jax

  before = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", False)
  yield
  jax.config.update("jax_disable_most_optimizations", before)


# napari's Qt/vispy stack can crash (SIGSEGV) while the interpreter tears down its widgets,
# after every test has passed and the summary is printed: it happened once in 3 clean-clone
# CI runs (886 passed, then "Segmentation fault" and a non-zero exit), never in 3 runs of
# tests/napari alone. The verdict is already final by then, so once the session is over and
# napari was loaded, leave with pytest's own exit status instead of running Qt's teardown.
_session_status = {}


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
  _session_status["code"] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
  if "napari" not in sys.modules or "code" not in _session_status:
    return
  cache = os.environ.get("JAX_COMPILATION_CACHE_DIR", "")
  if cache.startswith(tempfile.gettempdir()) and "pa_jax_test_xla_cache_" in cache:
    shutil.rmtree(cache, ignore_errors=True)  # atexit will not run
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(_session_status["code"])
