/* Internal interface between libremora's hand-written core (remora_core.c,
 * remora_fortran_*.c) and the wrappers generated from mpi.h
 * (remora_wrappers.c, remora_f08_wrappers.c in OUT_DIR). The same sources
 * build libremora.so (MPICH: handles are integers) and libremora-ompi.so
 * (Open MPI: handles are pointers to predefined globals); they only compare
 * handles with ==, which holds for both kinds. */
#ifndef REMORA_INTERNAL_H
#define REMORA_INTERNAL_H

#include <mpi.h>

/* The application's own world: the real MPI_COMM_WORLD split by appnum.
 * MPI_COMM_NULL while the library is transparent (before MPI_Init, after
 * MPI_Finalize, or when the job holds a single application). Written only
 * inside MPI_Init/MPI_Init_thread and the finalize-time clean-up, when the
 * program may not call MPI concurrently, so reads need no lock. */
extern MPI_Comm remora_app_world __attribute__((visibility("hidden")));

/* What the program means by a communicator: the application's world for
 * MPI_COMM_WORLD, anything else unchanged. */
static inline MPI_Comm remora_world_map(MPI_Comm comm)
{
    if (comm == MPI_COMM_WORLD && remora_app_world != MPI_COMM_NULL)
        return remora_app_world;
    return comm;
}

#define REMORA_HIDDEN __attribute__((visibility("hidden")))

/* Build the rank spaces after the real MPI_Init/MPI_Init_thread (from the C
 * wrappers or a Fortran entry point that bypasses them); a second call does
 * nothing. Returns an MPI error code. */
int remora_setup(void) REMORA_HIDDEN;

/* The keyvals of the attributes MPI caches on the real world only. */
int remora_is_predefined_world_attribute(int keyval) REMORA_HIDDEN;

/* The application's world or the universe: freeing them is refused, which
 * remora_refuse_free does (through the communicator's error handler). */
int remora_is_library_comm(MPI_Comm comm) REMORA_HIDDEN;
int remora_refuse_free(MPI_Comm comm, const char *function) REMORA_HIDDEN;

/* The next definition of `name` after libremora (the MPI's own Fortran
 * entry point), looked up once into *cache; aborts with a message when the
 * MPI library lacks it. Looked up at run time so that libremora does not
 * link the Fortran libraries into C programs. */
void *remora_fortran_twin(void **cache, const char *name) REMORA_HIDDEN;

/* The Fortran handle of MPI_COMM_WORLD (MPICH's mpi_f08 passes it as an
 * integer straight to C) mapped like remora_world_map. */
static inline MPI_Fint remora_fortran_world_map(MPI_Fint comm)
{
    if (remora_app_world != MPI_COMM_NULL && comm == MPI_Comm_c2f(MPI_COMM_WORLD))
        return MPI_Comm_c2f(remora_app_world);
    return comm;
}

#endif /* REMORA_INTERNAL_H */
