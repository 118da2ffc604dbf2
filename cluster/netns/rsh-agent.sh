#!/usr/bin/env bash
# OpenMPI's plm_rsh_agent for the namespace hosts of harness.sh: `rsh-agent.sh HOST COMMAND…`
# runs COMMAND "on" HOST (an address 10.231.0.<i> or a name sb-h<i>): inside that host's
# network namespace and a UTS namespace whose hostname is the host's name. Like ssh, the
# command words are joined and run by a shell.
set -euo pipefail
host=$1
shift
case "$host" in
10.231.0.*) name=sb-h${host##*.} ;;
sb-h*) name=$host ;;
*) echo "rsh-agent.sh: $host is not a harness host (10.231.0.<i> or sb-h<i>)" >&2; exit 255 ;;
esac
exec ip netns exec "$name" unshare --uts -- sh -c 'hostname "$0" && exec sh -c "$1"' "$name" "$*"
