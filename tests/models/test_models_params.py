"""Parameter counts against torchvision and the paper's Table 2."""

import jax
import jax.numpy as jnp

from pa_jax.models.params import count_parameters, model_parameter_counts
from pa_jax.models.resnet import resnet


def _backbone_params(name, norm="bn"):
  x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
  return jax.eval_shape(lambda x: resnet(name, norm=norm).init(jax.random.PRNGKey(0), x), x)


def test_backbone_counts_match_torchvision_without_fc():
  # torchvision totals minus the 1000-way fc (512*1000+1000 or 2048*1000+1000).
  assert count_parameters(_backbone_params("resnet18")["params"]) == 11_176_512
  assert count_parameters(_backbone_params("resnet50")["params"]) == 23_508_032
  assert count_parameters(_backbone_params("resnext101_64x4d")["params"]) == 83_455_272 - 2_049_000


def test_frozen_bn_moves_affine_out_of_params():
  v = _backbone_params("resnet50", norm="frozen_bn")
  # Only conv kernels are trainable; BN's 4 vectors per layer are constants.
  assert count_parameters(v["params"]) + count_parameters(v["frozen"]) // 2 == 23_508_032


def test_full_model_count_close_to_paper():
  counts = model_parameter_counts("resnext101_64x4d", partial=True)
  baseline = sum(counts[k] for k in ("backbone", "fpn", "rpn", "box_head", "mask_head"))
  assert baseline == 101_670_618  # trainable (frozen BN constants excluded)
  # Paper Table 2: 102.1 M. Adding the frozen BN constants (all variables of the model,
  # as a state dict would count them) gives 102.08 M.
  assert abs(baseline + counts["backbone_norm_constants"] - 102.1e6) < 0.05e6
  assert counts["attention"] + counts["centerness"] < 0.01 * baseline  # paper: < 1 % more
  assert counts["total"] == baseline + counts["attention"] + counts["centerness"]
