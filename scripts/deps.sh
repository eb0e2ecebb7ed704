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
# Open MPI programs under Remora: leviathan hosts a PMIx server (libpmix's server
# API) and libremora-ompi.so is built against Open MPI's headers.
command -v mpicc.openmpi >/dev/null || needed+=(openmpi-bin libopenmpi-dev)
[[ -e /usr/lib/x86_64-linux-gnu/pmix2/include/pmix_server.h ]] || needed+=(libpmix-dev)
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
# VM enclaves (crates/vm-guest-agent, scripts/vm-image.sh): Debian's QEMU 7.2, which
# also ships virtiofsd (/usr/lib/qemu/virtiofsd), and cpio to pack the guest's
# initramfs. Without recommends (as below for everything) it installs cleanly; with
# them it conflicts with a newer preinstalled qemu-utils. The guest's kernel
# (linux-image-cloud-amd64) and busybox-static are downloaded by vm-image.sh, not
# installed.
command -v qemu-system-x86_64 >/dev/null || needed+=(qemu-system-x86)
command -v cpio >/dev/null || needed+=(cpio)
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
