#!/usr/bin/env bash
# The whole test suite (what CI runs through .ci/run): formatting, lints, and every
# test of the workspace. Root tests (cgroups, namespaces) run when we are root and
# print `SKIP <test>: <reason>` otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo test --workspace --no-fail-fast 2>&1 | tee /tmp/hobbes-test.$$.log
status=${PIPESTATUS[0]}
passed=$(grep -Eo '[0-9]+ passed' /tmp/hobbes-test.$$.log | awk '{s+=$1} END {print s+0}')
failed=$(grep -Eo '[0-9]+ failed' /tmp/hobbes-test.$$.log | awk '{s+=$1} END {print s+0}')
skipped=$(grep -c '^SKIP ' /tmp/hobbes-test.$$.log || true)
rm -f /tmp/hobbes-test.$$.log
echo "$passed passed, $failed failed, $skipped skipped"
exit "$status"
