import sys
from pathlib import Path

# The bench/ scripts are plain modules (run as `python bench/x.py`, which puts bench/ on the
# path); their tests import them the same way.
BENCH = str(Path(__file__).resolve().parents[1] / "bench")
if BENCH not in sys.path:
  sys.path.insert(0, BENCH)
