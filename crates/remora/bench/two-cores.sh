#!/bin/bash
# Remora vs mpiexec.hydra on the same two cores: a leviathan whose host keeps
# cores 0-1 (so hydra's ranks may use both), and a shared enclave of those two
# cores for Remora's ranks. MPICH hello world, 1/2/4 ranks, median of 9,
# alternating, through both command-line launchers. Root; MPICH installed.
#   BIN=/path/to/target/release crates/remora/bench/two-cores.sh
set -e
BIN=${BIN:-target/release}
BIN=$(cd "$BIN" && pwd)
ST=$(mktemp -d /tmp/remora-2c-XXXXXX)
W=$(mktemp -d /tmp/remora-2c-w-XXXXXX)
D=
trap 'kill $D 2>/dev/null; wait $D 2>/dev/null; rm -rf $ST $ST.log $W' EXIT
chmod 755 "$W"
cat >"$W/hello.c" <<'C'
#include <mpi.h>
#include <stdio.h>
int main(int argc, char **argv) {
    int rank, size;
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    printf("hello %d/%d\n", rank, size);
    MPI_Finalize();
    return 0;
}
C
mpicc.mpich -O2 -o "$W/hello" "$W/hello.c"
# Another privileged leviathan holds the node: wait for it (up to 10 min).
for try in $(seq 600); do
    "$BIN/leviathan" --state-dir "$ST" --host-cores 0-1 --host-memory 2048 2>"$ST.log" &
    D=$!
    until [ -S "$ST/leviathan.sock" ] || ! kill -0 $D 2>/dev/null; do sleep 0.05; done
    [ -S "$ST/leviathan.sock" ] && break
    wait $D || true
    sleep 1
done
cat >"$W/c.xml" <<X
<composition name="c2" mpiComm="u">
  <enclave name="two" cores="2" memory="2048" shared="true">
    <app name="hello" np="1" mpiComm="hello"><exe>$W/hello</exe></app>
  </enclave>
</composition>
X
R="$BIN/remora --socket $ST/leviathan.sock --keep-enclaves --pmi socketpair --no-rank-spaces"
echo "remora's enclave: $($R launch "$W/c.xml" 2>&1 | grep -o 'cores \[[^]]*\]'); hydra's ranks: $(grep Cpus_allowed_list /proc/self/status | tr -s '\t' ' ')"
us() { local s=$(date +%s%N); "$@" >/dev/null 2>&1; echo $((($(date +%s%N) - s) / 1000)); }
med() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {printf "%.1f", a[int((NR+1)/2)]/1000}'; }
for n in 1 2 4; do
    a= b=
    for i in $(seq 9); do
        a="$a $(us $R run --enclave two -n $n "$W/hello")"
        b="$b $(us mpiexec.hydra -n $n "$W/hello")"
    done
    ra=$(echo $a | med) hb=$(echo $b | med)
    echo "hello, $n rank(s): remora $ra ms, hydra $hb ms, ratio $(echo "$ra $hb" | awk '{printf "%.2f", $1/$2}')"
done
