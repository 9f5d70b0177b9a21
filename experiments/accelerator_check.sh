#!/usr/bin/env bash
# One prepared accelerator check (at most 8 minutes on one GPU), every result
# a JSON line on stdout and in $OUT_DIR/accelerator_check.jsonl:
#   tests     device-independent tests of the suite on the accelerator backend
#   bench     every family's CIFAR-10 / CelebA-64 (literature) train step in
#             float32 and bfloat16 on random data: img/s, step ms, compile s,
#             FLOPs, MFU
#   train     configs/gan.py:cifar10_dcgan trained for a fixed time on random
#             data (loss curve, no NaN)
#   real      configs/vae.py trained on the embedded mnist5k by the real loop
#             (loss curve, evaluations), then the bit-exact resume check
#   features  FID Inception and DINOv2 feature throughput (random weights
#             where the real ones are absent)
#   pipeline  the input pipeline's images/s (memory and array_record)
# Each part of experiments/accelerator_check.py runs in its own process under
# its own timeout, so a failing or hanging part costs only its own time and is
# reported as {"kind": "part_failed", ...}; the exit status is then 1.
#
#   experiments/accelerator_check.sh [--dry_run] [--peak_tflops=989] [--out_dir=DIR]
#
# --dry_run: CPU, tiny sizes, every part and code path (tests/test_accelerator_check.py);
# the literature configs of bench are traced at their full size, not run;
# timeouts default to 900 s.
# --peak_tflops: the device's peak (e.g. 989 for H100/H200 dense bf16) for mfu.
# Env: PYTHON (default: python); TRAIN_SECONDS (20), BENCH_BUDGET_S (100: later
# bench entries are skipped, and say so), REAL_STEPS (400); timeouts in s:
# TEST_TIMEOUT_S (60), BENCH_TIMEOUT_S (140), TRAIN_TIMEOUT_S (60),
# REAL_TIMEOUT_S (120), FEATURES_TIMEOUT_S (60), PIPELINE_TIMEOUT_S (40).
# Worst case 480 s = 8 min. The real part runs with
# --xla_gpu_deterministic_ops=true (GPU reductions may otherwise differ from
# run to run, which is not what the resume check is about).
set -u -o pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # The checkout, installed or not.
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
# Compiled programs are kept between the parts' processes and the resume
# check's runs (and between reruns of the check).
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$OUT_DIR/jax_cache}
JSONL="$OUT_DIR/accelerator_check.jsonl"
: > "$JSONL"
log() { echo "$1" | tee -a "$JSONL"; }

if [ "$DRY_RUN" = 1 ]; then
  export JAX_PLATFORMS=cpu
  # On a CPU the timeouts only catch a hang (a shared CPU can be slow).
  for t in TEST BENCH TRAIN REAL FEATURES PIPELINE; do
    eval "export ${t}_TIMEOUT_S=\${${t}_TIMEOUT_S:-900}"
  done
  TESTS=(tests/test_objectives.py)
  PY_ARGS=(--dry_run)
else
  # Device-independent and fast: losses, distances, the ResNet / literature
  # models (parameter counts, 2-step runs, bf16 vs f32).
  TESTS=(tests/test_objectives.py tests/test_metrics_distances.py tests/test_resnet.py
         tests/test_literature_configs.py)
  PY_ARGS=(--train_seconds="${TRAIN_SECONDS:-20}" --bench_budget_s="${BENCH_BUDGET_S:-100}"
           --real_steps="${REAL_STEPS:-400}")
fi
REAL_XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_deterministic_ops=true"

# Tests on the accelerator: tests/conftest.py does not pin a platform, so
# they run on JAX's default backend (the GPU/TPU where there is one).
backend=$($PYTHON -c 'import jax; print(jax.default_backend())' 2>/dev/null)
start=$(date +%s)
timeout "${TEST_TIMEOUT_S:-60}" $PYTHON -m pytest "${TESTS[@]}" -q -x -p no:cacheprovider \
  > "$OUT_DIR/tests.log" 2>&1
rc=$?
summary=$(tail -n 1 "$OUT_DIR/tests.log" | tr -d '"=')
log "{\"kind\": \"tests\", \"backend\": \"$backend\", \"rc\": $rc, \"seconds\": $(( $(date +%s) - start )), \"summary\": \"$summary\"}"
status=$(( rc != 0 ))

# run_part PART TIMEOUT [ENV=VALUE...]: one part of the driver in its own process.
run_part() {
  local part=$1 limit=$2
  shift 2
  local t0 prc
  t0=$(date +%s)
  env "$@" timeout "$limit" $PYTHON experiments/accelerator_check.py --part="$part" \
    --out="$JSONL" --peak_tflops="$PEAK" "${PY_ARGS[@]}" \
    > "$OUT_DIR/$part.log" 2> "$OUT_DIR/$part.err"
  prc=$?
  grep '^{' "$OUT_DIR/$part.log" || true
  if [ $prc -ne 0 ]; then
    local why
    why=$(tail -n 1 "$OUT_DIR/$part.err" | tr -d '"\\' | cut -c1-300)
    [ $prc -eq 124 ] && why="timed out after $limit s"
    log "{\"kind\": \"part_failed\", \"part\": \"$part\", \"rc\": $prc, \"seconds\": $(( $(date +%s) - t0 )), \"reason\": \"$why\"}"
    tail -n 20 "$OUT_DIR/$part.err" >&2
    status=1
  fi
}

run_part bench "${BENCH_TIMEOUT_S:-140}"
run_part train "${TRAIN_TIMEOUT_S:-60}"
run_part real "${REAL_TIMEOUT_S:-120}" XLA_FLAGS="$REAL_XLA_FLAGS"
run_part features "${FEATURES_TIMEOUT_S:-60}"
run_part pipeline "${PIPELINE_TIMEOUT_S:-40}"
exit $status
