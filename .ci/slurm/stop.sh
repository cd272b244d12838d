#!/usr/bin/env bash
# Stop the cluster .ci/slurm/start.sh started from STATE_DIR, by the PIDs it recorded.
#
#   .ci/slurm/stop.sh [STATE_DIR]      (default: $ADVSSM_SLURM_DIR or /tmp/advssm-slurm)
#
# Cancels the jobs still in this cluster's queue first (their steps end before slurmd does), then sends
# SIGTERM to slurmd, slurmctld and munged in turn and SIGKILL to one that is still there after 10 s.
set -uo pipefail

STATE=${1:-${ADVSSM_SLURM_DIR:-/tmp/advssm-slurm}}
if [ ! -s "$STATE/pids" ]; then
    echo "stop.sh: nothing to stop ($STATE/pids is missing)" >&2
    exit 0
fi
export SLURM_CONF="$STATE/slurm.conf"

if jobs=$(squeue -h -o %A 2>/dev/null) && [ -n "$jobs" ]; then
    # shellcheck disable=SC2086
    scancel $jobs 2>/dev/null
    for _ in $(seq 60); do [ -z "$(squeue -h -o %A 2>/dev/null)" ] && break; sleep 0.5; done
fi

stop_pid() {  # name pid
    kill -0 "$2" 2>/dev/null || return 0
    kill -TERM "$2"
    for _ in $(seq 100); do kill -0 "$2" 2>/dev/null || return 0; sleep 0.1; done
    echo "stop.sh: $1 ($2) still there after 10 s: SIGKILL" >&2
    kill -KILL "$2" 2>/dev/null
}

tac "$STATE/pids" | while read -r name pid; do
    stop_pid "$name" "$pid"
done
rm -f "$STATE/pids"
echo "stop.sh: stopped the cluster of $STATE" >&2
