#!/bin/sh
# Build libhobbes and install its header, shared and static libraries and
# pkg-config file.
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
    "") "$CARGO" build --manifest-path "$root/Cargo.toml" -p hobbes-capi --lib --profile "$PROFILE" ;;
    *) echo "usage: $0 [--no-build]" >&2; exit 2 ;;
esac

for f in libhobbes.so libhobbes.a; do
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
sed -e "s|@PREFIX@|$PREFIX|g" \
    -e "s|@LIBDIR@|$LIBDIR|g" \
    -e "s|@INCLUDEDIR@|$INCLUDEDIR|g" \
    -e "s|@VERSION@|$version|g" \
    "$here/hobbes.pc.in" > "$DESTDIR$PKGCONFIGDIR/hobbes.pc"
chmod 644 "$DESTDIR$PKGCONFIGDIR/hobbes.pc"

echo "installed libhobbes $version under $DESTDIR$PREFIX"
