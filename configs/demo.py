"""The embedded default: what `python run.py` (no arguments) runs.

Fine-tunes the shipped nucleus model (pa_jax/zoo, configs/zoo_nuclei.py) with the
partial-annotation module on the few dh360 fluorescence images in `data/sample/`, with
25 % of their nuclei kept (seed 0); scores the held-out images against their full labels
next to the shipped model as it is and the classical floor; writes predictions, an
overlay PNG and a results table into `runs/demo/`. Sized for a 2-core CPU (under 10
minutes).

Launch:
  python run.py                      # same as the next line
  python run.py demo --workdir runs/demo
From scratch instead of the shipped model (what the demo did before it existed):
  python run.py train --config configs/demo.py --workdir runs/demo_scratch \\
      --config.model.init='' --config.train.steps=300
"""

from configs import zoo_nuclei
from pa_jax.zoo.registry import DEFAULT_MODEL


def get_config(arg: str | None = None):
  if arg not in (None, "", "cpu"):
    raise ValueError(f"configs/demo.py: unknown config argument {arg!r}")
  # The shipped model's recipe and architecture, so that its weights load as they are.
  c = zoo_nuclei.get_config("cpu")
  c.model.init = f"zoo:{DEFAULT_MODEL}"
  c.data.source = "data/sample"
  c.data.source_repeats = ()
  c.data.val_fraction = 0.0
  c.data.val_sources = ()
  c.data.eval_split = "test"
  c.eval.split = "test"
  c.data.view = "keep"
  c.data.view_fraction = 0.25
  c.data.max_instances = 128
  c.model.partial.max_pa_boxes = 128  # a 256 px crop of these images holds < 60 nuclei
  # PA boxes from centerness > 0.8, not the release's 0.95. Fine-tuned from the shipped
  # model, 0.95 finds 55-79 % of the unannotated nuclei; the other third become background
  # RoIs and the fine-tune loses recall (0.86 -> 0.80) on 20 dh360 test images outside the
  # sample. 0.8 (or 0.6) finds 77-94 % and keeps the shipped model's accuracy: mAP 0.671 vs
  # 0.643 at 0.95 (bench/demo_recipe.py, docs/results.md "The demo's recipe").
  c.model.partial.threshold = 0.8
  # A fine-tune: a tenth of the zoo's learning rate, a short warm-up, decayed to 0.
  c.train.steps = 150
  c.train.learning_rate = 0.002
  c.train.warmup_steps = 20
  c.train.schedule = "cosine"
  c.train.batch_size = 2
  c.train.checkpoint_every = 50
  c.train.log_every = 10
  c.train.eval_every = 0
  return c
