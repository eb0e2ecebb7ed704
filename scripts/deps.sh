#!/usr/bin/env bash
# Install the Debian packages Hobbes needs to build and test (sourced by demo.sh and test.sh).
# Rust (stable) is assumed present. Needs root for apt-get; skips what is installed.
set -euo pipefail
needed=()
command -v cc >/dev/null || needed+=(gcc libc6-dev)
command -v pkg-config >/dev/null || needed+=(pkg-config)
command -v unshare >/dev/null || needed+=(util-linux)
command -v stat >/dev/null || needed+=(coreutils)
# Remora's interposition library (crates/remora-pmpi) builds against MPICH and its tests
# run MPICH programs, C and Fortran, under mpiexec.hydra.
command -v mpicc.mpich >/dev/null || needed+=(mpich libmpich-dev)
command -v gfortran >/dev/null || needed+=(gfortran)
# leviathan exports the node's topology once (lstopo) for every MPI rank to load
# instead of each rank discovering it again (most of an MPICH rank's start-up).
command -v lstopo-no-graphics >/dev/null || needed+=(hwloc-nox)
# The LWK kind's test programs (scripts/lwk-programs.sh) include musl static
# executables. The rest need nothing more: static glibc (libc.a) comes with
# libc6-dev, static libgomp with gcc, static libgfortran with gfortran, and a
# static Rust program with the stable toolchain (-C target-feature=+crt-static;
# no musl target needed); the 32-bit refusal test is freestanding (gcc -m32
# -nostdlib), so no gcc-multilib.
command -v musl-gcc >/dev/null || needed+=(musl-tools)
if ((${#needed[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "hobbes: please install: ${needed[*]} (needs root)" >&2
        exit 1
    fi
    echo "hobbes: installing ${needed[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${needed[@]}"
fi
