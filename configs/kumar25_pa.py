"""The paper's Table 3 setting on the 16 Kumar (MoNuSeg) H&E training tiles (4 organs): 25 % of each
image's nuclei kept (seed 0), the partial-annotation module on, scored on a seeded quarter of
the tiles carved out as split 'val' (the published test images are not shipped). Shared body
and the ablations: configs/he25.py. Results: docs/results.md.

Launch (full size, GPU/TPU):
  python run.py train --config configs/kumar25_pa.py --workdir runs/kumar25_pa \
      --config.model.pretrained=resnext101_64x4d.pth  # torchvision weights you provide
CPU-sized (2-core laptop): a 600-step fine-tune of the shipped model, about 20 min:
  python run.py train --config configs/kumar25_pa.py:cpu --workdir runs/kumar25_pa_cpu
Evaluate:
  python run.py evaluate --workdir runs/kumar25_pa_cpu
"""

from configs import he25


def get_config(arg: str | None = None):
  return he25.get_he_config("kumar", "kumar25_pa", arg)
