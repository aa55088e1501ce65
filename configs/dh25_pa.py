"""Targets (full-size config not yet run: no GPU so far) DH25-pa (Table 1: mAP 0.435, AJI 0.512): the partial-annotation model on 25 % of the nuclei of each dh360 training image (seed 0) — the paper's central claim.

Launch (full size, GPU/TPU):
  python run.py train --config configs/dh25_pa.py --workdir runs/dh25_pa \
      --config.model.pretrained=resnext101_64x4d.pth  # torchvision weights you provide
CPU-sized variant (2-core laptop, same method, smaller net and canvas):
  python run.py train --config configs/dh25_pa.py:cpu --workdir runs/dh25_pa_cpu
The CPU recipe of docs/results.md's headline table (dh100 / dh25 baseline / dh25 + PA):
  python run.py train --config configs/dh25_pa.py:cpu --workdir runs/roi256_mask32/dh25_pa_cpu \
      --config.model.roi.mask_dim=32 --config.train.steps=3000 --config.train.eval_every=500
Evaluate:
  python run.py evaluate --workdir runs/dh25_pa
"""

from configs import base


def get_config(arg: str | None = None):
  c = base.get_config()
  base.dh360(c, "keep", 0.25)
  c.data.view = "keep"
  c.data.view_fraction = 0.25
  c.model.partial.enabled = True
  return base.variant(c, arg, "dh25_pa")
