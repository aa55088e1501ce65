"""How well do spline control points reproduce real nuclei? (dsb2018, group dh360)

For every nucleus of the first N images of the group, fits the closed cubic spline
(`pa_jax.annotate.contours.fit_spline_contour`, default settings: 4..32 anchors, target
IoU 0.95), rasterises it (`spline_polygon` + `polygon_to_mask`, the exporters' and
importers' path) and scores it against the original mask (holes and stray pieces count
as errors). Prints the mean / worst / percentiles of the IoU and the number of control
points, and the same for the exact polygon outline (`mask_contour`) for reference.

    python bench/bench_contours.py [--dataset ../shared/datasets/dsb2018] [--group dh360]
                                   [--images 20]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pa_jax.annotate import contours as C  # noqa: E402
from pa_jax.data.readers import read_dataset_folder, read_label_map  # noqa: E402


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--dataset", default=os.path.join(os.path.dirname(__file__), "..", "..",
                                                    "shared", "datasets", "dsb2018"))
  ap.add_argument("--group", default="dh360")
  ap.add_argument("--images", type=int, default=20)
  ap.add_argument("--target-iou", type=float, default=0.95)
  ap.add_argument("--max-points", type=int, default=32)
  args = ap.parse_args()

  records = read_dataset_folder(args.dataset, group=args.group)[:args.images]
  ious, poly_ious, npts, areas = [], [], [], []
  t0 = time.perf_counter()
  for rec in records:
    labels = read_label_map(rec.label_path)
    cps = C.label_map_contours(labels, "spline", target_iou=args.target_iou,
                               max_points=args.max_points)
    outlines = C.label_map_contours(labels, "polygon")
    for k, cp in cps.items():
      m = labels == k
      for pts, out in ((C.spline_polygon(cp), ious), (outlines[k], poly_ious)):
        r = C.polygon_to_mask(pts, *m.shape)
        out.append(np.count_nonzero(r & m) / np.count_nonzero(r | m))
      npts.append(len(cp))
      areas.append(int(m.sum()))
  dt = time.perf_counter() - t0
  ious, poly_ious, npts = np.array(ious), np.array(poly_ious), np.array(npts)
  print(f"{len(records)} images ({args.group}), {len(ious)} nuclei, "
        f"fit+scoring {dt:.1f} s ({1e3 * dt / max(len(ious), 1):.1f} ms/nucleus)")
  print(f"spline IoU: mean {ious.mean():.4f}  worst {ious.min():.4f}  "
        f"p1 {np.percentile(ious, 1):.4f}  median {np.median(ious):.4f}  "
        f"< 0.9: {int((ious < 0.9).sum())}")
  print(f"control points: median {np.median(npts):g}  mean {npts.mean():.1f}  "
        f"min {npts.min()}  max {npts.max()}  at max_points: "
        f"{int((npts >= args.max_points).sum())}")
  worst = int(np.argmin(ious))
  print(f"worst nucleus: {areas[worst]} px, {npts[worst]} points")
  print(f"exact polygon outline IoU: mean {poly_ious.mean():.4f}  worst {poly_ious.min():.4f}")


if __name__ == "__main__":
  main()
