#!/usr/bin/env bash
# Fashion-MNIST with the paper's DPM-Solver recipe and long training (issue 17, part 2 of docs/RESULTS.md).
#
#   nohup setsid experiments/fashion-vp/run.sh > $HOME/msdiff-runs/fashion-vp.log 2>&1 &
#
# (from anywhere; it cd's to the repository root). Env: OUT (default $HOME/msdiff-runs/fashion-vp, outside the
# clone so the next session can resume; checkpoints are never committed), MSDIFF (default
# $HOME/msdiff-runs/bin/msdiff: a frozen copy of a release build, so that rebuilds of target/release/msdiff,
# sometimes broken mid-edit, do not disturb hours of training; the first copy is HEAD caea6bc), STEPS (20000),
# THREADS (1: libtorch threads per lane; 2 for a single lane on an otherwise idle 2-core machine), LANE_A
# ("unified ms-mixed") and LANE_B ("multistage separate"): the runs of each lane in order; set to nothing
# (LANE_B=) for an empty lane, e.g. one run on both cores: STEPS=10000 THREADS=2 LANE_A=separate LANE_B= run.sh.
#
# The recipe (every config of this folder; they differ only in decoders, architecture, stage policy, split):
#   VP-SDE (beta 0.1 .. 20), eps prediction, t ~ U[1e-5, 1]; stage j drawn with probability 1/3 (weights =
#   "uniform", the authors' DPM-Solver code); Algorithm-1 split docs/split-fashion-mnist.json (t = 0.288, 0.604);
#   decoders widest near the data (stage 0 = lowest noise); Adam lr 2e-3, 100 warm-up steps, clip 1 (as part 1);
#   EMA 0.998 (half-life 346 steps = 1.7 % of 20k, like the paper's 0.9999 over 250k-450k); batch 64, 20,000
#   steps (10x part 1), seed 0 (same data order for every run); checkpoint every 2,000 steps, all kept.
#   Data: fashion-mnist:/work/shared/data/fashion-mnist (the frozen binary needs a folder; with fetched-asset
#   support `spec = "fashion-mnist"` is the same data).
# The four runs:
#   unified     one decoder of width 16 (317,121 params; 0.117 GFLOP forward / image)
#   multistage  main arm: shared encoder, decoders 24/16/8, policy "single" (one stage per batch, the
#               authors' code); 760,355 params; stage nets 0.221 / 0.117 / 0.052 GFLOP
#   ms-mixed    second arm: the same network, policy "mixed" (a stage per sample)
#   separate    three full U-Nets with decoders 24/16/8, nothing shared, policy "single" (1,012,803 params)
# Sizes: the `small` layout at width 16 with one residual block per level, the networks of part 1, so that
#   the unified model (317k params) is capacity-limited on Fashion-MNIST (the regime the paper's argument is
#   about) and only the recipe and the length change. Width 8 (decoders 12/8/4 vs 8) was measured too and
#   saves too little to be worth a less comparable setup (50-step runs, 1 thread, not niced, on a machine
#   busy with builds, load 2.5-3.8; s/step width 8 vs 16: unified 0.32 vs 0.40, multistage 0.28 vs 0.48,
#   ms-mixed 0.41 vs 0.66, separate 0.28 vs 0.63): at these sizes per-op overhead dominates, not FLOPs.
#   CPU time per step at width 16 (steps 20-60, 1 thread, /proc utime+stime; i.e. the step time on an
#   otherwise idle core): unified 0.44-0.48 s, multistage 0.46-0.49 s, ms-mixed 0.55 s, separate 0.44 s,
#   so 20k steps ~ 2.5-3.1 h of one core each; lane A ~ 5.7 h, lane B ~ 5.2 h when the machine is idle,
#   longer while builds run (the lanes then get 15-45 % of a core: 1-3 s/step).
#
# CPU discipline: two lanes, each one libtorch thread by default (--threads 1, OMP_NUM_THREADS=1,
# OMP_WAIT_POLICY=PASSIVE) under nice -n 19, and the session's autogroup niced to 19 as well (see below;
# hence `setsid`), so builds and tests of other work keep priority and the lanes use the idle cores (a
# multi-threaded libtorch job sharing cores with a build was measured up to 138x slower).
#   lane A: unified, then ms-mixed        lane B: multistage, then separate
# (the main comparison, unified vs multistage, finishes first; the lanes are about equally long.)
#
# Resumable: re-running skips finished runs (checkpoint step-STEPS exists) and resumes an interrupted one
# from its newest checkpoint (`msdiff train --resume`; bit-exact); its metrics.jsonl is first cut back to
# that step so no step is logged twice. A larger STEPS extends finished runs the same way. Only one
# run.sh per OUT at a time (flock on OUT/.lock).
# Stop cleanly: kill -TERM $(cat OUT/.pid) (run.sh, started in the background, ignores SIGINT): it sends
# SIGINT to the training processes (OUT/.lane-A.pid, .lane-B.pid), each finishes its step and saves a
# checkpoint there (an off-cadence step-N), and the lanes stop. (SIGTERM to msdiff itself would lose the
# steps since its last checkpoint.)
#
# Output (OUT):
#   RUN/config.toml, RUN/metrics.jsonl (every 10 steps: loss, loss_by_stage, grad_norm, lr, elapsed_s, which
#     restarts at 0 in each resumed segment), RUN/checkpoints/step-00002000 ... step-00020000 (weights, EMA,
#     Adam; every one kept), RUN/samples/ (EMA sample grid at the end, DPM-Solver-3 20 NFE), RUN/loss.png
#   RUN.train.log     msdiff's output per run (resolved configuration, errors)
#   train-times.jsonl one line per training segment: run, lane, from/to step, wall seconds, exit code
#   .pid, .lane-A.pid, .lane-B.pid, .lock, .stop   while running / after a stop
# This script's own log is wherever the launch line sends it ($HOME/msdiff-runs/fashion-vp.log above).
#
# Evaluation comes next (deliberately not in this script; it runs on the checkpoints afterwards or
# alongside): for EVERY checkpoint of every run, the per-interval validation loss (the eps-prediction
# loss on held-out Fashion-MNIST test images, t restricted to each stage's interval [0, 0.288), [0.288,
# 0.604), [0.604, 1] with fixed seeds, EMA weights); and FID at 10,000 samples (EMA, DPM-Solver-3, 20 NFE
# to t = 1e-4; reference: training-set statistics, stating the tool, resize and N) on the checkpoints;
# curves against iterations and against training FLOPs (policy x per-stage cost from `msdiff info`:
# unified 3 x 0.117 = 0.352 GFLOP/image, multi-stage / separate 3 x mean(0.221, 0.117, 0.052) = 0.390).
set -uo pipefail
cd "$(dirname "$0")/../.."
HERE=$PWD/experiments/fashion-vp
OUT=${OUT:-${1:-$HOME/msdiff-runs/fashion-vp}}
BIN=${MSDIFF:-$HOME/msdiff-runs/bin/msdiff}
STEPS=${STEPS:-20000}
THREADS=${THREADS:-1}
LANE_A=${LANE_A-"unified ms-mixed"}
LANE_B=${LANE_B-"multistage separate"}
[ -x "$BIN" ] || { echo "no binary at $BIN: cp target/release/msdiff \$HOME/msdiff-runs/bin/ (or set MSDIFF)" >&2; exit 2; }
mkdir -p "$OUT"
exec 9>"$OUT/.lock"
flock -n 9 || { echo "another run.sh is already running on $OUT" >&2; exit 3; }
rm -f "$OUT/.stop"
echo $$ >"$OUT/.pid"
# With kernel.sched_autogroup_enabled = 1 (as here), nice only ranks processes within one session's
# autogroup; between sessions the CPU is shared equally, so `nice -n 19` alone left the lanes ~45 % of the
# CPU each against a build. Under setsid this script leads its own session: nice that whole group too.
if [ "$(ps -o sid= -p $$ | tr -d ' ')" = $$ ] && [ -w /proc/$$/autogroup ]; then
  echo 19 >/proc/$$/autogroup 2>/dev/null || true
else
  echo "note: not a session leader (launch with setsid) or no autogroup: only per-process nice 19 applies" >&2
fi
stamp() { date -u +%FT%TZ; }
ckpt() { printf '%s/%s/checkpoints/step-%08d' "$OUT" "$1" "$2"; }
newest_step() { # newest complete checkpoint step of run $1 (empty if none)
  local d; d=$(ls -d "$OUT/$1"/checkpoints/step-* 2>/dev/null | sort | tail -n 1)
  [ -n "$d" ] && [ -f "$d/state.json" ] && echo $((10#${d##*step-}))
}

train_run() { # lane run
  local lane=$1 run=$2 from args
  from=$(newest_step "$run")
  if [ -n "$from" ]; then
    echo "$(stamp) lane $lane: resume $run from step $from"
    # Lines past the checkpoint are recomputed by the resumed run: drop them.
    if [ -f "$OUT/$run/metrics.jsonl" ]; then
      awk -v s="$from" 'match($0, /"step":[0-9]+/) { if (substr($0, RSTART + 7, RLENGTH - 7) + 0 <= s) print }' \
        "$OUT/$run/metrics.jsonl" >"$OUT/$run/metrics.jsonl.tmp" && mv "$OUT/$run/metrics.jsonl.tmp" "$OUT/$run/metrics.jsonl"
    fi
    args=(--resume "$OUT/$run")
  else
    from=0
    echo "$(stamp) lane $lane: train $run"
    rm -f "$OUT/$run/metrics.jsonl"
    args=(--config "$HERE/$run.toml" --run "$OUT/$run")
  fi
  local t0=$SECONDS start; start=$(stamp)
  nice -n 19 env OMP_NUM_THREADS="$THREADS" OMP_WAIT_POLICY=PASSIVE \
    "$BIN" train "${args[@]}" --steps "$STEPS" --threads "$THREADS" --quiet >>"$OUT/$run.train.log" 2>&1 &
  local pid=$!
  echo $pid >"$OUT/.lane-$lane.pid"
  wait $pid
  local rc=$?
  rm -f "$OUT/.lane-$lane.pid"
  local to; to=$(newest_step "$run"); to=${to:-0}
  echo "{\"run\":\"$run\",\"lane\":\"$lane\",\"from_step\":$from,\"to_step\":$to,\"steps\":$STEPS,\"train_wall_s\":$((SECONDS - t0)),\"threads\":$THREADS,\"nice\":19,\"start\":\"$start\",\"end\":\"$(stamp)\",\"rc\":$rc}" >>"$OUT/train-times.jsonl"
  echo "$(stamp) lane $lane: $run exited $rc at step $to"
  return $rc
}

lane() { # name runs...
  local name=$1; shift
  for run in "$@"; do
    [ -f "$OUT/.stop" ] && break
    if [ -d "$(ckpt "$run" "$STEPS")" ]; then echo "$(stamp) lane $name: $run already trained"; continue; fi
    train_run "$name" "$run"
    local rc=$?
    if [ $rc = 130 ] || [ -f "$OUT/.stop" ]; then echo "$(stamp) lane $name: stopped"; break; fi
    [ $rc != 0 ] && echo "$(stamp) lane $name: $run FAILED (rc $rc, see $OUT/$run.train.log); next run" >&2
  done
  rm -f "$OUT/.lane-$name.pid"
}

stop() {
  touch "$OUT/.stop"
  for l in A B; do [ -f "$OUT/.lane-$l.pid" ] && kill -INT "$(cat "$OUT/.lane-$l.pid")" 2>/dev/null; done
}
main() {
  echo "$(stamp) fashion-vp: OUT=$OUT BIN=$BIN STEPS=$STEPS THREADS=$THREADS lane A: $LANE_A; lane B: $LANE_B"
  # shellcheck disable=SC2086
  lane A $LANE_A & A=$!
  # shellcheck disable=SC2086
  lane B $LANE_B & B=$!
  trap stop INT TERM
  wait $A; wait $B
  # After a signal, wait returns early: wait again for the lanes to finish saving.
  wait $A 2>/dev/null; wait $B 2>/dev/null
  rm -f "$OUT/.pid"
  echo "$(stamp) done: $OUT (train-times.jsonl)"
}

# Everything above is only definitions: bash has parsed the whole file before main runs, so editing this
# file (e.g. a git pull) cannot derail a running instance.
main "$@"; exit $?
