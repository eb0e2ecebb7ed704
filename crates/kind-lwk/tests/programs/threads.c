/* pthreads across cores: N threads (argv[1], default: one per CPU this
 * process may run on), each pinned to its own CPU, fill one part of a shared
 * array, meet at a pthread_barrier (futex-based in glibc), then each sums the
 * part its neighbour filled, so a thread reads memory another vCPU wrote. The
 * main thread is worker 0, so both the initial thread and clone()d ones work.
 *
 * Output (stdout, deterministic for a given N):
 *   threads=N
 *   total=2199022206976
 *   ok
 * exit 0; on a wrong total "MISMATCH expected=..." and exit 1. Pinning that
 * fails (sched_setaffinity refused) is reported on stderr only: it changes
 * where threads run, not the result.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define M (1u << 21) /* 16 MiB of uint64_t: more than one page table's worth */
#define MAX_THREADS 256

static uint64_t *data;
static uint64_t partial[MAX_THREADS];
static int nthreads;
static int cpus[MAX_THREADS];
static pthread_barrier_t barrier;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static int finished; /* under lock: a contended mutex is a futex too */

static void pin(int k)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpus[k], &set);
    int err = pthread_setaffinity_np(pthread_self(), sizeof set, &set);
    if (err)
        fprintf(stderr, "threads: cannot pin thread %d to cpu %d: %s\n", k, cpus[k],
                strerror(err));
}

static void *worker(void *arg)
{
    int k = (int)(intptr_t)arg;
    pin(k);
    size_t lo = (size_t)M * k / nthreads, hi = (size_t)M * (k + 1) / nthreads;
    for (size_t i = lo; i < hi; i++)
        data[i] = i;
    pthread_barrier_wait(&barrier);
    int n = (k + 1) % nthreads;
    lo = (size_t)M * n / nthreads;
    hi = (size_t)M * (n + 1) / nthreads;
    uint64_t s = 0;
    for (size_t i = lo; i < hi; i++)
        s += data[i];
    partial[k] = s;
    pthread_mutex_lock(&lock);
    finished++;
    pthread_mutex_unlock(&lock);
    pthread_barrier_wait(&barrier);
    return NULL;
}

int main(int argc, char **argv)
{
    cpu_set_t allowed;
    int ncpus = 0;
    if (sched_getaffinity(0, sizeof allowed, &allowed) == 0) {
        for (int c = 0; c < CPU_SETSIZE && ncpus < MAX_THREADS; c++)
            if (CPU_ISSET(c, &allowed))
                cpus[ncpus++] = c;
    }
    if (ncpus == 0) { /* affinity unknown: run unpinned on "cpu 0" */
        cpus[0] = 0;
        ncpus = 1;
    }
    nthreads = argc > 1 ? atoi(argv[1]) : ncpus;
    if (nthreads < 1 || nthreads > MAX_THREADS) {
        fprintf(stderr, "threads: thread count must be 1..%d\n", MAX_THREADS);
        return 2;
    }
    /* More threads than CPUs: wrap around (each still gets one CPU). */
    for (int k = ncpus; k < nthreads; k++)
        cpus[k] = cpus[k % ncpus];
    data = malloc(sizeof(uint64_t) * M);
    if (!data) {
        perror("threads: malloc");
        return 2;
    }
    pthread_barrier_init(&barrier, NULL, nthreads);
    pthread_t tid[MAX_THREADS];
    for (int k = 1; k < nthreads; k++) {
        int err = pthread_create(&tid[k], NULL, worker, (void *)(intptr_t)k);
        if (err) {
            fprintf(stderr, "threads: pthread_create: %s\n", strerror(err));
            return 2;
        }
    }
    worker((void *)0);
    for (int k = 1; k < nthreads; k++)
        pthread_join(tid[k], NULL);
    uint64_t total = 0;
    for (int k = 0; k < nthreads; k++)
        total += partial[k];
    uint64_t expected = (uint64_t)M * (M - 1) / 2;
    printf("threads=%d\ntotal=%llu\n", nthreads, (unsigned long long)total);
    if (total != expected || finished != nthreads) {
        printf("MISMATCH expected=%llu finished=%d\n", (unsigned long long)expected, finished);
        return 1;
    }
    printf("ok\n");
    return 0;
}
