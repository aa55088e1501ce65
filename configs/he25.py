"""Shared body of the paper's H&E partial-label configs (kumar25_pa, tnbc25_pa).

Not a launchable config itself: `configs/kumar25_pa.py` and `configs/tnbc25_pa.py` call
`get_he_config(folder, name, arg)`.

What the two share:
* the held-out tiles: the shared folders hold only the papers' training images (their test
  images are kept back for independent scoring), so a seeded quarter of each organ (Kumar)
  or slide (TNBC) is carved out as split 'val' and never trained on. It is the same quarter
  the shipped model was selected on (`data.val_fraction` 0.25, `data.val_seed` 0), so a run
  started from the shipped model is scored on tiles that model never trained on either;
* 25 % of each training image's nuclei kept (seed 0), the partial-annotation module on;
* size normalisation: every image zoomed so that its median nucleus is 30 px across
  (Kumar's is ~23 px, about one positive centerness pixel at stride 4 without it).

`:cpu` is a fine-tune of the shipped model (`zoo:nuclei_cpu_v2`) with its recipe
(configs/zoo_nuclei.py: architecture, H&E stain jitter, 90-degree rotations, scale jitter),
600 steps at a fifth of its learning rate, PA threshold 0.8 (below). The shipped model
saw the *training* tiles' full labels, so a partial-label result from it is not a clean
Table 3/4 result (docs/results.md says so beside the numbers). Ablations, same schedule:
  from scratch:           --config.model.init='' --config.train.learning_rate=0.01
  full-label reference:   --config.data.view=full
  the module as released: --config.model.partial.threshold=0.95
"""

from configs import base
from configs import zoo_nuclei
from pa_jax.zoo.registry import DEFAULT_MODEL


def _he_partial_labels(c, folder: str):
  """Points `c` at one shared H&E folder: 25 % labels for training, seeded 'val' tiles."""
  c.data.source = f"{base.SHARED_DATASETS}/{folder}"
  c.data.source_repeats = ()
  c.data.train_split = "train"
  c.data.val_fraction = 0.25
  c.data.val_seed = 0
  c.data.val_sources = ()
  c.data.eval_split = "val"
  c.eval.split = "val"
  c.data.view = "keep"
  c.data.view_fraction = 0.25
  c.data.view_seed = 0
  c.data.diameter = 30.0
  c.model.partial.enabled = True
  return c


def get_he_config(folder: str, name: str, arg: str | None):
  """The config of `configs/<name>.py[:arg]` for the shared folder `folder`."""
  if arg == "cpu":
    # The shipped model's recipe and architecture, so that its weights load as they are.
    c = _he_partial_labels(zoo_nuclei.get_config("cpu"), folder)
    c.model.init = f"zoo:{DEFAULT_MODEL}"
    # PA boxes from centerness > 0.8, not DESIGN.md's 0.95: on H&E the centerness sits
    # between 0.8 and 0.95 on most nuclei. At 0.95 the PA boxes cover 12-18 % of the
    # unannotated nuclei and the fine-tune collapses (Kumar val recall 0.627 -> 0.260); at
    # 0.9 they cover 34-43 % (AJI 0.441); at 0.8 64-72 % (AJI 0.511, above the shipped
    # model's 0.495), though many boxes lie on background (45 % in a probe of the clean-start
    # 0.8 run). Chosen on the Kumar val tiles; TNBC val is level (AJI 0.501 vs 0.505 at
    # 0.9). docs/results.md, "The PA threshold and the zoom"; 0.95 = as released.
    c.model.partial.threshold = 0.8
    # A fine-tune: a fifth of the zoo's peak learning rate, decayed to 0.
    c.train.steps = 600
    c.train.learning_rate = 0.002
    c.train.warmup_steps = 50
    c.train.schedule = "cosine"
    c.train.eval_every = 300
    c.eval.max_images = 0
    return c
  c = base.get_config()
  c.data.canvas_size = 512
  c.data.max_instances = 512
  c = _he_partial_labels(c, folder)
  c.data.rotate90 = True
  c.data.stain_jitter = 0.05
  c.data.intensity_jitter = 0.2
  return base.variant(c, arg, name)
