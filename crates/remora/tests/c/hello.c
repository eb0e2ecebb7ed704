/* One application: hello, barrier, allreduce; prints where it runs. */
#define _GNU_SOURCE
#include <mpi.h>
#include <sched.h>
#include <stdio.h>
#include <unistd.h>

int main(int argc, char **argv) {
    int rank, size, sum = 0, one = 1;
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    MPI_Barrier(MPI_COMM_WORLD);
    MPI_Allreduce(&one, &sum, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    cpu_set_t set;
    sched_getaffinity(0, sizeof set, &set);
    int cpus = -1;
    for (int c = 0; c < CPU_SETSIZE; c++)
        if (CPU_ISSET(c, &set)) { cpus = c; break; }
    printf("hello rank=%d size=%d sum=%d pid=%d cpu0=%d\n", rank, size, sum, (int)getpid(), cpus);
    MPI_Finalize();
    return 0;
}
