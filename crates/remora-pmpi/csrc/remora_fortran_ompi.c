/* Open MPI's Fortran bindings under libremora-ompi.so.
 *
 * All three of Open MPI 4.1's Fortran bindings reach C the same way
 * (checked by disassembling Debian's libraries): `mpif.h` and `use mpi`
 * call `mpi_send_` & co. in libmpi_mpifh, aliases of `ompi_send_f`, and
 * `use mpi_f08` calls those `ompi_*_f` (or their `pmpi_*_` aliases) through
 * the PLT. Each converts its communicator with PMPI_Comm_f2c, through the
 * PLT, and calls the C PMPI_ function (or an internal ompi_attr_* one).
 * So one interposed PMPI_Comm_f2c maps Fortran's MPI_COMM_WORLD (0) for
 * every Fortran call, and only the functions where mapping is not enough
 * are wrapped here, under every name Open MPI exports for them. */
#include <stddef.h>

#include "remora_internal.h"

/* While set, PMPI_Comm_f2c answers the real world: around the Fortran calls
 * that must act on it (MPI_Abort, predefined attributes, the second half of
 * setting an error handler). Per thread: another thread's calls stay mapped. */
static __thread int want_real_world;

/* Not the C API (MPI_Comm_f2c, which stays Open MPI's): the entry the
 * Fortran bindings use. */
MPI_Comm PMPI_Comm_f2c(MPI_Fint comm)
{
    MPI_Comm c = MPI_Comm_f2c(comm);
    return want_real_world ? c : remora_world_map(c);
}

/* Every name Open MPI gives a Fortran entry point (compilers' manglings,
 * profiling names, and the ompi_*_f that mpi_f08 calls). */
#define FORTRAN_NAMES(lower, upper, impl)                                                  \
    extern __typeof__(impl) mpi_##lower __attribute__((alias(#impl)));                     \
    extern __typeof__(impl) mpi_##lower##_ __attribute__((alias(#impl)));                  \
    extern __typeof__(impl) mpi_##lower##__ __attribute__((alias(#impl)));                 \
    extern __typeof__(impl) MPI_##upper __attribute__((alias(#impl)));                     \
    extern __typeof__(impl) pmpi_##lower __attribute__((alias(#impl)));                    \
    extern __typeof__(impl) pmpi_##lower##_ __attribute__((alias(#impl)));                 \
    extern __typeof__(impl) pmpi_##lower##__ __attribute__((alias(#impl)));                \
    extern __typeof__(impl) PMPI_##upper __attribute__((alias(#impl)));                    \
    extern __typeof__(impl) ompi_##lower##_f __attribute__((alias(#impl)));

#define REAL(type, name) ((type)remora_fortran_twin(&real, name))

/* MPI_INIT calls PMPI_Init, not the wrapped MPI_Init. */
static void init_f(MPI_Fint *ierr)
{
    static void *real;
    REAL(void (*)(MPI_Fint *), "ompi_init_f")(ierr);
    if (*ierr == MPI_SUCCESS)
        *ierr = remora_setup();
}
FORTRAN_NAMES(init, INIT, init_f)

static void init_thread_f(MPI_Fint *required, MPI_Fint *provided, MPI_Fint *ierr)
{
    static void *real;
    REAL(void (*)(MPI_Fint *, MPI_Fint *, MPI_Fint *), "ompi_init_thread_f")
    (required, provided, ierr);
    if (*ierr == MPI_SUCCESS)
        *ierr = remora_setup();
}
FORTRAN_NAMES(init_thread, INIT_THREAD, init_thread_f)

/* MPI_ABORT(MPI_COMM_WORLD, code) ends the whole job, as in C. */
static void abort_f(MPI_Fint *comm, MPI_Fint *errorcode, MPI_Fint *ierr)
{
    static void *real;
    want_real_world++;
    REAL(void (*)(MPI_Fint *, MPI_Fint *, MPI_Fint *), "ompi_abort_f")(comm, errorcode, ierr);
    want_real_world--;
}
FORTRAN_NAMES(abort, ABORT, abort_f)

/* Predefined attributes live on the real world. */
static int reads_real_world(const MPI_Fint *comm, const MPI_Fint *keyval)
{
    return remora_is_predefined_world_attribute(*keyval) &&
           MPI_Comm_f2c(*comm) == MPI_COMM_WORLD;
}

static void comm_get_attr_f(MPI_Fint *comm, MPI_Fint *keyval, MPI_Aint *value, void *flag,
                            MPI_Fint *ierr)
{
    static void *real;
    int real_world = reads_real_world(comm, keyval);
    want_real_world += real_world;
    REAL(void (*)(MPI_Fint *, MPI_Fint *, MPI_Aint *, void *, MPI_Fint *),
         "ompi_comm_get_attr_f")(comm, keyval, value, flag, ierr);
    want_real_world -= real_world;
}
FORTRAN_NAMES(comm_get_attr, COMM_GET_ATTR, comm_get_attr_f)

static void attr_get_f(MPI_Fint *comm, MPI_Fint *keyval, MPI_Fint *value, void *flag,
                       MPI_Fint *ierr)
{
    static void *real;
    int real_world = reads_real_world(comm, keyval);
    want_real_world += real_world;
    REAL(void (*)(MPI_Fint *, MPI_Fint *, MPI_Fint *, void *, MPI_Fint *), "ompi_attr_get_f")
    (comm, keyval, value, flag, ierr);
    want_real_world -= real_world;
}
FORTRAN_NAMES(attr_get, ATTR_GET, attr_get_f)

/* On the application's world, then on the real world, as in C. */
static void set_errhandler_on_both(void **real, const char *name, MPI_Fint *comm,
                                   MPI_Fint *errhandler, MPI_Fint *ierr)
{
    void (*fn)(MPI_Fint *, MPI_Fint *, MPI_Fint *) =
        (void (*)(MPI_Fint *, MPI_Fint *, MPI_Fint *))remora_fortran_twin(real, name);
    fn(comm, errhandler, ierr);
    if (*ierr == MPI_SUCCESS && remora_app_world != MPI_COMM_NULL &&
        MPI_Comm_f2c(*comm) == MPI_COMM_WORLD) {
        want_real_world++;
        fn(comm, errhandler, ierr);
        want_real_world--;
    }
}

static void comm_set_errhandler_f(MPI_Fint *comm, MPI_Fint *errhandler, MPI_Fint *ierr)
{
    static void *real;
    set_errhandler_on_both(&real, "ompi_comm_set_errhandler_f", comm, errhandler, ierr);
}
FORTRAN_NAMES(comm_set_errhandler, COMM_SET_ERRHANDLER, comm_set_errhandler_f)

static void errhandler_set_f(MPI_Fint *comm, MPI_Fint *errhandler, MPI_Fint *ierr)
{
    static void *real;
    set_errhandler_on_both(&real, "ompi_errhandler_set_f", comm, errhandler, ierr);
}
FORTRAN_NAMES(errhandler_set, ERRHANDLER_SET, errhandler_set_f)

/* MPI_COMM_FREE(MPI_COMM_WORLD) must not free the application's world it
 * maps to: refused, as Open MPI refuses the world. */
static void comm_free_f(MPI_Fint *comm, MPI_Fint *ierr)
{
    static void *real;
    MPI_Comm c = remora_world_map(MPI_Comm_f2c(*comm));
    if (remora_is_library_comm(c)) {
        *ierr = remora_refuse_free(c, "MPI_COMM_FREE");
        return;
    }
    REAL(void (*)(MPI_Fint *, MPI_Fint *), "ompi_comm_free_f")(comm, ierr);
}
FORTRAN_NAMES(comm_free, COMM_FREE, comm_free_f)

static void comm_disconnect_f(MPI_Fint *comm, MPI_Fint *ierr)
{
    static void *real;
    MPI_Comm c = remora_world_map(MPI_Comm_f2c(*comm));
    if (remora_is_library_comm(c)) {
        *ierr = remora_refuse_free(c, "MPI_COMM_DISCONNECT");
        return;
    }
    REAL(void (*)(MPI_Fint *, MPI_Fint *), "ompi_comm_disconnect_f")(comm, ierr);
}
FORTRAN_NAMES(comm_disconnect, COMM_DISCONNECT, comm_disconnect_f)
