/*
 * hobbes-pmix: the C side of the PMIx server glue.
 *
 * Everything that touches PMIx structures (pmix_info_t lists, data arrays,
 * pmix_proc_t, the server module and its callbacks) lives here; Rust sees
 * only the plain functions declared at the bottom of src/ffi.rs: ints,
 * C strings, arrays of them, and one event callback.
 *
 * Threading: libpmix runs its own progress thread. The module callbacks
 * below run on it and must not block: they report through the event
 * callback (which only does Sender::send on the Rust side) and answer
 * libpmix at once. The hp_* entry points are called from host threads; the
 * asynchronous PMIx server calls among them wait for their completion
 * callback on a mutex/condvar (struct waiter), so they must never be called
 * from the progress thread itself.
 */

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <pmix.h>
#include <pmix_server.h>

/* Event kinds, mirrored in src/ffi.rs. */
#define HP_EV_CONNECTED 1
#define HP_EV_FINALIZED 2
#define HP_EV_ABORTED 3
#define HP_EV_FENCE 4

typedef void (*hp_event_fn)(int kind, const char *nspace, uint32_t rank, int status,
                            const char *msg, size_t nprocs, int wildcard, size_t bytes);

static hp_event_fn hp_event_cb = NULL;

/* ---------- waiting for an asynchronous server call ---------- */

struct waiter {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool done;
    pmix_status_t status;
};

static void waiter_init(struct waiter *w)
{
    pthread_mutex_init(&w->lock, NULL);
    pthread_cond_init(&w->cond, NULL);
    w->done = false;
    w->status = PMIX_SUCCESS;
}

static void waiter_fini(struct waiter *w)
{
    pthread_mutex_destroy(&w->lock);
    pthread_cond_destroy(&w->cond);
}

static void waiter_signal(struct waiter *w, pmix_status_t status)
{
    pthread_mutex_lock(&w->lock);
    w->status = status;
    w->done = true;
    pthread_cond_signal(&w->cond);
    pthread_mutex_unlock(&w->lock);
}

static pmix_status_t waiter_wait(struct waiter *w)
{
    pthread_mutex_lock(&w->lock);
    while (!w->done)
        pthread_cond_wait(&w->cond, &w->lock);
    pthread_mutex_unlock(&w->lock);
    return w->status;
}

/* pmix_op_cbfunc_t completing a waiter. */
static void op_done(pmix_status_t status, void *cbdata)
{
    waiter_signal((struct waiter *)cbdata, status);
}

/* Wait for a call that was given op_done: rc is what the call returned. */
static pmix_status_t finish(struct waiter *w, pmix_status_t rc)
{
    if (PMIX_OPERATION_SUCCEEDED == rc)
        rc = PMIX_SUCCESS;
    else if (PMIX_SUCCESS == rc)
        rc = waiter_wait(w);
    waiter_fini(w);
    return rc;
}

static void load_proc(pmix_proc_t *p, const char *nspace, uint32_t rank)
{
    PMIX_PROC_CONSTRUCT(p);
    PMIX_LOAD_PROCID(p, nspace, rank);
}

/* ---------- the server module (runs on libpmix's progress thread) ---------- */

static void report(int kind, const pmix_proc_t *proc, int status, const char *msg,
                   size_t nprocs, int wildcard, size_t bytes)
{
    if (NULL != hp_event_cb && NULL != proc)
        hp_event_cb(kind, proc->nspace, proc->rank, status, msg, nprocs, wildcard, bytes);
}

static pmix_status_t on_connected2(const pmix_proc_t *proc, void *server_object,
                                   pmix_info_t info[], size_t ninfo,
                                   pmix_op_cbfunc_t cbfunc, void *cbdata)
{
    report(HP_EV_CONNECTED, proc, 0, NULL, 0, 0, 0);
    if (NULL != cbfunc)
        cbfunc(PMIX_SUCCESS, cbdata);
    return PMIX_SUCCESS;
}

static pmix_status_t on_finalized(const pmix_proc_t *proc, void *server_object,
                                  pmix_op_cbfunc_t cbfunc, void *cbdata)
{
    report(HP_EV_FINALIZED, proc, 0, NULL, 0, 0, 0);
    /* The client stays blocked in PMIx_Finalize until this runs. */
    if (NULL != cbfunc)
        cbfunc(PMIX_SUCCESS, cbdata);
    return PMIX_SUCCESS;
}

static pmix_status_t on_abort(const pmix_proc_t *proc, void *server_object, int status,
                              const char msg[], pmix_proc_t procs[], size_t nprocs,
                              pmix_op_cbfunc_t cbfunc, void *cbdata)
{
    /* The host (the daemon) kills the job when it sees the event; release the
     * caller so it can exit with its status. */
    report(HP_EV_ABORTED, proc, status, msg, nprocs, 0, 0);
    if (NULL != cbfunc)
        cbfunc(PMIX_SUCCESS, cbdata);
    return PMIX_SUCCESS;
}

static void free_copy(void *cbdata)
{
    free(cbdata);
}

static pmix_status_t on_fence(const pmix_proc_t procs[], size_t nprocs,
                              const pmix_info_t info[], size_t ninfo, char *data, size_t ndata,
                              pmix_modex_cbfunc_t cbfunc, void *cbdata)
{
    /* One node: every participant is local and libpmix has already collected
     * their contributions into `data`; that blob is the whole result. It is
     * handed back as our own copy (released through free_copy) because
     * libpmix finishes the collective later, on a thread-shifted event. */
    int wildcard = 0;
    char *copy = NULL;
    size_t i;

    for (i = 0; i < nprocs; i++)
        if (PMIX_RANK_WILDCARD == procs[i].rank)
            wildcard = 1;
    report(HP_EV_FENCE, nprocs > 0 ? &procs[0] : NULL, 0, NULL, nprocs, wildcard, ndata);
    if (NULL == cbfunc)
        return PMIX_SUCCESS;
    if (ndata > 0) {
        copy = malloc(ndata);
        if (NULL == copy)
            return PMIX_ERR_NOMEM;
        memcpy(copy, data, ndata);
    }
    cbfunc(PMIX_SUCCESS, copy, ndata, cbdata, free_copy, copy);
    return PMIX_SUCCESS;
}

static pmix_status_t on_dmodex(const pmix_proc_t *proc, const pmix_info_t info[],
                               size_t ninfo, pmix_modex_cbfunc_t cbfunc, void *cbdata)
{
    /* All ranks are local: libpmix answers from its own store and only asks
     * the host about remote procs, which a single-node job has none of. */
    return PMIX_ERR_NOT_SUPPORTED;
}

static pmix_server_module_t hp_module = {
    .client_finalized = on_finalized,
    .abort = on_abort,
    .fence_nb = on_fence,
    .direct_modex = on_dmodex,
    .client_connected2 = on_connected2,
};

/* ---------- entry points for Rust ---------- */

const char *hp_error_string(int status)
{
    return PMIx_Error_string(status);
}

int hp_init(const char *tmpdir, const char *server_nspace, hp_event_fn cb)
{
    pmix_info_t info[4];
    bool no = false;
    pmix_rank_t zero = 0;
    pmix_status_t rc;
    size_t i;

    hp_event_cb = cb;
    /* libpmix 4.2 completes a fence whose participants are all local by
     * itself and never calls fence_nb, so the host would see no fence at all.
     * Turn that shortcut off (unless the operator set the MCA variable) so
     * that every fence is reported; the cost is one upcall per fence, which
     * on_fence answers at once. libpmix reads its MCA variables from the
     * environment during PMIx_server_init: this must run before other
     * threads read the environment (Server::start's documented contract). */
    setenv("PMIX_MCA_pmix_server_fence_localonly_opt", "0", 0);
    PMIX_INFO_LOAD(&info[0], PMIX_SERVER_TMPDIR, tmpdir, PMIX_STRING);
    PMIX_INFO_LOAD(&info[1], PMIX_SERVER_SYSTEM_SUPPORT, &no, PMIX_BOOL);
    PMIX_INFO_LOAD(&info[2], PMIX_SERVER_NSPACE, server_nspace, PMIX_STRING);
    PMIX_INFO_LOAD(&info[3], PMIX_SERVER_RANK, &zero, PMIX_PROC_RANK);
    rc = PMIx_server_init(&hp_module, info, 4);
    for (i = 0; i < 4; i++)
        PMIX_INFO_DESTRUCT(&info[i]);
    return rc;
}

int hp_finalize(void)
{
    return PMIx_server_finalize();
}

/* Append "first,first+1,...,first+n-1" to buf (size cap). */
static void rank_list(char *buf, size_t cap, uint32_t first, uint32_t n)
{
    size_t len = 0;
    uint32_t r;

    buf[0] = '\0';
    for (r = first; r < first + n && len < cap; r++)
        len += (size_t)snprintf(buf + len, cap - len, "%s%u", r == first ? "" : ",", r);
}

/* Add a list as a data array of pmix_info_t under key, then release it. */
static pmix_status_t add_array(void *outer, const char *key, void *inner)
{
    pmix_data_array_t darray;
    pmix_status_t rc;

    PMIX_DATA_ARRAY_CONSTRUCT(&darray, 0, PMIX_INFO);
    rc = PMIx_Info_list_convert(inner, &darray);
    PMIx_Info_list_release(inner);
    if (PMIX_SUCCESS != rc)
        return rc;
    rc = PMIx_Info_list_add(outer, key, &darray, PMIX_DATA_ARRAY);
    PMIX_DATA_ARRAY_DESTRUCT(&darray);
    return rc;
}

#define ADD(list, key, val, type)                                                          \
    do {                                                                                   \
        rc = PMIx_Info_list_add((list), (key), (val), (type));                             \
        if (PMIX_SUCCESS != rc)                                                            \
            goto out;                                                                      \
    } while (0)

/*
 * Register a job whose ranks all run on this node. tmpdir and nsdir (made by
 * the host, which removes nsdir when the job is over) are the session
 * directories Open MPI uses instead of its own /tmp/ompi.<host>.<uid>. Apps are given by
 * parallel arrays of length napps: app_num[i] (its PMIX_APPNUM),
 * app_first[i] (first rank), app_np[i],
 * app_argv0[i], app_cwd[i] (NULL: none). Ranks are contiguous per app.
 * Waits for libpmix to finish.
 */
int hp_register_nspace(const char *nspace, const char *hostname, const char *tmpdir,
                       const char *nsdir, uint32_t napps,
                       const uint32_t *app_num, const uint32_t *app_first, const uint32_t *app_np,
                       const char *const *app_argv0, const char *const *app_cwd)
{
    void *job = NULL;
    pmix_data_array_t darray;
    pmix_info_t *info = NULL;
    size_t ninfo = 0;
    char *regex = NULL, *ppn = NULL, *peers = NULL;
    uint32_t size = 0, i, r, zero = 0;
    pmix_rank_t lldr = 0;
    struct waiter w;
    pmix_status_t rc;

    for (i = 0; i < napps; i++)
        size += app_np[i];
    /* "0,1,...,size-1": at most 11 bytes per rank. */
    peers = malloc((size_t)size * 11 + 1);
    if (NULL == peers)
        return PMIX_ERR_NOMEM;
    rank_list(peers, (size_t)size * 11 + 1, 0, size);

    job = PMIx_Info_list_start();
    /* Job level. */
    ADD(job, PMIX_JOBID, nspace, PMIX_STRING);
    ADD(job, PMIX_UNIV_SIZE, &size, PMIX_UINT32);
    ADD(job, PMIX_JOB_SIZE, &size, PMIX_UINT32);
    ADD(job, PMIX_MAX_PROCS, &size, PMIX_UINT32);
    ADD(job, PMIX_JOB_NUM_APPS, &napps, PMIX_UINT32);
    ADD(job, PMIX_NUM_NODES, &(uint32_t){1}, PMIX_UINT32);
    /* Session directories: ours, and we clean them. */
    ADD(job, PMIX_TMPDIR, tmpdir, PMIX_STRING);
    ADD(job, PMIX_NSDIR, nsdir, PMIX_STRING);
    ADD(job, PMIX_TDIR_RMCLEAN, &(bool){true}, PMIX_BOOL);
    /* This node (the only one), given at job level as Open MPI 4.1 reads it. */
    ADD(job, PMIX_HOSTNAME, hostname, PMIX_STRING);
    ADD(job, PMIX_NODEID, &zero, PMIX_UINT32);
    ADD(job, PMIX_LOCAL_SIZE, &size, PMIX_UINT32);
    ADD(job, PMIX_NODE_SIZE, &size, PMIX_UINT32);
    ADD(job, PMIX_LOCAL_PEERS, peers, PMIX_STRING);
    ADD(job, PMIX_LOCALLDR, &lldr, PMIX_PROC_RANK);
    /* Maps: one node holding every rank. */
    rc = PMIx_generate_regex(hostname, &regex);
    if (PMIX_SUCCESS != rc)
        goto out;
    ADD(job, PMIX_NODE_MAP, regex, PMIX_REGEX);
    rc = PMIx_generate_ppn(peers, &ppn);
    if (PMIX_SUCCESS != rc)
        goto out;
    ADD(job, PMIX_PROC_MAP, ppn, PMIX_REGEX);

    /* Application level. */
    for (i = 0; i < napps; i++) {
        void *app = PMIx_Info_list_start();
        pmix_rank_t ldr = app_first[i];
        ADD(app, PMIX_APPNUM, &app_num[i], PMIX_UINT32);
        ADD(app, PMIX_APP_SIZE, &app_np[i], PMIX_UINT32);
        ADD(app, PMIX_APPLDR, &ldr, PMIX_PROC_RANK);
        ADD(app, PMIX_APP_ARGV, app_argv0[i], PMIX_STRING);
        if (NULL != app_cwd[i])
            ADD(app, PMIX_WDIR, app_cwd[i], PMIX_STRING);
        rc = add_array(job, PMIX_APP_INFO_ARRAY, app);
        if (PMIX_SUCCESS != rc)
            goto out;
    }

    /* Process level. */
    for (i = 0; i < napps; i++) {
        for (r = app_first[i]; r < app_first[i] + app_np[i]; r++) {
            void *proc = PMIx_Info_list_start();
            pmix_rank_t rank = r, app_rank = r - app_first[i];
            uint16_t local_rank = (uint16_t)r, node_rank = (uint16_t)r;
            /* The rank must come first. */
            ADD(proc, PMIX_RANK, &rank, PMIX_PROC_RANK);
            ADD(proc, PMIX_APPNUM, &app_num[i], PMIX_UINT32);
            ADD(proc, PMIX_LOCAL_RANK, &local_rank, PMIX_UINT16);
            ADD(proc, PMIX_NODE_RANK, &node_rank, PMIX_UINT16);
            ADD(proc, PMIX_GLOBAL_RANK, &rank, PMIX_PROC_RANK);
            ADD(proc, PMIX_APP_RANK, &app_rank, PMIX_PROC_RANK);
            ADD(proc, PMIX_HOSTNAME, hostname, PMIX_STRING);
            ADD(proc, PMIX_NODEID, &zero, PMIX_UINT32);
            rc = add_array(job, PMIX_PROC_DATA, proc);
            if (PMIX_SUCCESS != rc)
                goto out;
        }
    }

    PMIX_DATA_ARRAY_CONSTRUCT(&darray, 0, PMIX_INFO);
    rc = PMIx_Info_list_convert(job, &darray);
    if (PMIX_SUCCESS != rc)
        goto out;
    info = (pmix_info_t *)darray.array;
    ninfo = darray.size;

    waiter_init(&w);
    rc = PMIx_server_register_nspace(nspace, (int)size, info, ninfo, op_done, &w);
    rc = finish(&w, rc);
    PMIX_DATA_ARRAY_DESTRUCT(&darray);

out:
    /* ADD inside the app/proc loops jumps here with that inner list live; it
     * leaks a few bytes on an error that only running out of memory causes. */
    if (NULL != job)
        PMIx_Info_list_release(job);
    free(regex);
    free(ppn);
    free(peers);
    return rc;
}

static void nspace_done(pmix_status_t status, void *cbdata)
{
    waiter_signal((struct waiter *)cbdata, status);
}

int hp_deregister_nspace(const char *nspace)
{
    struct waiter w;

    waiter_init(&w);
    PMIx_server_deregister_nspace(nspace, nspace_done, &w);
    return finish(&w, PMIX_SUCCESS);
}

int hp_register_client(const char *nspace, uint32_t rank, uint32_t uid, uint32_t gid)
{
    pmix_proc_t proc;
    struct waiter w;

    load_proc(&proc, nspace, rank);
    waiter_init(&w);
    return finish(&w, PMIx_server_register_client(&proc, uid, gid, NULL, op_done, &w));
}

int hp_deregister_client(const char *nspace, uint32_t rank)
{
    pmix_proc_t proc;
    struct waiter w;

    load_proc(&proc, nspace, rank);
    waiter_init(&w);
    PMIx_server_deregister_client(&proc, op_done, &w);
    return finish(&w, PMIX_SUCCESS);
}

/* libpmix builds the environment array with malloc'd strings. */
void hp_free_env(char **env)
{
    char **p;

    if (NULL == env)
        return;
    for (p = env; NULL != *p; p++)
        free(*p);
    free(env);
}

/* The variables a client must be started with: a NULL-terminated array of
 * "NAME=VALUE" strings in *env_out, released with hp_free_env. */
int hp_setup_fork(const char *nspace, uint32_t rank, char ***env_out)
{
    pmix_proc_t proc;
    char **env = NULL;
    pmix_status_t rc;

    load_proc(&proc, nspace, rank);
    rc = PMIx_server_setup_fork(&proc, &env);
    if (PMIX_SUCCESS != rc) {
        hp_free_env(env);
        env = NULL;
    }
    *env_out = env;
    return rc;
}

