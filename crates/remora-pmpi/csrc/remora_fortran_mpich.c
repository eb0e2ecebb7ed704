/* MPICH's `use mpi_f08` under libremora.so.
 *
 * MPICH's `mpif.h`/`use mpi` entry points call the C MPI_ functions, which
 * the C wrappers catch. Its mpi_f08 procedures (`mpi_send_f08ts_`,
 * `mpi_comm_rank_f08_`, ...) pass the integer handle straight to C PMPI_
 * functions: the generated remora_f08_wrappers.c maps their communicators,
 * and the two initialisations below set libremora up. */
#include <stddef.h>

#include "remora_internal.h"

void mpi_init_f08_(MPI_Fint *ierror);
void mpi_init_thread_f08_(MPI_Fint *required, MPI_Fint *provided, MPI_Fint *ierror);

/* `ierror` is optional (NULL when absent). */
void mpi_init_f08_(MPI_Fint *ierror)
{
    static void *real;
    MPI_Fint rc = MPI_SUCCESS;
    ((void (*)(MPI_Fint *))remora_fortran_twin(&real, "pmpir_init_f08_"))(&rc);
    if (rc == MPI_SUCCESS)
        rc = remora_setup();
    if (ierror != NULL)
        *ierror = rc;
}

void mpi_init_thread_f08_(MPI_Fint *required, MPI_Fint *provided, MPI_Fint *ierror)
{
    static void *real;
    MPI_Fint rc = MPI_SUCCESS;
    ((void (*)(MPI_Fint *, MPI_Fint *, MPI_Fint *))remora_fortran_twin(
        &real, "pmpir_init_thread_f08_"))(required, provided, &rc);
    if (rc == MPI_SUCCESS)
        rc = remora_setup();
    if (ierror != NULL)
        *ierror = rc;
}
