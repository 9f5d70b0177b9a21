#!/usr/bin/env bash
# The default runs whose numbers the config headers, the README and docs/
# record: configs/{vae,gan,vaegan}.py and their :conditional variants, each as
# `python -m vaegan_jax.main` runs it (no flags beyond --workdir), one after
# the other, under /usr/bin/time -v (wall time, peak RSS); then the 10000-sample
# evaluations the docs quote (VAE run on to 3000 steps, GAN best checkpoint,
# VAE-GAN at 3000 and 5000 steps). Run it on a quiet machine: nothing else
# running, so that the times mean what the docs say.
#
#   bash experiments/default_runs.sh [OUT_DIR]     # default /tmp/default_runs
#   python experiments/default_runs_summary.py [OUT_DIR]
#
# About 40 minutes on a 2-core CPU. OUT_DIR must not hold earlier runs (a
# rerun would resume them).
set -euo pipefail
OUT=${1:-/tmp/default_runs}
mkdir -p "$OUT"
PY=${PYTHON:-python}

run() {  # name, then main's flags
  local name=$1; shift
  echo "$(date -u +%T) $name" >&2
  /usr/bin/time -v -o "$OUT/$name.time" "$PY" -m vaegan_jax.main --workdir="$OUT/$name" "$@" \
      > "$OUT/$name.log" 2>&1
}

evaluate() {  # name, workdir, then evaluate's flags
  local name=$1 dir=$2; shift 2
  echo "$(date -u +%T) evaluate $name" >&2
  /usr/bin/time -v -o "$OUT/eval_$name.time" "$PY" -m vaegan_jax.evaluate --workdir="$dir" \
      --num_samples=10000 --out="$OUT/eval_$name.json" "$@" > "$OUT/eval_$name.log" 2>&1
}

run vae --config=configs/vae.py
run gan --config=configs/gan.py
# keep_checkpoints only keeps step 3000 for its evaluation; it changes nothing else.
run vaegan --config=configs/vaegan.py --config.train.keep_checkpoints=11
run vae_conditional --config=configs/vae.py:conditional
run gan_conditional --config=configs/gan.py:conditional
run vaegan_conditional --config=configs/vaegan.py:conditional
# The VAE run on to 3000 steps (no schedule depends on num_steps, so this is
# the 3000-step run's trajectory; its time is the two runs' together).
cp -r "$OUT/vae" "$OUT/vae3000"
run vae3000 --config=configs/vae.py --config.train.num_steps=3000
evaluate vae3000 "$OUT/vae3000"
evaluate gan_best "$OUT/gan" --step=best
evaluate vaegan3000 "$OUT/vaegan" --step=3000
evaluate vaegan "$OUT/vaegan"
echo "$(date -u +%T) done" >&2
