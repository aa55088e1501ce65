import os
import sys

# Test helpers (train_toy.py) and the subprocess scripts live beside the tests.
HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
  sys.path.insert(0, HERE)
