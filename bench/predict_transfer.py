"""Prediction with integer images on the device against the float path, side by side.

Issue 12 item 4: the predictor sends an 8/16-bit image as its own pixels with its
intensity range, and the stretch to [0, 1] runs in the compiled program
(`data.intensity.device_image`, `ops.intensity.scale_intensities`). Before, the host sent
the normalised float32 image. The float path is still what a float image takes, and with
`data.normalize='percentile'` (the configs' default; 'dtype' would divide a float copy
by 255) a float32 copy of a uint8 image normalises to exactly the numbers the old path
sent, so `predictor(image.astype(float32))` IS the previous behaviour, on the same model
in the same process.

Per image, both paths, alternating which goes first: the bytes of the image's pixels as
prepared for the device (before any zoom and canvas padding), the host's preparation (`device_image` vs `normalize_image`), one `device_put` of
those pixels, and the whole `predictor.predict_scored`; then the agreement of the two label
maps (F1 at IoU 0.5 of one against the other, the fraction of equal pixels and of pixels
both call nucleus or both background) and each path's mAP against the ground truth.

    python bench/predict_transfer.py [--model nuclei_cpu_v2 | --workdir RUN] [--split test]
        [--max-images 24] [--out bench/results/predict_transfer_nuclei_cpu_v2.json]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench_config import write_result  # noqa: E402
from zoo_eval import add_model_arguments, open_model  # noqa: E402

from pa_jax import experiment  # noqa: E402
from pa_jax.data import intensity, readers  # noqa: E402
from pa_jax.evaluation.metrics import image_metrics  # noqa: E402
from pa_jax.infer.predictor import predictor_for  # noqa: E402


def _timed(fn, *args):
  t = time.perf_counter()
  out = fn(*args)
  return out, time.perf_counter() - t


def one_path(predictor, image: np.ndarray) -> dict:
  """The figures of one path for one image (the path is image's dtype's)."""
  import jax

  (pixels, _), prep = _timed(intensity.device_image, image, predictor.normalize)
  _, put = _timed(lambda x: jax.device_put(x).block_until_ready(), pixels)
  (labels, _), total = _timed(predictor.predict_scored, image)
  return {"dtype": str(pixels.dtype), "bytes": int(pixels.nbytes), "prep_s": prep,
          "device_put_s": put, "predict_s": total, "zoom": predictor.last_zoom,
          "labels": labels}


def compare(predictor, records) -> list[dict]:
  rows = []
  for k, rec in enumerate(records):
    ex = readers.load_example(rec)
    paths = {"integer": ex.image, "float": ex.image.astype(np.float32)}
    order = ("integer", "float") if k % 2 == 0 else ("float", "integer")
    got = {name: one_path(predictor, paths[name]) for name in order}
    a, b = got["integer"].pop("labels"), got["float"].pop("labels")
    agree = image_metrics(b, a)  # the float path's map as the reference
    row = {"id": rec.id, "shape": list(ex.image.shape),
           **{name: got[name] for name in ("integer", "float")},
           "agreement_f1": agree["f1"], "equal_pixels": float(np.mean(a == b)),
           "equal_foreground": float(np.mean((a > 0) == (b > 0))),
           "map_integer": image_metrics(ex.labels, a)["map"],
           "map_float": image_metrics(ex.labels, b)["map"]}
    rows.append(row)
    print(f"{rec.id[:20]} {row['shape']}: {got['integer']['bytes']} vs {got['float']['bytes']} B,"
          f" predict {got['integer']['predict_s']:.2f} / {got['float']['predict_s']:.2f} s, "
          f"zoom {got['integer']['zoom']:.2f} / {got['float']['zoom']:.2f}, F1 {agree['f1']:.3f},"
          f" equal px {row['equal_pixels']:.4f}, fg {row['equal_foreground']:.4f}", flush=True)
  return rows


def summary(rows: list[dict]) -> dict:
  med = lambda path, key: float(np.median([r[path][key] for r in rows]))  # noqa: E731
  out = {"images": len(rows), "dtypes": sorted({r["integer"]["dtype"] for r in rows})}
  for path in ("integer", "float"):
    out[path] = {k: med(path, k) for k in ("bytes", "prep_s", "device_put_s", "predict_s")}
  # Medians: the first image of each canvas (and pixel dtype) pays its compiles.
  out["bytes_ratio"] = out["float"]["bytes"] / out["integer"]["bytes"]
  out["agreement_f1_mean"] = float(np.mean([r["agreement_f1"] for r in rows]))
  out["agreement_f1_min"] = float(np.min([r["agreement_f1"] for r in rows]))
  out["equal_pixels_mean"] = float(np.mean([r["equal_pixels"] for r in rows]))
  out["equal_foreground_mean"] = float(np.mean([r["equal_foreground"] for r in rows]))
  native = [r for r in rows if r["integer"]["zoom"] == r["float"]["zoom"] == 1.0]
  out["native_images"] = len(native)
  out["equal_pixels_native_mean"] = (float(np.mean([r["equal_pixels"] for r in native]))
                                     if native else None)
  out["same_zoom"] = sum(r["integer"]["zoom"] == r["float"]["zoom"] for r in rows)
  out["map_integer"] = float(np.mean([r["map_integer"] for r in rows]))
  out["map_float"] = float(np.mean([r["map_float"] for r in rows]))
  return out


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  add_model_arguments(ap)
  ap.add_argument("--split", default="test")
  ap.add_argument("--max-images", type=int, default=24)
  ap.add_argument("--out", default="")
  args = ap.parse_args(argv)
  cfg, model, variables, label = open_model(args)
  predictor = predictor_for(cfg, model, variables)
  if predictor.normalize != "percentile":
    sys.exit(f"predict_transfer: data.normalize={predictor.normalize!r}: the float copy is "
             "the old path only with 'percentile'")
  records = experiment.source_records(cfg, args.split)
  # Every k-th record: all of the split's modalities, not the first one's images only.
  step = max(1, len(records) // args.max_images) if args.max_images else 1
  records = records[::step][:args.max_images or None]
  rows = compare(predictor, records)
  result = {"model": label, "split": args.split, "summary": summary(rows), "rows": rows}
  print(result["summary"])
  out = args.out or f"bench/results/predict_transfer_{label.split()[0]}.json"
  write_result(out, result)


if __name__ == "__main__":
  main()
