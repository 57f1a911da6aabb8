#!/usr/bin/env bash
# GPU check: versions, the CUDA-marked tests, and msdiff vs PyTorch timings on one NVIDIA GPU.
#
# Two halves:
#   scripts/gpu-check.sh --prepare     on the build machine (Rust + libtorch): builds the release
#                                      binary and the tests/cuda.rs test binary into target/gpu-bin/
#   scripts/gpu-check.sh               on the GPU machine (no Rust needed): runs everything below
#                                      within ~8 minutes (hard per-stage timeouts and a total budget)
#
# GPU machine assumptions: PyTorch 2.11 (CUDA 13) in /opt/torch/.venv (override: PYTHON, TORCH_LIB).
# Results: $OUT (or ./gpu-check-out): gpu-check.log (everything), versions.txt, tests.txt,
# results.md (the table for docs/PERF.md, with the card named).
# Environment: BUDGET (total seconds, default 450), STAGE_TIMEOUT (per timed run, default 45),
#   REPEATS (5), TRAIN ("reference-6.5m:128 cifar10-multistage:64"), SAMPLE ("reference-6.5m:256
#   cifar10-multistage:128"), NFE (20), BIN (target/gpu-bin), DEVICE (cuda; cpu for a smoke test).
set -uo pipefail
cd "$(dirname "$0")/.."
BIN="${BIN:-target/gpu-bin}"

if [ "${1:-}" = "--prepare" ]; then
  set -e
  scripts/with-libtorch cargo build --release
  scripts/with-libtorch cargo test --release --test cuda --no-run 2>&1 | tee /tmp/gpu-check-prepare.log
  t=$(grep -o 'target/release/deps/cuda-[0-9a-f]*' /tmp/gpu-check-prepare.log | tail -1)
  mkdir -p "$BIN"
  cp target/release/msdiff "$BIN/msdiff"
  cp "$t" "$BIN/cuda-tests"
  git describe --always --dirty > "$BIN/commit" 2>/dev/null || echo "(no git)" > "$BIN/commit"
  echo "prepared $BIN: $(ls "$BIN" | tr '\n' ' ')"
  exit 0
fi

OUT="${OUT:-./gpu-check-out}"
mkdir -p "$OUT"
BUDGET="${BUDGET:-450}"
STAGE_TIMEOUT="${STAGE_TIMEOUT:-45}"
REPEATS="${REPEATS:-5}"
TRAIN="${TRAIN:-reference-6.5m:128 cifar10-multistage:64}"
SAMPLE="${SAMPLE:-reference-6.5m:256 cifar10-multistage:128}"
NFE="${NFE:-20}"
DEVICE="${DEVICE:-cuda}"   # cpu: a smoke test of this script on a machine without a GPU
TORCH_LIB="${TORCH_LIB:-/opt/torch/.venv/lib/python3.12/site-packages/torch/lib}"
PYTHON="${PYTHON:-/opt/torch/.venv/bin/python}"
export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
MSDIFF="$BIN/msdiff"
LOG="$OUT/gpu-check.log"
: > "$LOG"
START=$SECONDS

say() { echo "$*" | tee -a "$LOG"; }
left() { echo $((BUDGET - (SECONDS - START))); }
# run NAME TIMEOUT CMD...: output to the log (and $OUT/NAME.txt); never longer than TIMEOUT or the budget left.
run() {
  local name="$1" t="$2"; shift 2
  local l; l=$(left)
  if [ "$l" -le 5 ]; then say "SKIPPED (time budget spent): $name"; return 124; fi
  [ "$t" -gt "$l" ] && t="$l"
  say "## $name (timeout ${t}s): $*"
  timeout -k 5 "$t" "$@" > "$OUT/$name.txt" 2>&1
  local rc=$?
  cat "$OUT/$name.txt" >> "$LOG"
  [ $rc -ne 0 ] && say "## $name: exit $rc$([ $rc -eq 124 ] && echo ' (timed out)')"
  return $rc
}

[ -x "$MSDIFF" ] || { say "gpu-check: $MSDIFF missing: run scripts/gpu-check.sh --prepare on the build machine and copy $BIN along"; exit 2; }

# 1. Versions and linkage.
{
  echo "date: $(date -u +%FT%TZ)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 || echo "nvidia-smi: not available"
  "$PYTHON" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version(), "gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")' 2>&1
  echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
  echo "ldd $MSDIFF:"
  ldd "$MSDIFF" | grep -E 'torch|c10|cuda|not found' 2>&1
} > "$OUT/versions.txt" 2>&1
cat "$OUT/versions.txt" | tee -a "$LOG"
CARD=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
CARD="${CARD:-unknown GPU}"
# A smoke test on the CPU names the processor instead.
[ "$DEVICE" = cpu ] && CARD="CPU: $(lscpu 2>/dev/null | sed -n 's/^Model name:[[:space:]]*//p' | head -1), $(nproc) threads"
if grep -q '=> not found' "$OUT/versions.txt"; then
  say "gpu-check: unresolved libraries (libcuda.so.1 is expected to be missing only on a machine without a driver):"
  grep '=> not found' "$OUT/versions.txt" | tee -a "$LOG"
fi

# 2. The CUDA-marked tests (one thread: they share the GPU and libtorch's global RNG).
if [ -x "$BIN/cuda-tests" ]; then
  run tests 150 "$BIN/cuda-tests" --test-threads 1 --nocapture
  grep -E '^test |test result|SKIPPED|max rel err|losses' "$OUT/tests.txt" | tee -a "$OUT/tests-summary.txt"
else
  say "SKIPPED: $BIN/cuda-tests missing (scripts/gpu-check.sh --prepare)"
fi

# 3. Timings: msdiff and PyTorch on the same nets, back to back in this call.
params() { "$MSDIFF" --device cpu info --preset "$1" 2>/dev/null | sed -n 's/^total stored: \([0-9]*\) params.*/\1/p;s/^parameters: \([0-9]*\).*/\1/p' | head -1; }
num() { sed -n "$1" "$2" 2>/dev/null | head -1; }
ROWS=()
for prec in fp32 bf16; do
  for pb in $TRAIN; do
    p="${pb%%:*}"; b="${pb##*:}"; n=$(params "$p")
    run "train-$p-$prec-msdiff" "$STAGE_TIMEOUT" "$MSDIFF" --quiet --device "$DEVICE" bench train --preset "$p" --batch "$b" --repeats "$REPEATS" --precision "$prec"
    m=$(num 's/.*median \([0-9.]*\) s.*/\1/p' "$OUT/train-$p-$prec-msdiff.txt")
    run "train-$p-$prec-torch" "$STAGE_TIMEOUT" "$PYTHON" benches/reference_unet.py --device "$DEVICE" --preset "$p" --batch "$b" --repeats "$REPEATS" --precision "$prec" ${n:+--expect-params $n}
    t=$(num 's/.*median \([0-9.]*\) s.*/\1/p' "$OUT/train-$p-$prec-torch.txt")
    ROWS+=("| train step | $p | $b | $prec | ${m:--} | ${t:--} |")
  done
  for pb in $SAMPLE; do
    p="${pb%%:*}"; b="${pb##*:}"; n=$(params "$p")
    run "sample-$p-$prec-msdiff" "$STAGE_TIMEOUT" "$MSDIFF" --quiet --device "$DEVICE" bench sample --presets "$p" --batch "$b" --nfe "$NFE" --repeats "$REPEATS" --precision "$prec"
    m=$(num 's/.* x batch [0-9]*: \([0-9.]*\) s,.*/\1/p' "$OUT/sample-$p-$prec-msdiff.txt")
    run "sample-$p-$prec-torch" "$STAGE_TIMEOUT" "$PYTHON" benches/reference_unet.py --device "$DEVICE" --preset "$p" --batch "$b" --repeats "$REPEATS" --precision "$prec" --sample-nfe "$NFE" ${n:+--expect-params $n}
    t=$(num 's/.*median \([0-9.]*\) s.*/\1/p' "$OUT/sample-$p-$prec-torch.txt")
    ROWS+=("| sampling, $NFE NFE | $p | $b | $prec | ${m:--} | ${t:--} |")
  done
done

# 4. The table (ratio = msdiff / PyTorch, > 1: msdiff slower; images/s: batch / msdiff seconds, for
#    sampling the images finished per second at NFE evaluations each).
{
  echo "Card: $CARD. $(grep '^torch' "$OUT/versions.txt"). msdiff $(cat "$BIN/commit" 2>/dev/null || echo '(commit not recorded)'). Repeats: $REPEATS (median). Date: $(date -u +%F)."
  echo
  echo "| what | preset | batch | precision | msdiff s | PyTorch s | ratio | msdiff images/s |"
  echo "|---|---|---|---|---|---|---|---|"
  for r in "${ROWS[@]}"; do
    b=$(echo "$r" | awk -F'|' '{gsub(/ /,"",$4); print $4}')
    m=$(echo "$r" | awk -F'|' '{gsub(/ /,"",$6); print $6}'); t=$(echo "$r" | awk -F'|' '{gsub(/ /,"",$7); print $7}')
    ratio=$(awk -v m="$m" -v t="$t" 'BEGIN { if (m+0 > 0 && t+0 > 0) printf "%.2f", m / t; else print "-" }')
    ips=$(awk -v m="$m" -v b="$b" 'BEGIN { if (m+0 > 0) printf "%.1f", b / m; else print "-" }')
    echo "$r $ratio | $ips |"
  done
  echo
  echo "Tests: $(grep 'test result' "$OUT/tests.txt" 2>/dev/null || echo 'not run')"
} > "$OUT/results.md"
cat "$OUT/results.md" | tee -a "$LOG"
say "gpu-check: done in $((SECONDS - START)) s; results in $OUT/results.md"
