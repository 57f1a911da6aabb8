#!/usr/bin/env bash
# The paper-size DDPM++ training step, msdiff vs the official networks (benches/official_edm.py: the
# multi-stage authors' EDM fork, run by PyTorch), measured in the same run, interleaved per network:
#   unified (cifar10-edm-unified vs EDMPrecond(SongUNet)), then the multi-stage net with the whole
#   batch in stage 0, 1, 2 (cifar10-edm-multistage --policy single --stage j vs MultistageUNet,
#   whose forward routes a batch to one decoder: the official training draws one stage per batch).
# Each process: one warm-up step, the median of $REPEATS. docs/BENCHMARKS.md, "Against the official
# networks", records the results.
#
# Usage: benches/official_edm.sh EDM_DIR      (from the repository root; EDM_DIR = the edm/ folder of
#   LucasYFL/Multistage_Diffusion at 9b5df66, e.g. from `git clone` + `git checkout`)
# Environment: THREADS (2), BATCH (16), REPEATS (3), ROUNDS (1), PYTHON (a python with torch 2.11,
#   numpy and requests), MSDIFF (the binary), LOG (raw output file).
set -euo pipefail
cd "$(dirname "$0")/.."
EDM="${1:?usage: benches/official_edm.sh EDM_DIR (the edm/ folder of LucasYFL/Multistage_Diffusion)}"
[ -f "$EDM/training/networks.py" ] || { echo "official_edm.sh: $EDM/training/networks.py not found" >&2; exit 2; }
THREADS="${THREADS:-2}"
BATCH="${BATCH:-16}"
REPEATS="${REPEATS:-3}"
ROUNDS="${ROUNDS:-1}"
MSDIFF="${MSDIFF:-./target/release/msdiff}"
LOG="${LOG:-$(mktemp -t official_edm.XXXXXX.log)}"
. benches/python.sh official_edm.sh
"${PY[@]}" -c 'import numpy, requests' 2>/dev/null \
  || { echo "official_edm.sh: EDM's modules need numpy and requests next to torch (pip install --target DIR numpy requests; PYTHONPATH=DIR)" >&2; exit 2; }
[ -x "$MSDIFF" ] || scripts/with-libtorch cargo build --release >&2
export OMP_WAIT_POLICY=ACTIVE

median_of() { sed -n 's/.*median \([0-9.]*\) s over.*/\1/p' | head -n 1; }
echo "DDPM++ training step, batch $BATCH, $THREADS threads, $ROUNDS round(s), median of $REPEATS steps each; raw log: $LOG"
printf '\n| network | msdiff s/step | official (PyTorch) s/step | msdiff / official |\n|---|---:|---:|---:|\n'
for net in unified stage0 stage1 stage2; do
  for r in $(seq "$ROUNDS"); do
    if [ "$net" = unified ]; then
      args=(--preset cifar10-edm-unified)
    else
      args=(--preset cifar10-edm-multistage --policy single --stage "${net#stage}")
    fi
    ms="$(scripts/with-libtorch "$MSDIFF" --threads "$THREADS" bench train "${args[@]}" --batch "$BATCH" --repeats "$REPEATS" 2>&1 | tee -a "$LOG" | median_of)"
    of="$("${PY[@]}" benches/official_edm.py --edm "$EDM" --nets "$net" --batch "$BATCH" --repeats "$REPEATS" --threads "$THREADS" 2>&1 | tee -a "$LOG" | median_of)"
    awk -v n="$net" -v m="$ms" -v o="$of" 'BEGIN { printf "| %s | %.3f | %.3f | **%.2f** |\n", n, m, o, m / o }'
  done
done
