#!/usr/bin/env bash
# The main job: install what is needed, build, and run the Hobbes demo:
# start leviathan (embedded, in a temporary state directory, unless one runs),
# create an enclave, run a program in it, show the node's status, clean up.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
cargo build --release --workspace --bins
exec target/release/hobbes demo "$@"
