"""The annotation assistant (`run.py annotate`): a CPU-sized partial-annotation model.

Same method as `dh25_pa.py:cpu` (ResNet-18 at half width, GroupNorm, 256-pixel canvas,
factorized attention on P2, centerness head), with the rejected-region hard negatives of
the annotation loop switched on, and the shipped model's mask head (32 channels), mask
frame and nucleus diameter. Round 1 fine-tunes the shipped model (pa_jax/zoo) for
`train.steps` (`--from-scratch`: from random weights, as before it existed); every later
round fine-tunes the previous round's parameters for `annotate.finetune_steps`.
Sized so that 2 rounds on 10 images of 360x360 took about 20 minutes on a 2-core CPU
from scratch (measured: 837 s + 322 s, the rounds' `seconds` in the results.json of
`python bench/annotate_sim.py --workdir runs/annotate_sim --fresh`, docs/annotate.md;
not re-measured from the shipped model yet).

Launch:
  python run.py annotate --images DIR --annotations DIR --output DIR [--rounds N]
  python run.py annotate ... --config configs/annotate.py --config.train.steps=600
"""

import ml_collections

from configs import base
from pa_jax.zoo.registry import DEFAULT_MODEL


def get_config(arg: str | None = None):
  c = base.get_config()
  base.cpu_sized(c)
  # Round 1 fine-tunes the shipped model (pa_jax/zoo): its architecture and frame.
  # `run.py annotate --from-scratch` (or --config.model.init='') trains round 1 from scratch.
  c.model.init = f"zoo:{DEFAULT_MODEL}"
  c.model.roi.mask_dim = 32
  c.model.roi.mask_box_scale = 1.2
  c.data.diameter = 30.0
  c.model.partial.enabled = True
  c.model.partial.hard_negatives = True  # rejected proposals = explicit negatives
  c.model.partial.max_pa_boxes = 256
  c.train.steps = 300  # round 1
  c.train.warmup_steps = 50
  c.train.log_every = 25
  c.train.checkpoint_every = 100
  c.train.keep_checkpoints = 1
  c.train.eval_every = 0
  # Proposals are reviewed by a person, so they are drawn from a lower score than a final
  # label map (base: 0.5): a short CPU schedule is under-confident (docs/annotate.md).
  c.predict.score_threshold = 0.2
  # Proposals without the crescents a lower-scoring duplicate leaves beside a nucleus
  # (docs/outlines.md): each one is a proposal the reviewer would have to delete.
  c.predict.mask_overlap = 0.5

  c.annotate = ml_collections.ConfigDict()
  c.annotate.finetune_steps = 150  # rounds >= 2: steps of fine-tuning from the previous round
  c.annotate.finetune_warmup_steps = 10  # warm-up of a fine-tuning round (params are not random)
  c.annotate.holdout_fraction = 0.1  # confirmed nuclei held out of training to estimate recall
  # A prediction with more than this fraction of its pixels on confirmed nuclei is dropped
  # (with less, it only loses those pixels: human pixels never change).
  c.annotate.confirmed_overlap = 0.2
  # A prediction with IoU >= this with a rejected region (or half of it inside one) is
  # dropped: a rejected place is never proposed again.
  c.annotate.rejected_iou = 0.5
  c.annotate.min_area = 8  # proposals smaller than this (pixels, confirmed pixels cut) are dropped
  c.annotate.match_iou = 0.5  # an edited shape is the same nucleus as a written one at IoU >= this
  if arg not in (None, "", "cpu"):
    raise ValueError(f"configs/annotate.py: unknown config argument {arg!r}")
  return c
