"""Prints the parameter counts of the detector for every backbone (nothing is allocated).

  python bench/param_counts.py            # the paper's ResNeXt-101 64x4d model and friends
  python bench/param_counts.py --cpu      # also the CPU-sized configs' model

Counts come from `jax.eval_shape` of the real modules (pa_jax.models.params).
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pa_jax.models.params import model_parameter_counts  # noqa: E402


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--cpu", action="store_true", help="also count the CPU-sized configs' model")
  args = ap.parse_args()
  rows = []
  for name in ("resnet18", "resnet50", "resnet101", "resnext101_64x4d"):
    for partial in (False, True):
      c = model_parameter_counts(name, partial=partial)
      affine = c["total_with_frozen_affine"] - c["total"]
      rows.append((name, "Mask R-CNN + PA" if partial else "Mask R-CNN", c["total"],
                   c["total_with_frozen_affine"], c["total"] + c["backbone_norm_constants"],
                   c["backbone"] + affine))
  # trainable: what the optimiser updates (frozen BN holds no trainable scalar);
  # +BN affine: plus the frozen BN scale/bias (torchvision's model.parameters() with BN);
  # +all BN: plus running mean/variance too (what a checkpoint of the model stores);
  # backbone+affine: the ResNet alone as torchvision counts it (no fc).
  print(f"{'backbone':18s} {'model':18s} {'trainable':>12s} {'+BN affine':>12s} "
        f"{'+all BN':>12s} {'backbone+affine':>16s}")
  for r in rows:
    print(f"{r[0]:18s} {r[1]:18s} {r[2]:12,d} {r[3]:12,d} {r[4]:12,d} {r[5]:16,d}")
  if args.cpu:
    import jax
    from configs import dh25_pa
    from pa_jax import experiment
    from pa_jax.data import pipeline
    from pa_jax.models.params import count_parameters

    for pa in (False, True):
      cfg = dh25_pa.get_config("cpu")
      cfg.model.partial.enabled = pa
      cfg.model.partial.anchor = "fixed"  # no dataset here; the anchor changes no shape
      model = experiment.build_model(cfg)
      ex = pipeline.stack_batch([experiment._empty_example(cfg.data.canvas_size,
                                                           cfg.data.max_instances)])
      shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), ex, jax.random.PRNGKey(1)))
      print(f"{'cpu config':18s} {'Mask R-CNN + PA' if pa else 'Mask R-CNN':18s} "
            f"{count_parameters(shapes['params']):12,d}")


if __name__ == "__main__":
  main()
