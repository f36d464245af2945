#!/usr/bin/env bash
# `make test-slurm`: the cluster scripts of docs/cluster.md (scripts/slurm/) on a real Slurm.
#
# 1. docs/cluster.md shows every file of scripts/slurm/ verbatim (checked even without Slurm).
# 2. A one-node Slurm starts here from Debian's packages (munged, slurmctld, slurmd) with its own
#    key, socket, ports, state and logs in a scratch directory; its node claims 32 CPUs and 64 GB
#    so the scripts' own resource requests (8 CPUs, 24 GB a task) run unchanged on a small machine.
# 3. In a scratch copy of the repository layout (symlinks to scripts/, configs/, traces/ and the
#    release binary), submit-replay.sh replays the shipped SmolLM2 trace's four layers as three
#    array tasks and submit-sweep.sh runs configs/quick-sweep.json as three shards; their merge
#    jobs must write exactly what one replay and one sweep write in a second copy (the replay's
#    JSON report compared without its timing block, which measures the run). One sweep task
#    resubmitted alone, as the doc advises after a time limit, must find its shard complete.
#
# Skips (exit 0, one line saying why) when the Slurm or munge programs are missing, when not
# root (slurmd starts jobs as their user), or when the daemons do not bring the node up within
# 30 s. Every wait is bounded; the daemons (and any job still running) are stopped on every
# exit. THINKV_SIM names another binary; KEEP_SLURM_SCRATCH=1 keeps the scratch directory.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
binary=${THINKV_SIM:-$repo/.build/release/thinkv-sim}
job_timeout=${SLURM_TEST_JOB_TIMEOUT:-240}

say() { echo "test-slurm: $*"; }
skip() { echo "test-slurm: SKIP: $*"; exit 0; }
fail() { echo "test-slurm: FAIL: $*" >&2; exit 1; }

# --- 1. The doc and the scripts agree -------------------------------------------------------
# Each script appears in docs/cluster.md as the first fenced block after a line linking it.
doc=docs/cluster.md
for script in scripts/slurm/*; do
    shown=$(awk -v link="(../$script)" '
        inside && /^```/ { exit }
        inside { print }
        found && /^```/ { inside = 1 }
        index($0, link) { found = 1 }' "$doc")
    [ -n "$shown" ] || fail "$doc does not show $script (a line linking (../$script), then a fenced block)"
    if ! diff -u "$script" <(printf '%s\n' "$shown") >/dev/null; then
        diff -u "$script" <(printf '%s\n' "$shown") | head -20 >&2 || true
        fail "$doc shows $script differently (diff above: file, then doc)"
    fi
done
say "$doc shows every script of scripts/slurm/ verbatim"

# --- 2. A one-node Slurm ------------------------------------------------------------------
[ "$(id -u)" -eq 0 ] || skip "not root: slurmd must run as root to start jobs"
for program in munged munge slurmctld slurmd sbatch sinfo squeue scontrol scancel; do
    command -v "$program" >/dev/null 2>&1 || skip "$program not found (apt-get install slurmctld slurmd munge)"
done
command -v python3 >/dev/null 2>&1 || skip "python3 not found (it picks free ports and compares the JSON reports)"
[ -x "$binary" ] || fail "$binary not built (make build)"

work=$(mktemp -d /tmp/thinkv-slurm.XXXXXX)
chmod 755 "$work"   # munged refuses a socket in a directory others cannot enter
daemon_pids=()
cluster_up=no

# Stops $1 with TERM, then KILL after 10 s; never waits longer.
stop_process() {
    local pid=$1
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [ "$cluster_up" = yes ]; then
        # Jobs first, so no slurmstepd outlives slurmd; whatever is left after 10 s is killed by
        # the process ids slurmd reports for its job steps.
        timeout 10 scancel --quiet --user="$(id -un)" 2>/dev/null || true
        for _ in $(seq 50); do [ -z "$(timeout 5 squeue -h 2>/dev/null)" ] && break; sleep 0.2; done
        for pid in $(timeout 5 scontrol listpids 2>/dev/null | awk 'NR > 1 && $1 ~ /^[0-9]+$/ { print $1 }'); do
            kill -KILL "$pid" 2>/dev/null || true
        done
    fi
    # Reverse start order: slurmd, slurmctld, then munged.
    for ((i = ${#daemon_pids[@]} - 1; i >= 0; i--)); do stop_process "${daemon_pids[i]}"; done
    if [ "$status" -ne 0 ] && [ -d "$work/log" ]; then
        for log in "$work"/log/*.log; do
            echo "--- last lines of $log" >&2
            tail -n 5 "$log" >&2 || true
        done
    fi
    if [ "${KEEP_SLURM_SCRATCH:-}" = 1 ]; then say "scratch kept in $work"; else rm -rf "$work"; fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

mkdir -p "$work"/{munge,key,state,spool,log}
chmod 700 "$work/key"
head -c 1024 /dev/urandom > "$work/key/munge.key"
chmod 400 "$work/key/munge.key"
socket=$work/munge/munge.sock
munged --foreground --socket="$socket" --key-file="$work/key/munge.key" --log-file="$work/log/munged.log" \
    --pid-file="$work/munge/munged.pid" --seed-file="$work/key/munged.seed" >>"$work/log/munged.log" 2>&1 &
daemon_pids+=($!)
for _ in $(seq 50); do [ -S "$socket" ] && break; sleep 0.2; done
[ -S "$socket" ] || skip "munged did not create its socket within 10 s ($(tail -n 1 "$work/log/munged.log"))"

# Two free ports, so this cluster never meets another Slurm on the machine.
read -r controller_port node_port < <(python3 -c '
import socket
sockets = [socket.socket() for _ in range(2)]
for s in sockets: s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in sockets))')
node=$(hostname -s)
export SLURM_CONF=$work/slurm.conf
cat > "$SLURM_CONF" <<EOF
ClusterName=thinkv-test
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$controller_port
SlurmdPort=$node_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$socket
StateSaveLocation=$work/state
SlurmdSpoolDir=$work/spool
SlurmctldPidFile=$work/slurmctld.pid
SlurmdPidFile=$work/slurmd.pid
SlurmctldLogFile=$work/log/slurmctld.log
SlurmdLogFile=$work/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
DependencyParameters=kill_invalid_depend
SlurmdParameters=config_overrides
NodeName=$node NodeAddr=127.0.0.1 CPUs=32 RealMemory=65536 State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
slurmctld -D -i -f "$SLURM_CONF" >>"$work/log/slurmctld.log" 2>&1 &
daemon_pids+=($!)
slurmd -D -N "$node" -f "$SLURM_CONF" >>"$work/log/slurmd.log" 2>&1 &
daemon_pids+=($!)
cluster_up=yes
state=""
for _ in $(seq 60); do
    state=$(timeout 5 sinfo -h -n "$node" -o %t 2>/dev/null || true)
    [ "$state" = idle ] && break
    sleep 0.5
done
[ "$state" = idle ] || skip "the one-node Slurm did not come up within 30 s (node state '${state:-none}')"
say "one-node Slurm up (node $node, controller port $controller_port)"

# --- 3. Sharded runs as jobs, against one run each --------------------------------------------
for copy in cluster single; do
    mkdir -p "$work/$copy/.build/release"
    ln -s "$repo/scripts" "$repo/configs" "$repo/traces" "$work/$copy/"
    ln -s "$binary" "$work/$copy/.build/release/thinkv-sim"
done
trace=traces/smollm2-135m-math.h5
layers=0,10,20,29   # the trace's recorded layers; three tasks replay 1, 1 and 2 of them
replay_options=(--policy full,h2o,rkv,thinkv --budget 128 --calibration configs/thinkv-smollm2-135m.json)

cd "$work/cluster"
started=$SECONDS
replay_merge=$(timeout 60 scripts/slurm/submit-replay.sh "$trace" "$layers" 3 out/replay "${replay_options[@]}")
sweep_merge=$(timeout 60 scripts/slurm/submit-sweep.sh configs/quick-sweep.json 3 out/quick-sweep.csv)
say "submitted: replay array + merge job $replay_merge, sweep array + merge job $sweep_merge"

# Waits for job $1 to end; fails unless it completed. kill_invalid_depend cancels a merge job
# whose array failed, so a failure ends the wait too.
wait_for_job() {
    local job=$1 state=""
    while [ $((SECONDS - started)) -lt "$job_timeout" ]; do
        state=$(timeout 10 scontrol -o show job "$job" 2>/dev/null | sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p' || true)
        case $state in
            COMPLETED) return 0 ;;
            PENDING | RUNNING | CONFIGURING | COMPLETING | "") sleep 1 ;;
            *) for log in logs/*; do echo "--- $log" >&2; tail -n 3 "$log" >&2; done
               fail "job $job ended $state" ;;
        esac
    done
    fail "job $job not finished after ${job_timeout} s (state ${state:-unknown})"
}
wait_for_job "$replay_merge"
wait_for_job "$sweep_merge"
say "both merge jobs completed after $((SECONDS - started)) s"

# Every array task ran as its own job and wrote its own shard.
for i in 0 1 2; do
    [ -s "out/replay/layers-$i.json" ] || fail "replay task $i wrote no shard"
    [ -s "out/quick-sweep.shard-$i-of-3.csv" ] || fail "sweep task $i wrote no shard"
done
[ "$(ls logs/replay-*.out | wc -l)" -eq 3 ] || fail "expected 3 replay task logs, found: $(ls logs)"
[ "$(ls logs/sweep-*.out | wc -l)" -eq 3 ] || fail "expected 3 sweep task logs, found: $(ls logs)"

# A task resubmitted alone (docs/cluster.md's advice after a time limit) runs its own shard of
# the whole grid, finds every row there, and leaves the file as it was.
cp out/quick-sweep.shard-1-of-3.csv "$work/shard-1-before.csv"
resubmitted=$(timeout 60 sbatch --parsable --wait --array=1 scripts/slurm/sweep.sbatch configs/quick-sweep.json 3 \
    out/quick-sweep.csv) || fail "the resubmitted sweep task failed: $(tail -n 1 logs/sweep-*-1.out)"
grep -q "(0 computed in 0 engine run(s), [1-9][0-9]* already there)" "logs/sweep-${resubmitted%;*}-1.out" \
    || fail "the resubmitted sweep task did not find its rows: $(cat "logs/sweep-${resubmitted%;*}-1.out")"
cmp -s out/quick-sweep.shard-1-of-3.csv "$work/shard-1-before.csv" || fail "the resubmitted task changed its shard"
say "a sweep task resubmitted alone found its shard complete"

cd "$work/single"
mkdir -p out/replay
.build/release/thinkv-sim replay "$trace" "${replay_options[@]}" --json --csv out/replay/steps.csv \
    > out/replay/report.json 2> replay.err || { cat replay.err >&2; fail "the single replay failed"; }
.build/release/thinkv-sim sweep configs/quick-sweep.json -o out/quick-sweep.csv >/dev/null

cd "$work"
cmp cluster/out/replay/steps.csv single/out/replay/steps.csv \
    || fail "the merged per-step CSV differs from one replay's"
python3 - cluster/out/replay/report.json single/out/replay/report.json <<'EOF' \
    || fail "the merged report differs from one replay's"
import json, sys
merged, single = (json.load(open(path)) for path in sys.argv[1:])
for report in (merged, single):
    report.pop("timing")
if merged != single:
    keys = sorted(k for k in set(merged) | set(single) if merged.get(k) != single.get(k))
    sys.exit(f"reports differ in {keys}")
if merged["layers"] != [0, 10, 20, 29] or len(merged["runs"]) != 4:
    sys.exit(f"unexpected report: layers {merged['layers']}, {len(merged['runs'])} runs")
EOF
cmp cluster/out/quick-sweep.csv single/out/quick-sweep.csv || fail "the merged sweep CSV differs from one sweep's"
diff -r cluster/out/quick-sweep-steps single/out/quick-sweep-steps >/dev/null \
    || fail "the shards' per-step CSVs differ from one sweep's"
[ -n "$(ls cluster/out/*.svg 2>/dev/null)" ] || fail "the sweep's merge job plotted nothing"
say "PASS: layer-sharded replay ($(($(wc -l < single/out/replay/steps.csv) - 1)) step rows) and" \
    "3-shard sweep ($(($(wc -l < single/out/quick-sweep.csv) - 1)) runs) merged identical to one run each"
