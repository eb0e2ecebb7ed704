#!/usr/bin/env bash
# The main job: install what is needed, build, and run the composed in situ
# workflow (`hobbes demo insitu`): start leviathan (embedded, in a temporary
# state directory, unless one runs), create two native enclaves, run a
# SNAP-style simulation in one and spectrum analytics in the other, coupled in
# every mode (isolated, stub, XASM snapshots, spinlock over XEMEM), print the
# report, write the plot to ./insitu-report/, clean up. Arguments go to
# `hobbes demo insitu` (see --help); `hobbes demo` alone is the short tour.
# `hobbes demo insitu` runs `hobbes-insitu demo` (crates/hobbes-workloads),
# found next to hobbes: the build below makes both, and leviathan.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
cargo build --release --workspace --bins
exec target/release/hobbes demo insitu "$@"
