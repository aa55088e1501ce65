"""The paper's Table 4 setting on the 37 TNBC H&E training crops (slides 01-08): 25 % of each
image's nuclei kept (seed 0), the partial-annotation module on, scored on a seeded quarter of
the tiles carved out as split 'val' (the published test images are not shipped). Shared body
and the ablations: configs/he25.py. Results: docs/results.md.

Launch (full size, GPU/TPU):
  python run.py train --config configs/tnbc25_pa.py --workdir runs/tnbc25_pa \
      --config.model.pretrained=resnext101_64x4d.pth  # torchvision weights you provide
CPU-sized (2-core laptop): a 600-step fine-tune of the shipped model, about 20 min:
  python run.py train --config configs/tnbc25_pa.py:cpu --workdir runs/tnbc25_pa_cpu
Evaluate:
  python run.py evaluate --workdir runs/tnbc25_pa_cpu
"""

from configs import he25


def get_config(arg: str | None = None):
  return he25.get_he_config("tnbc", "tnbc25_pa", arg)
