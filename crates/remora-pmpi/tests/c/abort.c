/* MPI_Abort(MPI_COMM_WORLD, CODE) (argv[1]) from rank 0 of application 1
 * must end the whole composed job, every application, with CODE. The other
 * processes wait in a barrier on the universe, which cannot complete without
 * the aborting process: only the abort ends them. */
#include <stdio.h>
#include <stdlib.h>

#include "remora.h"

int main(int argc, char **argv)
{
    int rank, code = argc > 1 ? atoi(argv[1]) : 7;
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    /* Everyone is up before anyone aborts. */
    MPI_Barrier(MPI_COMM_UNIVERSE);
    if (rank == 0 && Remora_App_number() == 1) {
        printf("aborting app=%d rank=%d\n", Remora_App_number(), rank);
        fflush(stdout);
        MPI_Abort(MPI_COMM_WORLD, code);
    }
    MPI_Barrier(MPI_COMM_UNIVERSE);
    printf("FAIL: barrier completed without the aborting process\n");
    MPI_Finalize();
    return 1;
}
