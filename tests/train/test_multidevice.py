"""Data parallelism on 8 fake CPU devices and on two real processes."""

import json
import os

import numpy as np
import pytest

import _proc


@pytest.fixture(scope="module")
def eight_devices():
  code, out, err = _proc.run("multidevice_check.py", devices=8)
  assert code == 0, err[-3000:]
  return json.loads(out.strip().splitlines()[-1])


def test_8_devices_match_1_device(eight_devices):
  r = eight_devices
  assert r["n_devices"] == 8
  assert r["batch_sharding"] == "P('data',)"
  assert r["param_change"] > 1e-2  # the steps really moved the parameters
  assert r["max_abs_diff_8_vs_1"] < 1e-5
  assert r["loss_8"] == pytest.approx(r["loss_1"], rel=1e-5)


def test_grad_accum_matches_full_batch(eight_devices):
  assert eight_devices["max_abs_diff_accum"] < 1e-5


def test_batch_not_divisible_by_devices_is_one_line(eight_devices):
  for key in ("error", "loop_error"):
    msg = eight_devices[key]
    assert msg and "\n" not in msg
    assert msg.startswith("train.batch_size: global batch size 6 does not divide by 8 devices")


def test_two_processes_train_together(tmp_path):
  port = _proc.free_port()
  work, out = tmp_path / "work", tmp_path / "out"
  procs = [_proc.script("multihost_worker.py", "--port", port, "--num_processes", 2,
                        "--process_id", i, "--workdir", work, "--out", out) for i in (0, 1)]
  ref = _proc.script("multihost_worker.py", "--workdir", tmp_path / "ref_work",
                     "--out", tmp_path / "ref", devices=2)
  results = [p.communicate(timeout=240) for p in procs + [ref]]
  for p, (_, err) in zip(procs + [ref], results):
    assert p.returncode == 0, err[-3000:]
  infos = [json.loads((out / f"info_{i}.json").read_text()) for i in (0, 1)]
  ref_info = json.loads((tmp_path / "ref" / "info_0.json").read_text())
  assert [i["process_count"] for i in infos] == [2, 2]
  assert [i["rows"] for i in infos] == [2, 2]  # each process read only its half of the batch
  assert ref_info["rows"] == 4 and ref_info["devices"] == 2
  assert [i["step"] for i in infos] == [3, 3]
  assert infos[0]["checksum"] == infos[1]["checksum"]
  p0, p1 = np.load(out / "params_0.npz"), np.load(out / "params_1.npz")
  pr = np.load(tmp_path / "ref" / "params_0.npz")
  for k in p0.files:
    np.testing.assert_array_equal(p0[k], p1[k])
    np.testing.assert_allclose(p0[k], pr[k], rtol=1e-5, atol=1e-6)
  # only process 0 wrote the logs; the shared checkpoint folder has the final step
  lines = (work / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(l)["step"] for l in lines] == [1, 2, 3]
  assert sorted(os.listdir(work / "checkpoints")) == ["2", "3"]


@pytest.mark.skipif(not os.environ.get("PA_JAX_SLOW_TESTS"),
                    reason="~4 CPU-minutes; run with PA_JAX_SLOW_TESTS=1")
def test_mask_rcnn_with_pa_module_8_devices_match_1_device():
  """The real model (per-image stages under shard_map, hard negatives on): one step on 8
  devices equals one on 1 device. Every image is sampled alone with its own key, so the
  discrete counts are equal exactly; losses and parameters up to reduction order."""
  code, out, err = _proc.run("model_parallel_check.py", devices=8, timeout=1200)
  assert code == 0, err[-3000:]
  r = json.loads(out.strip().splitlines()[-1])
  m8, m1 = r["metrics_8"], r["metrics_1"]
  assert r["n_devices"] == 8 and m8.keys() == m1.keys()
  assert m8["pa_boxes_per_image"] > 0  # the PA boxes really take part
  for k in ("rpn_positives_per_image", "roi_positives_per_image", "pa_boxes_per_image",
            "pa_ignored_anchors_per_image", "pa_ignored_rois_per_image", "pa_num_sampled"):
    assert m8[k] == m1[k], k
  for k in m8:
    assert m8[k] == pytest.approx(m1[k], rel=1e-5, abs=1e-6), k
  assert r["max_abs_diff_params"] < 1e-5
