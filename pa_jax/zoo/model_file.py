"""The zoo's model file format: `<name>.npz` (the weights) + `<name>.json` (what they are).

`<name>.npz`: every array of a run's flax variables (`params` and any other collection),
keyed by its '/'-joined path (`params/backbone/conv1/kernel`), floats stored as float16
(half the bytes of a checkpoint; inference and fine-tuning cast them back to float32),
integer and bool arrays as they are. The zip is written with sorted keys, no compression
and a fixed timestamp, so the same variables always give the same bytes (and sha256).

`<name>.json`: `name`, `version` (of this format, `FORMAT_VERSION`), `file`, `sha256` of
the .npz, `dtype` (the float dtype stored), `step`, `run` / `checkpoint` (where it was
exported from), `dataset` (the run's run.json statistics: the centerness anchor needs
median_width / median_height), `config` (the run's full config.json) and `card` (free-form
model-card fields). Reading checks the sha256, so a damaged or edited file is refused in
one line instead of predicting garbage.
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from pa_jax import fileio
from pa_jax.errors import InputError

FORMAT_VERSION = 1
STORED_DTYPE = "float16"
# Any fixed date: a zip entry's time would otherwise change the bytes of every export.
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
_FLOAT16_MAX = float(np.finfo(np.float16).max)
_LFS_POINTER = b"version https://git-lfs"
REQUIRED_KEYS = ("name", "version", "sha256", "dtype", "step", "dataset", "config")


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """{'a/b/c': leaf} of a nested dict (flax variables), keys sorted; leaves untouched
  (arrays, or tracers while a jitted init runs)."""
  out = {}
  for k in sorted(tree):
    v = tree[k]
    if isinstance(v, Mapping):
      out.update(flatten(v, f"{prefix}{k}/"))
    else:
      out[f"{prefix}{k}"] = v
  return out


def unflatten(flat: Mapping[str, Any]) -> dict:
  """The nested dict of `flatten`'s output."""
  out: dict = {}
  for key, v in flat.items():
    *parents, leaf = key.split("/")
    node = out
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = v
  return out


def _stored(key: str, x: np.ndarray, where: os.PathLike | str) -> np.ndarray:
  """`x` as written: floats as float16 (refused when a value does not fit), others as is."""
  if not np.issubdtype(x.dtype, np.floating):
    return x
  if not np.all(np.isfinite(x)):
    raise InputError(where, f"{key} holds non-finite values; a diverged run is not exported")
  big = float(np.max(np.abs(x))) if x.size else 0.0
  if big > _FLOAT16_MAX:
    raise InputError(where, f"{key} holds values up to {big:.4g}, beyond float16 "
                     f"({_FLOAT16_MAX:.0f}); the model file stores float16")
  return x.astype(np.float16)


def npz_bytes(variables: Mapping[str, Any], where: os.PathLike | str = "variables") -> bytes:
  """The .npz bytes of flax `variables`: a pure function of their keys, shapes and values
  (`where` names the run in an error)."""
  buf = io.BytesIO()
  with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
    for key, x in flatten(variables).items():
      x = np.asarray(x)
      info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_DATE)
      info.create_system = 3  # the host OS is recorded in every entry: fix it too
      info.external_attr = 0o644 << 16
      with zf.open(info, "w", force_zip64=True) as f:
        np.lib.format.write_array(f, np.ascontiguousarray(_stored(key, x, where)),
                                  allow_pickle=False)
  return buf.getvalue()


def sha256_of(path: os.PathLike | str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def write_model(out_dir: os.PathLike | str, name: str, variables: Mapping[str, Any],
                meta: Mapping[str, Any], where: os.PathLike | str = "variables"
                ) -> tuple[Path, Path]:
  """Writes `out_dir/<name>.npz` then `out_dir/<name>.json` (`meta` after name, version,
  file, sha256, dtype; each file atomically). `where` names the source in an error (a
  value float16 cannot hold). Returns (npz path, json path)."""
  out = Path(out_dir)
  npz, card = out / f"{name}.npz", out / f"{name}.json"
  data = npz_bytes(variables, where)
  fileio.write_bytes(npz, data)
  doc = {"name": name, "version": FORMAT_VERSION, "file": npz.name,
         "sha256": hashlib.sha256(data).hexdigest(), "dtype": STORED_DTYPE, **meta}
  fileio.write_json(card, doc)
  return npz, card


def json_path(npz: os.PathLike | str) -> Path:
  return Path(npz).with_suffix(".json")


def read_meta(npz: os.PathLike | str) -> dict:
  """The sidecar .json of a model file, checked for the fields every reader needs."""
  path = json_path(npz)
  meta = fileio.read_json(path, missing_ok=False, expected="a pa_jax model card")
  if not isinstance(meta, dict):
    raise InputError(path, "not a pa_jax model card (a JSON object)")
  missing = [k for k in REQUIRED_KEYS if k not in meta]
  if missing:
    raise InputError(path, f"not a pa_jax model card: no {', '.join(missing)}")
  if not isinstance(meta["version"], int) or meta["version"] > FORMAT_VERSION:
    raise InputError(path, f"model file version {meta['version']!r} is not one this pa_jax "
                     f"reads (up to {FORMAT_VERSION}); update pa_jax")
  return meta


def read_variables(npz: os.PathLike | str, meta: Mapping[str, Any]) -> dict:
  """The float32 flax variables of a model file, after checking its sha256 against `meta`."""
  path = Path(npz)
  try:
    with open(path, "rb") as f:
      head = f.read(len(_LFS_POINTER))
  except OSError as e:
    raise InputError(path, f"cannot read the model file ({e.strerror or e})") from None
  if head == _LFS_POINTER:
    raise InputError(path, "is a Git LFS pointer, not the model: fetch it with git lfs pull")
  if sha256_of(path) != meta["sha256"]:
    raise InputError(path, "checksum mismatch: the file is damaged or was changed; "
                     "re-checkout it")
  try:
    with np.load(path, allow_pickle=False) as z:
      flat = {k: z[k] for k in z.files}
  except (OSError, ValueError, zipfile.BadZipFile) as e:
    raise InputError(path, f"cannot read the model file ({e})") from None
  return unflatten({k: x.astype(np.float32) if np.issubdtype(x.dtype, np.floating) else x
                    for k, x in flat.items()})
