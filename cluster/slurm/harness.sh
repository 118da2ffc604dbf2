#!/usr/bin/env bash
# A real Slurm cluster on this machine, made of the namespace hosts of cluster/netns/harness.sh:
# slurmctld on host 1, one slurmd per host (named sb-h<i>, at 10.231.0.<i>), one munged whose
# socket every daemon shares, and short timeouts so that a lost node is noticed in seconds.
#
#   cluster/slurm/harness.sh up N           make N hosts and start the daemons; waits for N idle nodes
#   cluster/slurm/harness.sh on I CMD...    run CMD on host I with SLURM_CONF set (sbatch, squeue, …)
#   cluster/slurm/harness.sh lose I         take host I away: its processes killed, its link down
#   cluster/slurm/harness.sh down           stop everything this script started and remove it
#
# Inside an allocation the ranks start as on a real cluster, through Slurm: `srun --mpi=pmix`
# (cluster/slurm.sbatch), or mpirun, which starts its daemons with srun; no rsh agent. The
# hosts share one file system, so each slurmd gets a TmpFS of its own (PMIx puts a folder per
# job step there). `ip netns exec` remounts /sys, so each host mounts this machine's cgroup v1
# hierarchies again for slurmd (Slurm 22.05 refuses a cgroup v2 mount beside v1 ones).
# State, logs and the config live in $SB_SLURM_DIR (default /tmp/sb-slurm).
# Needs root, iproute2, and Debian's slurm-wlm and munge.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dir=${SB_SLURM_DIR:-/tmp/sb-slurm}
export SLURM_CONF=$dir/slurm.conf

config() {
    local n=$1
    cat > "$SLURM_CONF" <<EOF
ClusterName=sb
SlurmctldHost=sb-h1(10.231.0.1)
AuthType=auth/munge
AuthInfo=socket=$dir/munge.sock
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool-%n
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd-%n.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd-%n.log
TmpFS=$dir/tmp
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
SlurmdTimeout=5
SlurmctldTimeout=5
KillWait=5
ReturnToService=2
JobRequeue=1
SchedulerType=sched/backfill
NodeName=sb-h[1-$n] NodeAddr=10.231.0.[1-$n] CPUs=$(nproc) State=UNKNOWN
PartitionName=main Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    printf 'CgroupPlugin=cgroup/v1\nConstrainCores=no\nConstrainRAMSpace=no\nConstrainDevices=no\n' > "$dir/cgroup.conf"
}

# Runs "$@" on host $1: its network namespace, a UTS namespace named after it.
on() {
    local i=$1
    shift
    ip netns exec "sb-h$i" unshare --uts -- sh -c 'hostname "$0" && exec "$@"' "sb-h$i" "$@"
}

up() {
    local n=$1
    [ "$(id -u)" -eq 0 ] || { echo "harness.sh: needs root (network namespaces, slurmd)" >&2; exit 1; }
    for tool in slurmctld slurmd munged sbatch; do
        command -v "$tool" > /dev/null || {
            echo "harness.sh: $tool is missing: Debian's slurm-wlm and munge are needed (scripts/setup.sh --tests installs them)" >&2
            exit 1
        }
    done
    down
    "$here/../netns/harness.sh" up "$n"
    mkdir -p "$dir/state"
    config "$n"
    head -c 1024 /dev/urandom > "$dir/munge.key"
    chmod 400 "$dir/munge.key"
    munged --key-file="$dir/munge.key" --socket="$dir/munge.sock" --pid-file="$dir/munged.pid" \
        --log-file="$dir/munged.log" --seed-file="$dir/munged.seed" -f < /dev/null > "$dir/munged.out" 2>&1
    # Daemons leave through setsid -f with their output in files: nothing holds the caller's.
    on 1 setsid -f slurmctld -D < /dev/null > "$dir/slurmctld.out" 2>&1
    for i in $(seq 1 "$n"); do
        mkdir -p "$dir/spool-sb-h$i" "$dir/tmp-sb-h$i" "$dir/tmp"
        on "$i" setsid -f sh -c '
            mount --bind "$0/tmp-$(hostname)" "$0/tmp"
            mountpoint -q /sys/fs/cgroup || {
                mount -t tmpfs cgroup /sys/fs/cgroup
                for c in cpu cpuacct cpuset memory devices freezer blkio pids; do
                    mkdir -p /sys/fs/cgroup/$c && mount -t cgroup -o $c cgroup /sys/fs/cgroup/$c 2>/dev/null || rmdir /sys/fs/cgroup/$c
                done
                mkdir -p /sys/fs/cgroup/systemd && mount -t cgroup -o none,name=systemd cgroup /sys/fs/cgroup/systemd 2>/dev/null || true
            }
            exec slurmd -D -N "$(hostname)"' "$dir" < /dev/null > "$dir/slurmd-$i.out" 2>&1
    done
    for _ in $(seq 1 60); do
        [ "$(on 1 sinfo -h -t idle -o %D 2>/dev/null || true)" = "$n" ] && return 0
        sleep 0.5
    done
    echo "harness.sh: the $n nodes did not come up; see $dir/*.log" >&2
    exit 1
}

lose() {
    local i=$1
    ip netns pids "sb-h$i" | xargs -r kill -9
    ip -n "sb-h$i" link set eth0 down
}

down() {
    pkill -9 -f "slurmctld -D" 2>/dev/null || true
    pkill -9 -f "slurmd -D" 2>/dev/null || true
    pkill -9 slurmstepd 2>/dev/null || true
    [ -f "$dir/munged.pid" ] && kill "$(cat "$dir/munged.pid")" 2>/dev/null || true
    # Whatever else runs in the hosts (ranks of a job cut short) goes with the namespaces.
    "$here/../netns/harness.sh" down
    # Gone, not only signalled: until init has reaped them they still show.
    for _ in $(seq 1 50); do
        pgrep -f "slurmctld -D|slurmd -D|slurmstepd|munged .*--socket=$dir/" > /dev/null || break
        sleep 0.2
    done
    rm -rf "$dir"
}

case "${1:-}" in
up) up "${2:?number of hosts}" ;;
on) shift; on "${1:?host}" "${@:2}" ;;
lose) lose "${2:?host}" ;;
down) down ;;
*) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
