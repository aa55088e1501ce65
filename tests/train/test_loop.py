"""The training loop: logs, checkpoints, best checkpoint, resume, NaN stop, signals."""

import json
import os
import signal
import time

import jax
import numpy as np
import pytest

import _proc
import train_toy as T
from pa_jax.errors import InputError, TrainingError
from pa_jax.train import checkpoint as ckpt
from pa_jax.train import metrics_log
from pa_jax.train import loop
from pa_jax.train.loop import NonFiniteLossError, train
from pa_jax.train.state import create_train_state, make_data_mesh


def _lines(workdir):
  return metrics_log.read_metrics(workdir)


def test_train_writes_logs_checkpoints_and_best(tmp_path):
  maps = {2: 0.1, 4: 0.5, 6: 0.3, 8: 0.2}
  evaluated = []

  def evaluate(state):
    step = int(jax.device_get(state.step))
    evaluated.append(step)
    return {"map": maps[step], "aji": 0.01 * step}

  c = T.toy_config(steps=8, checkpoint_every=2, keep_checkpoints=2, eval_every=2,
                   log_every=3)
  meta = {"median_nucleus_size": [7.5, 8.0], "view": "keep", "view_seed": 3, "n_train": 8}
  state = train(T.toy_task(evaluate=evaluate), T.toy_source(), c, tmp_path, meta,
                progress=False)
  assert int(state.step) == 8 and evaluated == [2, 4, 6, 8]
  recs = _lines(tmp_path)
  train_recs = [r for r in recs if "loss" in r]
  assert [r["step"] for r in train_recs] == [3, 6, 8]  # every log_every and the last step
  for r in train_recs:
    for key in ("loss", "fg_loss", "reg_loss", "fg_fraction", "learning_rate", "grad_norm",
                "images_per_sec"):
      assert np.isfinite(r[key]), key
  assert train_recs[0]["learning_rate"] == pytest.approx(0.1)  # warm-up of 2 steps is over
  evals = [r for r in recs if "eval/map" in r]
  assert [(r["step"], r["eval/map"]) for r in evals] == [(2, 0.1), (4, 0.5), (6, 0.3), (8, 0.2)]
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["6", "8"]  # keep 2
  assert sorted(os.listdir(tmp_path / "checkpoints_best")) == ["4"]  # best map
  cfg = json.loads((tmp_path / "config.json").read_text())
  assert cfg["train"]["steps"] == 8 and cfg["seed"] == 0
  run = json.loads((tmp_path / "run.json").read_text())
  assert run["median_nucleus_size"] == [7.5, 8.0] and run["view_seed"] == 3
  assert run["devices"] == 1 and run["processes"] == 1 and run["param_count"] > 0
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "tensorboard"))
  assert (tmp_path / "curves.png").stat().st_size > 1000
  # the best checkpoint restores into the state structure
  store = ckpt.CheckpointStore(tmp_path, best_metric="map")
  try:
    assert store.best_step() == 4 and store.best_value() == pytest.approx(0.5)
    best = store.restore(4, state, best=True)
    assert int(best.step) == 4
  finally:
    store.close()


def test_read_only_store_restores_and_leaves_a_save_in_flight_alone(tmp_path):
  c = T.toy_config(steps=2, checkpoint_every=2)
  state = train(T.toy_task(), T.toy_source(), c, tmp_path, {}, progress=False)
  # What an async save of the still-running trainer looks like on disk.
  in_flight = tmp_path / "checkpoints" / "4.orbax-checkpoint-tmp-123"
  in_flight.mkdir()
  (tmp_path / "elsewhere").mkdir()
  before = sorted(map(str, tmp_path.rglob("*")))
  store = ckpt.CheckpointStore(tmp_path, read_only=True)
  try:
    assert store.latest_step() == 2 and store.best_step() is None
    assert int(store.restore(2, state).step) == 2
  finally:
    store.close()
  time.sleep(0.5)  # a writable manager's cleanup of tmp folders runs in the background
  assert in_flight.is_dir()
  assert sorted(map(str, tmp_path.rglob("*"))) == before  # nothing created, moved or deleted
  assert not (tmp_path / "checkpoints_best").exists() or not os.listdir(tmp_path / "checkpoints_best")
  # A folder that never trained: nothing is created there either.
  store = ckpt.CheckpointStore(tmp_path / "elsewhere", read_only=True)
  try:
    assert store.latest_step() is None
  finally:
    store.close()
  assert os.listdir(tmp_path / "elsewhere") == []


def test_truncate_after_drops_later_and_torn_lines(tmp_path):
  (tmp_path / "metrics.jsonl").write_text(
      "".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in range(1, 6))
      + '{"step": 6, "lo')
  assert metrics_log.truncate_after(tmp_path, 3) == 3
  assert [r["step"] for r in _lines(tmp_path)] == [1, 2, 3]


def test_nan_loss_stops_with_step_and_term_and_keeps_last_good_checkpoint(tmp_path):
  c = T.toy_config(steps=10, checkpoint_every=2)
  source = T.NaNSource(T.toy_source(), nan_index=4)  # batch of step 5 is NaN
  with pytest.raises(NonFiniteLossError) as err:
    train(T.toy_task(), source, c, tmp_path, {}, progress=False)
  msg = str(err.value)
  assert "\n" not in msg and isinstance(err.value, TrainingError)
  assert msg.startswith("step 5: non-finite")
  assert "fg_loss=nan" in msg and "reg_loss" not in msg
  assert "latest checkpoint (step 4)" in msg
  assert err.value.step == 5 and "fg_loss" in err.value.terms
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "4"]
  assert max(r["step"] for r in _lines(tmp_path)) == 4
  # the kept checkpoint is finite and restores
  mesh = make_data_mesh()
  tmpl = create_train_state(T.toy_task(), c, jax.random.PRNGKey(0),
                            T.toy_source().batch(0), mesh, abstract=True)
  store = ckpt.CheckpointStore(tmp_path)
  try:
    st = store.restore_latest(tmpl)
  finally:
    store.close()
  assert int(st.step) == 4
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(st.params))


def test_nan_between_sync_points_names_the_first_bad_step(tmp_path):
  """Metrics come to the host only at log/checkpoint steps (the device runs ahead); a NaN
  in between is still reported at its own step, and no checkpoint after it is written."""
  c = T.toy_config(steps=12, checkpoint_every=4, log_every=4)
  source = T.NaNSource(T.toy_source(), nan_index=5)  # step 6; steps 7, 8 inherit the NaN
  with pytest.raises(NonFiniteLossError) as err:
    train(T.toy_task(), source, c, tmp_path, {}, progress=False)
  assert err.value.step == 6 and str(err.value).startswith("step 6: non-finite")
  assert "latest checkpoint (step 4)" in str(err.value)
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["4"]
  assert [r["step"] for r in _lines(tmp_path)] == [4]


def test_host_fetches_metrics_only_at_sync_points(tmp_path, monkeypatch):
  """Steps are dispatched back to back; the loop waits for the device only at log,
  checkpoint and final steps (here 4, 6, 8, 12 of 12), not after every step."""
  fetched, others = [], []

  class CountingJax:
    def __getattr__(self, name):
      return getattr(jax, name)

    def device_get(self, x):
      if isinstance(x, list):  # the loop's batched metric fetch
        fetched.append(len(x))
      else:
        others.append(type(x).__name__)
      return jax.device_get(x)

  monkeypatch.setattr(loop, "jax", CountingJax())
  c = T.toy_config(steps=12, checkpoint_every=6, log_every=4)
  train(T.toy_task(), T.toy_source(), c, tmp_path, {}, progress=False)
  assert fetched == [4, 2, 2, 4]  # steps 1-4, 5-6, 7-8, 9-12
  assert len(others) == 1  # the start step, read once; nothing per step (keys included)
  assert [r["step"] for r in _lines(tmp_path) if "loss" in r] == [4, 8, 12]


@pytest.mark.parametrize("signal_index,stopped_at", [(2, 3), (3, 4)])
def test_stop_between_sync_points_and_at_an_eval_step(tmp_path, signal_index, stopped_at):
  """One process answers a stop right after the current step (not at the next sync
  point); a stop at an evaluation step comes after that evaluation, so the resumed run
  evaluates exactly the steps an uninterrupted one does."""
  evaluated = []

  def evaluate(st):
    evaluated.append(int(jax.device_get(st.step)))
    return {"map": 0.5}

  c = T.toy_config(steps=8, checkpoint_every=8, log_every=2, eval_every=4)
  with pytest.raises(loop.TrainingInterrupted) as err:
    train(T.toy_task(evaluate=evaluate), _SelfSignal(T.toy_source(), signal_index), c, tmp_path,
          {}, progress=False)
  assert err.value.step == stopped_at
  assert _ckpt_steps(tmp_path) == [stopped_at]
  train(T.toy_task(evaluate=evaluate), T.toy_source(), c, tmp_path, {}, progress=False)
  assert evaluated == [4, 8]


def test_unwritable_workdir_is_one_line(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("x")
  with pytest.raises(InputError) as err:
    train(T.toy_task(), T.toy_source(), T.toy_config(), blocker / "run", {}, progress=False)
  msg = str(err.value)
  assert "\n" not in msg and msg.startswith(str(blocker / "run"))
  assert "cannot be written" in msg


def _wait_for(pred, proc, timeout=120.0):
  t0 = time.time()
  while time.time() - t0 < timeout:
    if pred():
      return True
    if proc.poll() is not None:
      return False
    time.sleep(0.05)
  return False


def _ckpt_steps(workdir):
  d = workdir / "checkpoints"
  return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if d.exists() else []


def _metric_steps(workdir):
  return [r["step"] for r in _lines(workdir) if "loss" in r]


def test_kill_interrupt_and_resume_reproduce_uninterrupted_run(tmp_path):
  steps = 14
  a, b = tmp_path / "a", tmp_path / "b"
  common = ("--steps", steps, "--checkpoint_every", 2)
  ref = _proc.script("train_toy_run.py", "--workdir", a, "--params_out", tmp_path / "a.npz",
                     *common)
  # 1) SIGKILL once a checkpoint exists (no chance to clean up)
  p = _proc.script("train_toy_run.py", "--workdir", b, "--delay", 0.15, *common)
  assert _wait_for(lambda: any(s >= 4 for s in _ckpt_steps(b)), p), p.communicate()[1][-2000:]
  p.send_signal(signal.SIGKILL)
  p.communicate(timeout=60)
  assert p.returncode == -signal.SIGKILL
  killed_at = max(_ckpt_steps(b))
  assert killed_at < steps
  # 2) restart, then Ctrl-C (SIGINT) mid-run: checkpoint of the last completed step
  p = _proc.script("train_toy_run.py", "--workdir", b, "--delay", 0.15, *common)
  assert _wait_for(lambda: any(s >= killed_at + 3 for s in _metric_steps(b)), p), \
      p.communicate()[1][-2000:]
  p.send_signal(signal.SIGINT)
  _, err = p.communicate(timeout=120)
  assert p.returncode == 128 + signal.SIGINT, err[-2000:]
  last_line = err.strip().splitlines()[-1]
  assert last_line.startswith("interrupted by SIGINT after step ")
  interrupted_at = int(last_line.split("after step ")[1].split(";")[0])
  assert interrupted_at < steps
  assert max(_ckpt_steps(b)) == interrupted_at == max(_metric_steps(b))
  # 3) restart to the end
  code, _, err = _proc.run("train_toy_run.py", "--workdir", b, "--params_out",
                           tmp_path / "b.npz", *common)
  assert code == 0, err[-2000:]
  ref.communicate(timeout=240)
  assert ref.returncode == 0
  ra = [r for r in _lines(a) if "loss" in r]
  rb = [r for r in _lines(b) if "loss" in r]
  assert [r["step"] for r in rb] == list(range(1, steps + 1))  # no duplicates, no gaps
  assert [r["step"] for r in ra] == [r["step"] for r in rb]
  for key in ("loss", "fg_loss", "reg_loss", "grad_norm", "learning_rate"):
    np.testing.assert_allclose([r[key] for r in rb], [r[key] for r in ra], rtol=1e-6,
                               err_msg=key)
  pa, pb = np.load(tmp_path / "a.npz"), np.load(tmp_path / "b.npz")
  for k in pa.files:
    np.testing.assert_allclose(pb[k], pa[k], rtol=1e-6, atol=1e-7)
  run = json.loads((b / "run.json").read_text())
  assert [r["step"] for r in run["resumes"]] == [killed_at, interrupted_at]


class _SelfSignal:
  """Source that sends SIGTERM to this process while preparing the batch of `index`."""

  def __init__(self, source, index):
    self.source, self.index = source, index

  def batch(self, step):
    return self.source.batch(step)

  def iterate(self, start_step=0):
    step = start_step
    while True:
      if step == self.index:
        os.kill(os.getpid(), signal.SIGTERM)
      yield self.source.batch(step)
      step += 1


def test_sigterm_saves_last_completed_step(tmp_path):
  from pa_jax.train.loop import TrainingInterrupted

  c = T.toy_config(steps=10, checkpoint_every=4)
  previous = signal.getsignal(signal.SIGTERM)
  with pytest.raises(TrainingInterrupted) as err:
    train(T.toy_task(), _SelfSignal(T.toy_source(), 5), c, tmp_path, {}, progress=False)
  assert signal.getsignal(signal.SIGTERM) is previous  # handlers restored
  # the batch of index 5 (step 6) was already being prepared: step 6 completes, then stop
  assert err.value.step == 6 and err.value.exit_code == 128 + signal.SIGTERM
  assert str(err.value).startswith("interrupted by SIGTERM after step 6;")
  assert _ckpt_steps(tmp_path) == [4, 6]


def test_loss_fn_may_update_non_trained_variables():
  from pa_jax.train.optimizer import make_optimizer
  from pa_jax.train.step import make_train_step
  from pa_jax.train.task import UPDATED_VARIABLES, Task

  base = T.toy_task()

  def loss_fn(params, variables, batch, rng):
    loss, aux = base.loss_fn(params, variables, batch, rng)
    new = jax.tree.map(lambda v: v + 1.0, variables)
    return loss, {**aux, UPDATED_VARIABLES: new}

  task = Task(init=base.init, loss_fn=loss_fn)
  c = T.toy_config()
  mesh = make_data_mesh()
  tx = make_optimizer(c.train)
  batch = T.toy_source().batch(0)
  state = create_train_state(task, c, jax.random.PRNGKey(0), batch, mesh, tx)
  assert float(state.variables["consts"]["offset"]) == pytest.approx(0.1)
  step = make_train_step(task, tx, mesh)
  for _ in range(2):
    state, metrics = step(state, batch)
  assert float(state.variables["consts"]["offset"]) == pytest.approx(2.1)
  assert int(state.step) == 2 and UPDATED_VARIABLES not in metrics
