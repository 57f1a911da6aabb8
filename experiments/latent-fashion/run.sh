#!/usr/bin/env bash
# Latent diffusion on Fashion-MNIST, end to end (issue 15; results in docs/LATENT.md §7):
#
#   nohup setsid experiments/latent-fashion/run.sh > $HOME/msdiff-runs/latent-fashion.log 2>&1 &
#
# (from anywhere; it cd's to the repository root). Env: OUT (default $HOME/msdiff-runs/latent-fashion, outside
# the clone; never committed), MSDIFF (default target/release/msdiff: copy it somewhere first if you rebuild
# while this runs), AE (an autoencoder folder to use instead of training one), STEPS (8000), N (FID samples,
# 10000), THREADS (libtorch threads per training lane, 1).
#
# The pipeline; every step is skipped when its output exists, so re-running resumes (an interrupted
# training resumes from its newest checkpoint, bit-exact):
#   1. autoencoder: `small-kl-f4` (1x32x32 -> 4x8x8, 953,413 parameters) trained by
#      configs/autoencoder-fashion-kl.toml (1200 steps, ~12 min on one core), or $AE  -> OUT/autoencoder
#   2. latent cache: the 60,000 training images padded by 2 pixels of -1 to 32x32, KL means, scale 1/std
#      -> OUT/latents.safetensors
#   3. two LDMs on the cache, in parallel lanes of THREADS libtorch threads each: unified.toml
#      (small-ldm-unified) and multistage.toml (small-ldm-multistage, the official LDM routing at steps
#      442 / 631, one stage per batch with probability 1/3)  -> OUT/unified, OUT/multistage
#   4. reference statistics: the first 10,000 training images, padded the same way -> OUT/fid-ref.safetensors
#   5. per model: FID of N decoded samples (EMA weights, DPM-Solver++(2M), 20 steps, time-uniform; seeds
#      0..N-1) -> OUT/eval.jsonl; a 64-sample grid -> OUT/RUN-samples/
#   6. reconstructions of 1000 test images by the autoencoder (PSNR, L1) -> OUT/reconstructions.png, OUT/ae-eval.txt
# Wall times of every step go to OUT/times.jsonl.
set -uo pipefail
cd "$(dirname "$0")/../.."
HERE=$PWD/experiments/latent-fashion
OUT=${OUT:-$HOME/msdiff-runs/latent-fashion}
BIN=${MSDIFF:-$PWD/target/release/msdiff}
STEPS=${STEPS:-8000}
N=${N:-10000}
THREADS=${THREADS:-1}
[ -x "$BIN" ] || { echo "no msdiff binary at $BIN (cargo build --release, or set MSDIFF)" >&2; exit 2; }
mkdir -p "$OUT"
exec 9>"$OUT/.lock"
flock -n 9 || { echo "another run.sh is already running on $OUT" >&2; exit 3; }
stamp() { date -u +%FT%TZ; }
timed() { # name command...: runs it, records its wall time
  local name=$1 t0=$SECONDS rc; shift
  echo "$(stamp) $name: $*"
  "$@"; rc=$?
  echo "{\"step\":\"$name\",\"wall_s\":$((SECONDS - t0)),\"rc\":$rc,\"end\":\"$(stamp)\"}" >>"$OUT/times.jsonl"
  [ $rc = 0 ] || { echo "$(stamp) $name FAILED (rc $rc)" >&2; exit $rc; }
}
msd() { OMP_WAIT_POLICY=PASSIVE "$BIN" --quiet "$@"; }

# 1. autoencoder
if [ ! -f "$OUT/autoencoder/autoencoder.json" ]; then
  if [ -n "${AE:-}" ]; then
    cp -r "$AE" "$OUT/autoencoder.tmp" && mv "$OUT/autoencoder.tmp" "$OUT/autoencoder"
  else
    if [ -d "$OUT/ae-run/checkpoints" ]; then a=(--resume "$OUT/ae-run"); else a=(--config configs/autoencoder-fashion-kl.toml --run "$OUT/ae-run"); fi
    timed autoencoder msd --threads 2 autoencoder train "${a[@]}"
    cp -r "$OUT/ae-run/autoencoder" "$OUT/autoencoder.tmp" && mv "$OUT/autoencoder.tmp" "$OUT/autoencoder"
  fi
fi
# 2. latent cache
[ -f "$OUT/latents.safetensors" ] ||
  timed encode msd --threads 2 autoencoder encode --model "$OUT/autoencoder" --data fashion-mnist --pad 2 --batch 256 \
    --out "$OUT/latents.safetensors"
# 3. the two LDMs, one lane each
train() { # run
  local run=$1
  if [ -d "$OUT/$run/checkpoints/step-$(printf %08d "$STEPS")" ]; then return 0; fi
  if ls -d "$OUT/$run"/checkpoints/step-* >/dev/null 2>&1; then
    timed "train-$run" msd --threads "$THREADS" train --resume "$OUT/$run" --steps "$STEPS"
  else
    sed "s|^spec = .*|spec = \"latents:$OUT/latents.safetensors\"|" "$HERE/$run.toml" >"$OUT/$run.toml"
    timed "train-$run" msd --threads "$THREADS" train --config "$OUT/$run.toml" --run "$OUT/$run" --steps "$STEPS"
  fi
}
train unified & U=$!
train multistage & M=$!
wait $U || exit 1
wait $M || exit 1
# 4. reference statistics
[ -f "$OUT/fid-ref.safetensors" ] ||
  timed fid-ref msd --threads 2 fid stats --data fashion-mnist --pad 2 --limit 10000 --out "$OUT/fid-ref.safetensors"
# 5. FID and sample grids
for run in unified multistage; do
  grep -q "\"run\":\"$run\"" "$OUT/eval.jsonl" 2>/dev/null ||
    timed "eval-$run" msd --threads 2 eval --checkpoint "$OUT/$run" --ref "$OUT/fid-ref.safetensors" --n "$N" \
      --sampler dpm-solver++-2m --steps 20 --spacing time-uniform --log "$OUT/eval.jsonl.$run"
  if [ -f "$OUT/eval.jsonl.$run" ]; then
    sed "s|^{|{\"run\":\"$run\",|" "$OUT/eval.jsonl.$run" >>"$OUT/eval.jsonl" && rm "$OUT/eval.jsonl.$run"
  fi
  [ -d "$OUT/$run-samples" ] ||
    timed "samples-$run" msd --threads 2 sample --model "$OUT/$run" --seeds 0-63 \
      --sampler dpm-solver++-2m --steps 20 --spacing time-uniform --out "$OUT/$run-samples"
done
# 6. reconstructions
ae_eval() { msd --threads 2 autoencoder eval --model "$OUT/autoencoder" --data fashion-mnist:test --pad 2 --limit 1000 \
  --picture "$OUT/reconstructions.png" >"$OUT/ae-eval.txt.tmp" && mv "$OUT/ae-eval.txt.tmp" "$OUT/ae-eval.txt"; }
[ -f "$OUT/ae-eval.txt" ] || timed ae-eval ae_eval
echo "$(stamp) done: $OUT (times.jsonl, eval.jsonl)"
