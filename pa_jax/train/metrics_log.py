"""Training metrics: `metrics.jsonl`, TensorBoard event files, a console progress bar and
`curves.png`. Only process 0 writes (the others get a disabled logger).

metrics.jsonl: one JSON object per line. Training lines carry `step` (optimiser updates
done), `loss`, every loss term, `grad_norm`, `learning_rate`, `images_per_sec`, `time`
(unix seconds); evaluation lines carry `step` and `eval/<name>` keys. Lines are appended
and flushed one by one; on resume `truncate_after(step)` atomically rewrites the file
without the lines past the restored checkpoint (and without a torn last line of a killed
run), so the curves have no duplicate steps. The TensorBoard writer is opened with
`purge_step` = restored step + 1, which makes TensorBoard drop the stale events too.

A write that fails (full disk) re-raises its OSError, which `loop.train` turns into its one
line for every refused write of the run; a line that was only partly written is cut off again, so metrics.jsonl keeps exactly its complete
lines.
"""

from __future__ import annotations

import io
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Mapping

from pa_jax import fileio
from pa_jax.errors import InputError

METRICS_JSONL = "metrics.jsonl"
TENSORBOARD = "tensorboard"
CURVES_PNG = "curves.png"


def _clean(v: Any) -> Any:
  """JSON-safe value: numbers as float (NaN/Inf → null: JSON has no NaN), else as is."""
  if isinstance(v, (bool, str)) or v is None:
    return v
  try:
    f = float(v)
  except (TypeError, ValueError):
    return v
  return f if math.isfinite(f) else None


def read_metrics(workdir: os.PathLike | str) -> list[dict]:
  """Parsed lines of `workdir/metrics.jsonl` (a torn last line is skipped)."""
  path = Path(workdir) / METRICS_JSONL
  out = []
  try:
    with open(path, encoding="utf-8") as f:
      for line in f:
        line = line.strip()
        if not line:
          continue
        try:
          rec = json.loads(line)
        except ValueError:
          continue
        if isinstance(rec, dict) and "step" in rec:
          out.append(rec)
  except FileNotFoundError:
    pass
  return out


def truncate_after(workdir: os.PathLike | str, step: int) -> int:
  """Atomically drops metrics.jsonl lines with `step` > `step`; returns lines kept."""
  path = Path(workdir) / METRICS_JSONL
  if not path.exists():
    return 0
  kept = [r for r in read_metrics(workdir) if int(r["step"]) <= step]
  fileio.write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
  return len(kept)


class MetricsLogger:
  """Writes metrics of one run; a no-op when `enabled` is False (processes > 0)."""

  def __init__(self, workdir: os.PathLike | str, total_steps: int, start_step: int = 0,
               enabled: bool = True, progress: bool = True, tensorboard: bool = True):
    self.workdir = Path(workdir)
    self.enabled = enabled
    self._f = None
    self._tb = None
    self._bar = None
    if not enabled:
      return
    truncate_after(self.workdir, start_step)
    path = self.workdir / METRICS_JSONL
    try:
      # A raw descriptor: each line goes out in one write that can be undone (see _write).
      self._f = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    except OSError as e:
      raise InputError(path, f"cannot write ({e.strerror or e})") from None
    if tensorboard:
      from tensorboardX import SummaryWriter

      try:
        # flush_secs: (almost) never flush from tensorboardX's own thread, where a full
        # disk becomes a traceback; `_tb_flush` flushes after each log in this thread.
        # (Not larger: the thread waits on its queue that long, and 1e9 s overflows.)
        self._tb = SummaryWriter(logdir=str(self.workdir / TENSORBOARD), flush_secs=3600,
                                 purge_step=start_step + 1 if start_step > 0 else None)
      except OSError as e:
        raise InputError(self.workdir / TENSORBOARD, f"cannot write ({e.strerror or e})"
                         ) from None
    if progress:
      from tqdm import tqdm

      self._bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                       desc="train", mininterval=1.0, smoothing=0.1)

  def _write(self, rec: Mapping[str, Any]) -> None:
    data = (json.dumps(rec) + "\n").encode("utf-8")
    size = os.fstat(self._f).st_size
    try:
      done = 0
      while done < len(data):
        done += os.write(self._f, data[done:])
    except OSError:
      try:
        os.ftruncate(self._f, size)  # no torn line: shrinking needs no free space
      except OSError:
        pass
      raise  # loop.train words a refused write once, for every file of the run

  def _tb_flush(self) -> None:
    """Writes the queued TensorBoard events now. A failure drops TensorBoard for the rest
    of the run (metrics.jsonl holds the same numbers); the OSError goes to loop.train."""
    if self._tb is None:
      return
    try:
      self._tb.flush()
    except OSError:
      tb, self._tb = self._tb, None
      _close_quietly(tb)
      raise  # loop.train words a refused write once, for every file of the run

  def log_train(self, step: int, metrics: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    rec = {"step": int(step)}
    if "loss" in metrics:
      rec["loss"] = _clean(metrics["loss"])
    rec.update({k: _clean(v) for k, v in metrics.items() if k != "loss"})
    rec["time"] = time.time()
    self._write(rec)
    if self._tb is not None:
      for k, v in metrics.items():
        if isinstance(v, (int, float)) and math.isfinite(float(v)):
          self._tb.add_scalar(f"train/{k}", float(v), int(step))
      self._tb_flush()
    if self._bar is not None:
      post = {"loss": f"{float(metrics.get('loss', float('nan'))):.4g}"}
      if "learning_rate" in metrics:
        post["lr"] = f"{float(metrics['learning_rate']):.3g}"
      self._bar.set_postfix(post, refresh=False)

  def log_eval(self, step: int, metrics: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    rec = {"step": int(step)}
    rec.update({f"eval/{k}": _clean(v) for k, v in metrics.items()})
    self._write(rec)
    if self._tb is not None:
      for k, v in metrics.items():
        try:
          f = float(v)
        except (TypeError, ValueError):
          continue
        if math.isfinite(f):
          self._tb.add_scalar(f"eval/{k}", f, int(step))
      self._tb_flush()
    if self._bar is not None:
      self._bar.write(f"step {step}: " + ", ".join(
          f"{k}={float(v):.4g}" for k, v in metrics.items() if _is_number(v)))

  def progress(self, step: int) -> None:
    """Moves the progress bar to `step` (updates done)."""
    if self._bar is not None and step > self._bar.n:
      self._bar.update(step - self._bar.n)

  def message(self, text: str) -> None:
    if not self.enabled:
      return
    if self._bar is not None:
      self._bar.write(text)
    else:
      print(text, flush=True)

  def close(self) -> None:
    """Closes the files (idempotent); a failed last TensorBoard flush is one line."""
    if self._bar is not None:
      self._bar.close()
      self._bar = None
    if self._f is not None:
      os.close(self._f)
      self._f = None
    if self._tb is not None:
      self._tb_flush()
      tb, self._tb = self._tb, None
      _close_quietly(tb)


def _close_quietly(tb) -> None:
  """Stops tensorboardX's writer thread and file; its data was flushed or is lost."""
  try:
    tb.close()
  except Exception:  # noqa: BLE001 - nothing left to save; the caller reports the error
    pass


def _is_number(v: Any) -> bool:
  try:
    float(v)
    return True
  except (TypeError, ValueError):
    return False


def plot_curves(workdir: os.PathLike | str) -> Path | None:
  """Plots metrics.jsonl into `workdir/curves.png` (losses, learning rate, eval metrics);
  returns its path, or None when there is nothing to plot."""
  recs = read_metrics(workdir)
  train = [r for r in recs if "loss" in r]
  evals = [r for r in recs if any(k.startswith("eval/") for k in r)]
  if not train and not evals:
    return None
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  loss_keys = [k for k in train[0] if "loss" in k] if train else []  # terms, not diagnostics
  eval_keys = sorted({k for r in evals for k in r if k.startswith("eval/")})
  panels = [p for p in ("loss", "lr", "grad", "eval") if
            (p == "loss" and loss_keys) or (p in ("lr", "grad") and train) or
            (p == "eval" and eval_keys)]
  fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
  for ax, panel in zip(axes[0], panels):
    if panel == "loss":
      steps = [r["step"] for r in train]
      for k in loss_keys:
        ax.plot(steps, [_nan(r.get(k)) for r in train], label=k, lw=2 if k == "loss" else 1)
      ax.set_title("losses")
      ax.legend(fontsize=7)
    elif panel == "lr":
      ax.plot([r["step"] for r in train], [_nan(r.get("learning_rate")) for r in train])
      ax.set_title("learning rate")
    elif panel == "grad":
      ax.plot([r["step"] for r in train], [_nan(r.get("grad_norm")) for r in train])
      ax.set_title("gradient norm")
    else:
      for k in eval_keys:
        pts = [(r["step"], _nan(r.get(k))) for r in evals if k in r]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=k[5:])
      ax.set_title("evaluation")
      ax.legend(fontsize=7)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
  fig.tight_layout()
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=100)
  plt.close(fig)
  path = Path(workdir) / CURVES_PNG
  fileio.write_bytes(path, buf.getvalue())
  return path


def _nan(v: Any) -> float:
  return float("nan") if v is None else float(v)
