"""What every dataset reader shares: the `Record` of one image, the image suffixes, and
sequential relabelling.

Its own module so that the format readers (`readers` for folders, `coco` for COCO JSON)
can both use it while `readers.open_dataset` dispatches to `coco`: one direction of
import only (tests/test_import_graph.py keeps it so). `readers` re-exports every name.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import numpy as np

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")


@dataclasses.dataclass(frozen=True)
class Record:
  """One image of a dataset and where its annotation lives (nothing loaded yet).

  Attributes:
    id: unique name inside the dataset (file stem for plain folders).
    image_path: the image file.
    label_path: instance label map file, or None when the image has no annotation file.
    split: 'train' / 'test' / any name from index.csv ('train' for plain folders).
    group, modality: free-form columns of index.csv ('' when unknown).
    load_labels: optional callable returning the int32 label map, used by formats whose
      annotations are not a label-map file (COCO, GeoJSON, ROI zip).
  """

  id: str
  image_path: Path
  label_path: Path | None = None
  split: str = "train"
  group: str = ""
  modality: str = ""
  load_labels: Callable[[], np.ndarray] | None = dataclasses.field(
      default=None, compare=False, repr=False)

  @property
  def has_labels(self) -> bool:
    return self.label_path is not None or self.load_labels is not None


def relabel_sequential(labels: np.ndarray) -> np.ndarray:
  """Maps the label values present to 1..N in increasing order (0 stays 0). int32."""
  labels = np.asarray(labels)
  ids = np.unique(labels)
  ids = ids[ids != 0]
  lut_keys = np.concatenate([[0], ids])
  out = np.searchsorted(lut_keys, labels).astype(np.int32)
  return out
