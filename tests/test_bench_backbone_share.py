"""bench/gpu/backbone_share.py: FLOPs parsed from XLA's cost analysis (hand-computed
matmul), the backbone-only gradient skips the frozen stages as the step does, and
train_throughput.py --backbone-share writes every figure at toy size."""

import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "bench" / "gpu"))

import backbone_share as bs  # noqa: E402


def test_flops_of_a_matmul_are_2nkm():
  f = jax.jit(lambda a, b: a @ b)
  a, b = jnp.ones((32, 48)), jnp.ones((48, 16))
  assert bs._flops(f.lower(a, b).compile()) == 2 * 32 * 48 * 16
  assert bs._flops(f.lower(a, b)) == 2 * 32 * 48 * 16


def test_flops_absent_or_listed():
  class Listed:
    def cost_analysis(self):
      return [{"flops": 7.0}]

  class Empty:
    def cost_analysis(self):
      return {}

  class Failing:
    def cost_analysis(self):
      raise NotImplementedError

  class Unknown:  # what some GPU backends have returned
    def cost_analysis(self):
      return {"flops": -1.0}

  assert bs._flops(Listed()) == 7.0
  assert bs._flops(Empty()) is None
  assert bs._flops(Failing()) is None
  assert bs._flops(Unknown()) is None


def _toy_model_and_variables(freeze_at):
  from pa_jax.models.mask_rcnn import MaskRCNN, ModelSpec

  spec = ModelSpec(backbone="resnet18", backbone_width=8, norm="group_norm", freeze_at=freeze_at,
                   fpn_channels=16, fc_dim=16, mask_dim=8, partial=False, max_detections=8,
                   rpn_pre_nms_topk_test=32, rpn_post_nms_topk_test=16)
  model = MaskRCNN(spec)
  x = jnp.ones((1, 64, 64, 3)) * 0.5
  variables = model.init(jax.random.PRNGKey(0), x, jnp.asarray([[64, 64]], jnp.int32),
                         method=MaskRCNN.predict)
  return model, variables, x


def test_backbone_gradient_skips_frozen_stages():
  model, variables, x = _toy_model_and_variables(freeze_at=2)
  fn, args = bs.backbone_fwd_bwd(model, variables, x)
  grads = fn(*args)
  assert set(grads) == set(variables["params"]["backbone"])
  norm = lambda tree: sum(float(jnp.abs(v).sum()) for v in jax.tree.leaves(tree))  # noqa: E731
  frozen = [k for k in grads if k in ("conv1", "bn1") or k.startswith("layer1")]
  trained = [k for k in grads if k.startswith("layer4")]
  assert frozen and trained
  assert all(norm(grads[k]) == 0 for k in frozen)
  assert all(norm(grads[k]) > 0 for k in trained)


def test_train_throughput_writes_the_backbone_share(tmp_path):
  import train_throughput

  out = tmp_path / "tp.json"
  assert train_throughput.main([
      "--config", "configs/dh25_pa.py:cpu", "--toy", "--steps", "2", "--warmup", "1",
      "--max-examples", "2", "--backbone-share", "--out", str(out)]) == 0
  res = json.loads(out.read_text())
  share = res["backbone_share"]
  assert share["step_seconds_median"] == res["step_seconds_median"]
  np.testing.assert_allclose(share["share_of_step"],
                             share["backbone_seconds_median"] / res["step_seconds_median"])
  assert 0 < share["backbone_flops"] < share["step_flops_lowered_estimate"]
  np.testing.assert_allclose(share["backbone_tflops"],
                             share["backbone_flops"] / share["backbone_seconds_median"] / 1e12)
  assert share["matmul_bf16"]["n"] == 512 and share["matmul_bf16"]["tflops"] > 0


def test_train_throughput_skips_the_share_near_the_deadline(tmp_path):
  # check.sh's deadline: too little time left -> the share is skipped and said so, and the
  # training figures are still written (the step ends "ok", not cut by the limit).
  import time

  import train_throughput

  out = tmp_path / "tp.json"
  assert train_throughput.main([
      "--config", "configs/dh25_pa.py:cpu", "--toy", "--steps", "2", "--warmup", "1",
      "--max-examples", "2", "--backbone-share", "--share-deadline", str(time.time() + 1),
      "--out", str(out)]) == 0
  res = json.loads(out.read_text())
  assert res["step_seconds_median"] > 0
  assert set(res["backbone_share"]) == {"skipped"}
  assert "before the deadline" in res["backbone_share"]["skipped"]
