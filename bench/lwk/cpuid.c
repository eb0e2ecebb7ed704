/* Cost of one CPUID instruction, for `hobbes-bench lwk`: every CPUID leaves
 * the guest (or, on a virtual node, the node's own VM), so it is what
 * glibc's start-up pays for its CPU feature and cache probing (dozens of
 * CPUIDs before main). Prints one line:
 *   bench=cpuid count=N median_ns=... best_ns=...
 */
#include <cpuid.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "timing.h"

#define BATCHES 5
#define PER 500

int main(void)
{
    unsigned a, b, c, d, sink = 0;
    double t[BATCHES];
    for (int k = 0; k < BATCHES; k++) {
        double t0 = now_ns();
        for (int i = 0; i < PER; i++) {
            /* Leaf 4 (cache parameters), as glibc's cache probing asks. */
            __cpuid_count(4, i & 3, a, b, c, d);
            sink += a;
        }
        t[k] = (now_ns() - t0) / PER;
    }
    qsort(t, BATCHES, sizeof t[0], cmp);
    printf("bench=cpuid count=%d median_ns=%.1f best_ns=%.1f sink=%u\n", BATCHES * PER,
           t[BATCHES / 2], t[0], sink & 1);
    return 0;
}
