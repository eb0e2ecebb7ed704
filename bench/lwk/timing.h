/* What every benchmark program of `hobbes-bench lwk` times with: the
 * monotonic clock in nanoseconds, and a comparison for qsort of doubles
 * (medians). Header-only, so each program stays one static executable. */
#ifndef HOBBES_LWK_TIMING_H
#define HOBBES_LWK_TIMING_H

#include <time.h>

static inline double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static inline int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

#endif
