"""Targets (full-size config not yet run: no GPU so far) DH25 with the baseline Mask R-CNN (the paper's Fig. 4: recall collapses): 25 % of the nuclei of each dh360 training image kept (seed 0), the rest unannotated.

Launch (full size, GPU/TPU):
  python run.py train --config configs/dh25_baseline.py --workdir runs/dh25_baseline \
      --config.model.pretrained=resnext101_64x4d.pth  # torchvision weights you provide
CPU-sized variant (2-core laptop, same method, smaller net and canvas):
  python run.py train --config configs/dh25_baseline.py:cpu --workdir runs/dh25_baseline_cpu
The CPU recipe of docs/results.md's headline table (dh100 / dh25 baseline / dh25 + PA):
  python run.py train --config configs/dh25_baseline.py:cpu --workdir runs/roi256_mask32/dh25_baseline_cpu \
      --config.model.roi.mask_dim=32 --config.train.steps=3000 --config.train.eval_every=500
Evaluate:
  python run.py evaluate --workdir runs/dh25_baseline
"""

from configs import base


def get_config(arg: str | None = None):
  c = base.get_config()
  base.dh360(c, "keep", 0.25)
  c.data.view = "keep"
  c.data.view_fraction = 0.25
  c.model.partial.enabled = False
  return base.variant(c, arg, "dh25_baseline")
