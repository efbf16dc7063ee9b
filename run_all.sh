#!/usr/bin/env bash
# The full benchmark: every method on MetalDAM and EBC-1..3, shots 1,2,4,8,all, 5 draws each, as
# one resumable sweep, then the leaderboard, plots and report. Re-running it finishes only what is
# missing. Per-phase times are printed and appended to results/run_all-times.tsv.
#
#   ./run_all.sh                                   # standard profile (GPU-sized)
#   BENCH_PROFILE=quick ./run_all.sh               # CPU-sized
#   BENCH_DRAWS=3 BENCH_METHODS=scratch,matssl BENCH_DATASETS=metaldam BENCH_SHOTS=1,4 ./run_all.sh
#   BENCH_WORKERS=4 ./run_all.sh                   # local worker processes (default: one per GPU, else 1)
#
# Reads data from $BENCH_DATA_ROOT (default: ../shared/data beside the project, else datasets/).
# Grid points with more shots than a dataset's pool (EBC-2 has 4 training images) are skipped.
set -uo pipefail
cd "$(dirname "$0")"

profile="${BENCH_PROFILE:-standard}"
draws="${BENCH_DRAWS:-5}"
methods="${BENCH_METHODS:-scratch,imagenet,simclr,byol,densecl,matssl,pscl}"
datasets="${BENCH_DATASETS:-metaldam,ebc1,ebc2,ebc3}"
shots="${BENCH_SHOTS:-1,2,4,8,all}"
name="${BENCH_SWEEP_NAME:-run_all-$profile}"
if [ -z "${BENCH_DATA_ROOT:-}" ] && [ -d ../shared/data ]; then
  export BENCH_DATA_ROOT="$(cd ../shared/data && pwd)"
fi
workers=()
[ -n "${BENCH_WORKERS:-}" ] && workers=(--workers "$BENCH_WORKERS")
[ -n "${BENCH_WORKERS_PER_GPU:-}" ] && workers+=(--workers-per-gpu "$BENCH_WORKERS_PER_GPU")

times=results/run_all-times.tsv
mkdir -p results
[ -f "$times" ] || printf 'date\tprofile\tphase\tseconds\tcommand\n' > "$times"
phase() {  # phase NAME COMMAND...: run it, print and record its time; keep going on failure
  local label=$1; shift
  local t0=$(date +%s) status
  "$@"; status=$?
  local dt=$(( $(date +%s) - t0 ))
  echo "[run_all] $label: ${dt} s (exit status $status)"
  printf '%s\t%s\t%s\t%s\t%s\n' "$(date -u +%FT%TZ)" "$profile" "$label" "$dt" "$*" >> "$times"
  return $status
}

start=$(date +%s)
phase sweep python -m bench sweep --methods "$methods" --datasets "$datasets" --shots "$shots" \
  --draws "$draws" --profile "$profile" --name "$name" "${workers[@]}"
sweep_status=$?
phase leaderboard python -m bench leaderboard --profile "$profile"
phase plots python -m bench plot --profile "$profile"
phase report python -m bench report --profile "$profile"
total=$(( $(date +%s) - start ))
echo "[run_all] total ($profile profile, $draws draws): ${total} s"
printf '%s\t%s\t%s\t%s\t%s\n' "$(date -u +%FT%TZ)" "$profile" total "$total" "./run_all.sh" >> "$times"
if [ "$sweep_status" -ne 0 ]; then
  echo "[run_all] some grid points did not finish (see above); re-run ./run_all.sh to retry them"
fi
exit "$sweep_status"
