#!/usr/bin/env bash
# The GPU check of issue 12 (item 7): one script, one output folder, < 8 minutes on one H200.
#
#   bash bench/gpu/check.sh              # on the GPU machine (device tool: carry .whl)
#   X101=1 bash bench/gpu/check.sh       # a second call: env + the ResNeXt-101 pair only
#   bash bench/gpu/check.sh --dry-run    # every step at toy size on this CPU machine
#
# Steps (each under its own time limit, and all of them under one deadline, DEADLINE_S =
# 470 s on the GPU: a step gets at most what is left of it; a step that fails or runs out is
# recorded and the script goes on):
#   0 env        nvidia-smi, python/jax/torch versions, jax.devices()
#   1 tests      the GPU-relevant tests (NMS, RoIAlign, model, weight import, this bench)
#   2 compare    bench/frameworks.py at paper size: R50 (ResNeXt-101 64x4d instead with
#                X101=1), batch 8, canvas 384, float32 and bfloat16 (torch AMP), agreement
#                on R50 fp32
#   3 train      dh25_pa at full size (ResNeXt-101, batch 8, 384) for STEPS steps:
#                images/s and peak memory; then the backbone alone against the measured
#                bf16 matmul rate (bench/gpu/backbone_share.py)
# Output: $OUT (the device tool's folder) or bench/gpu/out-<UTC date>; summary.json lists
# every step's status and seconds, logs.tar.gz holds each step's whole output.
#
# The GPU image has jax (CUDA), flax, optax, orbax, torch, torchvision but no ml_collections
# (configs use it) and no network: put its wheel in .whl/ first (bench/gpu/fetch_wheels.sh,
# .whl/ is git-ignored) and carry it; this script installs .whl/*.whl with --no-index into
# /tmp/site when the import is missing. tensorflow-datasets is not on this path.
set -u
cd "$(dirname "$0")/../.."
# The configs read ../shared; the device tool sends only the checkout, with a shared/ in it
# (bench/gpu/stage_data.sh): link the one to the other when ../shared is absent.
if [ ! -e ../shared ] && [ -d shared/datasets ]; then ln -s "$PWD/shared" ../shared; fi

DRY=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY=1 ;;
    -h|--help) awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "$0"; exit 0 ;;
    *) echo "unknown argument $arg" >&2; exit 2 ;;
  esac
done

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ] && [ "$DRY" = 1 ]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
# The compare step holds JAX (agreement) and starts JAX and torch workers after it: with
# JAX's default 75 % preallocation each later process failed its first allocations (the
# first run, 2026-11-30, logged 50 GiB out-of-memory retries). Allocate on demand instead.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
OUT=${OUT:-bench/gpu/out-$(date -u +%Y%m%dT%H%M%SZ)$([ "$DRY" = 1 ] && echo -dry)}
mkdir -p "$OUT"
SUMMARY="$OUT/summary.tsv"
# The device tool returns at most 8 files from $OUT (the 2026-11-30 second lease lost its
# summary and test log to that): each step's full log goes to $LOGS and, after every step,
# into one $OUT/logs.tar.gz. $OUT then holds 7 files: check.log, summary.tsv, summary.json,
# logs.tar.gz and the three result JSONs.
LOGS=$(mktemp -d)
: > "$SUMMARY"
T_START=$(date +%s)

if [ "$DRY" = 1 ]; then
  export JAX_PLATFORMS=cpu
  # A shared 2-core CPU compiles the toy train step in 1-5 min: generous limits, and the
  # workers run bfloat16 only (the float32 workers are what bench/results/frameworks_cpu_*
  # ran; the agreement step runs float32).
  T_ENV=300; T_TESTS=600; T_CMP=2400; T_TRAIN=1200; DEADLINE_S=${DEADLINE_S:-4800}
  TESTS="tests/test_bench_frameworks.py"
  CMP_PRESETS="toy"; CMP_ARGS="--steps 1 --warmup 1 --predict-images 1"; DTYPES="${DTYPES:-bfloat16}"
  TORCH_DEVICE=cpu
  TRAIN_ARGS="--config configs/dh25_pa.py:cpu --toy --steps 2 --warmup 1 --max-examples 4"
  TRAIN_ARGS="$TRAIN_ARGS --backbone-share"
else
  # Limits (s): env 30, tests 60, compare 270, train 190, and all of them together within
  # DEADLINE_S = 470 s < 8 min (the issue's bound), whatever happens: a step that starts late
  # gets only what is left. A step cut short keeps what it wrote (compare writes after each
  # run). Measured on an H200 (2026-11-30): env 17 s, the NMS tests alone 27 s (the whole
  # tests step has not run alone on a GPU yet), R50 agreement 25 s, pa_jax float32 worker
  # 72 s (42 s of it the first step's compile), torchvision 17 s, pa_jax bf16 compile 73 s;
  # dh25_pa init 19 s + first step (compile) 81-88 s, then its 300 steps ~14 s (the 45 s of
  # --max-seconds is a cap). Summed: ~17 + ~50 + ~225 + ~125 s, close to the deadline, so
  # the backbone share (not yet run on a GPU: a backbone-only compile, 10 timed calls, one
  # 8192^3 bf16 product, the step lowered again; budgeted 60 s) goes to the second call.
  # X101=1, the second call: env, the ResNeXt-101 pair (~250 s), then dh25_pa for 30 steps
  # and the backbone share (~170 s). train_throughput.py skips the share, and says so, when
  # CHECK_DEADLINE_UNIX leaves it less than its budget.
  # Tried and dropped (second lease, 2026-11-30): compiling all five JAX programs at once in
  # parallel processes into JAX's persistent compilation cache, for the steps to read back.
  # Beside the tests, none of the five had finished after 200 s on the 16 cores (sequential:
  # 42-87 s each), so the steps compiled again: a net loss. Compiles stay sequential.
  T_ENV=30; T_TESTS=60; T_CMP_R50=270; T_CMP_X101=250; T_TRAIN=190; DEADLINE_S=${DEADLINE_S:-470}
  TESTS="tests/ops/test_ops_nms.py tests/ops/test_ops_roi_align.py tests/ops/test_ops_per_device.py tests/ops/test_ops_intensity.py tests/models/test_models_weights.py tests/models/test_models_mask_rcnn.py tests/test_bench_frameworks.py"
  CMP_ARGS="--steps 5 --warmup 1 --predict-images 5"; DTYPES="float32,bfloat16"
  TORCH_DEVICE=cuda
  TRAIN_ARGS="--config configs/dh25_pa.py --steps ${STEPS:-300} --warmup 2 --max-seconds 45"
  if [ "${X101:-0}" = 1 ]; then
    TRAIN_ARGS="--config configs/dh25_pa.py --steps ${STEPS:-30} --warmup 2 --backbone-share"
  fi
fi
# The backbone share (train_throughput.py) skips itself when this leaves it too little.
export CHECK_DEADLINE_UNIX=$(( T_START + DEADLINE_S - 10 ))

step() {  # step NAME LIMIT_S COMMAND...
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s) rc
  # The deadline: never past DEADLINE_S from the start (kill-after's 10 s included).
  local left=$(( T_START + DEADLINE_S - t0 - 10 ))
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -lt 5 ]; then
    echo "not run: the ${DEADLINE_S}s deadline leaves no time" | tee "$LOGS/$name.log"
    rc=124
  else
    echo "=== $name (limit ${limit}s): $*" | tee -a "$OUT/check.log"
    timeout --kill-after=10 "$limit" "$@" > "$LOGS/$name.log" 2>&1
    rc=$?
  fi
  local dt=$(( $(date +%s) - t0 ))
  local status=ok
  [ $rc = 124 ] || [ $rc = 137 ] && status=timeout
  [ $rc != 0 ] && [ $status = ok ] && status=failed
  if grep -q '^SKIPPED:' "$LOGS/$name.log" 2>/dev/null; then status=skipped; fi
  printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$rc" "$dt" >> "$SUMMARY"
  tail -n 25 "$LOGS/$name.log" | sed "s/^/[$name] /" | tee -a "$OUT/check.log"
  tar -czf "$OUT/logs.tar.gz" -C "$LOGS" .
  echo "=== $name: $status (rc $rc, ${dt}s)" | tee -a "$OUT/check.log"
}

# -- 0: the environment (and the ml_collections wheel when the image lacks it)
if ! "$PY" -c "import ml_collections" 2>/dev/null; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  fi
fi
step env "$T_ENV" bash -c "
  (nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv 2>/dev/null || echo 'no nvidia-smi');
  nproc; uptime;
  '$PY' -c 'import sys, ml_collections, jax, flax, optax; print(sys.version.split()[0], \"jax\", jax.__version__, \"flax\", flax.__version__, \"optax\", optax.__version__); print(jax.devices())';
  '$PY' -c 'import torch, torchvision; print(\"torch\", torch.__version__, \"torchvision\", torchvision.__version__, \"cuda\", torch.cuda.is_available())' 2>/dev/null || echo 'torch: not installed'"
if ! "$PY" -c "import ml_collections" 2>/dev/null; then
  echo "ml_collections is missing and no .whl/ wheel was found: run bench/gpu/fetch_wheels.sh here and carry .whl" | tee -a "$OUT/check.log"
fi
HAVE_TORCH=0
"$PY" -c "import torch, torchvision" 2>/dev/null && HAVE_TORCH=1
if [ "$DRY" = 0 ] && ! "$PY" -c "import jax, sys; sys.exit(jax.default_backend() != 'gpu')" 2>/dev/null; then
  echo "warning: JAX sees no GPU; the figures below are not GPU figures" | tee -a "$OUT/check.log"
fi

# -- 1: tests (not in the X101=1 second call)
if [ "${X101:-0}" != 1 ] || [ "$DRY" = 1 ]; then
  step tests "$T_TESTS" "$PY" -m pytest -q -x -p no:cacheprovider $TESTS
fi

# -- 2: the framework comparison
if [ "$HAVE_TORCH" = 0 ]; then
  for p in ${CMP_PRESETS:-gpu_r50 gpu_x101}; do
    step "compare_$p" 30 bash -c "echo 'SKIPPED: torch/torchvision not installed'; \
      '$PY' bench/frameworks.py compare --preset $p --out '$OUT/frameworks_$p.json'"
  done
elif [ "$DRY" = 1 ]; then
  step compare_toy "$T_CMP" "$PY" bench/frameworks.py compare --preset toy $CMP_ARGS \
    --dtypes "$DTYPES" --device "$TORCH_DEVICE" --out "$OUT/frameworks_toy.json"
else
  if [ "${X101:-0}" = 1 ]; then
    step compare_gpu_x101 "$T_CMP_X101" "$PY" bench/frameworks.py compare --preset gpu_x101 $CMP_ARGS \
      --no-agree --dtypes "$DTYPES" --device cuda --out "$OUT/frameworks_gpu_x101.json"
  else
    step compare_gpu_r50 "$T_CMP_R50" "$PY" bench/frameworks.py compare --preset gpu_r50 $CMP_ARGS \
      --dtypes "$DTYPES" --device cuda --out "$OUT/frameworks_gpu_r50.json"
  fi
fi

# -- 3: dh25_pa training throughput
step train_dh25_pa "$T_TRAIN" "$PY" bench/gpu/train_throughput.py $TRAIN_ARGS --out "$OUT/train_dh25_pa.json"

# -- summary.json
"$PY" - "$SUMMARY" "$OUT" "$DRY" "$T_START" <<'EOF'
import json, os, sys, time, glob
tsv, out, dry, t0 = sys.argv[1], sys.argv[2], sys.argv[3] == "1", int(sys.argv[4])
steps = [dict(zip(("step", "status", "rc", "seconds"), l.rstrip("\n").split("\t"))) for l in open(tsv) if l.strip()]
res = {"dry_run": dry, "total_seconds": int(time.time()) - t0, "steps": steps, "results": {}}
for f in sorted(glob.glob(os.path.join(out, "*.json"))):
    if f.endswith("summary.json"):
        continue
    d = json.load(open(f))
    key = os.path.basename(f)[:-5]
    if "runs" in d:
        res["results"][key] = {"ratios": d.get("ratios"), "runs": [
            {k: r.get(k) for k in ("framework", "compute_dtype", "returncode", "train_step_median",
                                    "train_images_per_second", "predict_seconds_per_image",
                                    "predict_unpasted_seconds_per_image",
                                    "peak_rss_mb", "device_peak_mb", "device_peak_mb_train")}
            for r in d["runs"]], "skipped": d.get("skipped")}
        if "agreement" in d:
            a = d["agreement"]
            res["results"][key]["agreement_max_rel"] = max(v.get("max_rel", 0) for v in a["tensors"].values())
            res["results"][key]["boxes_matched_iou0.99_tv_aligned"] = a["detections_tv_aligned_True"]["ref_matched_iou0.99"]
    else:
        res["results"][key] = {k: d.get(k) for k in ("step_seconds_median", "images_per_second_median_step",
                                                     "images_per_second_wall", "peak_rss_mb", "device_peak_mb_end",
                                                     "compute_dtype", "weights")}
        share = d.get("backbone_share")
        if share:
            res["results"][key]["backbone_share"] = {k: v for k, v in share.items() if k != "backbone_seconds"}
json.dump(res, open(os.path.join(out, "summary.json"), "w"), indent=1)
print(json.dumps(res, indent=1))
bad = [s for s in steps if s["status"] not in ("ok", "skipped")]
print(f"{len(steps) - len(bad)}/{len(steps)} steps ok or skipped; {res['total_seconds']} s; output in {out}")
sys.exit(1 if bad else 0)
EOF
