"""The embedded default: what `python run.py` (no arguments) runs.

Trains the partial-annotation model on the few dsb2018 fluorescence images in
`data/sample/` with 25 % of the nuclei kept (seed 0), evaluates against the full labels,
and writes predictions, an overlay PNG and a results table into `runs/demo/`. Sized for a
2-core CPU (well under 10 minutes).

Launch:
  python run.py                      # same as the next line
  python run.py demo --workdir runs/demo
"""

from configs import base


def get_config(arg: str | None = None):
  c = base.get_config()
  base.cpu_sized(c)
  c.data.source = "data/sample"
  c.data.view = "keep"
  c.data.view_fraction = 0.25
  c.data.canvas_size = 256
  c.data.max_instances = 128
  c.model.partial.enabled = True
  c.model.partial.max_pa_boxes = 128  # a 256 px crop of these images holds < 60 nuclei
  c.train.steps = 300
  c.train.batch_size = 2
  c.train.checkpoint_every = 50
  c.train.log_every = 10
  if arg not in (None, "", "cpu"):
    raise ValueError(f"configs/demo.py: unknown config argument {arg!r}")
  return c
