"""Import pretrained torchvision weights (ResNet / ResNeXt, FPN Mask R-CNN) into our Flax variables.

Two kinds of state dict are understood, by name:

* a torchvision **classification** ResNet/ResNeXt (``conv1.weight``, ``bn1.*``,
  ``layerX.Y.*``; ``fc.*`` is dropped) -> the backbone;
* a torchvision **Mask R-CNN FPN** (v1, ``maskrcnn_resnet50_fpn``; also Faster R-CNN,
  whose mask entries are simply absent) -> backbone, FPN, RPN, box and mask heads.

The name table and the tensor layouts (all verified numerically in
``tests/models/test_models_weights.py``) are in :mod:`pa_jax.models.weight_names`.

Predictor layers whose class count differs from the model's (e.g. COCO's 91 classes into
our 2) are skipped with a printed note and keep their initialisation; every other shape
mismatch is an :class:`~pa_jax.errors.InputError`. torch is only needed to read
``.pth``/``.pt`` files; ``python -m pa_jax.models.weights in.pth out.npz`` converts once on a
machine with torch, and the ``.npz`` then imports with numpy alone.
"""

from __future__ import annotations

import os
import sys
import zipfile
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from pa_jax.errors import InputError
from pa_jax.models.norm import BN_EPSILON
from pa_jax.models.weight_names import FlaxTarget, convert_tensor, torchvision_to_flax_names

__all__ = [
    "FlaxTarget",
    "convert_tensor",
    "convert_to_npz",
    "import_pretrained",
    "load_state_dict",
    "torchvision_to_flax_names",
]

PathLike = Union[str, os.PathLike]

#: Keys under which checkpoints commonly nest the state dict.
_CONTAINER_KEYS = ("state_dict", "model", "model_state_dict", "net")

#: (module, layer) of the class-dependent predictor layers.
_PREDICTORS = {("box_head", "cls_score"), ("box_head", "bbox_pred"), ("mask_head", "mask_logits")}

_MAX_LISTED = 5  # mismatches / names quoted in an error message


# ------------------------------------------------------------------------------- reading


def _to_numpy(value: Any) -> Optional[np.ndarray]:
  if hasattr(value, "detach") and hasattr(value, "numpy"):  # torch.Tensor
    t = value.detach().cpu()
    if t.is_floating_point() and t.dtype not in _numpy_float_dtypes(t):
      t = t.float()  # bfloat16 has no numpy equivalent
    return t.numpy()
  if isinstance(value, np.ndarray) and value.dtype.kind in "fiub":
    return value
  return None


def _numpy_float_dtypes(t: Any) -> tuple:
  import torch  # only reached with a torch tensor in hand

  return (torch.float16, torch.float32, torch.float64)


def _unwrap(obj: Any, where: str) -> Dict[str, np.ndarray]:
  """Dig the state dict out of common checkpoint containers; strip ``module.``."""
  while isinstance(obj, Mapping):
    inner = next((obj[k] for k in _CONTAINER_KEYS if isinstance(obj.get(k), Mapping)), None)
    if inner is None:
      break
    obj = inner
  if not isinstance(obj, Mapping):
    raise InputError(where, f"expected a state dict (name -> tensor), found {type(obj).__name__}")
  arrays = {str(k): a for k, a in ((k, _to_numpy(v)) for k, v in obj.items()) if a is not None}
  if not arrays:
    raise InputError(where, "no tensors found in the file")
  if all(k.startswith("module.") for k in arrays):  # saved from DataParallel
    arrays = {k[len("module.") :]: v for k, v in arrays.items()}
  return arrays


def load_state_dict(path: PathLike) -> Dict[str, np.ndarray]:
  """Read a state dict: ``.pth`` / ``.pt`` (needs torch) or ``.npz`` (numpy only).

  Checkpoints that nest the weights under ``'state_dict'`` / ``'model'`` (and similar)
  are unwrapped, a DataParallel ``module.`` prefix is stripped, non-tensor entries are
  ignored. Returns ``{name: np.ndarray}`` (bfloat16 tensors become float32).
  Raises InputError (one line) for a missing/unreadable file, an unknown extension, or a
  ``.pth`` without torch installed.
  """
  p = os.fspath(path)
  if not os.path.isfile(p):
    raise InputError(p, "pretrained weights file not found")
  ext = os.path.splitext(p)[1].lower()
  if ext in (".pth", ".pt"):
    try:
      import torch
    except ImportError:
      raise InputError(p, "install torch to import .pth files, or convert to .npz") from None
    try:
      obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling problem is a bad input file
      first = (str(e).strip().splitlines() or [""])[0][:200]
      raise InputError(
          p, f"cannot read as a torch state dict ({type(e).__name__}: {first})"
      ) from None
  elif ext == ".npz":
    try:
      with np.load(p, allow_pickle=False) as z:
        obj = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
      raise InputError(p, f"cannot read as .npz ({type(e).__name__}: {e})") from None
  else:
    raise InputError(p, f"unsupported weights format {ext!r}; expected .pth, .pt or .npz")
  return _unwrap(obj, p)


def convert_to_npz(src: PathLike, dst: PathLike) -> int:
  """Save the state dict of ``src`` (any format :func:`load_state_dict` reads) as ``.npz``
  so that it imports later without torch. Returns the number of tensors written."""
  sd = load_state_dict(src)
  np.savez(os.fspath(dst), **sd)
  return len(sd)


# -------------------------------------------------------------------------------- import


def _path_str(path: Tuple[str, ...]) -> str:
  return "/".join(path)


def _fc6_channels(
    index: Mapping[Tuple[str, ...], Any], sd: Mapping[str, np.ndarray]
) -> Optional[int]:
  """Channels C of the RoI features feeding fc6: the model's FPN width, else the file's."""
  for rel, full in index.items():
    if len(rel) == 3 and rel[0] == "fpn" and rel[1].startswith("output") and rel[2] == "kernel":
      return int(full[1].shape[-1])
  for key in ("backbone.fpn.layer_blocks.0.0.weight", "backbone.fpn.layer_blocks.0.weight"):
    if key in sd and sd[key].ndim == 4:
      return int(sd[key].shape[0])
  return 256


def _torch_out_dim(rel: Tuple[str, ...], model_shape: Tuple[int, ...]) -> int:
  """Leading (output) size the torch predictor tensor must have for the model's classes."""
  if rel[1] == "mask_logits":
    return int(model_shape[-1]) + 1  # torchvision also predicts the background map
  return int(model_shape[-1])


def import_pretrained(
    variables: Any,
    source: Union[PathLike, Mapping[str, Any]],
    strict: bool = False,
    *,
    bn_eps: float = BN_EPSILON,
    verbose: bool = True,
) -> Tuple[Any, Dict[str, Any]]:
  """Overwrite ``variables`` with the torchvision weights in ``source``.

  Args:
    variables: the variables pytree of a :class:`~pa_jax.models.mask_rcnn.MaskRCNN` (or
      of a bare :class:`~pa_jax.models.resnet.ResNet`), e.g. from ``model.init``; not
      modified.
    source: a ``.pth`` / ``.pt`` / ``.npz`` path, or an already loaded state dict.
    strict: raise InputError if any file entry maps to no model variable ('unexpected')
      or any model variable is left unset ('missing'). Skipped predictor layers (class
      count) and dropped entries (``fc.*``, ``num_batches_tracked``) are not errors.
    bn_eps: epsilon of the BatchNorms the weights were trained with. Ours is 1e-5;
      torchvision runs its COCO Mask/Faster R-CNN checkpoints with ``eps=0``: pass
      ``bn_eps=0.0`` to reproduce them exactly (``var`` is shifted by the difference).
    verbose: print the class-count note.

  Returns:
    ``(new_variables, report)``: a new pytree with the same structure and dtypes, and
    ``report = {'loaded': n tensors set, 'skipped': [file keys not loaded on purpose],
    'unexpected': [file keys with no counterpart in the model], 'missing': ['coll/path'
    of model variables left at their init]}``.

  Raises:
    InputError: unreadable file; a shape mismatch other than the predictors' class count
      (lists the first few, with file shape, converted shape and model shape); BN
      statistics into a ``group_norm`` model; nothing importable at all; strict failures.
  """
  if isinstance(source, Mapping):
    where = "pretrained state dict"
    sd = _unwrap(source, where)
  else:
    where = os.fspath(source)
    sd = load_state_dict(source)

  leaves, treedef = jax.tree_util.tree_flatten_with_path(variables)
  full_paths = [tuple(str(getattr(k, "key", getattr(k, "name", k))) for k in p) for p, _ in leaves]
  shapes = {fp: leaf for fp, (_, leaf) in zip(full_paths, leaves)}
  # Variable path without its collection -> (full path, leaf); 'params' wins ties.
  index: Dict[Tuple[str, ...], Tuple[Tuple[str, ...], Any]] = {}
  for fp in sorted(full_paths, key=lambda f: f[0] != "params"):
    index.setdefault(fp[1:], (fp, shapes[fp]))
  bare_backbone = not any(rel[0] == "backbone" for rel in index) and ("conv1", "kernel") in index

  names = torchvision_to_flax_names(sd)
  fc6_c = _fc6_channels(index, sd)
  loaded: Dict[Tuple[str, ...], np.ndarray] = {}
  source_of: Dict[Tuple[str, ...], str] = {}
  skipped: List[str] = []
  class_skipped: List[str] = []
  class_skipped_paths: set = set()
  unexpected: List[str] = []
  mismatches: List[str] = []
  group_norm: List[str] = []
  classes: Tuple[int, int] = (0, 0)

  for key, value in sd.items():
    if key not in names:
      unexpected.append(key)
      continue
    target = names[key]
    if target is None:
      skipped.append(key)
      continue
    rel = target.path
    if bare_backbone:
      rel = rel[1:] if rel[0] == "backbone" else ("<not in a bare backbone>",) + rel
    hit = index.get(rel)
    if hit is None:
      if rel[-1] in ("mean", "var") and rel[:-1] + ("scale",) in index:
        group_norm.append(key)
      else:
        unexpected.append(key)
      continue
    full, leaf = hit
    model_shape = tuple(leaf.shape)
    if tuple(target.path[-3:-1]) in _PREDICTORS:
      need = _torch_out_dim(target.path[-3:-1], model_shape)
      if value.ndim >= 1 and value.shape[0] != need:
        class_skipped.append(key)
        class_skipped_paths.add(full)
        if target.path[-2] == "cls_score":
          classes = (int(value.shape[0]), int(model_shape[-1]))
        continue
    try:
      converted = convert_tensor(target.kind, value, fc6_channels=fc6_c)
    except ValueError:
      converted = None
    if converted is None or tuple(converted.shape) != model_shape:
      got = "n/a" if converted is None else tuple(converted.shape)
      mismatches.append(
          f"{key} {tuple(value.shape)} -> {got} but {_path_str(full)} is {model_shape}"
      )
      continue
    if full in loaded:
      raise InputError(where, f"{key} and {source_of[full]} both map to {_path_str(full)}")
    if target.path[-1] == "var" and bn_eps != BN_EPSILON:
      converted = converted + np.asarray(bn_eps - BN_EPSILON, converted.dtype)
    loaded[full] = converted
    source_of[full] = key

  if group_norm:
    raise InputError(
        where,
        f"BatchNorm statistics ({group_norm[0]}, {len(group_norm)} in all) cannot go into a "
        "model with norm='group_norm'; set model.norm to 'frozen_bn' or 'bn' to import them",
    )
  if mismatches:
    more = f"; ... {len(mismatches) - _MAX_LISTED} more" if len(mismatches) > _MAX_LISTED else ""
    raise InputError(
        where,
        f"{len(mismatches)} shape mismatch(es): " + "; ".join(mismatches[:_MAX_LISTED]) + more,
    )
  if not loaded:
    raise InputError(
        where,
        f"no tensor matches the model ({len(unexpected)} unrecognised names, e.g. "
        f"{unexpected[:3]}); expected a torchvision ResNet or Mask R-CNN FPN state dict",
    )
  if class_skipped and verbose:
    counts = (
        f"{classes[0]} classes, the model has {classes[1]}" if classes[0] else "another class count"
    )
    print(
        f"note: {where}: predictor layers are for {counts}; keeping their initialisation "
        f"for {', '.join(class_skipped)}"
    )
  skipped.extend(class_skipped)
  missing = [
      _path_str(fp) for fp in full_paths if fp not in loaded and fp not in class_skipped_paths
  ]
  report = {"loaded": len(loaded), "skipped": skipped, "unexpected": unexpected, "missing": missing}
  if strict and (unexpected or missing):
    raise InputError(
        where,
        f"strict import: {len(unexpected)} file entries map to no model variable "
        f"{unexpected[:_MAX_LISTED]} and {len(missing)} model variables are not in the file "
        f"{missing[:_MAX_LISTED]}",
    )

  new_leaves = []
  for fp, (_, leaf) in zip(full_paths, leaves):
    if fp in loaded:
      new_leaves.append(jnp.asarray(loaded[fp], dtype=leaf.dtype))
    else:
      new_leaves.append(leaf)
  return jax.tree_util.tree_unflatten(treedef, new_leaves), report


def _main(argv: List[str]) -> int:
  if len(argv) != 2:
    print("usage: python -m pa_jax.models.weights IN.pth OUT.npz", file=sys.stderr)
    return 2
  try:
    n = convert_to_npz(argv[0], argv[1])
  except InputError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"{argv[1]}: {n} tensors")
  return 0


if __name__ == "__main__":
  sys.exit(_main(sys.argv[1:]))
