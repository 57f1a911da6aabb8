#!/usr/bin/env bash
# Fashion-MNIST CPU-scale reproduction of the paper's experiments (results: docs/RESULTS.md).
#
#   experiments/fashion-cpu/run.sh [OUT]          (from the repository root; OUT defaults to runs/fashion-cpu)
#
# Two lanes, one libtorch thread each, so a 2-core machine is kept busy:
#   lane A trains the six runs of this folder one after another (unified, multistage, separate,
#          ms-uniform, ms-snr, ms-mass; equal batch 64, equal STEPS, seed 0), then the two bf16 runs below;
#   lane B computes the reference statistics (first REF_N Fashion-MNIST training images), then the FID of
#          each checkpoint as soon as it exists: unified / multistage / separate at every EVAL_STEPS point
#          (FID vs iterations), ms-uniform / ms-snr at the last step (split ablation) and ms-mass (stage
#          probabilities) at the last two EVAL_STEPS.
# FID: EMA weights, N samples (seeds 0..N-1), EDM Heun with HEUN_LEVELS noise levels, Inception TF 2015-12-05,
# tf1-bilinear-299, against the REF_N training images. Every result is a JSON line in OUT/fid.jsonl.
# bf16 (docs/PERF.md, "Effect of bf16"): lane A then trains unified-bf16 and multistage-bf16 (the same
# configs with --precision bf16); lane B evaluates them, samples the fp32 unified / multistage checkpoints
# in bf16, and repeats unified's final FID with other seeds (N..2N-1) to show the sampling noise.
# BF16=0 leaves that part out.
# Re-running skips finished work (trained runs, logged FIDs) and resumes an interrupted training run.
# Then: cargo run --release --example fashion_cpu_report -- OUT docs/results   (tables + plots for
# docs/RESULTS.md and docs/PERF.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
HERE=experiments/fashion-cpu
OUT=${1:-runs/fashion-cpu}
BIN=${MSDIFF:-target/release/msdiff}
STEPS=${STEPS:-2000}
EVAL_STEPS=${EVAL_STEPS:-"500 1000 2000"}
N=${N:-3000}
REF_N=${REF_N:-10000}
HEUN_LEVELS=${HEUN_LEVELS:-10}
BF16=${BF16:-1}
DATA=fashion-mnist # the copy from scripts/fetch-assets (run it once: scripts/fetch-assets fashion-mnist fid-weights)
if [ $((REF_N % 1000)) -eq 0 ]; then REF=$OUT/fm-train$((REF_N / 1000))k.safetensors; else REF=$OUT/fm-train$REF_N.safetensors; fi
[ -x "$BIN" ] || { echo "build first: scripts/with-libtorch cargo build --release (or set MSDIFF=path/to/msdiff)" >&2; exit 2; }
mkdir -p "$OUT"
stamp() { date -u +%FT%TZ; }
ckpt() { printf '%s/%s/checkpoints/step-%08d' "$OUT" "$1" "$2"; }

RUNS="unified multistage separate ms-uniform ms-snr ms-mass"
[ "$BF16" = 1 ] && RUNS="$RUNS unified-bf16 multistage-bf16"

lane_a() {
  for run in $RUNS; do
    if [ -d "$(ckpt $run $STEPS)" ]; then echo "$(stamp) lane A: $run already trained"; continue; fi
    local t0=$SECONDS config=${run%-bf16} precision=fp32
    [ "$config" != "$run" ] && precision=bf16
    if [ -f "$OUT/$run/config.toml" ]; then
      echo "$(stamp) lane A: resume $run"
      "$BIN" train --resume "$OUT/$run" --steps "$STEPS" --precision $precision --threads 1 --quiet >>"$OUT/$run.train.log" 2>&1
    else
      echo "$(stamp) lane A: train $run"
      "$BIN" train --config "$HERE/$config.toml" --run "$OUT/$run" --steps "$STEPS" --precision $precision --threads 1 --quiet >>"$OUT/$run.train.log" 2>&1
    fi
    echo "{\"run\":\"$run\",\"steps\":$STEPS,\"train_wall_s\":$((SECONDS - t0)),\"threads\":1}" >>"$OUT/train-times.jsonl"
  done
  touch "$OUT/.lane-a-done"
}

evaluate() { # run step [precision [first-seed]]: sampling precision (fp32) and seeds first..first+N-1 (0)
  local c; c=$(ckpt "$1" "$2")
  local prec=${3:-fp32} s0=${4:-0} tag=""
  # fid.jsonl keys precision / seeds only where they differ from the defaults, so older lines still match.
  [ "$prec" != fp32 ] && tag="$tag\"precision\":\"$prec\","
  [ "$s0" != 0 ] && tag="$tag\"seeds\":\"$s0-$((s0 + N - 1))\","
  if [ -f "$OUT/fid.jsonl" ] && grep -qF "\"run\":\"$1\",\"step\":$2,$tag\"fid\"" "$OUT/fid.jsonl"; then return; fi
  while [ ! -d "$c" ]; do
    if [ -f "$OUT/.lane-a-done" ]; then echo "lane B: $c never appeared (see $OUT/$1.train.log)" >&2; return 1; fi
    sleep 15
  done
  local threads=1; [ -f "$OUT/.lane-a-done" ] && threads=0
  echo "$(stamp) lane B: FID of $1 at step $2 (N=$N, $prec, seeds from $s0)"
  local t0=$SECONDS
  "$BIN" eval --checkpoint "$c" --ref "$REF" --n "$N" --seeds "$s0-$((s0 + N - 1))" --precision "$prec" --sampler heun --steps "$HEUN_LEVELS" \
    --threads $threads --quiet --log "$OUT/fid-raw.jsonl" >>"$OUT/eval.log" 2>&1
  local fid; fid=$(tail -n 1 "$OUT/fid-raw.jsonl" | sed -E 's/.*"fid":([^,]*),.*/\1/')
  echo "{\"run\":\"$1\",\"step\":$2,$tag\"fid\":$fid,\"n\":$N,\"eval_wall_s\":$((SECONDS - t0)),\"threads\":$threads}" >>"$OUT/fid.jsonl"
  echo "$(stamp) lane B: $1 step $2 $prec FID $fid"
}

lane_b() {
  # The reference statistics (another process may be computing them already).
  while [ ! -f "$REF" ] && pgrep -f "fid stats.*$REF" >/dev/null; do sleep 15; done
  if [ ! -f "$REF" ]; then
    echo "$(stamp) lane B: reference statistics of $REF_N training images"
    "$BIN" fid stats --data "$DATA" --limit "$REF_N" --threads 1 --quiet --out "$REF" >>"$OUT/eval.log" 2>&1
  fi
  for run in unified multistage separate; do
    for s in $EVAL_STEPS; do evaluate $run "$s"; done
  done
  for run in ms-uniform ms-snr; do evaluate $run "$STEPS"; done
  for s in $(echo $EVAL_STEPS | tr ' ' '\n' | tail -n 2); do evaluate ms-mass "$s"; done
  if [ "$BF16" = 1 ]; then
    evaluate unified "$STEPS" bf16
    evaluate multistage "$STEPS" bf16
    evaluate unified "$STEPS" fp32 "$N"
    evaluate unified-bf16 "$STEPS"
    evaluate multistage-bf16 "$STEPS"
  fi
}

rm -f "$OUT/.lane-a-done"
lane_a & A=$!
lane_b & B=$!
trap 'kill $A $B 2>/dev/null' INT TERM
wait $A; wait $B
echo "$(stamp) done: $OUT/fid.jsonl"
