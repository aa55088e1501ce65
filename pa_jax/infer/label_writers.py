"""Label images written band by band as the streaming stitcher finishes rows.

    with OmeTiffLabelWriter(path, (H, W), pixel_size_um=(0.25, 0.25)) as w:
      for band in bands:            # top to bottom, no gaps (streaming.Band)
        w.write(band)

* `OmeTiffLabelWriter`: a tiled (512² by default), zlib-compressed BigTIFF with OME-XML
  (uint32, axes YX, PhysicalSizeX/Y when known). tifffile writes a compressed tiled image
  only from an iterator of tiles, which it pulls; the stitcher pushes rows. A writer thread
  runs `tifffile.imwrite` on tiles taken from a small queue (two tile rows), so memory stays
  at a few tile rows and zlib (which releases the GIL) overlaps with segmentation.
* `OmeZarrWriter`: an OME-NGFF 0.4 image (zarr format 2, '/' chunk keys: what napari-ome-zarr,
  QuPath and Fiji/MoBIE read) with the input pixels as the image, `0` (c, y, x), and the
  label image in the NGFF labels group, `labels/<name>/0` (c = 1, y, x, uint32), with
  `image-label` metadata. Rows are buffered to whole chunk rows, so every chunk is written
  once.

Both reopen with tifffile / zarr to exactly the label map written (tests beside). A writer
is used on a staged output folder (pa_jax/outputs.py), so a failed run leaves nothing behind.
"""

from __future__ import annotations

import queue
import threading
from pathlib import Path
from typing import Iterator

import numpy as np

__all__ = ["OmeTiffLabelWriter", "OmeZarrWriter", "read_ome_zarr_labels"]

NGFF_VERSION = "0.4"


class _RowBlocks:
  """Collects rows pushed in order into blocks of `rows` full-width rows (the last one
  shorter), handed to `emit(y0, block)`."""

  def __init__(self, height: int, rows: int, emit):
    self.height, self.rows, self.emit = height, rows, emit
    self.parts: list[np.ndarray] = []
    self.y = 0  # rows received
    self.start = 0  # first row of the block being filled

  def push(self, y0: int, data: np.ndarray) -> None:
    if y0 != self.y:
      raise ValueError(f"rows must come in order: expected row {self.y}, got {y0}")
    self.y += data.shape[0]
    if self.y > self.height:
      raise ValueError(f"{self.y} rows written into an image of {self.height}")
    self.parts.append(data)
    while self.y - self.start >= self.rows or (self.y == self.height and self.y > self.start):
      block = np.concatenate(self.parts) if len(self.parts) > 1 else self.parts[0]
      n = min(self.rows, block.shape[0])
      self.emit(self.start, block[:n])
      self.parts = [block[n:]] if block.shape[0] > n else []
      self.start += n

  @property
  def complete(self) -> bool:
    return self.y == self.height


_END, _ABORT = object(), object()


class OmeTiffLabelWriter:
  """Streams a uint32 label image into a tiled, compressed OME-TIFF (module docstring).

  path: the .ome.tif; shape: (H, W); tile: tile side (multiple of 16); pixel_size_um:
  (y, x) µm per pixel of the image written, or None; name: the OME image name.
  `write(band)` takes objects with `.y0` and `.labels` (int [h, W]); `close()` finishes
  the file (and raises if it is incomplete); `abort()` stops the writer and removes the file.
  """

  def __init__(self, path, shape: tuple[int, int], *, tile: int = 512,
               pixel_size_um: tuple[float, float] | None = None, name: str = "nuclei",
               compression: str = "zlib"):
    self.path, self.shape = Path(path), (int(shape[0]), int(shape[1]))
    self.tile = int(tile)
    self._queue: queue.Queue = queue.Queue(maxsize=2)
    self._error: BaseException | None = None
    self._closed = False
    self._blocks = _RowBlocks(self.shape[0], self.tile, self._put)
    meta = {"axes": "YX", "Name": name}
    if pixel_size_um is not None:
      meta.update(PhysicalSizeY=float(pixel_size_um[0]), PhysicalSizeYUnit="µm",
                  PhysicalSizeX=float(pixel_size_um[1]), PhysicalSizeXUnit="µm")
    self._thread = threading.Thread(target=self._run, args=(meta, compression), daemon=True)
    self._thread.start()

  def _tiles(self) -> Iterator[np.ndarray]:
    while True:
      item = self._queue.get()
      if item is _END:
        return
      if item is _ABORT:
        raise RuntimeError("label image aborted")
      for x in range(0, self.shape[1], self.tile):
        yield item[:, x:x + self.tile]

  def _run(self, meta: dict, compression: str) -> None:
    import tifffile

    try:
      tifffile.imwrite(self.path, self._tiles(), shape=self.shape, dtype=np.uint32,
                       tile=(self.tile, self.tile), compression=compression, bigtiff=True,
                       ome=True, metadata=meta)
    except BaseException as e:  # handed to the caller's thread by `_check`
      self._error = e
      while True:  # unblock a producer waiting on a full queue
        try:
          self._queue.get_nowait()
        except queue.Empty:
          break

  def _check(self) -> None:
    if self._error is not None:
      raise self._error

  def _put(self, y0: int, block: np.ndarray) -> None:
    self._send(np.ascontiguousarray(block, dtype=np.uint32))

  def _send(self, item) -> None:
    while True:
      self._check()
      try:
        self._queue.put(item, timeout=0.5)
        return
      except queue.Full:
        if not self._thread.is_alive():
          self._check()
          raise RuntimeError("label image writer stopped")

  def write(self, band) -> None:
    self._blocks.push(int(band.y0), np.asarray(band.labels))

  def close(self) -> None:
    if self._closed:
      return
    if not self._blocks.complete:
      self.abort()
      raise ValueError(f"{self.path}: only {self._blocks.y} of {self.shape[0]} rows written")
    self._closed = True
    self._send(_END)
    self._thread.join()
    self._check()

  def abort(self) -> None:
    self._closed = True
    if self._thread.is_alive():
      try:
        self._queue.put(_ABORT, timeout=5)
      except queue.Full:
        pass
      self._thread.join(timeout=30)
    self.path.unlink(missing_ok=True)

  def __enter__(self) -> "OmeTiffLabelWriter":
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    if exc_type is None:
      self.close()
    else:
      self.abort()


def _axes(channel: bool, spatial_unit: str | None) -> list[dict]:
  space = {"type": "space", **({"unit": spatial_unit} if spatial_unit else {})}
  return ([{"name": "c", "type": "channel"}] if channel else []) + [
      {"name": "y", **space}, {"name": "x", **space}]


def _multiscales(name: str, pixel_size_um) -> list[dict]:
  scale = [1.0, 1.0, 1.0] if pixel_size_um is None else [1.0, float(pixel_size_um[0]),
                                                          float(pixel_size_um[1])]
  unit = None if pixel_size_um is None else "micrometer"
  return [{"version": NGFF_VERSION, "name": name, "axes": _axes(True, unit),
           "datasets": [{"path": "0", "coordinateTransformations": [
               {"type": "scale", "scale": scale}]}]}]


class OmeZarrWriter:
  """Streams the image and its label image into an OME-NGFF 0.4 zarr (module docstring).

  path: the .ome.zarr folder; shape: (H, W); channels: of the image (1 gray, 3 RGB);
  dtype: of the image; pixel_size_um: (y, x) µm per pixel, or None; name: the label
  image's name under labels/. `write(band)` takes `.y0`, `.labels` [h, W] and `.image`
  [h, W(, C)] (streaming.Band).
  """

  def __init__(self, path, shape: tuple[int, int], *, channels: int, dtype,
               pixel_size_um: tuple[float, float] | None = None, name: str = "nuclei",
               chunk: int = 512, image_name: str = "image"):
    import zarr

    self.path, self.shape, self.chunk = Path(path), (int(shape[0]), int(shape[1])), chunk
    H, W = self.shape
    keys = {"name": "v2", "separator": "/"}  # NGFF 0.4 asks for nested chunk keys
    root = zarr.open_group(self.path, mode="w", zarr_format=2)
    root.attrs["multiscales"] = _multiscales(image_name, pixel_size_um)
    self._image = root.create_array("0", shape=(channels, H, W), dtype=np.dtype(dtype),
                                    chunks=(channels, chunk, chunk), chunk_key_encoding=keys)
    labels = root.create_group("labels")
    labels.attrs["labels"] = [name]
    group = labels.create_group(name)
    group.attrs["multiscales"] = _multiscales(name, pixel_size_um)
    group.attrs["image-label"] = {"version": NGFF_VERSION, "source": {"image": "../../"}}
    self._labels = group.create_array("0", shape=(1, H, W), dtype=np.uint32,
                                      chunks=(1, chunk, chunk), chunk_key_encoding=keys)
    self._label_rows = _RowBlocks(H, chunk, self._put_labels)
    self._image_rows = _RowBlocks(H, chunk, self._put_image)

  def _put_labels(self, y0: int, block: np.ndarray) -> None:
    self._labels[0, y0:y0 + block.shape[0]] = block.astype(np.uint32, copy=False)

  def _put_image(self, y0: int, block: np.ndarray) -> None:
    block = block[None] if block.ndim == 2 else np.moveaxis(block, -1, 0)
    self._image[:, y0:y0 + block.shape[1]] = block

  def write(self, band) -> None:
    self._label_rows.push(int(band.y0), np.asarray(band.labels))
    self._image_rows.push(int(band.y0), np.asarray(band.image))

  def close(self) -> None:
    if not self._label_rows.complete:
      raise ValueError(f"{self.path}: only {self._label_rows.y} of {self.shape[0]} rows "
                       "written")

  def __enter__(self) -> "OmeZarrWriter":
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    if exc_type is None:
      self.close()


def read_ome_zarr_labels(path, name: str = "nuclei") -> np.ndarray:
  """The label image of an OME-Zarr written by `OmeZarrWriter`: uint32 [H, W]."""
  import zarr

  root = zarr.open_group(Path(path), mode="r")
  if name not in root["labels"].attrs.get("labels", []):
    raise ValueError(f"{path}: no label image {name!r}")
  return np.asarray(root[f"labels/{name}/0"][0])
