/* Cost of one system call, for `hobbes-bench lwk`: syscall(NR) with no
 * arguments (default NR: SYS_getppid, the cheapest call an LWK forwards to
 * the host), timed with the monotonic clock in 5 batches after a warm-up.
 * The bench runs it in an LWK enclave for getppid (forwarded) and for a call
 * the LWK answers without the host (the raw trap: the floor a forwarded call
 * is compared with), and in a native enclave for reference.
 *
 * usage: getppid [CALLS_PER_BATCH | auto] [NR]
 * auto (the default): batches of the first power-of-two count that took at
 * least 20 ms in the warm-up, so a run takes about the same time whether a
 * call costs 0.1 µs or 100 µs.
 * Prints one line of key=value pairs:
 *   bench=syscall nr=110 calls=... median_ns=... best_ns=... ret=... errno=...
 * calls: timed calls in all; median_ns/best_ns: per call, over the batches;
 * ret/errno: what the last call returned (an unknown NR: ret=-1 errno=38).
 * NR 158 (arch_prctl) is timed as arch_prctl(ARCH_GET_FS, &base).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "timing.h"

#define BATCHES 5
#define MIN_BATCH_NS 20e6

static long ret;

/* Time `n` calls; ns in all. SYS_arch_prctl is timed as
 * arch_prctl(ARCH_GET_FS, &base): the call an LWK's stub answers in the
 * guest itself, so in an LWK it costs exactly the trap. */
static double batch(long nr, long n)
{
    unsigned long fs;
    double t0 = now_ns();
    if (nr == SYS_arch_prctl)
        for (long i = 0; i < n; i++)
            ret = syscall(nr, 0x1003 /* ARCH_GET_FS */, &fs);
    else
        for (long i = 0; i < n; i++)
            ret = syscall(nr);
    return now_ns() - t0;
}

int main(int argc, char **argv)
{
    int autosize = argc < 2 || strcmp(argv[1], "auto") == 0;
    long per = autosize ? 0 : atol(argv[1]);
    long nr = argc > 2 ? atol(argv[2]) : SYS_getppid;
    if (!autosize && per < 1) {
        fprintf(stderr, "usage: getppid [CALLS_PER_BATCH>0 | auto] [NR]\n");
        return 2;
    }
    /* Warm-up, which also sizes the batches: a proxy that sleeps when idle
     * is awake by the time the timed calls start. */
    long n = 64;
    while (batch(nr, n) < MIN_BATCH_NS && n < (1L << 30))
        n *= 2;
    if (autosize)
        per = n;
    double times[BATCHES];
    for (int b = 0; b < BATCHES; b++)
        times[b] = batch(nr, per) / per;
    int err = ret == -1 ? errno : 0;
    qsort(times, BATCHES, sizeof times[0], cmp);
    printf("bench=syscall nr=%ld calls=%ld median_ns=%.1f best_ns=%.1f ret=%ld errno=%d\n", nr,
           per * BATCHES, times[BATCHES / 2], times[0], ret, err);
    return 0;
}
