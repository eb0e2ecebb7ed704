#!/usr/bin/env bash
# A local Slurm cluster on this one machine, for Hobbes' integration tests (issue 14):
# slurmctld plus N slurmds, each simulated node in its own network namespace, cgroups
# and core, with its own `leviathan`. See docs/operations.md, "A local Slurm cluster for
# tests", and ../shared/design/slurm-notes.md for what was measured before.
#
#   slurm-cluster.sh start  --dir DIR [--nodes N] [--plugin PATH [--plugin-args ARGS]]
#                            [--leviathan PATH] [--slurm-cgroups] [--json]
#   slurm-cluster.sh stop   --dir DIR
#   slurm-cluster.sh status --dir DIR [--json]
#   slurm-cluster.sh env    --dir DIR        # eval "$(slurm-cluster.sh env --dir DIR)"
#
# Root only (namespaces, cgroups, daemons as root). Progress goes to stderr; stdout has
# only what was asked for (the JSON status, the env lines). Everything the cluster makes
# is named after DIR (a hash of its real path), so two clusters in two directories never
# share a name; they do compete for cores (each node's cpuset is exclusive), so run one
# at a time (the tests take /tmp/hobbes-daemon-tests.lock around it).
#
# Per node nI (I = 0..N-1, on the I-th core C of our cpuset):
#   network namespace hobbes-slurm-<id>-nI (/run/netns), a veth `hsv<id>n<I>` into the
#     bridge `hsb<id>` in the root namespace; node address 10.A.B.(I+2)/24, the bridge
#     10.A.B.1. Private addresses, no forwarding: nothing leaves the machine.
#   cgroup v1: cpuset <cpuset>/hobbes-slurm-<id>/nI (cpu_exclusive=1, cpus=C, the parent's
#     mems) and memory <memory>/hobbes-slurm-<id>/nI (memory.limit_in_bytes = the node's
#     memory); <cpuset> and <memory> are the controllers' mounts plus our own cgroup in
#     each, as crates/hobbes-cgroups finds them. cgroup v2 (best effort, not run here):
#     <root>/hobbes-slurm-<id>/nI a partition root with cpus=C and memory.max, the daemons in
#     its leaf nI/daemons so that leviathan can make nI/hobbes beside them.
#   leviathan --state-dir DIR/nI/hobbes --cpus C --memory-blocks <its range> --host-memory 256,
#     in the node's cgroups and namespace; then `slurmd -D -N nI`, likewise. Each daemon is
#     started by a small wrapper that writes its own pid into the cgroups, then
#     `exec nsenter --net=/run/netns/<ns>` (not `ip netns exec`, which remounts /sys and
#     hides /sys/fs/cgroup from the daemon).
# slurmctld runs in the root namespace and cgroups, bound to the bridge address only.
#
# --slurm-cgroups: Slurm confines the jobs itself (TaskPlugin=task/cgroup,
#   ProctrackType=proctrack/cgroup, a cgroup.conf with ConstrainCores and
#   ConstrainRAMSpace), and leviathan runs with --slurm-cgroups. One node only (v1 only):
#   Slurm makes its cgroups at each controller's root (slurm_<node>), named after the
#   node, and maps the node's CPUs onto the machine's, so the node is the whole machine:
#   its cgroups hold every core, nothing is cpu_exclusive, and its leviathan manages the
#   machine with the first core as its host core. stop also removes Slurm's cgroups.
#
# Files in DIR: slurm.conf, plugstack.conf, cluster.state (what stop needs), ctld/ (state,
# log), nI/ (the node's spool, tmp, logs, leviathan's state directory hobbes/).
#
# Environment: HOBBES_SLURM_SUBSET=auto|1|0 passes leviathan's subset flags (--cpus,
# --memory-blocks) when its --help lists them (auto), always, or never (then leviathan
# manages the whole machine's inventory but keeps its node's core as its host core);
# HOBBES_SLURM_NODE_BLOCKS caps the memory blocks per node (default 32: 4 GiB of 128 MiB
# blocks); HOBBES_SLURM_TIMEOUT (s, default 30) bounds each readiness wait;
# HOBBES_SLURM_LEVIATHAN_ARGS adds flags to every leviathan.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TIMEOUT=${HOBBES_SLURM_TIMEOUT:-30}
HOST_MEMORY_MIB=256

T0=$EPOCHREALTIME
# Progress on stderr, with the seconds since the script started.
log() { printf 'slurm-cluster: [%s] %s\n' "$(elapsed)" "$*" >&2; }
elapsed() { awk -v a="$T0" -v b="$EPOCHREALTIME" 'BEGIN {printf "%.2f", b - a}'; }
die() {
    log "error: $*"
    exit 1
}

# This machine cannot run the cluster at all (no usable cgroups): exit 75, which the
# test harness turns into a SKIP rather than a failure.
unsupported() {
    log "unsupported here: $*"
    exit 75
}

usage() {
    cat >&2 <<EOF
usage: slurm-cluster.sh start  --dir DIR [--nodes N] [--plugin PATH [--plugin-args ARGS]]
                              [--leviathan PATH] [--slurm-cgroups] [--json]
       slurm-cluster.sh stop   --dir DIR
       slurm-cluster.sh status --dir DIR [--json]
       slurm-cluster.sh env    --dir DIR
EOF
    exit 2
}

# ---------------------------------------------------------------- small helpers

# Poll `cmd` until it succeeds, at most $1 seconds; a readiness check, not a delay.
# `still_alive` (optional, a pid) fails the wait at once if that process exits.
wait_until() {
    local limit=$1 pid=$2
    shift 2
    local deadline=$((SECONDS + limit))
    while ! "$@" >/dev/null 2>&1; do
        if [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null; then
            return 2
        fi
        ((SECONDS < deadline)) || return 1
        sleep 0.05
    done
}

# "0-3,8" -> "0 1 2 3 8"
expand_list() {
    local part a b out=()
    local IFS=,
    for part in $1; do
        [[ -z $part ]] && continue
        if [[ $part == *-* ]]; then
            a=${part%-*} b=${part#*-}
            for ((; a <= b; a++)); do out+=("$a"); done
        else
            out+=("$part")
        fi
    done
    printf "%s\n" "${out[@]}" | tr "\n" " "
}

# "0 1 2 5" -> "0-2,5"
compress_list() {
    local res="" start="" prev="" n
    for n in $1; do
        if [[ -z $start ]]; then
            start=$n prev=$n
        elif ((n == prev + 1)); then
            prev=$n
        else
            res+="${res:+,}$start$([[ $start != "$prev" ]] && echo "-$prev")"
            start=$n prev=$n
        fi
    done
    [[ -n $start ]] && res+="${res:+,}$start$([[ $start != "$prev" ]] && echo "-$prev")"
    echo "$res"
}

json_str() {
    local s=$1
    s=${s//\\/\\\\}
    s=${s//\"/\\\"}
    s=${s//$'\n'/\\n}
    s=${s//$'\t'/\\t}
    printf '"%s"' "$s"
}

# Is `pid` alive and one of ours (its command line names this cluster's directory)?
ours() {
    local pid=$1
    [[ -n $pid && -r /proc/$pid/cmdline ]] || return 1
    # No pipe into grep -q: under pipefail its early exit can fail the writer (SIGPIPE).
    local cmdline
    cmdline=$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline") || return 1
    [[ $cmdline == *"$DIR/"* ]]
}

pid_of() { cat "$DIR/run/$1.pid" 2>/dev/null || true; }

# ---------------------------------------------------------------- names and state

# Everything named after DIR: the id, the namespaces, links, cgroups.
names_for() {
    ID=$(printf '%s' "$DIR" | sha1sum | cut -c1-6)
    BRIDGE=hsb$ID
    CG_NAME=hobbes-slurm-$ID
    STATE=$DIR/cluster.state
}
netns_of() { echo "hobbes-slurm-$ID-n$1"; }
veth_of() { echo "hsv${ID}n$1"; }

save_state() {
    local v
    {
        for v in ID NODES CORES SUBNET CTLD_PORT SLURMD_PORT CG_MODE CPUSET_BASE MEMORY_BASE \
            V2_BASE LEVIATHAN HOBBES PLUGIN SUBSET NODE_BLOCKS NODE_MIB HOST SLURM_CGROUPS; do
            printf '%s=%q\n' "$v" "${!v-}"
        done
    } >"$STATE.tmp"
    mv "$STATE.tmp" "$STATE"
}

load_state() {
    NODES=0 CORES="" SUBNET="" CTLD_PORT="" SLURMD_PORT="" CG_MODE="" CPUSET_BASE=""
    MEMORY_BASE="" V2_BASE="" LEVIATHAN="" HOBBES="" PLUGIN="" SUBSET="" NODE_BLOCKS=""
    NODE_MIB="" HOST="" SLURM_CGROUPS=0
    # shellcheck disable=SC1090
    [[ -f $STATE ]] && source "$STATE"
    return 0
}

# The cgroup layout, found as crates/hobbes-cgroups finds it: v1 when both cpuset and
# memory are v1 hierarchies (here), else v2 with both controllers; our own cgroup in each
# is the base, so a delegated subtree works too.
detect_cgroups() {
    local cpuset_mnt memory_mnt v2_mnt own
    cpuset_mnt=$(awk '$0 ~ / - cgroup / && $NF ~ /(^|,)cpuset(,|$)/ {print $5; exit}' /proc/self/mountinfo)
    memory_mnt=$(awk '$0 ~ / - cgroup / && $NF ~ /(^|,)memory(,|$)/ {print $5; exit}' /proc/self/mountinfo)
    v2_mnt=$(awk '$0 ~ / - cgroup2 / {print $5; exit}' /proc/self/mountinfo)
    if [[ -n $cpuset_mnt && -n $memory_mnt ]]; then
        CG_MODE=v1
        own=$(awk -F: '$2 ~ /(^|,)cpuset(,|$)/ {print $3}' /proc/self/cgroup)
        CPUSET_BASE=$cpuset_mnt${own%/}
        own=$(awk -F: '$2 ~ /(^|,)memory(,|$)/ {print $3}' /proc/self/cgroup)
        MEMORY_BASE=$memory_mnt${own%/}
    elif [[ -n $v2_mnt ]] && grep -qw cpuset "$v2_mnt/cgroup.controllers" &&
        grep -qw memory "$v2_mnt/cgroup.controllers"; then
        CG_MODE=v2
        own=$(awk -F: '$1 == "0" {print $3}' /proc/self/cgroup)
        V2_BASE=$v2_mnt${own%/}
    else
        unsupported "no cgroup cpuset and memory controllers (v1 or v2) found in /proc/self/mountinfo"
    fi
}

# The cgroup.procs files a node's daemons join.
procs_files_of() {
    local i=$1
    case $CG_MODE in
    v1) echo "$CPUSET_BASE/$CG_NAME/n$i/cgroup.procs $MEMORY_BASE/$CG_NAME/n$i/cgroup.procs" ;;
    v2) echo "$V2_BASE/$CG_NAME/n$i/daemons/cgroup.procs" ;;
    esac
}

# Every cgroup directory of the cluster, deepest first (for the sweep and removal).
cgroup_dirs() {
    local d
    for d in "$CPUSET_BASE" "$MEMORY_BASE" "$V2_BASE"; do
        [[ -n $d && -d $d/$CG_NAME ]] || continue
        find "$d/$CG_NAME" -depth -type d
    done
}

# ---------------------------------------------------------------- start

make_cgroups() {
    local i c mems all
    all=$(compress_list "$CORES")
    case $CG_MODE in
    v1)
        local cs=$CPUSET_BASE/$CG_NAME mem=$MEMORY_BASE/$CG_NAME
        mems=$(cat "$CPUSET_BASE/cpuset.mems")
        if [[ $SLURM_CGROUPS == 1 ]]; then
            # The node is the machine (see --slurm-cgroups above): every core, nothing
            # exclusive, so that Slurm's cpusets (every CPU) can stand beside it.
            all=$(cat "$CPUSET_BASE/cpuset.cpus")
            mkdir "$cs" "$mem" "$cs/n0" "$mem/n0"
            echo "$all" >"$cs/cpuset.cpus"
            echo "$mems" >"$cs/cpuset.mems"
            echo "$all" >"$cs/n0/cpuset.cpus"
            echo "$mems" >"$cs/n0/cpuset.mems"
            echo $((NODE_MIB * 1024 * 1024)) >"$mem/n0/memory.limit_in_bytes"
            return
        fi
        # v1 allows cpu_exclusive children only under a cpu_exclusive parent, and an
        # exclusive cpuset may not overlap a sibling: hence the refusal below when another
        # daemon (a leviathan's hobbes/, another cluster) holds these cores.
        mkdir "$cs" "$mem"
        echo "$all" >"$cs/cpuset.cpus"
        echo "$mems" >"$cs/cpuset.mems"
        echo 1 >"$cs/cpuset.cpu_exclusive" ||
            die "cannot make $cs cpu_exclusive on cores $all: another cpuset beside it holds them ($(find "$CPUSET_BASE" -mindepth 1 -maxdepth 1 -type d | tr '\n' ' '))"
        for i in $(seq 0 $((NODES - 1))); do
            c=$(core_of "$i")
            mkdir "$cs/n$i" "$mem/n$i"
            echo "$c" >"$cs/n$i/cpuset.cpus"
            echo "$mems" >"$cs/n$i/cpuset.mems"
            echo 1 >"$cs/n$i/cpuset.cpu_exclusive"
            echo $((NODE_MIB * 1024 * 1024)) >"$mem/n$i/memory.limit_in_bytes"
        done
        ;;
    v2)
        local cg=$V2_BASE/$CG_NAME
        mems=$(cat "$V2_BASE/cpuset.mems.effective" 2>/dev/null || echo 0)
        echo "+cpuset +memory" >"$V2_BASE/cgroup.subtree_control" ||
            unsupported "cannot enable cpuset and memory in $V2_BASE (a v2 cgroup with processes cannot; run from the root cgroup or a delegated, empty one)"
        mkdir "$cg"
        echo "$all" >"$cg/cpuset.cpus"
        echo "$mems" >"$cg/cpuset.mems"
        echo root >"$cg/cpuset.cpus.partition" 2>/dev/null ||
            log "warning: $cg cannot be a partition root; its cores stay shared with the host"
        echo "+cpuset +memory" >"$cg/cgroup.subtree_control"
        for i in $(seq 0 $((NODES - 1))); do
            c=$(core_of "$i")
            mkdir "$cg/n$i"
            echo "$c" >"$cg/n$i/cpuset.cpus"
            echo "$mems" >"$cg/n$i/cpuset.mems"
            echo root >"$cg/n$i/cpuset.cpus.partition" 2>/dev/null ||
                log "warning: $cg/n$i cannot be a partition root"
            echo $((NODE_MIB * 1024 * 1024)) >"$cg/n$i/memory.max"
            # No internal processes in v2: the daemons live in a leaf, leviathan makes
            # hobbes/ beside it.
            echo "+cpuset +memory" >"$cg/n$i/cgroup.subtree_control"
            mkdir "$cg/n$i/daemons"
        done
        ;;
    esac
}

core_of() {
    local -a cores
    read -r -a cores <<<"$CORES"
    echo "${cores[$1]}"
}

make_network() {
    local i ns veth
    ip link add "$BRIDGE" type bridge
    ip addr add "$SUBNET.1/24" dev "$BRIDGE"
    ip link set "$BRIDGE" up
    for i in $(seq 0 $((NODES - 1))); do
        ns=$(netns_of "$i") veth=$(veth_of "$i")
        ip netns add "$ns"
        ip link add "$veth" type veth peer name eth0 netns "$ns"
        ip link set "$veth" master "$BRIDGE" up
        ip -n "$ns" addr add "$SUBNET.$((i + 2))/24" dev eth0
        ip -n "$ns" link set eth0 up
        ip -n "$ns" link set lo up
    done
}

# Run "$@" as a daemon of node $1 (in its cgroups and network namespace), logging to $2;
# its pid goes to DIR/run/$3.pid. The wrapper joins the cgroups itself before exec, so
# the daemon never runs outside them. No descriptor of ours goes with it (the caller's
# stdout/stderr must see EOF when this script ends).
launch_in_node() {
    local i=$1 logfile=$2 name=$3
    shift 3
    local ns
    ns=$(netns_of "$i")
    # shellcheck disable=SC2046,SC2016
    bash -c 'for f in $1; do echo $$ >"$f" || exit 111; done; shift; exec "$@"' \
        _ "$(procs_files_of "$i")" nsenter --net="/run/netns/$ns" "$@" \
        </dev/null >>"$logfile" 2>&1 9>&- &
    echo $! >"$DIR/run/$name.pid"
}

leviathan_args() {
    local i=$1 c blocks
    c=$(core_of "$i")
    blocks=$(node_blocks "$i")
    LEV_ARGS=(--state-dir "$DIR/n$i/hobbes" --host-memory "$HOST_MEMORY_MIB")
    if [[ $SLURM_CGROUPS == 1 ]]; then
        LEV_ARGS+=(--host-cores "$c" --slurm-cgroups)
    elif [[ $SUBSET == 1 ]]; then
        LEV_ARGS+=(--cpus "$c" --memory-blocks "$blocks")
    else
        # Without the subset flags leviathan's inventory is the whole machine; the node's
        # core as its host core keeps it off the other nodes' cores.
        LEV_ARGS+=(--host-cores "$c")
    fi
    if [[ -n ${HOBBES_SLURM_LEVIATHAN_ARGS:-} ]]; then
        # shellcheck disable=SC2206
        LEV_ARGS+=($HOBBES_SLURM_LEVIATHAN_ARGS)
    fi
}

# The memory blocks of node i: disjoint runs of NODE_BLOCKS from the top of the online
# blocks (leviathan's `--memory` takes the highest too; the low ones hold the kernel).
node_blocks() {
    local i=$1 all n start
    read -r -a all <<<"$(online_blocks)"
    n=${#all[@]}
    start=$((n - NODES * NODE_BLOCKS + i * NODE_BLOCKS))
    compress_list "${all[*]:start:NODE_BLOCKS}"
}

online_blocks() {
    local f out=()
    # One grep for the ~200 blocks of a small machine (a cat each is a tenth of a second).
    while IFS= read -r f; do
        f=${f%/online}
        out+=("${f##*/memory}")
    done < <(grep -lx 1 /sys/devices/system/memory/memory[0-9]*/online 2>/dev/null)
    printf '%s\n' "${out[@]}" | sort -n | tr '\n' ' '
}

hobbes_answers() {
    local i=$1
    nsenter --net="/run/netns/$(netns_of "$i")" "$HOBBES" --socket "$DIR/n$i/hobbes/leviathan.sock" status
}

# 10.A.B.0/24 for this cluster: from the id, the first one no route or address uses yet.
pick_subnet() {
    local h=$((16#$ID)) a b k used
    used=$(ip -4 route show; ip -4 addr show)
    for ((k = 0; k < 256; k++)); do
        a=$((200 + (h + k) % 50)) b=$(((h / 50 + k) % 256))
        if ! grep -q "10\.$a\.$b\." <<<"$used"; then
            SUBNET=10.$a.$b
            return
        fi
    done
    die "no free 10.x.y.0/24 subnet"
}

# slurmctld's port (slurmd's is the next; slurmds listen in their own namespaces): from
# the id, the first pair no socket of the root namespace uses.
pick_ports() {
    local h=$((16#$ID)) p k used
    used=$(ss -Htan | awk '{print $4}' | sed 's/.*://' | sort -u)
    for ((k = 0; k < 500; k++)); do
        p=$((20000 + ((h + k) % 5000) * 2))
        if ! grep -qx "$p" <<<"$used" && ! grep -qx "$((p + 1))" <<<"$used"; then
            CTLD_PORT=$p SLURMD_PORT=$((p + 1))
            return
        fi
    done
    die "no free port pair for slurmctld and slurmd"
}

write_slurm_conf() {
    local i nodes
    nodes=n[0-$((NODES - 1))]
    ((NODES == 1)) && nodes=n0
    {
        cat <<EOF
# Written by scripts/slurm-cluster.sh for the local cluster in $DIR; stop it with
# scripts/slurm-cluster.sh stop --dir $DIR
ClusterName=hs$ID
SlurmctldHost=$HOST($SUBNET.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
# slurmctld listens on the bridge address only (not on every address of the root
# namespace; the script runs it with an /etc/hosts of its own that maps $HOST to it):
# authentication is off, so nothing outside this machine may reach it.
CommunicationParameters=NoCtldInAddrAny
SlurmUser=root
SlurmdUser=root
# No authentication: every daemon and client is on this machine and root, the
# addresses are private to it, and munged would be one more daemon per cluster to
# start, wait for and stop (and one more way for a test to leave something behind).
# Any local user could claim any uid to this slurmctld: for test machines only.
AuthType=auth/none
CredType=cred/none
StateSaveLocation=$DIR/ctld
SlurmctldPidFile=$DIR/ctld/slurmctld.pid
SlurmctldLogFile=$DIR/ctld/slurmctld.log
SlurmdSpoolDir=$DIR/%n/spool
SlurmdPidFile=$DIR/%n/slurmd.pid
SlurmdLogFile=$DIR/%n/slurmd.log
# A TmpFS per node: Slurm's PMIx plugin keeps its per-node sockets there, which
# clash when several slurmds share one /tmp (Slurm expands %n in it).
TmpFS=$DIR/%n/tmp
PlugStackConfig=$DIR/plugstack.conf
EOF
        if [[ $SLURM_CGROUPS == 1 ]]; then
            cat <<EOF
# Slurm confines the jobs itself (--slurm-cgroups; cgroup.conf beside this file).
ProctrackType=proctrack/cgroup
TaskPlugin=task/cgroup
EOF
        else
            cat <<EOF
# Slurm's own cgroup plugins stay off: each node's daemons are already in the node's
# cgroups (made by this script), which Slurm's cgroup plugins would fight over.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
EOF
        fi
        cat <<EOF
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
JobCompType=jobcomp/none
# Short waits: tests end steps with scancel and crashes.
KillWait=5
InactiveLimit=0
MinJobAge=30
# Every node has one real core (its exclusive cpuset), but CPUs=2 so that a step can
# place 2 tasks per node (the 2x2 MPI composition on 2 nodes: 2 ranks per node; both run
# on the node's core). slurmd counts the machine's cores, not its cpuset's (hwloc's
# whole-system view: "slurmd -C" in a 1-core cpuset says CPUs=2 on this 2-core machine),
# so it reports at least 2 here and the node is not drained. config_overrides makes
# slurmctld take the CPUs written here in any case (a 1-core machine, one node), instead
# of draining the node for "Low CPUs".
SlurmdParameters=config_overrides
EOF
        for i in $(seq 0 $((NODES - 1))); do
            echo "NodeName=n$i NodeHostname=$HOST NodeAddr=$SUBNET.$((i + 2)) CPUs=2 RealMemory=$NODE_MIB State=UNKNOWN"
        done
        echo "PartitionName=debug Nodes=$nodes Default=YES MaxTime=INFINITE State=UP"
    } >"$DIR/slurm.conf"
    if [[ $SLURM_CGROUPS == 1 ]]; then
        cat >"$DIR/cgroup.conf" <<EOF
# Written by scripts/slurm-cluster.sh --slurm-cgroups for the cluster in $DIR.
CgroupPlugin=cgroup/v1
ConstrainCores=yes
ConstrainRAMSpace=yes
EOF
    fi
    if [[ -n $PLUGIN ]]; then
        echo "required $PLUGIN${PLUGIN_ARGS:+ $PLUGIN_ARGS}" >"$DIR/plugstack.conf"
    else
        : >"$DIR/plugstack.conf"
    fi
}

slurm_ping() { [[ $(SLURM_CONF=$DIR/slurm.conf scontrol ping 2>/dev/null) == *"is UP"* ]]; }

# Are all nodes idle? (sinfo's compact state: idle; anything with a suffix or another
# word is not yet.)
all_idle() {
    local states
    states=$(SLURM_CONF=$DIR/slurm.conf sinfo -h -N -o '%t' 2>/dev/null | sort -u)
    [[ $states == idle ]]
}

tail_logs() {
    local f
    for f in "$DIR"/ctld/slurmctld.log "$DIR"/ctld/slurmctld.out "$DIR"/n*/slurmd.log \
        "$DIR"/n*/slurmd.out "$DIR"/n*/leviathan.log; do
        [[ -s $f ]] || continue
        echo "---- $f (last lines)" >&2
        tail -n 15 "$f" >&2
    done
}

# On any failure of start: say why, show the logs, undo everything made so far.
start_failed() {
    local rc=$?
    trap - EXIT INT TERM
    ((rc == 0)) && return 0
    log "start failed (exit $rc); the logs' last lines:"
    tail_logs
    if [[ ${MADE_ANYTHING:-0} == 1 ]]; then
        log "stopping what was started"
        do_stop || true
    fi
    exit "$rc"
}

cmd_start() {
    [[ $(id -u) == 0 ]] || unsupported "needs root (network namespaces, cgroups, daemons as root)"
    local t0=$EPOCHREALTIME bin
    for bin in slurmctld slurmd scontrol sinfo srun nsenter unshare ip ss sha1sum; do
        command -v "$bin" >/dev/null || die "$bin not found (scripts/deps.sh installs Slurm: slurmctld slurmd slurm-client)"
    done
    mkdir -p "$DIR"
    DIR=$(cd "$DIR" && pwd -P)
    names_for
    exec 9>"$DIR/.lock"
    flock -n 9 || die "another slurm-cluster.sh works on $DIR"
    load_state
    if [[ -n $(pid_of slurmctld) ]] && ours "$(pid_of slurmctld)"; then
        die "a cluster runs in $DIR already (stop it first)"
    fi
    # Leftovers of an earlier cluster in DIR (a killed test): clear them first.
    if [[ -f $STATE ]] || ip link show "$BRIDGE" >/dev/null 2>&1; then
        log "clearing the leftovers of an earlier cluster in $DIR"
        [[ -n $CG_MODE ]] || detect_cgroups
        do_stop
        rm -f "$STATE"
    fi

    # Binaries.
    LEVIATHAN=${OPT_LEVIATHAN:-${HOBBES_LEVIATHAN:-}}
    if [[ -z $LEVIATHAN ]]; then
        for bin in "$ROOT/target/debug/leviathan" "$(command -v leviathan || true)"; do
            [[ -x $bin ]] && LEVIATHAN=$bin && break
        done
    fi
    [[ -n $LEVIATHAN && -x $LEVIATHAN ]] || die "no leviathan (build it, or give --leviathan PATH)"
    LEVIATHAN=$(realpath "$LEVIATHAN")
    HOBBES=${HOBBES_BIN:-$(dirname "$LEVIATHAN")/hobbes}
    [[ -x $HOBBES ]] || HOBBES=$(command -v hobbes || true)
    [[ -n $HOBBES && -x $HOBBES ]] || die "no hobbes shell next to $LEVIATHAN nor in PATH (set HOBBES_BIN)"
    PLUGIN=${OPT_PLUGIN:-}
    if [[ -n $PLUGIN ]]; then
        [[ -f $PLUGIN ]] || die "no SPANK plugin at $PLUGIN"
        PLUGIN=$(realpath "$PLUGIN")
    fi
    case ${HOBBES_SLURM_SUBSET:-auto} in
    1) SUBSET=1 ;;
    0) SUBSET=0 ;;
    *) [[ $("$LEVIATHAN" --help 2>/dev/null) == *--memory-blocks* ]] && SUBSET=1 || SUBSET=0 ;;
    esac

    # Cores: one per node, from our own cpuset (all online cores here).
    detect_cgroups
    local avail
    if [[ $CG_MODE == v1 ]]; then
        avail=$(cat "$CPUSET_BASE/cpuset.effective_cpus" 2>/dev/null || cat "$CPUSET_BASE/cpuset.cpus")
    else
        avail=$(cat "$V2_BASE/cpuset.cpus.effective" 2>/dev/null || cat /sys/devices/system/cpu/online)
    fi
    local -a cores=() online
    read -r -a online <<<"$(expand_list "$avail")"
    # Cores an exclusive cpuset beside ours holds (another cluster, a leviathan's
    # hobbes/) cannot be a node's: v1 refuses overlapping exclusive siblings.
    local held="" d c
    if [[ $CG_MODE == v1 ]]; then
        for d in "$CPUSET_BASE"/*/; do
            [[ $(cat "$d/cpuset.cpu_exclusive" 2>/dev/null) == 1 ]] || continue
            held+=" $(expand_list "$(cat "$d/cpuset.cpus")")"
        done
    fi
    for c in "${online[@]}"; do
        [[ " $held " == *" $c "* ]] || cores+=("$c")
    done
    NODES=${OPT_NODES:-2}
    [[ $NODES =~ ^[1-9][0-9]*$ ]] || die "--nodes wants a positive number, not $NODES"
    SLURM_CGROUPS=${OPT_SLURM_CGROUPS:-0}
    if [[ $SLURM_CGROUPS == 1 ]]; then
        ((NODES == 1)) || die "--slurm-cgroups runs one node (Slurm's cgroups are per machine); not --nodes $NODES"
        [[ $CG_MODE == v1 ]] || unsupported "--slurm-cgroups needs cgroup v1 cpuset and memory (leviathan --slurm-cgroups is v1 only)"
    fi
    ((NODES <= ${#online[@]})) ||
        die "$NODES nodes need $NODES cores (one each, exclusive); this machine has ${#online[@]} online ($avail)"
    ((NODES <= ${#cores[@]})) ||
        die "$NODES nodes need $NODES cores (one each, exclusive); only ${#cores[@]} of the ${#online[@]} are free (exclusive cpusets beside ours hold $(compress_list "$(tr " " "\n" <<<"$held" | awk NF | sort -nu | tr "\n" " ")"))"
    CORES=${cores[*]:0:NODES}

    # Memory: NODE_BLOCKS blocks per node.
    local nblocks bsize
    read -r -a all_blocks <<<"$(online_blocks)"
    nblocks=${#all_blocks[@]}
    bsize=$((16#$(cat /sys/devices/system/memory/block_size_bytes)))
    NODE_BLOCKS=$((nblocks / NODES))
    ((NODE_BLOCKS > ${HOBBES_SLURM_NODE_BLOCKS:-32})) && NODE_BLOCKS=${HOBBES_SLURM_NODE_BLOCKS:-32}
    NODE_MIB=$((NODE_BLOCKS * bsize / 1024 / 1024))
    ((NODE_MIB > HOST_MEMORY_MIB)) || die "too little memory per node ($NODE_MIB MiB)"
    HOST=$(hostname -s)

    pick_subnet
    pick_ports

    trap start_failed EXIT
    trap 'exit 130' INT TERM
    rm -rf "$DIR/ctld" "$DIR/run" "$DIR"/n[0-9]*
    mkdir -p "$DIR/ctld" "$DIR/run"
    for i in $(seq 0 $((NODES - 1))); do mkdir -p "$DIR/n$i/spool" "$DIR/n$i/tmp"; done
    MADE_ANYTHING=1
    save_state
    log "cluster $ID in $DIR: $NODES nodes on cores $(compress_list "$CORES"), $SUBNET.0/24, slurmctld port $CTLD_PORT, cgroup $CG_MODE"
    ((SUBSET == 1)) || log "leviathan has no --cpus/--memory-blocks (or HOBBES_SLURM_SUBSET=0): each node's leviathan sees the whole machine"

    make_cgroups
    make_network
    write_slurm_conf

    # NoCtldInAddrAny binds slurmctld to the address its host name resolves to: in a
    # mount namespace of its own, /etc/hosts says that is the bridge's.
    printf '127.0.0.1 localhost\n%s %s\n' "$SUBNET.1" "$HOST" >"$DIR/ctld/hosts"
    # shellcheck disable=SC2016
    SLURM_CONF=$DIR/slurm.conf unshare --mount --propagation private \
        sh -c 'mount --bind "$0" /etc/hosts && exec "$@"' "$DIR/ctld/hosts" \
        slurmctld -D -c -f "$DIR/slurm.conf" \
        </dev/null >>"$DIR/ctld/slurmctld.out" 2>&1 9>&- &
    echo $! >"$DIR/run/slurmctld.pid"
    local rc=0
    wait_until "$TIMEOUT" "$(pid_of slurmctld)" slurm_ping || rc=$?
    ((rc == 0)) || die "slurmctld $([[ $rc == 2 ]] && echo exited || echo "did not answer in ${TIMEOUT}s")"
    log "slurmctld up at $SUBNET.1:$CTLD_PORT"

    # The nodes' leviathans start side by side; each node's slurmd starts once its
    # leviathan answers.
    for i in $(seq 0 $((NODES - 1))); do
        leviathan_args "$i"
        launch_in_node "$i" "$DIR/n$i/leviathan.log" "leviathan-n$i" "$LEVIATHAN" "${LEV_ARGS[@]}"
    done
    for i in $(seq 0 $((NODES - 1))); do
        rc=0
        wait_until "$TIMEOUT" "$(pid_of "leviathan-n$i")" hobbes_answers "$i" || rc=$?
        ((rc == 0)) || die "leviathan of n$i $([[ $rc == 2 ]] && echo exited || echo "did not answer in ${TIMEOUT}s")"
        leviathan_args "$i"
        log "n$i: leviathan up (core $(core_of "$i"), ${LEV_ARGS[*]})"
        launch_in_node "$i" "$DIR/n$i/slurmd.out" "slurmd-n$i" \
            env SLURM_CONF="$DIR/slurm.conf" slurmd -D -f "$DIR/slurm.conf" -N "n$i"
    done
    rc=0
    wait_until "$TIMEOUT" "" all_idle || rc=$?
    if ((rc != 0)); then
        SLURM_CONF=$DIR/slurm.conf scontrol show node >&2 || true
        die "the nodes were not all idle after ${TIMEOUT}s"
    fi
    trap - EXIT INT TERM
    local ms
    ms=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN {printf "%d", (b - a) * 1000}')
    echo "$ms" >"$DIR/run/start_ms"
    log "up: $NODES nodes idle in ${ms} ms; eval \"\$($0 env --dir $DIR)\" for srun"
    if [[ ${OPT_JSON:-0} == 1 ]]; then
        print_json
    fi
}

# ---------------------------------------------------------------- stop

# SIGTERM, bounded wait, SIGKILL: for one of our daemons by pid file.
stop_daemon() {
    local name=$1 limit=$2 pid
    pid=$(pid_of "$name")
    [[ -n $pid ]] || return 0
    if ours "$pid"; then
        kill -TERM "$pid" 2>/dev/null || true
        if ! wait_until "$limit" "" not_alive "$pid"; then
            log "$name (pid $pid) ignored SIGTERM for ${limit}s: SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            wait_until 5 "" not_alive "$pid" || log "warning: $name (pid $pid) survives SIGKILL"
        fi
    fi
    rm -f "$DIR/run/$name.pid"
}
not_alive() { ! ours "$1"; }

cgroup_pids() {
    local d
    while read -r d; do
        cat "$d/cgroup.procs" 2>/dev/null || true
    done < <(cgroup_dirs)
}
cgroups_empty() { [[ -z $(cgroup_pids) ]]; }
slurm_cgroup_empty() { [[ -z $(find "$1" -name cgroup.procs -exec cat {} + 2>/dev/null) ]]; }

# Slurm clients (srun, salloc, ...) of this cluster still running: without their
# slurmctld they would wait for it forever (and keep whatever they hold, such as a test's
# lock). Known by SLURM_CONF in their environment; only Slurm's own commands, never the
# shells or tests that started them.
client_pids() {
    local p comm envfile env
    for envfile in /proc/[0-9]*/environ; do
        p=${envfile#/proc/}
        p=${p%/environ}
        read -r comm 2>/dev/null <"/proc/$p/comm" || continue
        [[ $comm =~ ^(srun|salloc|sbatch|sattach|scancel|scontrol|squeue|sinfo|sstat)$ ]] || continue
        env=$'\n'$(tr '\0' '\n' 2>/dev/null <"$envfile")$'\n' || continue
        [[ $env == *$'\n'"SLURM_CONF=$DIR/slurm.conf"$'\n'* ]] && echo "$p"
    done
    return 0
}

do_stop() {
    local i ns pid n
    # Daemons: slurmds (their steps' slurmstepds are in the node's cgroups, swept below),
    # slurmctld, then the leviathans (each destroys its enclaves on SIGTERM).
    for i in $(seq 0 $((${NODES:-0} - 1))); do stop_daemon "slurmd-n$i" 10; done
    stop_daemon slurmctld 10
    for i in $(seq 0 $((${NODES:-0} - 1))); do stop_daemon "leviathan-n$i" 15; done
    for pid in $(client_pids); do
        log "killing $(cat "/proc/$pid/comm" 2>/dev/null) (pid $pid), a client of this cluster"
        kill -KILL "$pid" 2>/dev/null || true
    done
    # Any other process of ours: a slurmctld whose pid file is gone, strays.
    for pid in $(pgrep -f -- "$DIR/" || true); do
        [[ $pid == "$$" ]] && continue
        if ours "$pid" && [[ $(cat "/proc/$pid/comm" 2>/dev/null) =~ ^(slurm|leviathan|nsenter) ]]; then
            log "killing stray $(cat "/proc/$pid/comm") (pid $pid)"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    # Whatever is left in the nodes' cgroups (steps' slurmstepds, tasks, enclave apps).
    if ! cgroups_empty; then
        n=$(cgroup_pids | sort -u | wc -l)
        log "killing $n processes left in the nodes' cgroups"
        for pid in $(cgroup_pids | sort -u); do kill -KILL "$pid" 2>/dev/null || true; done
        wait_until 10 "" cgroups_empty || log "warning: processes survive in the cgroups: $(cgroup_pids | tr '\n' ' ')"
    fi
    # leviathan's own cleanup per node (enclave cgroups, shm mounts, hugepages), in the
    # node's namespace (its node lock is per namespace) and cgroups (it finds its cgroups
    # from its own).
    for i in $(seq 0 $((${NODES:-0} - 1))); do
        ns=$(netns_of "$i")
        if [[ -d $DIR/n$i/hobbes && -x ${LEVIATHAN:-} && -e /run/netns/$ns ]] &&
            [[ $'\n'$(cgroup_dirs)$'\n' == *"/n$i"$'\n'* ]]; then
            # shellcheck disable=SC2016
            bash -c 'for f in $1; do echo $$ >"$f" || exit 111; done; shift; exec "$@"' \
                _ "$(procs_files_of "$i")" nsenter --net="/run/netns/$ns" \
                "$LEVIATHAN" cleanup --state-dir "$DIR/n$i/hobbes" \
                </dev/null >>"$DIR/n$i/cleanup.log" 2>&1 9>&- ||
                log "warning: leviathan cleanup of n$i failed (see $DIR/n$i/cleanup.log)"
        fi
    done
    # The node record names the last privileged leviathan; it was one of ours.
    if grep -qF -- "\"$DIR/" /run/hobbes-leviathan-node.json 2>/dev/null; then
        rm -f /run/hobbes-leviathan-node.json
    fi
    # Slurm's own cgroups (--slurm-cgroups): slurm_<node> at each v1 controller's root,
    # which slurmd leaves behind; their processes were the cluster's and are gone.
    if [[ ${SLURM_CGROUPS:-0} == 1 ]]; then
        local top p
        for top in /sys/fs/cgroup/*/slurm_n[0-9]*; do
            [[ -d $top ]] || continue
            for p in $(find "$top" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u); do
                log "killing pid $p, left in Slurm's cgroup $top"
                kill -KILL "$p" 2>/dev/null || true
            done
            wait_until 10 "" slurm_cgroup_empty "$top" || log "warning: processes survive in $top"
            find "$top" -depth -type d -exec rmdir {} \; 2>/dev/null ||
                log "warning: cannot remove Slurm's cgroup $top"
        done
    fi
    # cgroups, deepest first (the kernel removes a cgroup's files with it).
    local d
    while read -r d; do
        rmdir "$d" 2>/dev/null || log "warning: cannot remove cgroup $d"
    done < <(cgroup_dirs)
    # Network: namespaces (their veth ends go with them), links, the bridge.
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^hobbes-slurm-$ID-" || true); do
        ip netns del "$ns" || log "warning: cannot delete netns $ns"
    done
    for d in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | sed 's/@.*//' | grep "^hsv${ID}n" || true); do
        ip link del "$d" 2>/dev/null || true
    done
    if ip link show "$BRIDGE" >/dev/null 2>&1; then
        ip link del "$BRIDGE" || log "warning: cannot delete bridge $BRIDGE"
    fi
    rm -f "$DIR"/run/*.pid
}

cmd_stop() {
    [[ $(id -u) == 0 ]] || die "needs root"
    [[ -d $DIR ]] || {
        log "no $DIR: nothing to stop"
        return 0
    }
    DIR=$(cd "$DIR" && pwd -P)
    names_for
    exec 9>"$DIR/.lock"
    flock 9
    load_state
    if [[ -z $CG_MODE ]]; then
        detect_cgroups
    fi
    local t0=$EPOCHREALTIME ms
    do_stop
    ms=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN {printf "%d", (b - a) * 1000}')
    rm -f "$STATE" "$DIR/.lock"
    log "stopped in ${ms} ms: no daemon, namespace, link or cgroup of cluster $ID is left"
}

# ---------------------------------------------------------------- status, env

node_slurm_state() {
    local s
    s=$(SLURM_CONF=$DIR/slurm.conf sinfo -h -n "n$1" -N -o '%T' 2>/dev/null) || true
    echo "${s%%$'\n'*}"
}

print_json() {
    local i first=1 pid alive running=true
    printf '{"dir":%s,"id":%s,"slurm_conf":%s,"bridge":%s,"controller":{"addr":%s,"port":%s,"pid":%s,"alive":%s},' \
        "$(json_str "$DIR")" "$(json_str "$ID")" "$(json_str "$DIR/slurm.conf")" \
        "$(json_str "$BRIDGE")" "$(json_str "$SUBNET.1")" "${CTLD_PORT:-0}" \
        "$(pid_of slurmctld | grep . || echo null)" \
        "$(ours "$(pid_of slurmctld)" && echo true || echo false)"
    ours "$(pid_of slurmctld)" || running=false
    printf '"cgroup":%s,"subset_flags":%s,"start_ms":%s,"nodes":[' "$(json_str "$CG_MODE")" \
        "$([[ $SUBSET == 1 ]] && echo true || echo false)" "$(cat "$DIR/run/start_ms" 2>/dev/null || echo null)"
    for i in $(seq 0 $((NODES - 1))); do
        ((first)) || printf ','
        first=0
        printf '{"name":"n%s","core":%s,"addr":%s,"netns":%s,"netns_path":%s,"state_dir":%s,"socket":%s,"memory_blocks":%s,"memory_mib":%s,' \
            "$i" "$(core_of "$i")" "$(json_str "$SUBNET.$((i + 2))")" "$(json_str "$(netns_of "$i")")" \
            "$(json_str "/run/netns/$(netns_of "$i")")" "$(json_str "$DIR/n$i/hobbes")" \
            "$(json_str "$DIR/n$i/hobbes/leviathan.sock")" "$(json_str "$(node_blocks "$i")")" "${NODE_MIB:-0}"
        for d in leviathan slurmd; do
            pid=$(pid_of "$d-n$i")
            alive=false
            ours "$pid" && alive=true
            [[ $alive == true ]] || running=false
            printf '"%s_pid":%s,"%s_alive":%s,' "$d" "${pid:-null}" "$d" "$alive"
        done
        printf '"cgroups":['
        local files f sep=""
        files=$(procs_files_of "$i")
        for f in $files; do
            printf '%s%s' "$sep" "$(json_str "$(dirname "$f")")"
            sep=,
        done
        printf '],"slurm_state":%s}' "$(json_str "$(node_slurm_state "$i")")"
    done
    printf '],"running":%s}\n' "$running"
}

cmd_status() {
    [[ -d $DIR ]] || die "no $DIR"
    DIR=$(cd "$DIR" && pwd -P)
    names_for
    [[ -f $STATE ]] || {
        if [[ ${OPT_JSON:-0} == 1 ]]; then
            printf '{"dir":%s,"id":%s,"running":false,"nodes":[]}\n' "$(json_str "$DIR")" "$(json_str "$ID")"
        else
            echo "cluster $ID in $DIR: not running"
        fi
        return 3
    }
    load_state
    local json
    json=$(print_json)
    if [[ ${OPT_JSON:-0} == 1 ]]; then
        echo "$json"
    else
        echo "cluster $ID in $DIR: slurmctld $SUBNET.1:$CTLD_PORT (pid $(pid_of slurmctld)), SLURM_CONF=$DIR/slurm.conf"
        for i in $(seq 0 $((NODES - 1))); do
            echo "  n$i core $(core_of "$i") addr $SUBNET.$((i + 2)) netns $(netns_of "$i") leviathan pid $(pid_of "leviathan-n$i") slurmd pid $(pid_of "slurmd-n$i") state $(node_slurm_state "$i")"
        done
        SLURM_CONF=$DIR/slurm.conf sinfo 2>/dev/null || true
    fi
    [[ $json == *'"running":true}' ]] || return 3
}

cmd_env() {
    [[ -d $DIR ]] || die "no $DIR"
    DIR=$(cd "$DIR" && pwd -P)
    names_for
    [[ -f $STATE ]] || die "no cluster in $DIR"
    load_state
    printf 'export SLURM_CONF=%q\n' "$DIR/slurm.conf"
    printf 'export HOBBES_SLURM_CLUSTER=%q\n' "$DIR"
    local i
    for i in $(seq 0 $((NODES - 1))); do
        printf 'export HOBBES_SLURM_N%s_NETNS=%q\n' "$i" "/run/netns/$(netns_of "$i")"
        printf 'export HOBBES_SLURM_N%s_SOCKET=%q\n' "$i" "$DIR/n$i/hobbes/leviathan.sock"
    done
}

# ---------------------------------------------------------------- main

main() {
    (($#)) || usage
    local cmd=$1
    shift
    DIR="" OPT_NODES="" OPT_PLUGIN="" OPT_LEVIATHAN="" OPT_JSON=0 PLUGIN_ARGS="" OPT_SLURM_CGROUPS=0
    while (($#)); do
        case $1 in
        --dir) DIR=${2:?--dir wants a directory} && shift ;;
        --nodes) OPT_NODES=${2:?--nodes wants a number} && shift ;;
        --plugin) OPT_PLUGIN=${2:?--plugin wants a path} && shift ;;
        --plugin-args) PLUGIN_ARGS=${2?--plugin-args wants a string} && shift ;;
        --leviathan) OPT_LEVIATHAN=${2:?--leviathan wants a path} && shift ;;
        --json) OPT_JSON=1 ;;
        --slurm-cgroups) OPT_SLURM_CGROUPS=1 ;;
        -h | --help) usage ;;
        *) die "unknown argument $1" ;;
        esac
        shift
    done
    [[ -n $DIR ]] || die "--dir DIR is required"
    case $cmd in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    env) cmd_env ;;
    *) usage ;;
    esac
}

main "$@"
