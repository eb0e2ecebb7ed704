/*
 * pingpong: MPI ping-pong latency and bandwidth between ranks 0 and 1, with the data
 * checked. Built with either MPI (mpicc.mpich, mpicc.openmpi); used by `hobbes-bench ucx`
 * and bench/tests/ucx.rs to compare UCX transports (docs/xemem.md, "UCX and MPI over
 * XEMEM (rebuilt UCX)").
 *
 *   pingpong SIZE:ITERS [SIZE:ITERS ...]
 *
 * For each size, rank 0 prints one line:
 *
 *   pingpong size=4194304 iters=100 lat_us=812.3 bw_mbs=5163.2 checked=ok
 *
 * lat_us: half the average round trip (one way); bw_mbs: SIZE / lat in
 * 10^6 bytes per second. Before timing, each size runs checked rounds: every byte of
 * every message is compared with a pattern that changes per round and per direction,
 * and the buffers are then freed and allocated again (malloc gives fresh mappings,
 * possibly at the same addresses) and checked once more, so a transport that kept a
 * stale mapping of the peer's old pages is caught. In the timed loop the first and
 * last 8 bytes of each message carry the iteration number and are checked. Any
 * mismatch aborts the job (exit code 3) naming the size, round and offset.
 */
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK_ROUNDS 3

static int rank;

static unsigned char pattern(size_t i, unsigned round, int from)
{
    return (unsigned char)((i * 131u) ^ (i >> 12) ^ (round * 29u) ^ (from ? 0x5a : 0xa5));
}

static void fill(unsigned char *buf, size_t n, unsigned round, int from)
{
    for (size_t i = 0; i < n; i++)
        buf[i] = pattern(i, round, from);
}

static void check(const unsigned char *buf, size_t n, unsigned round, int from)
{
    for (size_t i = 0; i < n; i++) {
        if (buf[i] != pattern(i, round, from)) {
            fprintf(stderr,
                    "pingpong: rank %d: wrong data: size %zu, round %u, offset %zu: "
                    "got 0x%02x, expected 0x%02x\n",
                    rank, n, round, i, buf[i], pattern(i, round, from));
            MPI_Abort(MPI_COMM_WORLD, 3);
        }
    }
}

static void stamp(unsigned char *buf, size_t n, uint64_t it)
{
    if (n >= 8) {
        memcpy(buf, &it, 8);
        memcpy(buf + n - 8, &it, 8);
    }
}

static void check_stamp(const unsigned char *buf, size_t n, uint64_t it)
{
    uint64_t a, b;
    if (n < 8)
        return;
    memcpy(&a, buf, 8);
    memcpy(&b, buf + n - 8, 8);
    if (a != it || b != it) {
        fprintf(stderr, "pingpong: rank %d: wrong data: size %zu, iteration %llu: got %llu/%llu\n",
                rank, n, (unsigned long long)it, (unsigned long long)a, (unsigned long long)b);
        MPI_Abort(MPI_COMM_WORLD, 3);
    }
}

/* Checked rounds: 0 sends a pattern, 1 checks it and answers with its own. */
static void checked_rounds(unsigned char *sbuf, unsigned char *rbuf, size_t n, unsigned first)
{
    int peer = 1 - rank;
    for (unsigned r = first; r < first + CHECK_ROUNDS; r++) {
        if (rank == 0) {
            fill(sbuf, n, r, 0);
            MPI_Send(sbuf, (int)n, MPI_BYTE, peer, 1, MPI_COMM_WORLD);
            MPI_Recv(rbuf, (int)n, MPI_BYTE, peer, 1, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            check(rbuf, n, r, 1);
        } else {
            MPI_Recv(rbuf, (int)n, MPI_BYTE, peer, 1, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            check(rbuf, n, r, 0);
            fill(sbuf, n, r, 1);
            MPI_Send(sbuf, (int)n, MPI_BYTE, peer, 1, MPI_COMM_WORLD);
        }
    }
}

static double timed(unsigned char *sbuf, unsigned char *rbuf, size_t n, long iters)
{
    int peer = 1 - rank;
    long warmup = iters / 10 + 1;
    double start = 0;
    for (long i = 0; i < warmup + iters; i++) {
        if (i == warmup) {
            MPI_Barrier(MPI_COMM_WORLD);
            start = MPI_Wtime();
        }
        if (rank == 0) {
            stamp(sbuf, n, (uint64_t)i);
            MPI_Send(sbuf, (int)n, MPI_BYTE, peer, 2, MPI_COMM_WORLD);
            MPI_Recv(rbuf, (int)n, MPI_BYTE, peer, 2, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            check_stamp(rbuf, n, (uint64_t)i);
        } else {
            MPI_Recv(rbuf, (int)n, MPI_BYTE, peer, 2, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            check_stamp(rbuf, n, (uint64_t)i);
            stamp(sbuf, n, (uint64_t)i);
            MPI_Send(sbuf, (int)n, MPI_BYTE, peer, 2, MPI_COMM_WORLD);
        }
    }
    return MPI_Wtime() - start;
}

int main(int argc, char **argv)
{
    int size;
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (size != 2 || argc < 2) {
        if (rank == 0)
            fprintf(stderr, "usage: mpiexec -n 2 pingpong SIZE:ITERS [SIZE:ITERS ...] "
                            "(got %d ranks)\n", size);
        MPI_Finalize();
        return 2;
    }
    for (int a = 1; a < argc; a++) {
        char *end;
        unsigned long long n = strtoull(argv[a], &end, 10);
        long iters = *end == ':' ? strtol(end + 1, &end, 10) : 0;
        if (*end != '\0' || n == 0 || n > (1ull << 30) || iters <= 0) {
            if (rank == 0)
                fprintf(stderr, "pingpong: bad argument %s (SIZE:ITERS)\n", argv[a]);
            MPI_Abort(MPI_COMM_WORLD, 2);
        }
        unsigned char *sbuf = malloc(n), *rbuf = malloc(n);
        if (!sbuf || !rbuf)
            MPI_Abort(MPI_COMM_WORLD, 2);
        checked_rounds(sbuf, rbuf, n, 0);
        /* New buffers (fresh mappings for large sizes, maybe at the old addresses). */
        free(sbuf);
        free(rbuf);
        sbuf = malloc(n);
        rbuf = malloc(n);
        if (!sbuf || !rbuf)
            MPI_Abort(MPI_COMM_WORLD, 2);
        checked_rounds(sbuf, rbuf, n, CHECK_ROUNDS);
        double t = timed(sbuf, rbuf, n, iters);
        if (rank == 0) {
            double lat = t / (2.0 * (double)iters);
            printf("pingpong size=%llu iters=%ld lat_us=%.2f bw_mbs=%.1f checked=ok\n", n, iters,
                   lat * 1e6, (double)n / lat / 1e6);
            fflush(stdout);
        }
        free(sbuf);
        free(rbuf);
    }
    MPI_Finalize();
    return 0;
}
