/* STREAM triad, a[i] = b[i] + s * c[i], single-threaded, over three arrays
 * far larger than the last-level cache (default 256 MiB each: this node's L3
 * is 260 MiB), for `hobbes-bench lwk`: the same static binary runs in an LWK
 * enclave and in a native one, so the ratio is the memory system's cost of
 * each (page size, TLB reach, page-table walks), not the compiler's.
 *
 * usage: triad [MIB_PER_ARRAY] [PASSES]
 * Prints one line of key=value pairs:
 *   bench=triad mib=256 passes=10 median_ns=... best_ns=... gbs=... check=...
 * median_ns/best_ns: one pass; gbs: 3 arrays per median pass (no
 * write-allocate counted, as STREAM reports); check: a sample of a[], to keep
 * the work observable and show both runs computed the same thing.
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "timing.h"

int main(int argc, char **argv)
{
    size_t mib = argc > 1 ? strtoul(argv[1], NULL, 10) : 256;
    int passes = argc > 2 ? atoi(argv[2]) : 10;
    if (mib == 0 || passes < 1 || passes > 1000) {
        fprintf(stderr, "usage: triad [MIB_PER_ARRAY>0] [PASSES 1..1000]\n");
        return 2;
    }
    size_t n = (mib << 20) / sizeof(double);
    double *a = malloc(n * sizeof *a), *b = malloc(n * sizeof *b), *c = malloc(n * sizeof *c);
    if (!a || !b || !c) {
        fprintf(stderr, "triad: cannot allocate 3 x %zu MiB\n", mib);
        return 2;
    }
    /* First touch outside the timing: populating is measured elsewhere. */
    for (size_t i = 0; i < n; i++) {
        a[i] = 0.0;
        b[i] = 1.0 + (double)(i & 7);
        c[i] = 0.5;
    }
    const double s = 3.0;
    double t[1000];
    for (int p = 0; p < passes; p++) {
        double t0 = now_ns();
        for (size_t i = 0; i < n; i++)
            a[i] = b[i] + s * c[i];
        t[p] = now_ns() - t0;
    }
    double check = 0;
    for (size_t i = 0; i < n; i += 4099)
        check += a[i];
    qsort(t, passes, sizeof t[0], cmp);
    double med = t[passes / 2];
    printf("bench=triad mib=%zu passes=%d median_ns=%.0f best_ns=%.0f gbs=%.3f check=%.1f\n",
           mib, passes, med, t[0], 3.0 * n * sizeof(double) / med, check);
    return 0;
}
