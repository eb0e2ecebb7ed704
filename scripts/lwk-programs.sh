#!/usr/bin/env bash
# Build the programs that exercise lwk enclaves into OUTDIR: the LWK kind's test
# programs (crates/kind-lwk/tests/programs: hello in C/glibc, C/musl, Rust and
# Fortran, threads, OpenMP, file I/O, crashes, kill targets, and binaries an LWK
# must refuse) and the benchmark programs of `hobbes-bench lwk` (bench/lwk).
#
# usage: scripts/lwk-programs.sh [--tests | --bench] OUTDIR
#
# Prints one line per program: "built PATH (what it is)", or "skip NAME: why"
# when its compiler is missing here (scripts/deps.sh installs them). Exits 1
# if a program whose compiler is present failed to build. Everything is static
# unless it says otherwise: an LWK enclave loads static executables only.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tests=$root/crates/kind-lwk/tests/programs
bench=$root/bench/lwk
what=all
case ${1:-} in
    --tests) what=tests; shift ;;
    --bench) what=bench; shift ;;
esac
if [[ $# -ne 1 || $1 == -* ]]; then
    echo "usage: $0 [--tests | --bench] OUTDIR" >&2
    exit 2
fi
out=$1
mkdir -p "$out"
out=$(cd "$out" && pwd)
# rustup installs into ~/.cargo/bin, which a root shell's PATH may lack.
PATH=$PATH:${CARGO_HOME:-$HOME/.cargo}/bin
CFLAGS=(-O2 -Wall)
failed=0

have() { command -v "$1" >/dev/null 2>&1; }
skip() { printf 'skip  %s: %s\n' "$1" "$2"; }

# build NAME WHAT COMMAND...: run COMMAND (which writes $out/NAME); report it.
# A compiler's warnings on success are shown too, on stderr, except static
# libgomp's notice that its offloading plugins would need dlopen (the test
# programs use no offloading, so it never runs).
build() {
    local name=$1 desc=$2 log
    shift 2
    if log=$("$@" 2>&1); then
        log=$(printf '%s\n' "$log" | grep -v -e "libgomp.a(target.o): in function" \
            -e "Using 'dlopen' in statically linked" || true)
        [[ -z $log ]] || printf '%s\n' "$log" >&2
    else
        printf 'FAIL  %s: %s\n%s\n' "$name" "$*" "$log" >&2
        failed=1
        return
    fi
    # A wrapper that ignores a flag makes a dynamic executable without a word
    # (musl-gcc did with -static-pie): what must be static is checked.
    if [[ $desc != refused* ]] && have readelf && readelf -lW "$out/$name" | grep -q INTERP; then
        printf 'FAIL  %s: dynamically linked (it has a PT_INTERP), expected static\n' "$name" >&2
        failed=1
        return
    fi
    printf 'built %s (%s)\n' "$out/$name" "$desc"
}

if [[ $what != bench ]]; then
    t=$tests
    if have gcc; then
        build hello-glibc-static "C, glibc, static" \
            gcc "${CFLAGS[@]}" -static -o "$out/hello-glibc-static" "$t/hello.c"
        build hello-glibc-static-pie "C, glibc, static-pie" \
            gcc "${CFLAGS[@]}" -fPIE -static-pie -o "$out/hello-glibc-static-pie" "$t/hello.c"
        build threads "C, pthreads, one thread per CPU" \
            gcc "${CFLAGS[@]}" -static -pthread -o "$out/threads" "$t/threads.c"
        build omp "C, OpenMP, static libgomp" \
            gcc "${CFLAGS[@]}" -static -fopenmp -o "$out/omp" "$t/omp.c"
        for p in files crash spin exitcode toobig; do
            build "$p" "C, glibc, static" gcc "${CFLAGS[@]}" -static -o "$out/$p" "$t/$p.c"
        done
        # Binaries an LWK enclave must refuse, each for its own reason.
        build hello-dynamic "refused: dynamically linked" \
            gcc "${CFLAGS[@]}" -o "$out/hello-dynamic" "$t/hello.c"
        # Freestanding, so no 32-bit C library (gcc-multilib) is needed.
        if gcc -m32 -nostdlib -static -ffreestanding -fno-pic -fno-stack-protector \
            -o "$out/hello-i386" "$t/hello32.c" 2>/dev/null; then
            printf 'built %s (%s)\n' "$out/hello-i386" "refused: 32-bit i386"
        else
            skip hello-i386 "gcc cannot make i386 executables here (gcc -m32)"
        fi
        if [[ -f $out/hello-glibc-static ]]; then
            # Whole ELF and program headers, but the segments' bytes cut off.
            build truncated "refused: truncated ELF (first 4096 bytes of hello-glibc-static)" \
                sh -c 'head -c 4096 "$1" > "$2" && chmod 755 "$2"' sh \
                "$out/hello-glibc-static" "$out/truncated"
        fi
    else
        skip "C test programs" "gcc not installed (apt-get install gcc libc6-dev)"
    fi
    build not-elf "refused: not an ELF file" \
        sh -c 'printf "this is not an executable\n" > "$1" && chmod 755 "$1"' sh "$out/not-elf"
    if have musl-gcc; then
        build hello-musl-static "C, musl, static" \
            musl-gcc "${CFLAGS[@]}" -static -o "$out/hello-musl-static" "$t/hello.c"
        # musl-gcc's specs replace gcc's link line, so -static-pie would make a
        # dynamic PIE with musl's interpreter: link musl's static-pie start file
        # (rcrt1.o) by hand, as musl's own gcc does.
        m=/usr/lib/x86_64-linux-musl
        build hello-musl-static-pie "C, musl, static-pie" \
            musl-gcc "${CFLAGS[@]}" -fPIE -nostartfiles -Wl,-static,-pie,--no-dynamic-linker,-z,text \
            "$m/rcrt1.o" "$m/crti.o" "$(gcc -print-file-name=crtbeginS.o)" "$t/hello.c" \
            "$(gcc -print-file-name=crtendS.o)" "$m/crtn.o" -o "$out/hello-musl-static-pie"
    else
        skip hello-musl-static "musl-gcc not installed (apt-get install musl-tools)"
    fi
    if have gfortran; then
        build hello-fortran "Fortran, gfortran, static" \
            gfortran -O2 -static -o "$out/hello-fortran" "$t/hello.f90"
    else
        skip hello-fortran "gfortran not installed (apt-get install gfortran)"
    fi
    if have rustc; then
        # No musl target here: glibc's static libc through crt-static, which
        # makes a static-pie; relocation-model=static makes a plain static one.
        build hello-rust "Rust std, glibc, static-pie (crt-static)" \
            rustc --edition 2021 -O -C target-feature=+crt-static \
            -o "$out/hello-rust" "$t/hello.rs"
        build hello-rust-static "Rust std, glibc, static (crt-static, non-PIE)" \
            rustc --edition 2021 -O -C target-feature=+crt-static -C relocation-model=static \
            -o "$out/hello-rust-static" "$t/hello.rs"
    else
        skip hello-rust "rustc not found (install Rust with rustup)"
    fi
fi

if [[ $what != tests ]]; then
    if have gcc; then
        for p in triad dgemm fpchain detour getppid hello cpuid; do
            build "$p" "benchmark, C, glibc, static" \
                gcc "${CFLAGS[@]}" -static -o "$out/$p" "$bench/$p.c"
        done
        # musl's start-up probes no CPU features: launch-to-exit without the
        # CPUIDs glibc's start-up makes.
        if have musl-gcc; then
            build hello-musl "benchmark, C, musl, static" \
                musl-gcc "${CFLAGS[@]}" -static -o "$out/hello-musl" "$bench/hello.c"
        else
            skip hello-musl "musl-gcc not found (apt-get install musl-tools)"
        fi
    else
        skip "benchmark programs" "gcc not installed (apt-get install gcc libc6-dev)"
    fi
fi
exit $failed
