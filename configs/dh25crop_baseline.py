"""Targets (full-size config not yet run: no GPU so far) DH25crop-baseline (Table 1: mAP 0.384, AJI 0.499): each dh360 training image cropped to one random quarter (half width x half height, seed 0), fully annotated inside.

Launch (full size, GPU/TPU):
  python run.py train --config configs/dh25crop_baseline.py --workdir runs/dh25crop_baseline \
      --config.model.pretrained=resnext101_64x4d.pth  # torchvision weights you provide
CPU-sized variant (2-core laptop, same method, smaller net and canvas):
  python run.py train --config configs/dh25crop_baseline.py:cpu --workdir runs/dh25crop_baseline_cpu
Evaluate:
  python run.py evaluate --workdir runs/dh25crop_baseline
"""

from configs import base


def get_config(arg: str | None = None):
  c = base.get_config()
  base.dh360(c, "crop", 0.25)
  c.data.view = "crop"
  c.data.view_fraction = 0.25
  c.model.partial.enabled = False
  return base.variant(c, arg, "dh25crop_baseline")
