"""Whole-slide benchmark: peak memory, time per megapixel and nuclei per second of
`run.py predict` on a side x side RGB tiled pyramidal OME-TIFF built from dsb2018 histology.

    python bench/slide_bench.py --dataset ../shared/datasets/dsb2018 --side 16384 \
        --methods classical,model [--workdir RUN] [--output bench/results/slide_bench.json]

The slide is a mosaic of 256 x 256 crops of the dataset's histology images (index.csv,
modality 'histology'), written tile by tile (never whole) at 0.5 µm/px with 2x pyramid
levels down to <= 1024 px. Each method runs `run.py predict --stream` in its own process
under `/usr/bin/time -v` (peak RSS = "Maximum resident set size"), writing the OME-TIFF
label image, GeoJSON and CSV. `--method model` uses `--workdir`, or trains the smallest
model (configs/base.py toy_sized, 2 steps, an untrained net: it measures throughput and
memory, not quality). Results: JSON with the command, date, machine load and figures.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CELL = 256  # mosaic cell side (dsb2018 histology images are 256 x 320 or larger)
TILE = 512  # TIFF tile side
RSS_LIMIT_GIB = 2.0


def histology_cells(dataset: Path) -> list[np.ndarray]:
  """uint8 [CELL, CELL, 3] crops of every histology image of the dataset."""
  from pa_jax.data import images as image_io

  cells = []
  with open(dataset / "index.csv") as f:
    for row in csv.DictReader(f):
      if row["modality"] != "histology":
        continue
      path = next((dataset / "images").glob(row["id"] + ".*"))
      im = image_io.read_image(path)
      im = np.stack([im] * 3, -1) if im.ndim == 2 else im
      if im.shape[0] >= CELL and im.shape[1] >= CELL:
        cells.append(np.ascontiguousarray(im[:CELL, :CELL]))
  if not cells:
    raise SystemExit(f"{dataset}: no histology image of at least {CELL} px")
  return cells


def slide_tiles(cells: list[np.ndarray], side: int, step: int):
  """Tiles (TILE x TILE, raster order) of the mosaic subsampled by `step`."""
  n, cs = len(cells), CELL // step
  small = [c[::step, ::step] for c in cells]
  h = side // step
  for ty in range(0, h, TILE):
    for tx in range(0, h, TILE):
      tile = np.zeros((TILE, TILE, 3), np.uint8)
      for cy in range(ty // cs, min(h, ty + TILE) // cs + 1):
        for cx in range(tx // cs, min(h, tx + TILE) // cs + 1):
          if cy * cs >= h or cx * cs >= h:
            continue
          c = small[(cy * 7919 + cx * 104729) % n]  # fixed, well-mixed cell choice
          y0, x0 = cy * cs - ty, cx * cs - tx
          ys, xs = slice(max(y0, 0), min(y0 + cs, TILE)), slice(max(x0, 0), min(x0 + cs, TILE))
          tile[ys, xs] = c[ys.start - y0:ys.stop - y0, xs.start - x0:xs.stop - x0]
      yield tile[:min(TILE, h - ty), :min(TILE, h - tx)]


def build_slide(dataset: Path, side: int, path: Path) -> None:
  import tifffile

  cells = histology_cells(dataset)
  levels = 1
  while side // 2 ** levels >= 1024:
    levels += 1
  kw = dict(tile=(TILE, TILE), compression="zlib", photometric="rgb", dtype=np.uint8)
  with tifffile.TiffWriter(path, bigtiff=True, ome=True) as tw:
    tw.write(slide_tiles(cells, side, 1), shape=(side, side, 3), subifds=levels - 1,
             metadata={"axes": "YXS", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5}, **kw)
    for k in range(1, levels):
      s = side // 2 ** k
      tw.write(slide_tiles(cells, side, 2 ** k), shape=(s, s, 3), subfiletype=1, **kw)


def train_toy(workdir: Path) -> None:
  from configs import base, demo
  from pa_jax import experiment

  cfg = base.toy_sized(demo.get_config())
  cfg.predict.score_threshold = 0.0  # an untrained net: draw what it finds
  experiment.train(cfg, str(workdir))


def timed(cmd: list[str]) -> dict:
  """Runs cmd under /usr/bin/time -v: {rss_gib, wall_s, returncode}."""
  proc = subprocess.run(["/usr/bin/time", "-v"] + cmd, capture_output=True, text=True,
                        cwd=ROOT)
  err = proc.stderr
  if proc.returncode:
    raise SystemExit(f"{' '.join(cmd)} failed:\n{err[-3000:]}")
  rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", err).group(1))
  wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", err).group(1)
  secs = sum(float(p) * 60 ** i for i, p in enumerate(reversed(wall.split(":"))))
  return {"rss_gib": rss_kb / 2 ** 20, "wall_s": secs}


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--dataset", required=True, type=Path)
  ap.add_argument("--side", type=int, default=16384)
  ap.add_argument("--methods", default="classical,model")
  ap.add_argument("--workdir", type=Path, default=None, help="trained run for --method model")
  ap.add_argument("--scratch", type=Path, default=None, help="folder for the slide and outputs")
  ap.add_argument("--output", type=Path, default=None)
  args = ap.parse_args()
  scratch = args.scratch or Path(tempfile.mkdtemp(prefix="slide_bench_"))
  scratch.mkdir(parents=True, exist_ok=True)
  slide = scratch / f"mosaic_{args.side}.ome.tif"
  if not slide.exists():
    build_slide(args.dataset, args.side, slide)
  load = os.getloadavg()
  results = {"command": " ".join([sys.executable, *sys.argv]),
             "date": datetime.datetime.now().isoformat(timespec="seconds"),
             "cpus": os.cpu_count(), "load_average_1_5_15": list(load),
             "slide": {"side": args.side, "megapixels": args.side ** 2 / 1e6,
                       "bytes": slide.stat().st_size}, "methods": {}}
  for method in args.methods.split(","):
    out = scratch / f"out_{method}"
    cmd = [sys.executable, "run.py", "predict", "--input", str(slide), "--output", str(out),
           "--format", "ome-tiff,geojson,csv", "--stream", "--overwrite"]
    if method == "classical":
      cmd += ["--method", "classical"]
    else:
      workdir = args.workdir
      if workdir is None:
        workdir = scratch / "toy_run"
        if not (workdir / "config.json").exists():
          train_toy(workdir)
      cmd += ["--workdir", str(workdir)]
    r = timed(cmd)
    info = json.loads((out / f"{slide.name.split('.')[0]}.ome.slide.json").read_text())
    mp = args.side ** 2 / 1e6
    r.update(nuclei=info["nuclei"], stream_seconds=info["seconds"],
             seconds_per_megapixel=r["wall_s"] / mp,
             nuclei_per_second=info["nuclei"] / r["wall_s"],
             under_rss_limit=r["rss_gib"] < RSS_LIMIT_GIB, tiling=info["tiling"],
             command=" ".join(cmd), load_after=list(os.getloadavg()))
    results["methods"][method] = r
    print(method, json.dumps({k: r[k] for k in ("rss_gib", "wall_s", "nuclei",
                                                "seconds_per_megapixel",
                                                "nuclei_per_second")}))
  dest = args.output or ROOT / "bench" / "results" / f"slide_bench_{args.side}.json"
  dest.write_text(json.dumps(results, indent=2) + "\n")
  print(f"wrote {dest}")


if __name__ == "__main__":
  main()
