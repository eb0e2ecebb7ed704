/* A plain MPI program (no remora.h): hello, barrier, allreduce, the world's
 * name and self-comparison. Prints one line per rank that must be the same
 * with and without libremora when the job is a single application. */
#include <stdio.h>

#include <mpi.h>

int main(int argc, char **argv)
{
    int rank, size, sum = 0, result, len, *tag_ub = NULL, flag = 0;
    char name[MPI_MAX_OBJECT_NAME];
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    MPI_Barrier(MPI_COMM_WORLD);
    int mine = rank + 1;
    MPI_Allreduce(&mine, &sum, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    MPI_Comm_compare(MPI_COMM_WORLD, MPI_COMM_WORLD, &result);
    MPI_Comm_get_name(MPI_COMM_WORLD, name, &len);
    MPI_Comm_get_attr(MPI_COMM_WORLD, MPI_TAG_UB, &tag_ub, &flag);
    printf("hello rank=%d size=%d sum=%d ident=%d name=%s tag_ub=%d\n", rank, size, sum,
           result == MPI_IDENT, name, flag ? *tag_ub : -1);
    MPI_Finalize();
    return 0;
}
