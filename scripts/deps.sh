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
# Slurm (issue 14): scripts/slurm-cluster.sh runs a local cluster (slurmctld and a
# slurmd per simulated node, auth/none, so munged is not used) for the multi-node tests,
# and the SPANK plugin builds against spank.h (libslurm-dev). The packages pull in munge.
# Their postinst scripts start munged, slurmctld and slurmd through invoke-rc.d where
# services may start: the install below forbids that (a policy-rc.d that answers 101,
# as Debian's container images ship, for the time of the install), so no daemon of the
# packages is left running; the script starts its own, with its own slurm.conf.
[[ -x /usr/sbin/slurmctld ]] || needed+=(slurmctld)
[[ -x /usr/sbin/slurmd ]] || needed+=(slurmd)
command -v srun >/dev/null || needed+=(slurm-client)
[[ -e /usr/lib/x86_64-linux-gnu/slurm-wlm/mpi_pmi2.so ]] || needed+=(slurm-wlm-basic-plugins)
[[ -e /usr/include/slurm/spank.h ]] || needed+=(libslurm-dev)
if ((${#needed[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "hobbes: please install: ${needed[*]} (needs root)" >&2
        exit 1
    fi
    echo "hobbes: installing ${needed[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\n# hobbes deps.sh: no service starts while it installs\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    apt-get install -y -qq --no-install-recommends "${needed[@]}"
fi
