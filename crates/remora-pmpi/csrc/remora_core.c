/* libremora's hand-written core: set-up of the rank spaces at MPI_Init,
 * their release at MPI_Finalize, the universe, and the MPI functions where
 * plain substitution of the application's world would be wrong. Every other
 * communicator-taking function is generated from mpi.h (build.rs). */
#define _GNU_SOURCE /* RTLD_NEXT */
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include "remora.h"
#include "remora_internal.h"

/* MPI_Attr_get and MPI_Errhandler_set are deprecated (Open MPI marks them)
 * but programs still call them, so they are wrapped on purpose. */
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"

MPI_Comm remora_app_world = MPI_COMM_NULL;

/* Tag of MPI_Comm_create_group at set-up (its own collective context: it
 * never meets the program's messages). */
#define REMORA_SETUP_TAG 0x52454d


/* The union of the applications: a dup of the real world (its own context,
 * so traffic on it never matches the program's traffic on other
 * communicators). */
static MPI_Comm universe = MPI_COMM_NULL;
static int app_number = -1;

/* The application index of this process: MPICH caches the PMI appnum as the
 * MPI_APPNUM attribute of the real world. REMORA_APPNUM is a fallback for a
 * process manager that gives no appnum; without either, one application. */
static int appnum_of_process(void)
{
    int *value = NULL;
    int flag = 0;
    if (PMPI_Comm_get_attr(MPI_COMM_WORLD, MPI_APPNUM, &value, &flag) == MPI_SUCCESS && flag)
        return *value;
    const char *env = getenv("REMORA_APPNUM");
    if (env != NULL && *env != '\0') {
        char *end = NULL;
        errno = 0;
        long n = strtol(env, &end, 10);
        if (errno == 0 && *end == '\0' && n >= 0 && n <= 1 << 20)
            return (int)n;
        fprintf(stderr, "remora: ignoring REMORA_APPNUM=%s (not an application index)\n", env);
    }
    return 0;
}

/* A non-negative integer environment variable; -1 when absent or not one. */
static long env_count(const char *name)
{
    const char *env = getenv(name);
    if (env == NULL || *env == '\0')
        return -1;
    char *end = NULL;
    errno = 0;
    long n = strtol(env, &end, 10);
    if (errno != 0 || *end != '\0' || n < 0 || n > 1L << 30)
        return -1;
    return n;
}

/* The application's ranks in the real world, as Remora's launcher tells
 * every process (REMORA_APP_FIRST_RANK, REMORA_APP_SIZE): 1 when given and
 * consistent with this process, 0 otherwise (another launcher: split). */
static int app_range_of_process(int world_rank, int world_size, int *first, int *np)
{
    long f = env_count("REMORA_APP_FIRST_RANK"), n = env_count("REMORA_APP_SIZE");
    if (f < 0 && n < 0)
        return 0;
    if (f < 0 || n < 1 || f + n > world_size || world_rank < f || world_rank >= f + n) {
        fprintf(stderr,
                "remora: ignoring REMORA_APP_FIRST_RANK/REMORA_APP_SIZE (not a range of %d "
                "ranks holding rank %d)\n",
                world_size, world_rank);
        return 0;
    }
    *first = (int)f;
    *np = (int)n;
    return 1;
}

/* Delete callback of an attribute cached on MPI_COMM_SELF at set-up.
 * MPI_Finalize first deletes MPI_COMM_SELF's attributes, in the reverse order
 * of their setting, while MPI is still fully usable: ours was set first, so
 * it runs after every finalize hook of the program (which may still
 * communicate on MPI_COMM_WORLD) and before MPI shuts down. */
static int release_at_finalize(MPI_Comm comm, int keyval, void *attribute_val, void *extra_state)
{
    (void)comm;
    (void)keyval;
    (void)attribute_val;
    (void)extra_state;
    if (remora_app_world != MPI_COMM_NULL) {
        MPI_Comm app = remora_app_world;
        remora_app_world = MPI_COMM_NULL;
        PMPI_Comm_free(&app);
    }
    if (universe != MPI_COMM_NULL)
        PMPI_Comm_free(&universe);
    return MPI_SUCCESS;
}

/* After the real MPI_Init: the application's world is its ranks of the real
 * world, in the world's order; the universe is a dup of the whole.
 * Under Remora every process knows its application's ranks (from the
 * launcher), so the world comes from MPI_Comm_create_group, collective over
 * the application only; elsewhere a split by appnum (an allgather over the
 * whole job) finds them. A job of one application stays transparent:
 * MPI_COMM_WORLD is left alone, and one communicator congruent with the
 * world, with its own context, serves as the universe. Every process of the
 * job takes the same branch, since the app sizes are the same everywhere. */
int remora_setup(void)
{
    static int set_up;
    int rc, world_rank, world_size, app_size, keyval, first = 0, np = 0;
    MPI_Comm split = MPI_COMM_NULL;

    if (set_up)
        return MPI_SUCCESS;
    set_up = 1;

    app_number = appnum_of_process();
    PMPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
    PMPI_Comm_size(MPI_COMM_WORLD, &world_size);
    /* Under srun, remora names the job's size: a process whose world is
     * another size did not reach the job's PMI (a wrong --mpi, an MPI other
     * than the one remora read from the program) and ran alone, as a
     * singleton. Never a silent wrong world: it fails, and srun's
     * --kill-on-bad-exit ends the step. */
    long job_size = env_count("REMORA_JOB_SIZE");
    if (job_size > 0 && job_size != world_size) {
        const char *app = getenv("REMORA_APP");
        fprintf(stderr,
                "remora: a process of %s got a world of %d, not the job's %ld processes: it did "
                "not reach the job's PMI, so it ran alone as a singleton (is it built against "
                "the MPI remora read from it? --mpi overrides)\n",
                app != NULL ? app : "the job", world_size, job_size);
        PMPI_Abort(MPI_COMM_WORLD, 1);
        return MPI_ERR_OTHER;
    }
    if (app_range_of_process(world_rank, world_size, &first, &np)) {
        if (np == world_size) {
            rc = PMPI_Comm_dup(MPI_COMM_WORLD, &split);
        } else {
            MPI_Group world_group, app_group;
            int range[1][3] = {{first, first + np - 1, 1}};
            rc = PMPI_Comm_group(MPI_COMM_WORLD, &world_group);
            if (rc != MPI_SUCCESS)
                return rc;
            rc = PMPI_Group_range_incl(world_group, 1, range, &app_group);
            PMPI_Group_free(&world_group);
            if (rc != MPI_SUCCESS)
                return rc;
            rc = PMPI_Comm_create_group(MPI_COMM_WORLD, app_group, REMORA_SETUP_TAG, &split);
            PMPI_Group_free(&app_group);
        }
    } else {
        rc = PMPI_Comm_split(MPI_COMM_WORLD, app_number, 0, &split);
    }
    if (rc != MPI_SUCCESS)
        return rc;
    PMPI_Comm_size(split, &app_size);
    if (app_size == world_size) {
        universe = split;
    } else {
        rc = PMPI_Comm_dup(MPI_COMM_WORLD, &universe);
        if (rc != MPI_SUCCESS) {
            PMPI_Comm_free(&split);
            return rc;
        }
        /* What MPI_Comm_get_name(MPI_COMM_WORLD) answers, as without us. */
        PMPI_Comm_set_name(split, "MPI_COMM_WORLD");
        remora_app_world = split;
    }
    PMPI_Comm_set_name(universe, "MPI_COMM_UNIVERSE");

    rc = PMPI_Comm_create_keyval(MPI_COMM_NULL_COPY_FN, release_at_finalize, &keyval, NULL);
    if (rc == MPI_SUCCESS) {
        rc = PMPI_Comm_set_attr(MPI_COMM_SELF, keyval, NULL);
        /* The attribute keeps the keyval alive until it is deleted. */
        PMPI_Comm_free_keyval(&keyval);
    }
    return rc;
}

int MPI_Init(int *argc, char ***argv)
{
    int rc = PMPI_Init(argc, argv);
    if (rc != MPI_SUCCESS)
        return rc;
    return remora_setup();
}

int MPI_Init_thread(int *argc, char ***argv, int required, int *provided)
{
    int rc = PMPI_Init_thread(argc, argv, required, provided);
    if (rc != MPI_SUCCESS)
        return rc;
    return remora_setup();
}

MPI_Comm Remora_Comm_universe(void)
{
    return universe;
}

int Remora_App_number(void)
{
    return app_number;
}

/* Not substituted: MPI_Abort(MPI_COMM_WORLD, code) must end the whole job --
 * every application -- with that code, as it did before composition. */
int MPI_Abort(MPI_Comm comm, int errorcode)
{
    return PMPI_Abort(comm, errorcode);
}

/* The predefined attributes are cached only on the real world; the
 * application's world (a split) has none of them. */
int remora_is_predefined_world_attribute(int keyval)
{
    return keyval == MPI_TAG_UB || keyval == MPI_HOST || keyval == MPI_IO ||
           keyval == MPI_WTIME_IS_GLOBAL || keyval == MPI_UNIVERSE_SIZE ||
           keyval == MPI_LASTUSEDCODE || keyval == MPI_APPNUM;
}

int MPI_Comm_get_attr(MPI_Comm comm, int comm_keyval, void *attribute_val, int *flag)
{
    if (comm == MPI_COMM_WORLD && remora_is_predefined_world_attribute(comm_keyval))
        return PMPI_Comm_get_attr(MPI_COMM_WORLD, comm_keyval, attribute_val, flag);
    return PMPI_Comm_get_attr(remora_world_map(comm), comm_keyval, attribute_val, flag);
}

int MPI_Attr_get(MPI_Comm comm, int keyval, void *attribute_val, int *flag)
{
    if (comm == MPI_COMM_WORLD && remora_is_predefined_world_attribute(keyval))
        return PMPI_Attr_get(MPI_COMM_WORLD, keyval, attribute_val, flag);
    return PMPI_Attr_get(remora_world_map(comm), keyval, attribute_val, flag);
}

/* An error handler set on MPI_COMM_WORLD goes on the application's world
 * (errors of its calls) and also on the real world, where MPICH raises the
 * errors that belong to no communicator (as the program expects when it sets
 * MPI_ERRORS_RETURN on the world). */
int MPI_Comm_set_errhandler(MPI_Comm comm, MPI_Errhandler errhandler)
{
    int rc = PMPI_Comm_set_errhandler(remora_world_map(comm), errhandler);
    if (rc == MPI_SUCCESS && comm == MPI_COMM_WORLD && remora_app_world != MPI_COMM_NULL)
        rc = PMPI_Comm_set_errhandler(MPI_COMM_WORLD, errhandler);
    return rc;
}

int MPI_Errhandler_set(MPI_Comm comm, MPI_Errhandler errhandler)
{
    return MPI_Comm_set_errhandler(comm, errhandler);
}

/* The application's world and the universe are predefined as far as the
 * program knows: freeing them is an error, raised like MPICH raises it for
 * MPI_COMM_WORLD (through the communicator's error handler). */
int remora_is_library_comm(MPI_Comm comm)
{
    return comm != MPI_COMM_NULL && (comm == remora_app_world || comm == universe);
}

int remora_refuse_free(MPI_Comm comm, const char *function)
{
    MPI_Errhandler handler = MPI_ERRHANDLER_NULL;
    PMPI_Comm_get_errhandler(comm, &handler);
    int fatal = handler == MPI_ERRORS_ARE_FATAL;
#ifdef MPI_ERRORS_ABORT /* MPI-4; not in Open MPI 4.1 */
    fatal = fatal || handler == MPI_ERRORS_ABORT;
#endif
    if (fatal)
        fprintf(stderr, "remora: %s: %s is predefined and cannot be freed\n", function,
                comm == universe ? "MPI_COMM_UNIVERSE" : "MPI_COMM_WORLD");
    if (handler != MPI_ERRHANDLER_NULL)
        PMPI_Errhandler_free(&handler);
    PMPI_Comm_call_errhandler(comm, MPI_ERR_COMM);
    return MPI_ERR_COMM;
}

/* MPI_Comm * functions read the handle only here: the others (split, dup,
 * create, ...) write a new handle into it. MPI_COMM_WORLD itself goes to
 * MPICH, which refuses it as before. */
int MPI_Comm_free(MPI_Comm *comm)
{
    if (comm != NULL && remora_is_library_comm(*comm))
        return remora_refuse_free(*comm, "MPI_Comm_free");
    return PMPI_Comm_free(comm);
}

int MPI_Comm_disconnect(MPI_Comm *comm)
{
    if (comm != NULL && remora_is_library_comm(*comm))
        return remora_refuse_free(*comm, "MPI_Comm_disconnect");
    return PMPI_Comm_disconnect(comm);
}

void *remora_fortran_twin(void **cache, const char *name)
{
    void *fn = __atomic_load_n(cache, __ATOMIC_ACQUIRE);
    if (fn == NULL) {
        fn = dlsym(RTLD_NEXT, name);
        if (fn == NULL) {
            fprintf(stderr, "remora: %s not found after libremora (%s)\n", name, dlerror());
            abort();
        }
        __atomic_store_n(cache, fn, __ATOMIC_RELEASE);
    }
    return fn;
}

MPI_Fint Remora_Comm_universe_f(void)
{
    return MPI_Comm_c2f(universe);
}
