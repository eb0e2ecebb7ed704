#!/bin/sh
# Build libhobbes, libxemem and libxpmem and install their headers
# (hobbes.h, xemem.h, xasm.h, xpmem.h), libraries (libhobbes.{so,a},
# libxemem.{so,a}, libxpmem.so) and pkg-config files (hobbes.pc, xemem.pc,
# xpmem.pc: one per library, so `pkg-config --libs xpmem` gives an XPMEM
# program exactly -lxpmem).
#
#   crates/hobbes-capi/install.sh [--no-build]
#
# Variables (defaults): PREFIX (/usr/local), LIBDIR ($PREFIX/lib),
# INCLUDEDIR ($PREFIX/include), PKGCONFIGDIR ($LIBDIR/pkgconfig),
# DESTDIR (empty; staging root for packagers), PROFILE (release; dev for a
# debug build), CARGO_TARGET_DIR (<workspace>/target), CARGO (cargo).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)

PREFIX=${PREFIX:-/usr/local}
LIBDIR=${LIBDIR:-$PREFIX/lib}
INCLUDEDIR=${INCLUDEDIR:-$PREFIX/include}
PKGCONFIGDIR=${PKGCONFIGDIR:-$LIBDIR/pkgconfig}
DESTDIR=${DESTDIR:-}
PROFILE=${PROFILE:-release}
CARGO=${CARGO:-cargo}
target=${CARGO_TARGET_DIR:-$root/target}

# Cargo puts the dev profile's output in target/debug.
case $PROFILE in
    dev | debug) PROFILE=dev; out=$target/debug ;;
    *) out=$target/$PROFILE ;;
esac

case ${1:-} in
    --no-build) ;;
    "") "$CARGO" build --manifest-path "$root/Cargo.toml" -p hobbes-capi -p xemem-capi \
            -p xpmem-compat --lib --profile "$PROFILE" ;;
    *) echo "usage: $0 [--no-build]" >&2; exit 2 ;;
esac

for f in libhobbes.so libhobbes.a libxemem.so libxemem.a libxpmem.so; do
    if [ ! -f "$out/$f" ]; then
        echo "$0: $out/$f is missing; build it first (or drop --no-build)" >&2
        exit 1
    fi
done

# The workspace version (first `version = "..."`, in [workspace.package]).
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$root/Cargo.toml" | head -n 1)

install -d "$DESTDIR$INCLUDEDIR" "$DESTDIR$LIBDIR" "$DESTDIR$PKGCONFIGDIR"
install -m 644 "$here/include/hobbes.h" "$DESTDIR$INCLUDEDIR/hobbes.h"
install -m 755 "$out/libhobbes.so" "$DESTDIR$LIBDIR/libhobbes.so"
install -m 644 "$out/libhobbes.a" "$DESTDIR$LIBDIR/libhobbes.a"
install -m 644 "$root/crates/xemem-capi/include/xemem.h" "$DESTDIR$INCLUDEDIR/xemem.h"
install -m 644 "$root/crates/xemem-capi/include/xasm.h" "$DESTDIR$INCLUDEDIR/xasm.h"
install -m 755 "$out/libxemem.so" "$DESTDIR$LIBDIR/libxemem.so"
install -m 644 "$out/libxemem.a" "$DESTDIR$LIBDIR/libxemem.a"
install -m 644 "$root/crates/xpmem-compat/include/xpmem.h" "$DESTDIR$INCLUDEDIR/xpmem.h"
install -m 755 "$out/libxpmem.so" "$DESTDIR$LIBDIR/libxpmem.so"
for pc in hobbes xemem xpmem; do
    sed -e "s|@PREFIX@|$PREFIX|g" \
        -e "s|@LIBDIR@|$LIBDIR|g" \
        -e "s|@INCLUDEDIR@|$INCLUDEDIR|g" \
        -e "s|@VERSION@|$version|g" \
        "$here/$pc.pc.in" > "$DESTDIR$PKGCONFIGDIR/$pc.pc"
    chmod 644 "$DESTDIR$PKGCONFIGDIR/$pc.pc"
done

echo "installed libhobbes, libxemem and libxpmem $version under $DESTDIR$PREFIX"
