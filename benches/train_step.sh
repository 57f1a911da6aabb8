#!/usr/bin/env bash
# Training step (forward + backward + Adam), msdiff vs a faithful PyTorch re-implementation
# (benches/reference_unet.py), measured in the same run, interleaved:
#   for each preset: msdiff, torch, msdiff, torch, ... ($ROUNDS rounds each)
# Each process does one warm-up step and reports the median of $REPEATS steps; the table shows the
# median over rounds of those medians, the ratio msdiff / PyTorch (> 1 = msdiff slower), the
# minimum over rounds and its ratio (the better estimate when other jobs share the cores) and the
# median peak RSS. The PyTorch model asserts that its parameter count equals msdiff's (taken live
# from `msdiff bench train` and cross-checked against `msdiff info`).
#
# Usage: benches/train_step.sh              (from the repository root; builds msdiff if needed)
# Environment: THREADS (2), ROUNDS (3), REPEATS (3), PRESETS ("reference-6.5m:32 small-multistage:64
#   small-unified:64"), PYTHON (a python with torch 2.11), MSDIFF (the binary), LOG (raw output file).
set -euo pipefail
cd "$(dirname "$0")/.."

THREADS="${THREADS:-2}"
ROUNDS="${ROUNDS:-3}"
REPEATS="${REPEATS:-3}"
PRESETS="${PRESETS:-reference-6.5m:32 small-multistage:64 small-unified:64}"
MSDIFF="${MSDIFF:-./target/release/msdiff}"
LOG="${LOG:-$(mktemp -t train_step.XXXXXX.log)}"

. benches/python.sh train_step.sh

[ -x "$MSDIFF" ] || scripts/with-libtorch cargo build --release >&2

median() { sort -g | awk '{v[NR]=$1} END {print v[int(NR/2)+1]}'; }  # upper median, as msdiff
minimum() { sort -g | head -1; }  # robust to other jobs' interference (which only adds time)

echo "machine: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores; $THREADS threads;" \
     "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "torch: $("${PY[@]}" -c 'import torch; print(torch.__version__)' 2>/dev/null); msdiff: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src || echo '+dirty')"
echo "rounds: $ROUNDS (interleaved msdiff, torch), each: 1 warm-up + median of $REPEATS steps; raw log: $LOG"
: > "$LOG"

declare -a ROWS
for pb in $PRESETS; do
  preset="${pb%%:*}"; batch="${pb##*:}"
  info_params="$(scripts/with-libtorch "$MSDIFF" info --preset "$preset" | sed -n 's/^total stored: \([0-9]*\) params.*/\1/p')"
  ms_t=(); ms_m=(); pt_t=(); pt_m=()
  for r in $(seq 1 "$ROUNDS"); do
    out="$(scripts/with-libtorch "$MSDIFF" --device cpu --threads "$THREADS" --quiet \
            bench train --preset "$preset" --batch "$batch" --repeats "$REPEATS")"
    printf '### msdiff %s b%s round %s\n%s\n' "$preset" "$batch" "$r" "$out" >> "$LOG"
    params="$(sed -n 's/^network: [^,]*, \([0-9]*\) parameters.*/\1/p' <<<"$out")"
    [ "$params" = "$info_params" ] || { echo "msdiff bench ($params) and info ($info_params) disagree" >&2; exit 1; }
    ms_t+=("$(sed -n 's/.*: median \([0-9.]*\) s over.*/\1/p' <<<"$out")")
    ms_m+=("$(sed -n 's/^peak resident memory: \([0-9]*\) MiB/\1/p' <<<"$out")")

    out="$("${PY[@]}" benches/reference_unet.py --preset "$preset" --batch "$batch" --repeats "$REPEATS" \
            --threads "$THREADS" --expect-params "$params" 2>&1)" || { echo "$out" >&2; exit 1; }
    printf '### torch %s b%s round %s\n%s\n' "$preset" "$batch" "$r" "$out" >> "$LOG"
    pt_t+=("$(sed -n 's/.*: median \([0-9.]*\) s over.*/\1/p' <<<"$out")")
    pt_m+=("$(sed -n 's/^peak resident memory: \([0-9]*\) MiB/\1/p' <<<"$out")")
    echo "  $preset b$batch round $r: msdiff ${ms_t[-1]} s, torch ${pt_t[-1]} s" >&2
  done
  mt="$(printf '%s\n' "${ms_t[@]}" | median)"; pt="$(printf '%s\n' "${pt_t[@]}" | median)"
  mtmin="$(printf '%s\n' "${ms_t[@]}" | minimum)"; ptmin="$(printf '%s\n' "${pt_t[@]}" | minimum)"
  mm="$(printf '%s\n' "${ms_m[@]}" | median)"; pm="$(printf '%s\n' "${pt_m[@]}" | median)"
  ROWS+=("$(awk -v p="$preset" -v b="$batch" -v n="$params" -v mt="$mt" -v pt="$pt" -v mm="$mm" -v pm="$pm" -v m0="$mtmin" -v p0="$ptmin" \
     -v ma="${ms_t[*]}" -v pa="${pt_t[*]}" 'BEGIN {
       printf "| %s | %d | %d | %.3f | %.3f | %.2f | %.3f | %.3f | %.2f | %d | %d | %s | %s |", p, b, n, mt, pt, mt / pt,
              m0, p0, m0 / p0, mm, pm, ma, pa }')")
done

echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| preset | batch | params (msdiff = torch) | msdiff s/step | PyTorch s/step | msdiff/PyTorch | msdiff min s | PyTorch min s | ratio of mins | msdiff peak RSS MiB | PyTorch peak RSS MiB | msdiff rounds (s) | PyTorch rounds (s) |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"
printf '%s\n' "${ROWS[@]}"
