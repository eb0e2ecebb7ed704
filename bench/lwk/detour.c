/* Selfish detour (a fixed-work-quantum loop): repeat a fixed quantum of
 * work for SECONDS, timing each quantum with the TSC, and record every
 * quantum that took longer than the fastest one by more than THRESHOLD_NS:
 * that extra time is a detour, time the core spent on something other than
 * this program (interrupts, timer ticks, other tasks). Lightweight kernels
 * exist to make these rare and short; `hobbes-bench lwk` compares an LWK
 * enclave's detours with a native enclave's on the same core.
 *
 * The loop makes no system call (rdtsc only), so in an LWK enclave it never
 * leaves the guest by itself; clock_gettime is used once, to calibrate.
 *
 * usage: detour [SECONDS] [THRESHOLD_NS] [QUANTUM]
 * Prints one line of key=value pairs:
 *   bench=detour seconds=10 threshold_ns=1000 quantum_ns=... iterations=...
 *     count=... noise_pct=... p50_ns=... p99_ns=... max_ns=... tsc_ghz=...
 * count: detours seen; p50/p99/max: of their lengths (0 when none);
 * noise_pct: their sum over the run's length.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <x86intrin.h>

#include "timing.h"

#define MAX_RECORDED (1u << 20) /* beyond: counted, in the sum and max, not in p50/p99 */

static uint64_t detours[MAX_RECORDED];

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* rdtsc after everything before it has completed (lfence): rdtsc alone may
 * run ahead of the quantum it is meant to time, which it does not depend on. */
static inline uint64_t tsc(void)
{
    _mm_lfence();
    return __rdtsc();
}

/* The quantum: a dependent chain of multiply-adds, a fixed number of cycles
 * with no memory traffic. */
static inline uint64_t work(uint64_t x, int quantum)
{
    for (int i = 0; i < quantum; i++)
        x = x * 6364136223846793005ull + 1442695040888963407ull;
    return x;
}

/* Nearest-rank percentile of a sorted array. */
static uint64_t pct(const uint64_t *v, size_t n, double p)
{
    if (n == 0)
        return 0;
    size_t rank = (size_t)(p / 100.0 * n + 0.999999);
    return v[rank == 0 ? 0 : rank - 1];
}

int main(int argc, char **argv)
{
    double seconds = argc > 1 ? atof(argv[1]) : 10.0;
    double threshold_ns = argc > 2 ? atof(argv[2]) : 1000.0;
    int quantum = argc > 3 ? atoi(argv[3]) : 64;
    if (seconds <= 0 || threshold_ns <= 0 || quantum < 1) {
        fprintf(stderr, "usage: detour [SECONDS>0] [THRESHOLD_NS>0] [QUANTUM>0]\n");
        return 2;
    }

    /* TSC ticks per ns, against the monotonic clock over 200 ms. */
    double w0 = now_ns();
    uint64_t c0 = tsc();
    while (now_ns() - w0 < 200e6)
        ;
    double tsc_per_ns = (double)(tsc() - c0) / (now_ns() - w0);

    /* The fastest quantum, from a warm-up; lowered later if a faster one shows. */
    uint64_t x = (uint64_t)argc, prev = tsc(), qmin = UINT64_MAX;
    for (int i = 0; i < 200000; i++) {
        x = work(x, quantum);
        uint64_t t = tsc();
        if (t - prev < qmin)
            qmin = t - prev;
        prev = t;
    }

    uint64_t thr = (uint64_t)(threshold_ns * tsc_per_ns);
    uint64_t start = tsc();
    uint64_t end = start + (uint64_t)(seconds * 1e9 * tsc_per_ns);
    uint64_t iterations = 0, count = 0, sum = 0, max = 0;
    prev = start;
    for (;;) {
        x = work(x, quantum);
        uint64_t t = tsc(), d = t - prev;
        prev = t;
        iterations++;
        if (d < qmin) {
            qmin = d;
        } else if (d - qmin > thr) {
            uint64_t extra = d - qmin;
            if (count < MAX_RECORDED)
                detours[count] = extra;
            count++;
            sum += extra;
            if (extra > max)
                max = extra;
        }
        if (t >= end)
            break;
    }
    uint64_t elapsed = prev - start;
    size_t recorded = count < MAX_RECORDED ? count : MAX_RECORDED;
    qsort(detours, recorded, sizeof detours[0], cmp_u64);
    printf("bench=detour seconds=%.3f threshold_ns=%.0f quantum_ns=%.1f iterations=%llu "
           "count=%llu noise_pct=%.4f p50_ns=%.0f p99_ns=%.0f max_ns=%.0f tsc_ghz=%.4f "
           "sink=%llu\n",
           elapsed / tsc_per_ns / 1e9, threshold_ns, qmin / tsc_per_ns,
           (unsigned long long)iterations, (unsigned long long)count,
           100.0 * (double)sum / (double)elapsed, pct(detours, recorded, 50) / tsc_per_ns,
           pct(detours, recorded, 99) / tsc_per_ns, max / tsc_per_ns, tsc_per_ns,
           (unsigned long long)(x & 0xffff));
    return 0;
}
