#!/usr/bin/env bash
# Start a real one-node Slurm cluster on this machine, for the integration tests (nox -s slurm).
#
#   .ci/slurm/start.sh [STATE_DIR]      (default: $ADVSSM_SLURM_DIR or /tmp/advssm-slurm)
#   export SLURM_CONF=STATE_DIR/slurm.conf
#   sbatch / squeue / scontrol ... ; advssm sweep grid.toml --executor slurm
#   .ci/slurm/stop.sh [STATE_DIR]
#
# Installs Debian's slurmctld, slurmd, slurm-client and munge with apt-get when they are missing (about a
# minute), writes a slurm.conf for one node on localhost with every CPU of the machine, starts munged (as the
# munge user, with its own 0400 key), slurmctld and slurmd as plain daemons (there is no systemd here), records
# their PIDs in STATE_DIR/pids and waits until sinfo shows the node idle. Everything it writes stays under
# STATE_DIR: /etc is not touched, and clients find the cluster through SLURM_CONF. Needs root.
set -euo pipefail

STATE=${1:-${ADVSSM_SLURM_DIR:-/tmp/advssm-slurm}}
PORT=${ADVSSM_SLURM_PORT:-6817}  # slurmctld's port; slurmd takes the next one

if [ "$(id -u)" != 0 ]; then
    echo "start.sh: run as root (it installs packages and starts the Slurm and munge daemons)" >&2
    exit 1
fi
if [ -s "$STATE/pids" ]; then
    while read -r name pid; do
        if kill -0 "$pid" 2>/dev/null; then
            echo "start.sh: $name ($pid) of the cluster in $STATE still runs; stop it first with" \
                 ".ci/slurm/stop.sh $STATE" >&2
            exit 1
        fi
    done < "$STATE/pids"
    rm -f "$STATE/pids"  # left by a session that was killed before it could stop its daemons (all gone now)
fi

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null ||
   ! command -v munged >/dev/null; then
    echo "start.sh: installing slurmctld slurmd slurm-client munge with apt-get" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
fi

HOST=$(hostname -s)
CPUS=$(nproc)
mkdir -p "$STATE"/ctld "$STATE"/spool "$STATE"/munge
STATE=$(cd "$STATE" && pwd)
chmod 0755 "$STATE"

# munge: a fresh key readable by munge alone, and a socket under STATE_DIR (no clash with a system munged)
chown munge:munge "$STATE/munge"
chmod 0755 "$STATE/munge"
rm -f "$STATE/munge/munge.key"
dd if=/dev/urandom of="$STATE/munge/munge.key" bs=1024 count=1 status=none
chown munge:munge "$STATE/munge/munge.key"
chmod 0400 "$STATE/munge/munge.key"
SOCKET="$STATE/munge/munge.socket"

cat > "$STATE/slurm.conf" <<CONF
# one-node cluster written by .ci/slurm/start.sh
ClusterName=advssm-ci
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$SOCKET
CredType=cred/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=2
KillWait=2
MinJobAge=3600
InactiveLimit=0
SlurmdTimeout=120
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF="$STATE/slurm.conf"

wait_for_file() {  # a daemon's pid file, up to 30 s
    for _ in $(seq 300); do [ -s "$1" ] && return 0; sleep 0.1; done
    echo "start.sh: $2 did not start; see $3" >&2
    return 1
}

runuser -u munge -- /usr/sbin/munged --socket="$SOCKET" --key-file="$STATE/munge/munge.key" \
    --pid-file="$STATE/munge/munged.pid" --log-file="$STATE/munge/munged.log" --seed-file="$STATE/munge/munged.seed"
wait_for_file "$STATE/munge/munged.pid" munged "$STATE/munge/munged.log"
echo "munged $(cat "$STATE/munge/munged.pid")" >> "$STATE/pids"

/usr/sbin/slurmctld -f "$SLURM_CONF" -i
wait_for_file "$STATE/slurmctld.pid" slurmctld "$STATE/slurmctld.log"
echo "slurmctld $(cat "$STATE/slurmctld.pid")" >> "$STATE/pids"

/usr/sbin/slurmd -f "$SLURM_CONF" -N "$HOST"
wait_for_file "$STATE/slurmd.pid" slurmd "$STATE/slurmd.log"
echo "slurmd $(cat "$STATE/slurmd.pid")" >> "$STATE/pids"

for _ in $(seq 120); do
    if [ "$(sinfo -h -N -o %t 2>/dev/null)" = idle ]; then
        echo "start.sh: node $HOST idle with $CPUS CPUs; export SLURM_CONF=$SLURM_CONF (daemons: $(tr '\n' ' ' < "$STATE/pids"))" >&2
        exit 0
    fi
    sleep 0.5
done
echo "start.sh: the node did not become idle within 60 s:" >&2
sinfo -N -l >&2 || true
tail -n 20 "$STATE/slurmctld.log" "$STATE/slurmd.log" >&2 || true
exit 1
