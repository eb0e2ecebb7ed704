#!/usr/bin/env bash
# Rebuild (or reuse) UCX from Debian's own source package with its xpmem transport on our
# libxpmem (crates/xpmem-compat): no kernel module, the same xpmem.h API. The system's UCX
# (/usr/lib/x86_64-linux-gnu/libucp.so.0 ...) is never touched; MPICH (ch4:ucx) and Open MPI
# (pml ucx) take the rebuilt one through LD_LIBRARY_PATH. See docs/xemem.md, "UCX and MPI
# over XEMEM (rebuilt UCX)".
#
#   scripts/ucx-xpmem.sh [--cache DIR] [--libxpmem FILE] [--force] [--quiet] [--print-prefix]
#
# DIR (default ${HOBBES_CACHE:-/var/cache/hobbes}/ucx-xpmem) gets src/ (apt-get source),
# build/, prefix/ (the install: bin/ucx_info, bin/ucx_perftest, lib/), xpmem/ (our header
# and library staged as include/ and lib/ for --with-xpmem), build.log and stamp. FILE
# (default target/release/libxpmem.so, built with cargo) is the libxpmem to build against.
# UCX is rebuilt only when its inputs change: the source version, our one patch (keepalive
# across PID namespaces, below), the configure options, our xpmem.h, and the symbols
# libxpmem exports (UCX links it dynamically, so a rebuilt
# libxpmem with the same ABI needs no new UCX). A second run takes seconds. Prints the
# prefix; --print-prefix prints it without building (exit 1 if no build is there yet).
# Run programs with LD_LIBRARY_PATH=PREFIX/lib:DIR-OF-LIBXPMEM.
set -euo pipefail

cache=${HOBBES_CACHE:-/var/cache/hobbes}/ucx-xpmem
libxpmem=
force=0
quiet=0
print_prefix=0
while (($#)); do
    case $1 in
        --cache) cache=${2:?--cache needs a directory}; shift 2 ;;
        --libxpmem) libxpmem=${2:?--libxpmem needs a file}; shift 2 ;;
        --force) force=1; shift ;;
        --quiet) quiet=1; shift ;;
        --print-prefix) print_prefix=1; shift ;;
        -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "ucx-xpmem: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

say() { ((quiet)) || echo "ucx-xpmem: $*" >&2; }
die() { echo "ucx-xpmem: $*" >&2; exit 1; }

prefix=$cache/prefix
if ((print_prefix)); then
    echo "$prefix"
    [[ -f $cache/stamp && -x $prefix/bin/ucx_info ]] ||
        die "no rebuilt UCX in $prefix yet: run scripts/ucx-xpmem.sh"
    exit 0
fi

script=$(realpath "${BASH_SOURCE[0]}")
repo=$(dirname "$(dirname "$script")")
header=$repo/crates/xpmem-compat/include/xpmem.h
[[ -f $header ]] || die "our xpmem.h is not at $header"
mkdir -p "$cache"
cache=$(realpath "$cache")
prefix=$cache/prefix

# One build at a time per cache directory.
exec 9>"$cache/.lock"
flock 9

# --- our libxpmem: the release build unless given.
if [[ -z $libxpmem ]]; then
    say "building libxpmem (cargo build --release -p xpmem-compat)"
    cargo_quiet=()
    ((quiet)) && cargo_quiet=(--quiet)
    (cd "$repo" && cargo build "${cargo_quiet[@]}" --release -p xpmem-compat) ||
        die "cargo could not build libxpmem; pass --libxpmem FILE to use a built one"
    libxpmem=$repo/target/release/libxpmem.so
fi
[[ -f $libxpmem ]] || die "no libxpmem at $libxpmem"
libxpmem=$(realpath "$libxpmem")

# --- build dependencies: a listed set rather than `apt-get build-dep ucx`, which would
# pull a JDK, doxygen and TeX for the Java bindings and manuals this build leaves out.
DEPS=(build-essential autoconf automake libtool pkg-config libnuma-dev dpkg-dev)
missing=()
for p in "${DEPS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
    say "installing build dependencies: ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >&2 || die "apt-get install ${missing[*]} failed"
fi

# --- the source package: the version of the system's libucx0, so the rebuilt libraries
# are what Debian's MPICH and Open MPI were built against.
version=$(dpkg-query -W -f='${Version}' libucx0 2>/dev/null || true)
if [[ -z $version ]]; then
    version=$(apt-cache policy libucx0 2>/dev/null | awk '/Candidate:/ {print $2; exit}')
fi
[[ -n $version && $version != "(none)" ]] || die "no libucx0 installed or available to match"

# The deb-src entry, beside Debian's own sources (replaces a hand-made one).
srcs=/etc/apt/sources.list.d/hobbes-deb-src.sources
codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
[[ -n $codename ]] || die "no VERSION_CODENAME in /etc/os-release"
want_srcs="Types: deb-src
URIs: http://deb.debian.org/debian
Suites: $codename $codename-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg"
added_srcs=0
if [[ ! -f $srcs || $(cat "$srcs") != "$want_srcs" ]]; then
    say "adding the deb-src entry $srcs"
    printf '%s\n' "$want_srcs" >"$srcs"
    added_srcs=1
fi
rm -f /etc/apt/sources.list.d/hobbes-src-tmp.sources

# --- one patch on top of Debian's: UCX 1.13 connects a shared-memory endpoint (posix,
# sysv, xpmem) only if the peer's pid, as the peer sees it, names a live process here too
# (keepalive: uct_ep_keepalive_init reads /proc/PID's start time). Between enclaves, each in
# its own PID namespace, that pid means nothing, so the connection failed or, worse,
# succeeded by coincidence. Patched: such an endpoint connects and is not watched.
read -r -d '' PATCH <<'PATCH_EOF' || true
--- a/src/uct/base/uct_iface.c
+++ b/src/uct/base/uct_iface.c
@@ -811,8 +811,10 @@
 {
     ka->start_time = ucs_sys_get_proc_create_time(pid);
     if (ka->start_time == 0) {
-        ucs_diag("failed to get start time for pid %d", pid);
-        return UCS_ERR_ENDPOINT_TIMEOUT;
+        /* Hobbes: a peer in another PID namespace (another enclave) has a pid
+         * that means nothing here; connect, and do not watch it. */
+        ucs_debug("no start time for pid %d (another PID namespace?): "
+                  "no keepalive on this endpoint", pid);
     }
 
     return UCS_OK;
@@ -823,7 +825,9 @@
 {
     unsigned long start_time;
 
-    ucs_assert(ka->start_time != 0);
+    if (ka->start_time == 0) {
+        return; /* not watched: see uct_ep_keepalive_init */
+    }
 
     start_time = ucs_sys_get_proc_create_time(pid);
     if (ka->start_time != start_time) {
PATCH_EOF
patch_sha=$(printf '%s\n' "$PATCH" | sha256sum | cut -d' ' -f1)

# --- the inputs of the build, and whether the cached one matches them.
CONFIGURE=(--enable-mt --enable-cma --enable-examples --enable-devel-headers --disable-static
           --disable-backtrace-detail --without-verbs --without-rdmacm --without-java
           --without-go --without-fuse3 --disable-doxygen-doc)
symbols=$(nm -D --defined-only "$libxpmem" | awk '$3 ~ /^xpmem_/ {print $3}' | sort)
[[ -n $symbols ]] || die "$libxpmem exports no xpmem_ symbols"
header_sha=$(sha256sum "$header" | cut -d' ' -f1)
symbols_sha=$(printf '%s\n' "$symbols" | sha256sum | cut -d' ' -f1)
inputs_hash=$(printf '%s\n' "$version" "$patch_sha" "${CONFIGURE[*]}" "$header_sha" "$symbols_sha" |
    sha256sum | cut -d' ' -f1)

stamp_field() { sed -n "s/^$1=//p" "$cache/stamp" 2>/dev/null; }
if ((!force)) && [[ -x $prefix/bin/ucx_info ]] &&
    [[ $(stamp_field inputs_hash) == "$inputs_hash" ]]; then
    say "up to date (ucx $version, built in $(stamp_field build_seconds) s)"
    echo "$prefix"
    exit 0
fi

# --- stage our header and library as --with-xpmem expects: DIR/include/xpmem.h,
# DIR/lib/libxpmem.so.
stage=$cache/xpmem
rm -rf "$stage"
mkdir -p "$stage/include" "$stage/lib"
cp "$header" "$stage/include/xpmem.h"
cp "$libxpmem" "$stage/lib/libxpmem.so"

# --- the source, unpacked with Debian's patches applied (apt-get source runs dpkg-source).
src_root=$cache/src
upstream=${version#*:}
upstream=${upstream%-*}
srcdir=$src_root/ucx-$upstream
src_key="$version $patch_sha"
if [[ ! -f $src_root/.version || $(cat "$src_root/.version") != "$src_key" ||
      ! -f $srcdir/configure.ac ]]; then
    if ((added_srcs)) || ! apt-cache showsrc ucx 2>/dev/null | grep -qx "Version: $version"; then
        say "apt-get update (for the deb-src lists)"
        apt-get update -qq >&2 || die "apt-get update failed"
    fi
    rm -rf "$src_root"
    mkdir -p "$src_root"
    say "apt-get source ucx=$version"
    # As root apt cannot drop to _apt for a directory _apt cannot write: harmless here.
    (cd "$src_root" && apt-get source -qq "ucx=$version" 2>&1 |
        grep -v -e 'unsandboxed as root' -e '^W: Download is performed' >&2 || true)
    [[ -f $srcdir/configure.ac ]] || die "apt-get source ucx=$version gave no $srcdir"
    say "patching: keepalive across PID namespaces"
    printf '%s\n' "$PATCH" | patch -d "$srcdir" -p1 --forward --quiet ||
        die "the keepalive patch does not apply to ucx $version"
    echo "$src_key" >"$src_root/.version"
fi

# --- configure, build, install. Everything goes to build.log; its tail is shown on failure.
log=$cache/build.log
: >"$log"
fail() {
    tail -n 40 "$log" >&2
    die "$1 failed (full log: $log)"
}
start=$SECONDS
if [[ ! -x $srcdir/configure ]]; then
    say "autogen.sh (autoreconf)"
    (cd "$srcdir" && ./autogen.sh) >>"$log" 2>&1 || fail "autogen.sh"
fi
build=$cache/build
rm -f "$cache/stamp"
rm -rf "$build" "$prefix"
mkdir -p "$build"
# UCX's configure probes the library with AC_CHECK_LIB([xpmem], [xpmem_init]), a function
# of the kernel module's library that UCX itself never calls and ours does not have; the
# cache variable answers that probe, and the header and link checks stay real.
say "configure --prefix=$prefix --with-xpmem=$stage"
(cd "$build" && "$srcdir/configure" --prefix="$prefix" --with-xpmem="$stage" \
    "${CONFIGURE[@]}" ac_cv_lib_xpmem_xpmem_init=yes) >>"$log" 2>&1 || fail "configure"
# AM_CONDITIONAL([HAVE_XPMEM]) comments out the module's rules when it is false.
grep -q '^S\["HAVE_XPMEM_FALSE"\]="#"' "$build/config.status" ||
    fail "configure did not enable xpmem (see 'XPMEM' in $build/config.log)"
say "make -j2 (about 10 minutes on 2 cores)"
make -C "$build" -j2 >>"$log" 2>&1 || fail "make"
make -C "$build" install >>"$log" 2>&1 || fail "make install"
[[ -f $prefix/lib/ucx/libuct_xpmem.so.0 || -f $prefix/lib/ucx/libuct_xpmem.so ]] ||
    fail "the install has no lib/ucx/libuct_xpmem.so"
seconds=$((SECONDS - start))

cat >"$cache/stamp" <<EOF
version=$version
keepalive_patch_sha256=$patch_sha
inputs_hash=$inputs_hash
xpmem_h_sha256=$header_sha
libxpmem_symbols_sha256=$symbols_sha
libxpmem=$libxpmem
build_seconds=$seconds
built=$(date -u +%Y-%m-%dT%H:%M:%SZ)
EOF
say "built ucx $version with xpmem in $seconds s"
echo "$prefix"
