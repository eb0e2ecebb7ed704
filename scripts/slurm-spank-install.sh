#!/bin/sh
# Build the Hobbes SPANK plugin and install it; print the plugstack.conf line.
#
#   scripts/slurm-spank-install.sh [DIR] [PLUGIN ARGS...]
#
# DIR: where hobbes_spank.so goes (default /usr/local/lib/hobbes). PLUGIN
# ARGS are put on the printed line: socket=PATH (leviathan's client socket;
# %n is replaced by the Slurm node name, for one leviathan per simulated
# node; default: the leviathan holding the node lock in slurmstepd's network
# namespace, else /run/hobbes/leviathan.sock) and default_mem=SIZE (memory per
# node when neither --enclave nor the job says; default 256M).
# HOBBES_SPANK_MODE=optional prints an "optional" line (a node without the
# plugin still runs jobs); the default is "required". See docs/slurm.md.
set -eu
cd "$(dirname "$0")/.."
dir=${1:-/usr/local/lib/hobbes}
[ $# -gt 0 ] && shift
mode=${HOBBES_SPANK_MODE:-required}
case $mode in required|optional) ;; *) echo "HOBBES_SPANK_MODE must be required or optional" >&2; exit 2 ;; esac
if [ ! -f /usr/include/slurm/spank.h ]; then
    echo "slurm-spank-install: no /usr/include/slurm/spank.h: install libslurm-dev" >&2
    exit 1
fi
cargo build --release -q -p hobbes-spank
so=target/release/libhobbes_spank.so
if ! nm -D --defined-only "$so" | grep -q ' slurm_spank_init$'; then
    echo "slurm-spank-install: $so has no SPANK hooks (built without spank.h?)" >&2
    exit 1
fi
mkdir -p "$dir"
install -m 0755 "$so" "$dir/hobbes_spank.so.new"
mv -f "$dir/hobbes_spank.so.new" "$dir/hobbes_spank.so"
echo "installed $dir/hobbes_spank.so; add this line to plugstack.conf:" >&2
echo "$mode $dir/hobbes_spank.so${*:+ $*}"
