"""Targets (full-size config not yet run: no GPU so far) DH25crop-pa (Table 1: mAP 0.393, AJI 0.504): the partial-annotation model on the DH25crop view.

Launch (full size, GPU/TPU):
  python run.py train --config configs/dh25crop_pa.py --workdir runs/dh25crop_pa \
      --config.model.pretrained=resnext101_64x4d.pth  # torchvision weights you provide
CPU-sized variant (2-core laptop, same method, smaller net and canvas):
  python run.py train --config configs/dh25crop_pa.py:cpu --workdir runs/dh25crop_pa_cpu
Evaluate:
  python run.py evaluate --workdir runs/dh25crop_pa
"""

from configs import base


def get_config(arg: str | None = None):
  c = base.get_config()
  base.dh360(c, "crop", 0.25)
  c.data.view = "crop"
  c.data.view_fraction = 0.25
  c.model.partial.enabled = True
  return base.variant(c, arg, "dh25crop_pa")
