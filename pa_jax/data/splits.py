"""Carving a seeded validation split out of a dataset's training images.

Kumar and TNBC ship only training images (their test images are held back for independent
scoring), so model selection needs a validation split carved from the training split.
It is carved per `group` (Kumar: organ, TNBC: slide), so every organ or slide is in both
parts, and it depends only on (seed, group, ids): the same images for every run, reader
and machine, whatever order the records come in.
"""

from __future__ import annotations

import zlib
from typing import Sequence

import numpy as np

from pa_jax.data.records import Record

VALIDATION = "val"


def carve_validation(records: Sequence[Record], fraction: float, seed: int = 0,
                     split: str = "train") -> list[Record]:
  """`records` with about `fraction` of each group's `split` images moved to split 'val'.

  Each group of n >= 2 images gives round(fraction * n) images, at least one and never all;
  a group of one image stays in `split`. Records of other splits are returned unchanged.
  Order is kept.
  """
  import dataclasses

  if not 0.0 <= fraction < 1.0:
    raise ValueError(f"validation fraction must be in [0, 1), got {fraction}")
  if fraction == 0.0:
    return list(records)
  by_group: dict[str, list[str]] = {}
  for r in records:
    if r.split == split:
      by_group.setdefault(r.group, []).append(r.id)
  carved: set[str] = set()
  for group, ids in by_group.items():
    n = len(ids)
    if n < 2:
      continue
    k = min(n - 1, max(1, int(round(fraction * n))))
    # crc32, not hash(): Python salts str hashes per process.
    rng = np.random.default_rng([seed, zlib.crc32(group.encode())])
    carved.update(np.asarray(sorted(ids))[rng.permutation(n)[:k]].tolist())
  return [dataclasses.replace(r, split=VALIDATION) if r.id in carved and r.split == split
          else r for r in records]
