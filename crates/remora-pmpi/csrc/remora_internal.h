/* Internal interface between libremora's hand-written core (remora_core.c)
 * and the wrappers generated from mpi.h (remora_wrappers.c in OUT_DIR). */
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

#endif /* REMORA_INTERNAL_H */
