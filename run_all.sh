#!/usr/bin/env bash
# The full benchmark: every method on MetalDAM and EBC-1..3, shots 1,2,4,8,all, 5 draws each,
# then the leaderboard, plots and report. Resumable: runs already in the store are skipped.
#
#   BENCH_PROFILE=quick ./run_all.sh      # CPU-sized (default: standard, GPU-sized)
#   BENCH_DRAWS=3 BENCH_METHODS=scratch,matssl ./run_all.sh
#
# Reads data from $BENCH_DATA_ROOT (default: ../shared/data beside the project, else datasets/).
set -euo pipefail
cd "$(dirname "$0")"

profile="${BENCH_PROFILE:-standard}"
draws="${BENCH_DRAWS:-5}"
methods="${BENCH_METHODS:-scratch,imagenet,simclr,byol,densecl,matssl,pscl}"
if [ -z "${BENCH_DATA_ROOT:-}" ] && [ -d ../shared/data ]; then
  export BENCH_DATA_ROOT="$(cd ../shared/data && pwd)"
fi

# Shots levels per dataset: EBC-2's training pool has only 4 images.
declare -A shots=([metaldam]="1,2,4,8,all" [ebc1]="1,2,4,8,all" [ebc2]="1,2,4" [ebc3]="1,2,4,8,all")

start=$(date +%s)
for dataset in metaldam ebc1 ebc2 ebc3; do
  for method in ${methods//,/ }; do
    t0=$(date +%s)
    python -m bench run --method "$method" --dataset "$dataset" --shots "${shots[$dataset]}" \
      --draws "$draws" --profile "$profile"
    echo "[run_all] $method on $dataset: $(( $(date +%s) - t0 )) s"
  done
done
t0=$(date +%s)
python -m bench leaderboard --profile "$profile"
python -m bench plot
python -m bench report
echo "[run_all] tables, plots, report: $(( $(date +%s) - t0 )) s"
echo "[run_all] total ($profile profile, $draws draws): $(( $(date +%s) - start )) s"
