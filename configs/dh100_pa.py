"""Targets (full-size config not yet run: no GPU so far) DH100-pa (Table 1: mAP 0.461, AJI 0.522): the partial-annotation model trained on full annotations — it must not be worse than the baseline.

Launch (full size, GPU/TPU):
  python run.py train --config configs/dh100_pa.py --workdir runs/dh100_pa \
      --config.model.pretrained=resnext101_64x4d.pth  # torchvision weights you provide
CPU-sized variant (2-core laptop, same method, smaller net and canvas):
  python run.py train --config configs/dh100_pa.py:cpu --workdir runs/dh100_pa_cpu
Evaluate:
  python run.py evaluate --workdir runs/dh100_pa
"""

from configs import base


def get_config(arg: str | None = None):
  c = base.get_config()
  base.dh360(c, "full", 1.0)
  c.data.view = "full"
  c.data.view_fraction = 1.0
  c.model.partial.enabled = True
  return base.variant(c, arg, "dh100_pa")
