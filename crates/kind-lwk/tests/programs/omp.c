/* OpenMP with static libgomp (gcc -fopenmp -static): a parallel-for
 * reduction with one thread per CPU (libgomp's default: the CPUs in the
 * affinity mask, or OMP_NUM_THREADS). libgomp makes its threads with clone
 * and parks them on futexes, and binds them when OMP_PROC_BIND is set.
 *
 * Output (stdout, deterministic for a given thread count):
 *   omp_threads=N
 *   sum=2199022206976
 *   ok
 * exit 0; "MISMATCH ..." and exit 1 when the sum is wrong or some thread did
 * no iterations (it never ran).
 */
#include <omp.h>
#include <stdint.h>
#include <stdio.h>

#define M (1u << 21)
#define MAX_THREADS 256

int main(void)
{
    uint64_t sum = 0;
    int nthreads = 0;
    long iters[MAX_THREADS] = {0};
#pragma omp parallel reduction(+ : sum)
    {
        int t = omp_get_thread_num();
#pragma omp single
        nthreads = omp_get_num_threads();
#pragma omp for schedule(static)
        for (uint32_t i = 0; i < M; i++) {
            sum += i;
            if (t < MAX_THREADS)
                iters[t]++;
        }
    }
    uint64_t expected = (uint64_t)M * (M - 1) / 2;
    int idle = 0;
    for (int t = 0; t < nthreads && t < MAX_THREADS; t++)
        idle += iters[t] == 0;
    printf("omp_threads=%d\nsum=%llu\n", nthreads, (unsigned long long)sum);
    if (sum != expected || idle) {
        printf("MISMATCH expected=%llu idle_threads=%d\n", (unsigned long long)expected, idle);
        return 1;
    }
    printf("ok\n");
    return 0;
}
