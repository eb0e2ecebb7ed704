/* Naive DGEMM, C = A * B with the textbook i-j-k triple loop (B walked down
 * its columns: one 4 KiB stride per step at n=512, so TLB reach matters as
 * much as the FPU), for `hobbes-bench lwk`.
 *
 * usage: dgemm [N] [REPS]
 * Prints one line of key=value pairs:
 *   bench=dgemm n=512 reps=3 median_ns=... best_ns=... gflops=... check=...
 * median_ns/best_ns: one multiplication; check: the sum of C, exact (every
 * element is a small multiple of 1/8), the same in every run.
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "timing.h"

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 512;
    int reps = argc > 2 ? atoi(argv[2]) : 3;
    if (n < 1 || n > 8192 || reps < 1 || reps > 100) {
        fprintf(stderr, "usage: dgemm [N 1..8192] [REPS 1..100]\n");
        return 2;
    }
    size_t nn = (size_t)n * n;
    double *A = malloc(nn * sizeof *A), *B = malloc(nn * sizeof *B), *C = malloc(nn * sizeof *C);
    if (!A || !B || !C) {
        fprintf(stderr, "dgemm: cannot allocate 3 x %d^2 doubles\n", n);
        return 2;
    }
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) {
            A[(size_t)i * n + j] = ((i * 7 + j * 3) % 11) * 0.25;
            B[(size_t)i * n + j] = ((i * 5 + j * 2) % 13) * 0.5;
        }
    double t[100], check = 0;
    for (int r = 0; r < reps; r++) {
        double t0 = now_ns();
        for (int i = 0; i < n; i++)
            for (int j = 0; j < n; j++) {
                double sum = 0;
                for (int k = 0; k < n; k++)
                    sum += A[(size_t)i * n + k] * B[(size_t)k * n + j];
                C[(size_t)i * n + j] = sum;
            }
        t[r] = now_ns() - t0;
    }
    for (size_t i = 0; i < nn; i++)
        check += C[i];
    qsort(t, reps, sizeof t[0], cmp);
    double med = t[reps / 2];
    printf("bench=dgemm n=%d reps=%d median_ns=%.0f best_ns=%.0f gflops=%.3f check=%.1f\n", n,
           reps, med, t[0], 2.0 * n * n * n / med, check);
    return 0;
}
