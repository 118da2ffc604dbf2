#!/usr/bin/env bash
# Turns network namespaces on this machine into hosts, so that `mpirun --hostfile` can run
# ranks on separate "hosts" that talk over TCP, without a second machine.
#
#   cluster/netns/harness.sh run N -- COMMAND...   make N hosts, run COMMAND on host 1, clean up
#   cluster/netns/harness.sh up N                  make N hosts and leave them
#   cluster/netns/harness.sh down                  remove everything this script made
#
# Host i is the network namespace sb-h<i> with the address 10.231.0.<i>/24 on its end of a
# veth pair; the other ends hang on a bridge inside a namespace of its own (sb-switch), so no
# address or interface is added outside the namespaces made here. Each command runs in a UTS
# namespace of its own whose hostname is the host's name, so MPI sees separate nodes.
# COMMAND runs on host 1 with SB_HOSTFILE (one line per host) and SB_MPI_FLAGS (the rsh
# agent, TCP only, interfaces restricted to the harness subnet) in its environment.
# Needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) and iproute2.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
subnet=10.231.0
prefix=sb-h

up() {
    local n=$1
    down
    ip netns add sb-switch
    ip -n sb-switch link add br0 type bridge
    ip -n sb-switch link set br0 up
    for i in $(seq 1 "$n"); do
        ip netns add "$prefix$i"
        ip -n "$prefix$i" link set lo up
        ip -n "$prefix$i" link add eth0 type veth peer name "port$i" netns sb-switch
        ip -n sb-switch link set "port$i" master br0 up
        ip -n "$prefix$i" addr add "$subnet.$i/24" dev eth0
        ip -n "$prefix$i" link set eth0 up
    done
}

down() {
    for ns in $(ip netns list | awk '{print $1}' | grep -E "^(${prefix}[0-9]+|sb-switch)$" || true); do
        ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
        ip netns del "$ns"
    done
}

hostfile() {
    local n=$1 file=$2
    : > "$file"
    for i in $(seq 1 "$n"); do echo "$subnet.$i slots=1" >> "$file"; done
}

case "${1:-}" in
up) up "${2:?number of hosts}" ;;
down) down ;;
run)
    n=${2:?number of hosts}
    shift 2
    [ "${1:-}" = "--" ] && shift
    trap down EXIT
    up "$n"
    export SB_HOSTFILE
    SB_HOSTFILE="$(mktemp)"
    hostfile "$n" "$SB_HOSTFILE"
    # The hosts share this machine's cores: without --bind-to none each host's only rank
    # would be bound to core 0.
    export SB_MPI_FLAGS="--hostfile $SB_HOSTFILE --map-by node --bind-to none --mca plm_rsh_agent $here/rsh-agent.sh \
--mca btl tcp,self --mca btl_tcp_if_include $subnet.0/24 --mca oob_tcp_if_include $subnet.0/24"
    status=0
    ip netns exec "${prefix}1" unshare --uts -- sh -c 'hostname "$0" && exec "$@"' "${prefix}1" "$@" || status=$?
    rm -f "$SB_HOSTFILE"
    exit $status
    ;;
*) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
