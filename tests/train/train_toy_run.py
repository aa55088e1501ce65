"""Trains the toy task through `pa_jax.train.loop.train` (used by the resume tests).

  python train_toy_run.py --workdir W --steps 16 --checkpoint_every 2 [--delay 0.2]
      [--params_out P.npz]

Exit codes like run.py: 0 done, the PaJaxError's own code (2 InputError, 3 a
NonFiniteLossError; one line on stderr), 128+signal after a graceful SIGINT/SIGTERM (checkpoint saved).
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def main() -> int:
  ap = argparse.ArgumentParser()
  ap.add_argument("--workdir", required=True)
  ap.add_argument("--steps", type=int, default=16)
  ap.add_argument("--checkpoint_every", type=int, default=2)
  ap.add_argument("--delay", type=float, default=0.0)
  ap.add_argument("--params_out", default="")
  a = ap.parse_args()

  import numpy as np

  import train_toy as T
  from pa_jax.errors import PaJaxError
  from pa_jax.train.loop import TrainingInterrupted, train

  source = T.toy_source(global_batch=4)
  if a.delay > 0:
    source = T.SlowSource(source, a.delay)
  c = T.toy_config(steps=a.steps, checkpoint_every=a.checkpoint_every, log_every=1)
  try:
    state = train(T.toy_task(), source, c, a.workdir, {"script": "train_toy_run"},
                  progress=False)
  except TrainingInterrupted as e:
    print(e, file=sys.stderr)
    return e.exit_code
  except PaJaxError as e:
    print(e, file=sys.stderr)
    return e.exit_code
  if a.params_out:
    np.savez(a.params_out, **T.flat_params(state.params))
  return 0


if __name__ == "__main__":
  sys.exit(main())
