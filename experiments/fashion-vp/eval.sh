#!/usr/bin/env bash
# Per-interval validation loss of every checkpoint of every fashion-vp run (issue 17, docs/RESULTS.md
# part 2), appended to OUT/val-loss.jsonl: the eps-prediction loss on the first VAL_LIMIT Fashion-MNIST
# test images with t restricted to each Algorithm-1 interval ([1e-5, 0.288), [0.288, 0.604), [0.604, 1]),
# EMA weights, seed 0, so every checkpoint of every model sees the same noisy inputs. Idempotent: a
# checkpoint already in the log (same n, per-image losses written) is skipped, so it can run beside the
# training lanes as new checkpoints appear (one thread, niced: ~13 s per checkpoint on an idle core).
# Every image's loss per interval goes to OUT/val-per-image/RUN/step-N.npy: the models see the same
# noisy inputs, so fashion_vp_report pairs them image by image for the standard error of differences.
#
#   experiments/fashion-vp/eval.sh            (from anywhere; it cd's to the repository root)
# Env: OUT (default $HOME/msdiff-runs/fashion-vp), MSDIFF (default target/release/msdiff), VAL_LIMIT (2000),
#   RUNS ("unified multistage ms-mixed separate").
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$HOME/msdiff-runs/fashion-vp}
BIN=${MSDIFF:-target/release/msdiff}
VAL_LIMIT=${VAL_LIMIT:-2000}
RUNS=${RUNS:-"unified multistage ms-mixed separate"}
LOG="$OUT/val-loss.jsonl"
[ -x "$BIN" ] || { echo "no msdiff binary at $BIN (scripts/with-libtorch cargo build --release, or set MSDIFF)" >&2; exit 2; }
touch "$LOG"
for run in $RUNS; do
  for ck in "$OUT/$run"/checkpoints/step-*; do
    [ -f "$ck/state.json" ] || continue
    step=$((10#${ck##*step-}))
    if grep -F "\"checkpoint\":\"$ck\"" "$LOG" | grep -qF "\"n\":$VAL_LIMIT," \
      && [ -f "$OUT/val-per-image/$run/step-$step.npy" ]; then
      continue
    fi
    nice -n 10 scripts/with-libtorch "$BIN" val-loss --checkpoint "$ck" --data fashion-mnist:test \
      --split docs/split-fashion-mnist.json --limit "$VAL_LIMIT" --seed 0 --threads 1 --quiet --log "$LOG" \
      --per-image "$OUT/val-per-image"
  done
done
