"""Targets (full-size config not yet run: no GPU so far) the paper's DH100-baseline (Table 1: mAP 0.464, AJI 0.520): Mask R-CNN on all annotations of the 60 dh360 training images of dsb2018, evaluated on the 22 dh360 test images.

Launch (full size, GPU/TPU):
  python run.py train --config configs/dh100_baseline.py --workdir runs/dh100_baseline \
      --config.model.pretrained=resnext101_64x4d.pth  # torchvision weights you provide
CPU-sized variant (2-core laptop, same method, smaller net and canvas):
  python run.py train --config configs/dh100_baseline.py:cpu --workdir runs/dh100_baseline_cpu
The CPU recipe of docs/results.md's headline table (dh100 / dh25 baseline / dh25 + PA):
  python run.py train --config configs/dh100_baseline.py:cpu --workdir runs/roi256_mask32/dh100_baseline_cpu \
      --config.model.roi.mask_dim=32 --config.train.steps=3000 --config.train.eval_every=500
Evaluate:
  python run.py evaluate --workdir runs/dh100_baseline
"""

from configs import base


def get_config(arg: str | None = None):
  c = base.get_config()
  base.dh360(c, "full", 1.0)
  c.data.view = "full"
  c.data.view_fraction = 1.0
  c.model.partial.enabled = False
  return base.variant(c, arg, "dh100_baseline")
