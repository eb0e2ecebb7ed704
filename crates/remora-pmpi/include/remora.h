/* remora.h: the rank-space interface of libremora.
 *
 * Under libremora (LD_PRELOAD=libremora.so, or linked with -lremora) every
 * application of a composition sees its own MPI_COMM_WORLD; MPI_COMM_UNIVERSE
 * spans all the applications of the job, in the job's rank order. Link with
 * -lremora to use these names (preloading alone does not resolve them at
 * link time). */
#ifndef REMORA_H
#define REMORA_H

#include <mpi.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The union of all applications' worlds. MPI_COMM_NULL before MPI_Init and
 * after MPI_Finalize. Owned by the library: MPI_Comm_free on it is refused. */
MPI_Comm Remora_Comm_universe(void);

/* The universe's Fortran handle, for Fortran programs (all bindings):
 *   interface; function remora_universe() bind(C, name="Remora_Comm_universe_f")
 *   ... integer(c_int) :: remora_universe
 * (with mpi_f08: universe%MPI_VAL = remora_universe()). */
MPI_Fint Remora_Comm_universe_f(void);

/* This process's application index in the composition (its appnum), or -1
 * before MPI_Init. 0 for a job of a single application. */
int Remora_App_number(void);

#define MPI_COMM_UNIVERSE (Remora_Comm_universe())

#ifdef __cplusplus
}
#endif

#endif /* REMORA_H */
