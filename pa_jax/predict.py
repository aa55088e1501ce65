"""`run.py predict`: segment a file or folder with a trained run or the classical floor,
and write the nuclei in any subset of the interchange formats.

Images of any size: a trained model tiles images larger than `predict.tile_size` with
overlap and stitches the nuclei (pa_jax/infer/tiling.py), so memory follows the tile, not
the slide. Formats (`--format label,coco,geojson,roi,csv`) and contours
(`--contours polygon|spline`) are those of pa_jax/annotate/formats.py; every nucleus is
exported with its detection score and its provenance (`pa_jax <run> step <k>` or
`classical`) in the review state `proposed`: it is a machine's output, which a person may
confirm or delete in QuPath/Fiji and feed to `run.py annotate`. `--attention` (partial-annotation model) also writes the merged attention of
the predicted nuclei (the paper's Fig. 1) as `{id}_attention.png`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from pa_jax import fileio
from pa_jax.data import readers
from pa_jax.errors import InputError


def predict_command(input_path: str, output: str, *, method: str = "model",
                    workdir: str | None = None, formats: Sequence[str] = ("label",),
                    contours: str = "polygon", attention: bool = False,
                    split: str | None = None, group: str | None = None,
                    best: bool = False, progress: bool = True,
                    classical_params: str | None = None) -> int:
  """Segments every image of `input_path` into `output`; returns the number of images.

  `classical_params` ('key=value,...', `classical.parse_params`) overrides the classical
  floor's defaults; the parameters used are written to `output/classical_params.json`.
  """
  from tqdm import tqdm

  from pa_jax.annotate import formats as fmt
  from pa_jax.annotate.contours import check_contour_mode
  from pa_jax.annotate.nuclei import Nucleus

  formats = fmt.parse_formats(formats)
  try:
    check_contour_mode(contours)
  except ValueError as e:
    raise InputError("--contours", str(e)) from None
  records = readers.open_dataset(input_path, split=split, group=group)
  out = Path(output)
  coco = fmt.CocoCollector(out / "annotations.json") if "coco" in formats else None

  if method == "classical":
    from pa_jax.infer import classical

    if attention:
      raise InputError("--attention", "attention maps need a partial-annotation model "
                       "(--workdir), not --method classical")
    try:
      params = classical.parse_params(classical_params or "")
    except ValueError as e:
      raise InputError("--classical_params", str(e)) from None
    segment = lambda image: (classical.segment_classical(image, **params), {})  # noqa: E731
    source = "classical"
    out.mkdir(parents=True, exist_ok=True)
    fileio.write_json(out / "classical_params.json",
                      {"method": "otsu+distance-watershed", **classical.DEFAULT_PARAMS, **params})
  else:
    if classical_params:
      raise InputError("--classical_params", "only applies to --method classical")
    from pa_jax import experiment
    from pa_jax.infer.predictor import predictor_for

    cfg, model, variables, step = experiment.load_run(workdir, best=best)
    predictor = predictor_for(cfg, model, variables)
    segment = predictor.predict_scored
    source = f"pa_jax {Path(workdir).name} step {step}"
    if attention and not model.spec.partial:
      raise InputError("--attention", f"{workdir} was trained without the partial-annotation "
                       "module (model.partial.enabled=False): it has no attention")

  for rec in tqdm(records, desc="predict", unit="image", disable=not progress):
    image = readers.read_image(rec.image_path)
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
  if coco is not None:
    coco.write()
  return len(records)
