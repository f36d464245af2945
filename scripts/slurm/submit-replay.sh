#!/bin/bash
# Runs one replay on a Slurm cluster split by layer: an array of TASKS tasks
# (scripts/slurm/replay-layers.sbatch), then, once every task has succeeded, one job that merges
# their shards into OUTDIR/report.json and OUTDIR/steps.csv (the report and per-step CSV of one
# replay over every listed layer). Run from the repository root after `make build`; prints the
# merge job's id.
#   scripts/slurm/submit-replay.sh traces/llama3-8b-32k.h5 "$(seq -s, 0 31)" 8 out/replay \
#       --policy full,h2o,rkv,thinkv --budget 2048 --calibration configs/thinkv-llama3-8b.json
set -euo pipefail
if [ $# -lt 4 ]; then
    echo "usage: scripts/slurm/submit-replay.sh TRACE LAYERS TASKS OUTDIR [replay options]" >&2
    exit 2
fi
tasks=$3 outdir=$4
IFS=, read -ra listed <<< "$2"
if ! [[ $tasks =~ ^[1-9][0-9]*$ ]] || [ "$tasks" -gt "${#listed[@]}" ]; then
    echo "submit-replay: TASKS must be 1 to ${#listed[@]} (one layer a task at most), got '$tasks'" >&2
    exit 2
fi
mkdir -p logs
array=$(sbatch --parsable --array="0-$((tasks - 1))" scripts/slurm/replay-layers.sbatch "$@")
merge=".build/release/thinkv-sim merge"
for ((i = 0; i < tasks; i++)); do merge+=" $(printf %q "$outdir/layers-$i.json")"; done
merge+=" --json -o $(printf %q "$outdir/report.json") --csv $(printf %q "$outdir/steps.csv")"
sbatch --parsable --job-name=thinkv-merge --output=logs/merge-%j.out --dependency="afterok:${array%;*}" \
    --wrap "$merge"
