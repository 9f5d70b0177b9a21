#!/usr/bin/env bash
# One prepared accelerator check (at most ~8 minutes on one GPU):
#   (a) device-independent tests of the suite on the accelerator backend,
#   (b) every family's CIFAR-10 / CelebA-64 train step in float32 and bfloat16
#       on random data of the right shape: img/s, step ms, compile s, FLOPs, MFU,
#   (c) configs/gan.py:cifar10_dcgan trained for a fixed time on random data
#       (loss curve, no NaN),
#   (d) everything as JSON lines in $OUT_DIR/accelerator_check.jsonl.
#
#   experiments/accelerator_check.sh [--dry_run] [--peak_tflops=989] [--out_dir=DIR]
#
# --dry_run: CPU, tiny (one test file, gan.py:smoke timed and trained for 5 s):
# checks the script itself in under a minute (tests/test_accelerator_check.py).
# --peak_tflops: the device's peak (e.g. 989 for H100/H200 dense bf16) for mfu.
# Env: PYTHON (default: python), TEST_TIMEOUT_S (default 120), BENCH_BUDGET_S
# (default 180: later bench entries are skipped, and say so), TRAIN_SECONDS
# (default 60), DRIVER_TIMEOUT_S (default 330). Worst case 120 + 330 s = 7.5 min.
set -u -o pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
DRY_RUN=0
PEAK=0
OUT_DIR=${OUT_DIR:-accelerator_check_out}
for arg in "$@"; do
  case "$arg" in
    --dry_run) DRY_RUN=1 ;;
    --peak_tflops=*) PEAK="${arg#*=}" ;;
    --out_dir=*) OUT_DIR="${arg#*=}" ;;
    *) echo "error: unknown argument $arg" >&2; exit 2 ;;
  esac
done
mkdir -p "$OUT_DIR"
JSONL="$OUT_DIR/accelerator_check.jsonl"
: > "$JSONL"
log() { echo "$1" | tee -a "$JSONL"; }

if [ "$DRY_RUN" = 1 ]; then
  export JAX_PLATFORMS=cpu
  TESTS=(tests/test_objectives.py)
  PY_ARGS=(--dry_run)
else
  # Device-independent and fast: losses, distances, the ResNet / literature
  # models (parameter counts, 2-step runs, bf16 vs f32).
  TESTS=(tests/test_objectives.py tests/test_metrics_distances.py tests/test_resnet.py
         tests/test_literature_configs.py)
  PY_ARGS=(--train_seconds="${TRAIN_SECONDS:-60}" --bench_budget_s="${BENCH_BUDGET_S:-180}")
fi

# (a) Tests on the accelerator: tests/conftest.py does not pin a platform,
# so they run on JAX's default backend (the GPU/TPU where there is one).
backend=$($PYTHON -c 'import jax; print(jax.default_backend())' 2>/dev/null)
start=$(date +%s)
timeout "${TEST_TIMEOUT_S:-120}" $PYTHON -m pytest "${TESTS[@]}" -q -x -p no:cacheprovider \
  > "$OUT_DIR/tests.log" 2>&1
rc=$?
summary=$(tail -n 1 "$OUT_DIR/tests.log" | tr -d '"=')
log "{\"kind\": \"tests\", \"backend\": \"$backend\", \"rc\": $rc, \"seconds\": $(( $(date +%s) - start )), \"summary\": \"$summary\"}"

# (b) + (c) Step timings and the training run (JSON lines on stdout and in $JSONL).
timeout "${DRIVER_TIMEOUT_S:-330}" $PYTHON experiments/accelerator_check.py --part=all --out="$JSONL" --peak_tflops="$PEAK" "${PY_ARGS[@]}" \
  > "$OUT_DIR/driver.log" 2> "$OUT_DIR/driver.err"
drc=$?
grep '^{' "$OUT_DIR/driver.log" | grep -E '"kind": "(bench|bench_skipped|train_summary)"' || true
if [ $drc -ne 0 ]; then
  tail -n 20 "$OUT_DIR/driver.err" >&2
  exit $drc
fi
exit $rc
