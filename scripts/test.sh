#!/usr/bin/env bash
# The whole test suite (what CI runs through .ci/run): formatting, lints, and every
# test of the workspace. Root tests (cgroups, namespaces) run when we are root and
# print `SKIP <test>: <reason>` otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
# A full build of the workspace and its tests needs about 3 GB; say so up front rather
# than let the linker crash half-way with "No space left on device".
free_mb=$(df -Pm . | awk 'NR == 2 {print $4}')
if [ "${free_mb:-0}" -lt 4096 ]; then
    echo "hobbes: only ${free_mb} MB free on $(df -P . | awk 'NR == 2 {print $6}'); the test build needs about 4 GB" >&2
    exit 1
fi
# One build from scratch: incremental state would only cost disk and time.
export CARGO_INCREMENTAL=0
bash scripts/deps.sh
# The VM kind's guest image (Debian's cloud kernel, busybox and our guest agent),
# cached; without it (no network for apt-get download) the VM tests print SKIP.
bash scripts/vm-image.sh --quiet >/dev/null || echo "hobbes: no VM image; the VM tests will SKIP" >&2
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --no-fail-fast 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
passed=$(grep -Eo '[0-9]+ passed' "$log" | awk '{s+=$1} END {print s+0}')
failed=$(grep -Eo '[0-9]+ failed' "$log" | awk '{s+=$1} END {print s+0}')
skipped=$(grep -c '^SKIP ' "$log" || true)
echo "$passed passed, $failed failed, $skipped skipped"
exit "$status"
