"""What the bench/ scripts share: a config file + `a.b=c` overrides, and their JSON result.

  cfg = load_config("configs/dh100_baseline.py:cpu", ["model.roi.max_detections=100"])
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

from pa_jax import fileio  # noqa: E402


def _parse_value(text: str, old: Any) -> Any:
  import ast

  if isinstance(old, bool):
    return text.lower() in ("1", "true", "yes")
  if isinstance(old, str):
    return text
  try:
    val = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text
  if isinstance(old, float) and isinstance(val, int):
    return float(val)
  return val


def load_config(spec: str, overrides: Sequence[str] = ()):
  """`configs/x.py[:arg]` + `a.b=c` overrides -> ConfigDict (as `run.py --config.a.b=c`)."""
  path, _, arg = spec.partition(":")
  p = Path(path)
  if not p.is_absolute():
    p = ROOT / p
  modspec = importlib.util.spec_from_file_location(f"_bench_cfg_{p.stem}", p)
  mod = importlib.util.module_from_spec(modspec)
  modspec.loader.exec_module(mod)
  cfg = mod.get_config(arg or None)
  for item in overrides:
    key, _, text = item.partition("=")
    node = cfg
    parts = key.split(".")
    for part in parts[:-1]:
      node = node[part]
    node[parts[-1]] = _parse_value(text, node[parts[-1]])
  # The shared datasets sit beside the checkout; configs name them relative to it.
  if not os.path.isabs(cfg.data.source):
    cfg.data.source = str((ROOT / cfg.data.source).resolve())
  return cfg


def write_result(path: os.PathLike | str, result: dict) -> None:
  """The benchmark's JSON (atomically, folders created), then where it went."""
  fileio.write_json(path, result)
  print("written to", path)
