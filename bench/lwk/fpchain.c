/* A dependent floating-point chain, x = x * a + b, each step waiting for
 * the last (no vectorizing, no reassociation without -ffast-math): pure core
 * latency, no memory, for `hobbes-bench lwk`. Any difference between an LWK
 * and a native enclave here is time taken from the core (interrupts, timer
 * ticks, other tasks), not memory.
 *
 * usage: fpchain [STEPS] [REPS]
 * Prints one line of key=value pairs:
 *   bench=fpchain steps=50000000 reps=5 median_ns=... best_ns=... ns_per_step=... x=...
 * median_ns/best_ns: one chain of STEPS; x: the chain's end value, the same
 * in every run (it converges towards 1).
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "timing.h"

int main(int argc, char **argv)
{
    long steps = argc > 1 ? atol(argv[1]) : 50000000L;
    int reps = argc > 2 ? atoi(argv[2]) : 5;
    if (steps < 1 || reps < 1 || reps > 100) {
        fprintf(stderr, "usage: fpchain [STEPS>0] [REPS 1..100]\n");
        return 2;
    }
    /* From argc, so the compiler cannot fold the chain into a constant. */
    const double a = 0.99999999, b = 1e-8 * (argc > 0 ? 1.0 : 2.0);
    double t[100], x = 0;
    for (int r = 0; r < reps; r++) {
        x = 0.5;
        double t0 = now_ns();
        for (long i = 0; i < steps; i++)
            x = x * a + b;
        t[r] = now_ns() - t0;
    }
    qsort(t, reps, sizeof t[0], cmp);
    double med = t[reps / 2];
    printf("bench=fpchain steps=%ld reps=%d median_ns=%.0f best_ns=%.0f ns_per_step=%.4f x=%.17g\n",
           steps, reps, med, t[0], med / steps, x);
    return 0;
}
