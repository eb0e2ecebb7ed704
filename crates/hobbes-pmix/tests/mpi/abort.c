/* Rank 1 (rank 0 in a 1-rank job) calls MPI_Abort(MPI_COMM_WORLD, 7); the
 * others wait in a barrier that never completes. Used by tests/open_mpi.rs. */
#include <mpi.h>
#include <stdio.h>

int main(int argc, char **argv)
{
    int rank, size;

    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    printf("abort rank=%d size=%d\n", rank, size);
    fflush(stdout);
    if (rank == (size > 1 ? 1 : 0))
        MPI_Abort(MPI_COMM_WORLD, 7);
    MPI_Barrier(MPI_COMM_WORLD);
    MPI_Finalize();
    return 0;
}
