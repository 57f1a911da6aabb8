#!/usr/bin/env bash
# FID at 10,000 samples of the fashion-vp runs (issue 17, docs/RESULTS.md part 2), one line per (run, step)
# appended to OUT/fid.jsonl.
#
#   experiments/fashion-vp/fid.sh            (from anywhere; it cd's to the repository root)
#
# Protocol: EMA weights; N images, seeds 0..N-1 (the same initial noise for every model); DPM-Solver-3 with
# 20 function evaluations, log-SNR spacing, from t = 1 to t = 1e-4 (the paper's sampler; `msdiff eval`'s
# defaults for a VP model); Inception TF 2015-12-05 pool_3 features, TF1 bilinear resize of the 28x28 images
# to 299x299 (docs/FID.md); reference: the statistics of the first REF_N Fashion-MNIST training images,
# computed once into OUT/fm-trainREF_Nk.safetensors.
# Which: every run of RUNS at every step of STEPS that has a checkpoint; missing checkpoints are skipped
# (run it again when they exist), finished pairs are skipped, so it is idempotent and resumable.
# CPU: one libtorch thread (THREADS) beside the two training lanes of run.sh, at normal priority (the lanes
# are niced, so this takes one core and the lanes share the other). Cost on one core of this 2-core
# machine: sampling ~N x 20 network evaluations plus N Inception forwards (~23 min per 10,000).
# Env: OUT ($HOME/msdiff-runs/fashion-vp), MSDIFF (target/release/msdiff), N (10000), REF_N (10000),
#   RUNS ("unified multistage ms-mixed separate"), STEPS ("20000 10000"), THREADS (1).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$HOME/msdiff-runs/fashion-vp}
BIN=${MSDIFF:-target/release/msdiff}
N=${N:-10000}
REF_N=${REF_N:-10000}
RUNS=${RUNS:-"unified multistage ms-mixed separate"}
STEPS=${STEPS:-"20000 10000"}
THREADS=${THREADS:-1}
[ -x "$BIN" ] || { echo "no msdiff binary at $BIN (scripts/with-libtorch cargo build --release, or set MSDIFF)" >&2; exit 2; }
case "$REF_N" in *000) REF=$OUT/fm-train$((REF_N / 1000))k.safetensors ;; *) REF=$OUT/fm-train$REF_N.safetensors ;; esac
stamp() { date -u +%FT%TZ; }
run_bin() { scripts/with-libtorch env OMP_NUM_THREADS="$THREADS" "$BIN" "$@" --threads "$THREADS" --quiet; }

if [ ! -f "$REF" ]; then
  echo "$(stamp) reference statistics: first $REF_N Fashion-MNIST training images -> $REF"
  t0=$SECONDS
  run_bin fid stats --data fashion-mnist --limit "$REF_N" --out "$REF" >>"$OUT/fid.log" 2>&1
  echo "{\"reference\":\"$REF\",\"n\":$REF_N,\"wall_s\":$((SECONDS - t0)),\"threads\":$THREADS}" >>"$OUT/fid-times.jsonl"
fi

for step in $STEPS; do
  for run in $RUNS; do
    ck=$(printf '%s/%s/checkpoints/step-%08d' "$OUT" "$run" "$step")
    [ -f "$ck/state.json" ] || { echo "$(stamp) $run step $step: no checkpoint yet, skipped"; continue; }
    if [ -f "$OUT/fid.jsonl" ] && grep -qF "\"run\":\"$run\",\"step\":$step,\"n\":$N," "$OUT/fid.jsonl"; then continue; fi
    echo "$(stamp) FID of $run at step $step (N = $N)"
    t0=$SECONDS
    run_bin eval --checkpoint "$ck" --ref "$REF" --n "$N" --sampler dpm-solver-3 --steps 20 --spacing logsnr --t-end 1e-4 \
      --log "$OUT/fid-raw.jsonl" >>"$OUT/fid.log" 2>&1
    fid=$(tail -n 1 "$OUT/fid-raw.jsonl" | sed -E 's/.*"fid":([^,}]*).*/\1/')
    echo "{\"run\":\"$run\",\"step\":$step,\"n\":$N,\"ref_n\":$REF_N,\"fid\":$fid,\"sampler\":\"dpm-solver-3\",\"nfe\":20,\"t_end\":1e-4,\"eval_wall_s\":$((SECONDS - t0)),\"threads\":$THREADS}" >>"$OUT/fid.jsonl"
    echo "$(stamp) $run step $step: FID $fid"
  done
done
echo "$(stamp) done: $OUT/fid.jsonl"
