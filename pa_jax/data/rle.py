"""COCO run-length encoding (RLE) of binary masks, plain and compressed.

Conventions (those of the COCO format itself):

* RLE runs go down the columns (Fortran / column-major order), start with a run of zeros
  (possibly empty) and alternate 0/1.
* Compressed counts: each count is written in 5-bit groups, least significant first, one
  character per group = group value (+0x20 when another group follows) + 48; the last group's
  bit 0x10 is the sign. From the fourth count on (index ≥ 3), the count minus the count two
  places before it is written instead of the count (that is what the reference C code
  `rleToString` does; two places back is the previous run of the same value).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["rle_decode", "rle_encode", "string_to_counts", "counts_to_string"]


def string_to_counts(s: str | bytes) -> list[int]:
  """Decodes a compressed COCO RLE string into run lengths."""
  if isinstance(s, (bytes, bytearray)):
    s = s.decode("ascii")
  counts: list[int] = []
  p, n = 0, len(s)
  while p < n:
    x, k, more = 0, 0, True
    while more:
      if p >= n:
        raise ValueError("compressed RLE string ends in the middle of a count")
      c = ord(s[p]) - 48
      if not 0 <= c < 64:
        raise ValueError(f"invalid character {s[p]!r} in compressed RLE string")
      x |= (c & 0x1F) << (5 * k)
      more = bool(c & 0x20)
      p += 1
      k += 1
      if not more and (c & 0x10):
        x |= -1 << (5 * k)  # sign-extend
    if len(counts) > 2:
      x += counts[-2]
    counts.append(x)
  return counts


def counts_to_string(counts: Sequence[int]) -> str:
  """Encodes run lengths as a compressed COCO RLE string."""
  out = []
  counts = [int(c) for c in counts]
  for i, x in enumerate(counts):
    if i > 2:
      x -= counts[i - 2]
    more = True
    while more:
      c = x & 0x1F
      x >>= 5  # arithmetic shift, like C's on a signed long
      more = (x != -1) if (c & 0x10) else (x != 0)
      if more:
        c |= 0x20
      out.append(chr(c + 48))
  return "".join(out)


def rle_size_counts(rle: Mapping[str, Any]) -> tuple[int, int, np.ndarray]:
  if not isinstance(rle, Mapping) or "size" not in rle or "counts" not in rle:
    raise ValueError("RLE must be a dict with 'size' and 'counts'")
  size = rle["size"]
  if (not isinstance(size, (list, tuple)) or len(size) != 2
      or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 0
                 for v in size)):
    raise ValueError(f"RLE 'size' must be [height, width], got {size!r}")
  h, w = int(size[0]), int(size[1])
  raw = rle["counts"]
  if isinstance(raw, (str, bytes, bytearray)):
    counts = string_to_counts(raw)
  elif isinstance(raw, (list, tuple, np.ndarray)):
    counts = list(raw)
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in counts):
      raise ValueError("uncompressed RLE counts must be integers")
  else:
    raise ValueError(f"RLE 'counts' must be a list or a string, got {type(raw).__name__}")
  arr = np.asarray(counts, dtype=np.int64)
  if arr.size and arr.min() < 0:
    raise ValueError("RLE has a negative run length")
  if int(arr.sum()) != h * w:
    raise ValueError(f"RLE runs cover {int(arr.sum())} pixels but size {h}x{w} has {h * w}")
  return h, w, arr


def counts_to_positions(counts: np.ndarray) -> np.ndarray:
  """Column-major flat indices of the 1-pixels of an RLE."""
  ends = np.cumsum(counts)
  starts = (ends - counts)[1::2]
  lengths = counts[1::2]
  keep = lengths > 0
  starts, lengths = starts[keep], lengths[keep]
  if not lengths.size:
    return np.zeros(0, np.int64)
  offsets = starts - np.concatenate([[0], np.cumsum(lengths)[:-1]])
  return np.arange(int(lengths.sum()), dtype=np.int64) + np.repeat(offsets, lengths)


def positions_to_counts(pos: np.ndarray, total: int) -> list[int]:
  """Run lengths of a mask given the sorted column-major indices of its 1-pixels."""
  pos = np.asarray(pos, dtype=np.int64)
  if pos.size == 0:
    return [int(total)] if total else []
  breaks = np.flatnonzero(np.diff(pos) != 1)
  starts = np.concatenate([pos[:1], pos[breaks + 1]])
  ends = np.concatenate([pos[breaks], pos[-1:]]) + 1
  zeros = starts - np.concatenate([[0], ends[:-1]])
  counts = np.empty(2 * len(starts), np.int64)
  counts[0::2] = zeros
  counts[1::2] = ends - starts
  out = counts.tolist()
  if ends[-1] < total:
    out.append(int(total - ends[-1]))
  return out


def rle_decode(rle: Mapping[str, Any]) -> np.ndarray:
  """COCO RLE (`{'size': [h, w], 'counts': list[int] | str}`) → bool mask (H, W).

  Accepts uncompressed counts (list of ints) and compressed counts (str or bytes).
  Raises ValueError for malformed input (runs not covering h*w pixels, bad characters).
  """
  h, w, counts = rle_size_counts(rle)
  vals = np.zeros(len(counts), dtype=bool)
  vals[1::2] = True
  flat = np.repeat(vals, counts)
  return np.ascontiguousarray(flat.reshape(w, h).T)


def rle_encode(mask: np.ndarray) -> dict[str, Any]:
  """Bool/0-1 mask (H, W) → `{'size': [h, w], 'counts': str}` (compressed COCO RLE)."""
  mask = np.asarray(mask)
  if mask.ndim != 2:
    raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
  h, w = mask.shape
  pos = np.flatnonzero(mask.T)  # column-major order
  return {"size": [int(h), int(w)], "counts": counts_to_string(positions_to_counts(pos, h * w))}


