#!/bin/bash
# Runs a sweep on a Slurm cluster: an array of SHARDS tasks (scripts/slurm/sweep.sbatch), then,
# once every task has succeeded, one job that merges the shards into OUTPUT and plots it next
# to it. Run from the repository root after `make build`; prints the merge job's id.
#   scripts/slurm/submit-sweep.sh configs/budget-sweep.json 16 out/budget-sweep.csv
set -euo pipefail
if [ $# -ne 3 ]; then
    echo "usage: scripts/slurm/submit-sweep.sh CONFIG SHARDS OUTPUT.csv" >&2
    exit 2
fi
config=$1 shards=$2 output=$3
if ! [[ $shards =~ ^[1-9][0-9]*$ ]]; then
    echo "submit-sweep: SHARDS must be a positive number, got '$shards'" >&2
    exit 2
fi
mkdir -p logs
array=$(sbatch --parsable --array="0-$((shards - 1))" scripts/slurm/sweep.sbatch "$config" "$shards" "$output")
merge=".build/release/thinkv-sim merge"
for ((i = 0; i < shards; i++)); do merge+=" $(printf %q "${output%.csv}.shard-$i-of-$shards.csv")"; done
merge+=" -o $(printf %q "$output")"
plot=".build/release/thinkv-sim plot $(printf %q "$output") -o $(printf %q "$(dirname "$output")")"
sbatch --parsable --job-name=thinkv-merge --output=logs/merge-%j.out --dependency="afterok:${array%;*}" \
    --wrap "$merge && $plot"
