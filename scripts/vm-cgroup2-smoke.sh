#!/usr/bin/env bash
# The VM image as the first real cgroup-v2 host: boot a guest (cgroup v2 only,
# two vCPUs) and run leviathan in it, with a smoke test of native enclaves:
# create, confinement (cgroup, cores, PID namespace), memory limit, destroy,
# kill -9 of the daemon and restart, clean stop. Too slow for CI under TCG
# (a few minutes); the result is recorded in docs/operations.md.
#
# Usage: scripts/vm-cgroup2-smoke.sh   (as root; builds what it needs)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
if [[ $(id -u) -ne 0 ]]; then
    echo "vm-cgroup2-smoke: needs root (virtiofsd shares the build with the guest)" >&2
    exit 1
fi
bash scripts/deps.sh
bash scripts/vm-image.sh --quiet >/dev/null
cargo build --release -q -p leviathan -p hobbes-cli
cargo build --release -q -p kind-vm --example vm-run
work=$(mktemp -d /tmp/hobbes-cg2-smoke.XXXXXX)
trap 'rm -rf "$work"' EXIT
chmod 755 "$work"
cp target/release/leviathan target/release/hobbes "$work/"
cat >"$work/smoke.sh" <<'GUEST'
set -eu
B=$1
export HOBBES_STATE_DIR=/tmp/hobbes
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
pass() { echo "PASS $*"; }
fail() { echo "FAIL $*"; echo "--- leviathan.log"; tail -20 /tmp/leviathan.log; exit 1; }
start() {
    "$B/leviathan" --state-dir "$HOBBES_STATE_DIR" --host-cores 0 --host-memory 512 >>/tmp/leviathan.log 2>&1 &
    i=0
    until "$B/hobbes" status >/dev/null 2>&1; do
        i=$((i + 1)); [ $i -lt 600 ] || fail "leviathan did not start"; sleep 0.1
    done
}
grep -q '^cgroup2 /sys/fs/cgroup cgroup2' /proc/mounts || fail "no cgroup2 at /sys/fs/cgroup"
[ ! -e /sys/fs/cgroup/cpuset/tasks ] || fail "a cgroup v1 hierarchy is mounted"
pass "guest $(uname -r): cgroup v2 only, $(nproc) cpus"
start
"$B/hobbes" status | grep -Eq '^cgroups +v2' || fail "leviathan does not report cgroup v2"
pass "leviathan runs on cgroup v2"
"$B/hobbes" create-enclave --name a --cores 1 --memory 256 >/dev/null || fail "create"
pass "native enclave created"
cg=/sys/fs/cgroup/hobbes/enclave-1
[ "$(cat $cg/cpuset.cpus.effective)" = 1 ] || fail "enclave cpuset is $(cat $cg/cpuset.cpus.effective)"
part=$(cat $cg/cpuset.cpus.partition)
case $part in root | isolated) ;; *) fail "enclave cpuset partition is $part" ;; esac
pass "exclusive cpuset partition ($part) on core 1"
out=$("$B/hobbes" launch-app --wait a -- sh -c 'cat /proc/self/cgroup; grep Cpus_allowed_list /proc/self/status; echo pid=$$')
echo "$out" | grep -q 'hobbes/enclave-1' || fail "app not in the enclave's cgroup: $out"
echo "$out" | grep -Eq 'Cpus_allowed_list:[[:space:]]+1$' || fail "app not on core 1: $out"
pid=$(echo "$out" | sed -n 's/^pid=//p')
[ "$pid" -lt 10 ] || fail "app pid $pid: no PID namespace"
pass "app confined: cgroup, core 1, PID namespace (pid $pid)"
# The limit is on the apps' cgroup (the control process stays outside it).
[ "$(cat $cg/apps/memory.max)" = 268435456 ] || fail "apps' memory.max is $(cat $cg/apps/memory.max)"
set +e
"$B/hobbes" launch-app --wait a -- dd if=/dev/zero of=/dev/null bs=400M count=1 >/dev/null 2>&1
rc=$?
set -e
[ $rc -eq 137 ] || fail "a 400 MiB buffer in a 256 MiB enclave ended with $rc, not SIGKILL"
pass "memory limit: 400 MiB in a 256 MiB enclave is OOM-killed (exit 137)"
"$B/hobbes" destroy-enclave a >/dev/null
[ ! -d $cg ] || fail "enclave cgroup left after destroy"
pass "destroyed, cgroup removed"
"$B/hobbes" create-enclave --name b --cores 1 --memory 256 >/dev/null
"$B/hobbes" launch-app b -- sleep 600 >/dev/null
kill -9 "$(cat $HOBBES_STATE_DIR/leviathan.pid)"
sleep 0.5
start
i=0
until "$B/hobbes" list-enclaves | grep -Eq '^[0-9]+ +b +native +running'; do
    i=$((i + 1)); [ $i -lt 100 ] || fail "enclave b not running after the restart"; sleep 0.1
done
"$B/hobbes" list-apps | grep -q 'sleep .*running' || fail "the app did not survive the restart"
"$B/hobbes" launch-app --wait b -- true || fail "launch after restart"
pass "kill -9 of leviathan and restart: enclave and app kept"
"$B/hobbes" destroy-enclave b >/dev/null
kill -TERM "$(cat $HOBBES_STATE_DIR/leviathan.pid)"
i=0
while [ -d /sys/fs/cgroup/hobbes ]; do
    i=$((i + 1)); [ $i -lt 100 ] || fail "/sys/fs/cgroup/hobbes left after leviathan stopped"; sleep 0.1
done
pass "leviathan stopped; its cgroups are gone"
echo "SMOKE PASSED"
GUEST
target/release/examples/vm-run --cores 0-1 --memory 2048 --share "$work:ro" -- sh "$work/smoke.sh" "$work"
