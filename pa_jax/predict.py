"""`run.py predict`: segment a file or folder with a trained run or the classical floor,
and write the nuclei in any subset of the interchange formats.

Images of any size: a trained model tiles images larger than `predict.tile_size` with
overlap and stitches the nuclei (pa_jax/infer/tiling.py), so memory follows the tile, not
the slide. Formats (`--format label,coco,geojson,roi,csv`) and contours
(`--contours polygon|spline`) are those of pa_jax/annotate/formats.py; every nucleus is
exported with its detection score and its provenance (`pa_jax <run> step <k>` or
`classical`) in the review state `proposed`: it is a machine's output, which a person may
confirm or delete in QuPath/Fiji and feed to `run.py annotate`. `--attention`
(partial-annotation model) also writes the merged attention of the predicted nuclei (the
paper's Fig. 1) as `{id}_attention.png`.

Whole slides (docs/tiling.md, "Streaming"; pa_jax/infer/slide_predict.py): a TIFF larger
than `STREAM_ABOVE_PIXELS` at the level read, or any image when `stream`, a `level` /
`region` or an OME format is asked for, is read window by window and segmented tile by tile
with streaming stitching; finished rows and nuclei are written as they come, plus
`{id}.slide.json` (level, region, pixel size, tiling counts, nucleus diameter and zoom) and a
per-slide report. `coco` and `roi` need the whole label map and are refused for a streamed
image.

Every run also writes `predict.json`: the method, the model, its training nucleus diameter,
the diameter mode ('given' | 'estimated' | null), the mask-overlap threshold used and, per
image, {id, diameter_px, diameter_source, zoom, streamed}: the nucleus diameter (input
pixels) the image was segmented at, null when the model has no training diameter, when the
estimate found too few nuclei, or for the classical method. report.html's table shows the
same per image.

The output folder follows pa_jax.outputs: never the input or inside it, a non-empty folder
only with `overwrite` (then replaced as a whole), and written into a temporary folder that
becomes the output only when every image is done. `on_error` ('stop' | 'skip') says what a
bad image does: end the command with nothing written, or be listed in `skipped.csv`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from pa_jax import fileio
from pa_jax.data import readers
from pa_jax.data import slide as slide_io
from pa_jax.errors import InputError
from pa_jax.infer.html_report import PredictReport
from pa_jax.infer.slide_predict import (NO_SCALE, STREAM_FORMATS, check_streamable,
                                        open_streamed, predict_slide, slide_intensity)
from pa_jax.zoo import choose

# The classical floor estimates its threshold and nucleus size per call, so it is given
# large tiles; 128 px of overlap covers nuclei (or clumps) up to ~120 px.
CLASSICAL_TILE, CLASSICAL_OVERLAP = 1024, 128


def _input_folders(input_path: str, records: Sequence[readers.Record]) -> list[Path]:
  """What the output must not be or contain: the input, every image it lists and, for a
  folder input, the folders those images are in (a dataset's images/). The output may not
  lie inside a folder input either (`outputs.check_output` skips file inputs there)."""
  found = {Path(input_path)}
  found.update(r.image_path.parent for r in records if Path(input_path).is_dir())
  found.update(r.image_path for r in records)
  return sorted(found)


def predict_command(input_path: str, output: str, **kwargs) -> int:
  """`predict_folder`, returning only the number of images segmented."""
  return predict_folder(input_path, output, **kwargs)["images"]


def predict_folder(input_path: str, output: str, *, method: str = "model",
                   workdir: str | None = None, model: str | None = None,
                   formats: Sequence[str] = ("label",),
                   contours: str = "polygon", attention: bool = False,
                   split: str | None = None, group: str | None = None,
                   best: bool = False, progress: bool = True,
                   classical_params: str | None = None, overwrite: bool = False,
                   on_error: str = "stop", channel: int | None = None,
                   plane: int | None = None, level: int = 0,
                   region: str | tuple[int, int, int, int] | None = None,
                   stream: bool | None = None, diameter: float | None = None,
                   mask_overlap: float | None = None) -> dict:
  """Segments every image of `input_path` into the folder `output`.

  `diameter`: median nucleus diameter (px) of the images, for a model trained at a set
  nucleus size (`data.diameter`: the shipped models); None = estimated per image/slide.
  What each image was segmented at is written to `output/predict.json` (module docstring).
  `mask_overlap`: in (0, 1], overrides the model's `predict.mask_overlap` (a detection with
  at least this fraction of its mask under higher-scoring ones is not drawn; 1.0 = off);
  None = the model's own value.

  The model method segments with the run in `workdir`, the zoo model `model` (a shipped
  name or a .npz model file, docs/zoo.md) or, with neither, the shipped default model
  (`pa_jax.zoo.choose`).
  `classical_params` ('key=value,...', `classical.parse_params`) overrides the classical
  floor's defaults; the parameters used are written to `output/classical_params.json`.

  The output follows pa_jax.outputs: never an input (or inside one), a non-empty folder
  only with `overwrite` (replaced as a whole), written into a temporary folder that
  appears as `output` only when the command succeeds. `on_error`: 'stop' (a bad image
  ends the command and nothing is written) or 'skip' (the other images are segmented and
  `skipped.csv` lists file, reason). `channel` / `plane`: the channel or the z / t plane
  of multi-channel images and stacks (`pa_jax.data.images.read_image`), which are refused
  without them. `level` (pyramid level), `region` ('x,y,w,h' or a tuple, level-0 pixels)
  and `stream` (None: automatic, see the module docstring; True / False: always / never)
  choose the whole-slide path.

  Returns {"images": segmented, "skipped": [(file, reason)], "skipped_csv": path | None,
  "output": str}.
  """
  from tqdm import tqdm

  from pa_jax import outputs
  from pa_jax.annotate import formats as fmt
  from pa_jax.annotate.contours import check_contour_mode
  from pa_jax.annotate.nuclei import Nucleus

  outputs.check_on_error(on_error)
  formats, slide_formats = _split_formats(formats)
  region = slide_io.parse_region(region) if isinstance(region, str) else region
  forced = bool(stream or slide_formats or level or region is not None)
  if stream is False and forced:
    raise InputError("stream", "`level`, `region` and the ome-tiff / ome-zarr formats are "
                     "whole-slide options; they need streaming")
  try:
    check_contour_mode(contours)
  except ValueError as e:
    raise InputError("contours", str(e)) from None
  if method not in ("model", "classical"):
    raise InputError("method", f"unknown method {method!r} (model, classical)")
  if method == "classical" and model:
    raise InputError("model", "only applies to the model method")
  if mask_overlap is not None and not 0.0 < mask_overlap <= 1.0:
    raise InputError("mask_overlap", f"{mask_overlap} is not in (0, 1] (the fraction of a "
                     "detection's mask under higher-scoring ones at which it is dropped; "
                     "1 = off)")
  # Checked (and the default model found) before anything is read or computed.
  zoo_file = choose.model_path(workdir, model, best) if method == "model" else None
  records = readers.open_dataset(input_path, split=split, group=group)
  inputs = _input_folders(input_path, records) + ([workdir] if workdir else []) + (
      [zoo_file] if zoo_file else [])
  # A run's folder is read by name (config.json, checkpoints/), never listed, so the
  # predictions may live inside it (runs/x/predictions), not be it or hold it.
  nest_ok = [workdir] if workdir else []
  # Refused outputs are refused before a model is loaded or anything is computed.
  outputs.check_output(output, inputs, overwrite=overwrite, nest_ok=nest_ok)

  if method == "classical":
    from pa_jax.infer import classical

    if diameter:
      raise InputError("diameter", "only applies to a model (the classical method has no "
                       "training size)")
    if mask_overlap is not None:
      raise InputError("mask_overlap", "only applies to a model (the classical method draws "
                       "no overlapping detections)")
    if attention:
      raise InputError("attention", "attention maps need a partial-annotation model "
                       "(`workdir`), not the classical method")
    try:
      params = classical.parse_params(classical_params or "")
    except ValueError as e:
      raise InputError("classical_params", str(e)) from None
    segment = lambda image: (classical.segment_classical(image, **params), {})  # noqa: E731
    tiles_for = lambda sl: (_classical_tiles(params), layout)  # noqa: E731
    scale_of = lambda: dict(NO_SCALE)  # noqa: E731
    run_doc = {"method": "classical", "model": None, "source": "classical",
               "training_diameter_px": None, "diameter_mode": None, "diameter_px": None,
               "mask_overlap": None}
    report_meta = None
    layout = dict(tile_size=CLASSICAL_TILE, overlap=CLASSICAL_OVERLAP, batch_size=1,
                  dilate=False)
    source = "classical"
    side_files = {"classical_params.json": {"method": "otsu+distance-watershed",
                                            **classical.DEFAULT_PARAMS, **params}}
  else:
    if classical_params:
      raise InputError("classical_params", "only applies to the classical method")
    from pa_jax.infer import slide_zoom
    from pa_jax.infer.predictor import predictor_for

    cfg, net, variables, source, label = choose.open_trained(workdir, model, best)
    predictor = predictor_for(cfg, net, variables)
    if diameter:
      if diameter <= 0:
        raise InputError("diameter", f"{diameter} is not a positive size in pixels")
      predictor.diameter = float(diameter)
    if mask_overlap is not None:  # as `Predictor`: 1.0 is the plain overwrite program
      predictor.mask_overlap = None if mask_overlap >= 1.0 else float(mask_overlap)
    segment = predictor.predict_scored
    scale_of = lambda: _scale(predictor)  # noqa: E731
    run_doc, report_meta = _model_doc(predictor, label, source)
    def tiles_for(sl):  # zoomed to the model's nucleus size (pa_jax/infer/slide_zoom.py)
      rng = slide_intensity(sl, predictor.normalize)
      zoom = slide_zoom.slide_zoom(predictor, sl, rng)
      return slide_zoom.model_tiles(predictor, rng, zoom), slide_zoom.zoomed_layout(layout, zoom)

    layout = dict(tile_size=predictor.tile_size, overlap=predictor.overlap,
                  batch_size=predictor.batch_size, dilate=predictor.dilate)
    side_files = {}
    if attention and not net.spec.partial:
      raise InputError("attention", f"{label} was trained without the partial-annotation "
                       "module (model.partial.enabled=False): it has no attention")

  done, skipped, streamed, scales = 0, [], set(), []
  with outputs.staged_output(output, inputs, overwrite=overwrite, nest_ok=nest_ok) as out:
    for name, doc in side_files.items():
      fileio.write_json(out / name, doc)
    coco = fmt.CocoCollector(out / "annotations.json") if "coco" in formats else None
    report = PredictReport()  # report.html, from the arrays in hand (no second read)
    for rec in tqdm(records, desc="predict", unit="image", disable=not progress):
      try:
        sl = open_streamed(rec.image_path, stream, forced, level, region, channel, plane)
      except InputError as e:
        if on_error == "stop":
          raise
        skipped.append((str(rec.image_path), e.problem))
        continue
      if sl is not None:
        check_streamable(formats, attention)
        with sl:
          segment_tiles, tiled = tiles_for(sl)  # a model's: its zoom is fixed here
          predict_slide(out, rec.id, sl, segment_tiles, tiled, formats, slide_formats,
                         source, contours, progress, scale=scale_of())
        streamed.add(rec.image_path)
        scales.append({"id": rec.id, **scale_of(), "streamed": True})
        done += 1
        continue
      try:
        image = readers.read_image(rec.image_path, channel=channel, plane=plane)
      except InputError as e:
        if on_error == "stop":
          raise  # the staged folder is dropped: nothing is written for the folder
        skipped.append((str(rec.image_path), e.problem))
        continue
      labels, scores = segment(image)
      scales.append({"id": rec.id, **scale_of(), "streamed": False})
      nuclei = {k: Nucleus(k, state="proposed", score=scores.get(k), source=source)
                for k in map(int, np.unique(labels)) if k}
      fmt.export_all(out, rec.id, labels, nuclei, formats, contours, coco=coco,
                     file_name=rec.image_path.name, image=image)
      report.add_labels(rec.id, labels, nuclei, image,
                        scale=scales[-1] if method == "model" else None)
      if attention:
        from pa_jax.infer.attention import attention_map, write_attention_png

        selected = labels > 0
        att = attention_map(net, variables, image, selected, cfg.data.normalize)
        write_attention_png(out / f"{rec.id}_attention.png", image, att, labels,
                            title="merged attention of the predicted nuclei (P2)")
      done += 1
    if coco is not None:
      coco.write()
    # Streamed slides have their own {id}_report.html; report.html holds the other images.
    report.write(out, skipped, meta=report_meta)
    fileio.write_json(out / "predict.json", {**run_doc, "images": scales})
    csv_path = outputs.write_skipped(out, skipped)
  final = Path(output)
  return {"images": done, "skipped": skipped, "output": str(final),
          "skipped_csv": None if csv_path is None else str(final / csv_path.name)}


def _scale(predictor) -> dict:
  """predict.json's per-image fields: the nucleus size the predictor's latest image or
  slide was segmented at (`Predictor.last_*`)."""
  return {"diameter_px": predictor.last_diameter,
          "diameter_source": predictor.last_diameter_source, "zoom": predictor.last_zoom}


def _model_doc(predictor, label: str, source: str) -> tuple[dict, dict]:
  """(predict.json's run fields, report.html's header table) of a model's run."""
  target, given = predictor.target_diameter, predictor.diameter
  mode = None if not target else "given" if given else "estimated"
  doc = {"method": "model", "model": label, "source": source,
         "training_diameter_px": target or None, "diameter_mode": mode,
         "diameter_px": given if mode == "given" else None,
         "mask_overlap": 1.0 if predictor.mask_overlap is None else predictor.mask_overlap}
  size = ("not used (the model was trained at native scale)" if mode is None else
          f"given: {given:g} px" if mode == "given" else "estimated per image")
  if mode:
    size += f" (the model's training size: {target:g} px)"
  return doc, {"model": label, "nuclei source": source, "nucleus diameter": size}


# ----------------------------------------------------------------------------- slides


def _split_formats(formats: str | Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
  """(formats of pa_jax/annotate/formats.py, STREAM_FORMATS asked for)."""
  from pa_jax.annotate import formats as fmt

  items = [f.strip() for f in (formats.split(",") if isinstance(formats, str) else formats)]
  slide = tuple(f for f in STREAM_FORMATS if f in items)
  rest = [f for f in items if f not in STREAM_FORMATS]
  return (fmt.parse_formats(rest) if rest or not slide else ()), slide


def _classical_tiles(params: dict) -> Callable:
  from pa_jax.infer import classical

  return lambda tiles: [classical.segment_classical(t, **params) for t in tiles]
