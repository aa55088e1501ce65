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

The output folder follows pa_jax.outputs: never the input or inside it, a non-empty folder
only with `overwrite` (then replaced as a whole), and written into a temporary folder that
becomes the output only when every image is done. `on_error` ('stop' | 'skip') says what a
bad image does: end the command with nothing written, or be listed in `skipped.csv`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from pa_jax import fileio
from pa_jax.data import readers
from pa_jax.errors import InputError


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
                   workdir: str | None = None, formats: Sequence[str] = ("label",),
                   contours: str = "polygon", attention: bool = False,
                   split: str | None = None, group: str | None = None,
                   best: bool = False, progress: bool = True,
                   classical_params: str | None = None, overwrite: bool = False,
                   on_error: str = "stop", channel: int | None = None,
                   plane: int | None = None) -> dict:
  """Segments every image of `input_path` into the folder `output`.

  `classical_params` ('key=value,...', `classical.parse_params`) overrides the classical
  floor's defaults; the parameters used are written to `output/classical_params.json`.

  The output follows pa_jax.outputs: never an input (or inside one), a non-empty folder
  only with `overwrite` (replaced as a whole), written into a temporary folder that
  appears as `output` only when the command succeeds. `on_error`: 'stop' (a bad image
  ends the command and nothing is written) or 'skip' (the other images are segmented and
  `skipped.csv` lists file, reason). `channel` / `plane`: the channel or the z / t plane
  of multi-channel images and stacks (`pa_jax.data.images.read_image`), which are refused
  without them.

  Returns {"images": segmented, "skipped": [(file, reason)], "skipped_csv": path | None,
  "output": str}.
  """
  from tqdm import tqdm

  from pa_jax import outputs
  from pa_jax.annotate import formats as fmt
  from pa_jax.annotate.contours import check_contour_mode
  from pa_jax.annotate.nuclei import Nucleus

  outputs.check_on_error(on_error)
  formats = fmt.parse_formats(formats)
  try:
    check_contour_mode(contours)
  except ValueError as e:
    raise InputError("contours", str(e)) from None
  if method not in ("model", "classical"):
    raise InputError("method", f"unknown method {method!r} (model, classical)")
  records = readers.open_dataset(input_path, split=split, group=group)
  inputs = _input_folders(input_path, records) + ([workdir] if workdir else [])
  # A run's folder is read by name (config.json, checkpoints/), never listed, so the
  # predictions may live inside it (runs/x/predictions), not be it or hold it.
  nest_ok = [workdir] if workdir else []
  # Refused outputs are refused before a model is loaded or anything is computed.
  outputs.check_output(output, inputs, overwrite=overwrite, nest_ok=nest_ok)

  if method == "classical":
    from pa_jax.infer import classical

    if attention:
      raise InputError("attention", "attention maps need a partial-annotation model "
                       "(`workdir`), not the classical method")
    try:
      params = classical.parse_params(classical_params or "")
    except ValueError as e:
      raise InputError("classical_params", str(e)) from None
    segment = lambda image: (classical.segment_classical(image, **params), {})  # noqa: E731
    source = "classical"
    side_files = {"classical_params.json": {"method": "otsu+distance-watershed",
                                            **classical.DEFAULT_PARAMS, **params}}
  else:
    if classical_params:
      raise InputError("classical_params", "only applies to the classical method")
    if workdir is None:
      raise InputError("workdir", "a trained run is needed for the model method")
    from pa_jax import experiment
    from pa_jax.infer.predictor import predictor_for

    cfg, model, variables, step = experiment.load_run(workdir, best=best)
    predictor = predictor_for(cfg, model, variables)
    segment = predictor.predict_scored
    source = f"pa_jax {Path(workdir).name} step {step}"
    side_files = {}
    if attention and not model.spec.partial:
      raise InputError("attention", f"{workdir} was trained without the partial-annotation "
                       "module (model.partial.enabled=False): it has no attention")

  done, skipped = 0, []
  with outputs.staged_output(output, inputs, overwrite=overwrite, nest_ok=nest_ok) as out:
    for name, doc in side_files.items():
      fileio.write_json(out / name, doc)
    coco = fmt.CocoCollector(out / "annotations.json") if "coco" in formats else None
    for rec in tqdm(records, desc="predict", unit="image", disable=not progress):
      try:
        image = readers.read_image(rec.image_path, channel=channel, plane=plane)
      except InputError as e:
        if on_error == "stop":
          raise  # the staged folder is dropped: nothing is written for the folder
        skipped.append((str(rec.image_path), e.problem))
        continue
      labels, scores = segment(image)
      nuclei = {k: Nucleus(k, state="proposed", score=scores.get(k), source=source)
                for k in map(int, np.unique(labels)) if k}
      fmt.export_all(out, rec.id, labels, nuclei, formats, contours, coco=coco,
                     file_name=rec.image_path.name)
      if attention:
        from pa_jax.infer.attention import attention_map, write_attention_png

        selected = labels > 0
        att = attention_map(model, variables, image, selected, cfg.data.normalize)
        write_attention_png(out / f"{rec.id}_attention.png", image, att, labels,
                            title="merged attention of the predicted nuclei (P2)")
      done += 1
    if coco is not None:
      coco.write()
    csv_path = outputs.write_skipped(out, skipped)
  final = Path(output)
  return {"images": done, "skipped": skipped, "output": str(final),
          "skipped_csv": None if csv_path is None else str(final / csv_path.name)}
