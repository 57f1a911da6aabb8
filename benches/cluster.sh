#!/usr/bin/env bash
# Algorithm 1 (`msdiff cluster --method optimal`) against a plain float64 PyTorch implementation of
# the same algorithm (benches/cluster_reference.py), measured in the same run, interleaved:
#   for each round: msdiff (mixed, the default), msdiff --precision f64, PyTorch
# Wall time of each whole command (process start, data loading and, for PyTorch, `import torch`
# included), the median over rounds, the ratio to PyTorch's median, and each run's cuts (msdiff's
# two paths use the same draws and must agree; PyTorch draws its own samples, so its cuts differ by
# Monte-Carlo noise). docs/BENCHMARKS.md, "Timestep clustering", records the results.
#
# Usage: benches/cluster.sh            (from the repository root; builds msdiff if needed)
# Environment: THREADS (2), ROUNDS (3), SAMPLES (5000), DATA (a folder with
#   train-images-idx3-ubyte.gz; default: the fetched Fashion-MNIST, else ../shared's copy),
#   PYTHON (a python with torch 2.11), MSDIFF (the binary), LOG (raw output file).
# OpenMP's wait policy is set to ACTIVE for all three (the quiet-machine setting; msdiff would
# choose PASSIVE by itself if the load average says the machine is busy, PyTorch never does).
set -euo pipefail
cd "$(dirname "$0")/.."

THREADS="${THREADS:-2}"
ROUNDS="${ROUNDS:-3}"
SAMPLES="${SAMPLES:-5000}"
MSDIFF="${MSDIFF:-./target/release/msdiff}"
LOG="${LOG:-$(mktemp -t cluster_bench.XXXXXX.log)}"
CACHE="${MSDIFF_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/msdiff}"
if [ -z "${DATA:-}" ]; then
  for d in "$CACHE/assets/fashion-mnist" ../shared/data/fashion-mnist; do
    [ -f "$d/train-images-idx3-ubyte.gz" ] && { DATA="$d"; break; }
  done
fi
[ -n "${DATA:-}" ] || { echo "cluster.sh: no Fashion-MNIST folder (run scripts/fetch-assets fashion-mnist, or set DATA)" >&2; exit 2; }

. benches/python.sh cluster.sh
[ -x "$MSDIFF" ] || scripts/with-libtorch cargo build --release >&2

median() { sort -g | awk '{v[NR]=$1} END {print v[int(NR/2)+1]}'; }  # upper median
wall() { # command... -> "seconds<TAB>last output line"; raw output to $LOG
  local t0 t1 out
  t0=$(date +%s.%N)
  out="$(OMP_WAIT_POLICY=ACTIVE "$@" 2>&1)"
  t1=$(date +%s.%N)
  printf '%s\n' "$out" >>"$LOG"
  printf '%s\t%s\n' "$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b - a}')" "$(cuts <<<"$out")"
}
cuts() { # the cuts line of either program
  sed -n -e 's/^  t (VP): *\(.*\)/\1/p' -e 's/.*: cuts \([0-9.]*, [0-9.]*\);.*/\1/p' | tail -n 1
}

echo "Algorithm 1, $DATA, K = $SAMPLES, $THREADS threads, $ROUNDS rounds; raw log: $LOG"
declare -a mixed f64 torch
for r in $(seq "$ROUNDS"); do
  IFS=$'\t' read -r t c < <(wall scripts/with-libtorch "$MSDIFF" cluster --data "fashion-mnist:$DATA" --samples "$SAMPLES" \
    --threads "$THREADS" --quiet --out "$(mktemp -t split.XXXXXX.json)")
  mixed+=("$t"); echo "round $r: msdiff mixed $t s (cuts $c)"
  IFS=$'\t' read -r t c < <(wall scripts/with-libtorch "$MSDIFF" cluster --data "fashion-mnist:$DATA" --samples "$SAMPLES" \
    --threads "$THREADS" --quiet --precision f64 --out "$(mktemp -t split.XXXXXX.json)")
  f64+=("$t"); echo "round $r: msdiff f64   $t s (cuts $c)"
  IFS=$'\t' read -r t c < <(wall "${PY[@]}" benches/cluster_reference.py --data "$DATA" --samples "$SAMPLES" --threads "$THREADS")
  torch+=("$t"); echo "round $r: PyTorch f64 $t s (cuts $c)"
done
m=$(printf '%s\n' "${mixed[@]}" | median); f=$(printf '%s\n' "${f64[@]}" | median); p=$(printf '%s\n' "${torch[@]}" | median)
awk -v m="$m" -v f="$f" -v p="$p" 'BEGIN {
  printf "\n| run | median wall | / PyTorch |\n|---|---:|---:|\n"
  printf "| msdiff cluster (mixed) | %.2f s | **%.2fx** |\n", m, m / p
  printf "| msdiff cluster --precision f64 | %.2f s | %.2fx |\n", f, f / p
  printf "| PyTorch float64 reference | %.2f s | 1.00x |\n", p
}'
