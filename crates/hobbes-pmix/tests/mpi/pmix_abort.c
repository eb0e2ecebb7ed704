/* A bare PMIx client (no MPI): connects, then calls
 * PMIx_Abort(7, "hobbes abort test") so the server's Aborted event can be
 * checked for the message, which Open MPI's MPI_Abort does not carry.
 * Used by tests/open_mpi.rs. */
#include <pmix.h>
#include <stdio.h>

int main(void)
{
    pmix_proc_t me;

    if (PMIX_SUCCESS != PMIx_Init(&me, NULL, 0)) {
        fprintf(stderr, "PMIx_Init failed\n");
        return 2;
    }
    printf("pmix rank=%u\n", me.rank);
    fflush(stdout);
    PMIx_Abort(7, "hobbes abort test", NULL, 0);
    return 7;
}
