"""Training metrics: `metrics.jsonl`, TensorBoard event files, a console progress bar and
`curves.png`. Only process 0 writes (the others get a disabled logger).

metrics.jsonl: one JSON object per line. Training lines carry `step` (optimiser updates
done), `loss`, every loss term, `grad_norm`, `learning_rate`, `images_per_sec`, `time`
(unix seconds); evaluation lines carry `step` and `eval/<name>` keys. Lines are appended
and flushed one by one; on resume `truncate_after(step)` atomically rewrites the file
without the lines past the restored checkpoint (and without a torn last line of a killed
run), so the curves have no duplicate steps. The TensorBoard writer is opened with
`purge_step` = restored step + 1, which makes TensorBoard drop the stale events too.
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
    try:
      self._f = open(self.workdir / METRICS_JSONL, "a", encoding="utf-8")
    except OSError as e:
      raise InputError(self.workdir / METRICS_JSONL, f"cannot write ({e.strerror or e})") from None
    if tensorboard:
      from tensorboardX import SummaryWriter

      self._tb = SummaryWriter(logdir=str(self.workdir / TENSORBOARD),
                               purge_step=start_step + 1 if start_step > 0 else None)
    if progress:
      from tqdm import tqdm

      self._bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                       desc="train", mininterval=1.0, smoothing=0.1)

  def _write(self, rec: Mapping[str, Any]) -> None:
    self._f.write(json.dumps(rec) + "\n")
    self._f.flush()

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
    if self._bar is not None:
      self._bar.close()
      self._bar = None
    if self._tb is not None:
      self._tb.flush()
      self._tb.close()
      self._tb = None
    if self._f is not None:
      self._f.close()
      self._f = None


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
