#!/usr/bin/env bash
# The fashion-vp comparison (issue 17, docs/RESULTS.md part 2) sized for one H100/H200 in at most ~8 minutes of
# GPU time: the same recipe as the CPU runs (VP-SDE, eps, t ~ U[1e-5, 1], Algorithm-1 split, one stage per
# batch with probability 1/3, decoders widest near the data), at twice the width (encoder 32; decoders 48/32/16
# vs 32; separate = three full U-Nets 48/32/16), batch 256, bf16 (fp32 master weights), more iterations.
#
# Two halves, like scripts/gpu-check.sh:
#   experiments/fashion-vp/gpu.sh --prepare    on the build machine: builds the release binary and writes
#                                              target/gpu-bin/fashion-vp/ (binary, Fashion-MNIST, configs)
#   experiments/fashion-vp/gpu.sh              on the GPU machine (no Rust, no network), from the repository root,
#                                              with target/gpu-bin carried (~38 MB: binary 8 MB + data 30 MB)
# A CPU dry run of the whole pipeline with tiny settings (CI-free, ~2 minutes):
#   experiments/fashion-vp/gpu.sh --prepare && DEVICE=cpu STEPS=8 BATCH=8 VAL_LIMIT=16 OUT=/tmp/fvp-gpu \
#     experiments/fashion-vp/gpu.sh
#
# Env: OUT (results; default ./fashion-vp-gpu-out), DEVICE (cuda), STEPS (3000 per run), BATCH (256),
#   RUNS ("unified multistage ms-mixed separate"), RUN_TIMEOUT (90 s of training per run: the run is
#   interrupted with SIGINT, which saves a checkpoint, so a slow card still gives results), VAL_LIMIT (2000
#   test images for the per-interval validation loss), TORCH_LIB (the GPU machine's PyTorch libraries).
# Results under OUT: RUN/ (config, metrics.jsonl, checkpoints every STEPS/4 steps, loss.png, EMA sample grid),
#   val-loss.jsonl (per-interval validation loss of every checkpoint of every run: the eps-prediction loss
#   on held-out test images with t restricted to each Algorithm-1 interval, EMA weights, fixed seeds),
#   times.jsonl (wall seconds per step), summary.md (a table per run: steps reached, s/step, final
#   per-interval loss), gpu.log (everything), nvidia-smi.txt.
# Not on the GPU: FID (the Inception weights are not carried); the CPU runs give FID.
set -uo pipefail
cd "$(dirname "$0")/../.."
PREP=target/gpu-bin/fashion-vp

if [ "${1:-}" = "--prepare" ]; then
  set -e
  scripts/with-libtorch cargo build --release
  rm -rf "$PREP.tmp" && mkdir -p "$PREP.tmp/data"
  cp target/release/msdiff "$PREP.tmp/msdiff"
  data=${FASHION_MNIST:-}
  if [ -z "$data" ]; then
    for d in "$HOME/.cache/msdiff/assets/fashion-mnist" ../shared/data/fashion-mnist; do
      [ -f "$d/train-images-idx3-ubyte.gz" ] && data=$d && break
    done
  fi
  [ -n "$data" ] || { echo "no Fashion-MNIST: run scripts/fetch-assets fashion-mnist (or set FASHION_MNIST)" >&2; exit 2; }
  cp "$data"/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz "$PREP.tmp/data/"
  for run in unified multistage ms-mixed separate; do
    sed -e "s|^spec = .*|spec = \"fashion-mnist:$PREP/data\"|" \
        -e 's|^base_channels = 16|base_channels = 32|' \
        -e 's|^decoder_channels = \[24, 16, 8\]|decoder_channels = [48, 32, 16]|' \
        -e 's|^decoder_channels = \[16\]|decoder_channels = [32]|' \
        -e 's|^split = "../../docs/|split = "../../../docs/|' \
        "experiments/fashion-vp/$run.toml" >"$PREP.tmp/$run.toml"
    grep -q '^base_channels = 32' "$PREP.tmp/$run.toml" || { echo "cannot resize $run.toml" >&2; exit 2; }
  done
  git describe --always --dirty >"$PREP.tmp/commit" 2>/dev/null || echo "(no git)" >"$PREP.tmp/commit"
  rm -rf "$PREP" && mv "$PREP.tmp" "$PREP"
  echo "prepared $PREP ($(du -sh "$PREP" | cut -f1)); carry target/gpu-bin to the GPU machine"
  exit 0
fi

[ -x "$PREP/msdiff" ] || { echo "run experiments/fashion-vp/gpu.sh --prepare first (on the build machine)" >&2; exit 2; }
OUT=${OUT:-./fashion-vp-gpu-out}
DEVICE=${DEVICE:-cuda}
STEPS=${STEPS:-3000}
BATCH=${BATCH:-256}
RUNS=${RUNS:-unified multistage ms-mixed separate}
RUN_TIMEOUT=${RUN_TIMEOUT:-90}
VAL_LIMIT=${VAL_LIMIT:-2000}
TORCH_LIB=${TORCH_LIB:-/opt/torch/.venv/lib/python3.12/site-packages/torch/lib}
[ -d "$TORCH_LIB" ] && export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
PRECISION=bf16
[ "$DEVICE" = cpu ] && PRECISION=fp32   # CPU dry run: bf16 matmuls are slow on CPUs without AMX
mkdir -p "$OUT"
LOG="$OUT/gpu.log"
say() { echo "$(date -u +%FT%TZ) $*" | tee -a "$LOG"; }
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1 || echo "no nvidia-smi" >"$OUT/nvidia-smi.txt"
say "fashion-vp gpu: device $DEVICE, steps $STEPS, batch $BATCH, $PRECISION, runs: $RUNS; binary $(cat "$PREP/commit")"
M=("$PREP/msdiff" --device "$DEVICE" --quiet)
for run in $RUNS; do
  ckpt_every=$(( STEPS / 4 > 0 ? STEPS / 4 : 1 ))
  sed -e "s|^checkpoint_every = .*|checkpoint_every = $ckpt_every|" -e "s|^split = .*|split = \"$PWD/docs/split-fashion-mnist.json\"|" \
    -e "s|^spec = .*|spec = \"fashion-mnist:$PWD/$PREP/data\"|" "$PREP/$run.toml" >"$OUT/$run.toml"
  rm -rf "${OUT:?}/$run"
  t0=$SECONDS
  say "train $run"
  timeout -s INT -k 30 "$RUN_TIMEOUT" "${M[@]}" train --config "$OUT/$run.toml" --run "$OUT/$run" --steps "$STEPS" \
    --batch "$BATCH" --precision "$PRECISION" >>"$LOG" 2>&1
  rc=$?
  step=$(ls -d "$OUT/$run"/checkpoints/step-* 2>/dev/null | sort | tail -1 | sed 's/.*step-0*//')
  echo "{\"run\":\"$run\",\"phase\":\"train\",\"wall_s\":$((SECONDS - t0)),\"rc\":$rc,\"steps\":${step:-0}}" >>"$OUT/times.jsonl"
  say "$run: rc $rc, reached step ${step:-0} in $((SECONDS - t0)) s"
  t0=$SECONDS
  "${M[@]}" val-loss --checkpoint "$OUT/$run" --all --data "fashion-mnist:$PREP/data:test" --limit "$VAL_LIMIT" \
    --split docs/split-fashion-mnist.json --log "$OUT/val-loss.jsonl.$run" >>"$LOG" 2>&1
  rc=$?
  [ -f "$OUT/val-loss.jsonl.$run" ] && sed "s|^{|{\"run\":\"$run\",|" "$OUT/val-loss.jsonl.$run" >>"$OUT/val-loss.jsonl" &&
    rm "$OUT/val-loss.jsonl.$run"
  echo "{\"run\":\"$run\",\"phase\":\"val-loss\",\"wall_s\":$((SECONDS - t0)),\"rc\":$rc}" >>"$OUT/times.jsonl"
done
{
  echo "| run | steps | train s | final per-interval validation loss, EMA (t in [1e-5, 0.288) / [0.288, 0.604) / [0.604, 1]) |"
  echo "|---|---:|---:|---|"
  for run in $RUNS; do
    t=$(grep "\"run\":\"$run\",\"phase\":\"train\"" "$OUT/times.jsonl" | tail -1)
    l=$(grep "^{\"run\":\"$run\"," "$OUT/val-loss.jsonl" 2>/dev/null | tail -1)
    loss=$(echo "$l" | grep -o '"loss":\[[^]]*\]' | sed 's/"loss"://')
    echo "| $run | $(echo "$t" | sed 's/.*"steps":\([0-9]*\).*/\1/') | $(echo "$t" | sed 's/.*"wall_s":\([0-9]*\).*/\1/') | ${loss:-none} |"
  done
} >"$OUT/summary.md"
say "done: $OUT/summary.md"
cat "$OUT/summary.md"
