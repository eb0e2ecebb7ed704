/* Prints its rank and the world size, then checks an MPI_Allreduce (sum of
 * ranks), a 1 MiB MPI_Allreduce (large enough for the shared-memory BTL's
 * single-copy path) and an MPI_Barrier. Used by tests/open_mpi.rs. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

#define BIG (256 * 1024)

int main(int argc, char **argv)
{
    int rank, size, sum = -1, i, ok = 1;
    int *in = malloc(BIG * sizeof(int)), *out = malloc(BIG * sizeof(int));

    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    MPI_Allreduce(&rank, &sum, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    for (i = 0; i < BIG; i++)
        in[i] = rank + i;
    MPI_Allreduce(in, out, BIG, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    for (i = 0; i < BIG; i++)
        if (out[i] != size * (size - 1) / 2 + size * i)
            ok = 0;
    MPI_Barrier(MPI_COMM_WORLD);
    printf("hello rank=%d size=%d sum=%d big=%s\n", rank, size, sum, ok ? "ok" : "BAD");
    fflush(stdout);
    MPI_Finalize();
    free(in);
    free(out);
    return sum == size * (size - 1) / 2 && ok ? 0 : 3;
}
