#!/usr/bin/env bash
# Install the Debian packages Hobbes needs to build and test (sourced by demo.sh and test.sh).
# Rust (stable) is assumed present. Needs root for apt-get; skips what is installed.
set -euo pipefail
needed=()
command -v cc >/dev/null || needed+=(gcc libc6-dev)
command -v pkg-config >/dev/null || needed+=(pkg-config)
command -v unshare >/dev/null || needed+=(util-linux)
command -v stat >/dev/null || needed+=(coreutils)
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
