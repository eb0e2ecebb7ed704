/* One application of a composition under libremora. Run as every app of an
 * MPMD job: `compose SIZES` where SIZES lists every application's process
 * count in appnum order (e.g. "2,2"). Checks the rank spaces and prints
 * "OK app=A rank=R/S universe=U/N" or "FAIL ..." lines; exits 1 on failure. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "remora.h"

#define MAX_APPS 16

static int failures;
static int app, world_rank, world_size;

#define CHECK(cond, ...)                                                                  \
    do {                                                                                  \
        if (!(cond)) {                                                                    \
            printf("FAIL app=%d rank=%d line %d: ", app, world_rank, __LINE__);           \
            printf(__VA_ARGS__);                                                          \
            printf("\n");                                                                 \
            failures++;                                                                   \
        }                                                                                 \
    } while (0)

/* The finalize hook: an attribute on MPI_COMM_SELF deleted in MPI_Finalize.
 * Programs (and tools) communicate on MPI_COMM_WORLD there; it must still be
 * the application's world. */
static int hook_sum = -1;
static int finalize_hook(MPI_Comm comm, int keyval, void *val, void *extra)
{
    (void)comm;
    (void)keyval;
    (void)val;
    (void)extra;
    int one = 1;
    MPI_Allreduce(&one, &hook_sum, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    return MPI_SUCCESS;
}

/* Records the communicator an error was raised on. */
static MPI_Comm raised_on = MPI_COMM_NULL;
static void record_error(MPI_Comm *comm, int *code, ...)
{
    (void)code;
    raised_on = *comm;
}

static int parse_sizes(const char *arg, int sizes[MAX_APPS])
{
    int n = 0;
    char *copy = strdup(arg), *save = NULL;
    for (char *tok = strtok_r(copy, ",", &save); tok && n < MAX_APPS;
         tok = strtok_r(NULL, ",", &save))
        sizes[n++] = atoi(tok);
    free(copy);
    return n;
}

static void check_attributes(void)
{
    int *value = NULL, flag = 0;
    CHECK(MPI_Comm_get_attr(MPI_COMM_WORLD, MPI_TAG_UB, &value, &flag) == MPI_SUCCESS && flag &&
              *value >= 32767,
          "MPI_TAG_UB on MPI_COMM_WORLD: flag %d", flag);
    flag = 0;
    CHECK(MPI_Comm_get_attr(MPI_COMM_WORLD, MPI_APPNUM, &value, &flag) == MPI_SUCCESS && flag &&
              *value == app,
          "MPI_APPNUM on MPI_COMM_WORLD: flag %d value %d", flag, flag ? *value : -1);
    flag = 0;
    CHECK(MPI_Attr_get(MPI_COMM_WORLD, MPI_TAG_UB, &value, &flag) == MPI_SUCCESS && flag,
          "MPI_Attr_get(MPI_TAG_UB) flag %d", flag);
    flag = 0;
    CHECK(MPI_Comm_get_attr(MPI_COMM_WORLD, MPI_WTIME_IS_GLOBAL, &value, &flag) == MPI_SUCCESS,
          "MPI_WTIME_IS_GLOBAL");
    /* A user attribute set on the world is read back from the world. */
    int keyval, stored = 42, *got = NULL;
    MPI_Comm_create_keyval(MPI_COMM_NULL_COPY_FN, MPI_COMM_NULL_DELETE_FN, &keyval, NULL);
    MPI_Comm_set_attr(MPI_COMM_WORLD, keyval, &stored);
    flag = 0;
    MPI_Comm_get_attr(MPI_COMM_WORLD, keyval, &got, &flag);
    CHECK(flag && got == &stored, "user attribute on MPI_COMM_WORLD lost");
    MPI_Comm_delete_attr(MPI_COMM_WORLD, keyval);
    MPI_Comm_free_keyval(&keyval);
}

static void check_derived(int app_size)
{
    int result, sum, one = 1;
    MPI_Comm half, dup;

    MPI_Comm_compare(MPI_COMM_WORLD, MPI_COMM_WORLD, &result);
    CHECK(result == MPI_IDENT, "compare(world, world) = %d", result);

    MPI_Comm_dup(MPI_COMM_WORLD, &dup);
    MPI_Comm_compare(MPI_COMM_WORLD, dup, &result);
    CHECK(result == MPI_CONGRUENT, "compare(world, dup) = %d", result);
    MPI_Allreduce(&app, &sum, 1, MPI_INT, MPI_SUM, dup);
    CHECK(sum == app * app_size, "allreduce(appnum) on dup = %d", sum);

    MPI_Comm_split(MPI_COMM_WORLD, world_rank % 2, world_rank, &half);
    MPI_Allreduce(&one, &sum, 1, MPI_INT, MPI_SUM, half);
    int expected = world_rank % 2 ? app_size / 2 : (app_size + 1) / 2;
    CHECK(sum == expected, "split half has %d, expected %d", sum, expected);
    MPI_Allreduce(&app, &sum, 1, MPI_INT, MPI_SUM, half);
    CHECK(sum == app * expected, "split half mixes applications (sum %d)", sum);
    MPI_Comm_free(&half);
    MPI_Comm_free(&dup);

    MPI_Group group;
    int group_size;
    MPI_Comm_group(MPI_COMM_WORLD, &group);
    MPI_Group_size(group, &group_size);
    CHECK(group_size == app_size, "group of world has %d", group_size);
    MPI_Group_free(&group);

    MPI_Comm cart;
    int dims[1] = {app_size}, periods[1] = {1}, cart_size;
    MPI_Cart_create(MPI_COMM_WORLD, 1, dims, periods, 0, &cart);
    MPI_Comm_size(cart, &cart_size);
    CHECK(cart_size == app_size, "cart over world has %d", cart_size);
    MPI_Comm_free(&cart);

    MPI_Win win;
    int cell = 0, win_size;
    MPI_Win_create(&cell, sizeof cell, sizeof cell, MPI_INFO_NULL, MPI_COMM_WORLD, &win);
    MPI_Win_get_group(win, &group);
    MPI_Group_size(group, &win_size);
    CHECK(win_size == app_size, "window over world has %d", win_size);
    MPI_Group_free(&group);
    MPI_Win_free(&win);

    char name[MPI_MAX_OBJECT_NAME];
    int len;
    MPI_Comm_get_name(MPI_COMM_WORLD, name, &len);
    CHECK(strcmp(name, "MPI_COMM_WORLD") == 0, "world is named '%s'", name);
}

static void check_universe(int napps, const int sizes[], int total, int offset)
{
    MPI_Comm u = MPI_COMM_UNIVERSE;
    int urank, usize, sum, result;
    MPI_Comm_rank(u, &urank);
    MPI_Comm_size(u, &usize);
    CHECK(usize == total && urank == offset + world_rank, "universe %d/%d, expected %d/%d",
          urank, usize, offset + world_rank, total);
    int mine = urank + 1;
    MPI_Allreduce(&mine, &sum, 1, MPI_INT, MPI_SUM, u);
    CHECK(sum == total * (total + 1) / 2, "universe allreduce = %d", sum);
    /* One application: the universe is congruent with the world. */
    MPI_Comm_compare(MPI_COMM_WORLD, u, &result);
    CHECK(result == (napps > 1 ? MPI_UNEQUAL : MPI_CONGRUENT), "compare(world, universe) = %d",
          result);

    /* A message from the first application's rank 0 to the last process
     * (in another application), and the answer back. */
    int msg = 0, last = total - 1;
    if (urank == 0) {
        msg = 1234;
        MPI_Send(&msg, 1, MPI_INT, last, 7, u);
        MPI_Recv(&msg, 1, MPI_INT, last, 8, u, MPI_STATUS_IGNORE);
        CHECK(msg == 1235 + last, "reply %d", msg);
    } else if (urank == last) {
        MPI_Recv(&msg, 1, MPI_INT, 0, 7, u, MPI_STATUS_IGNORE);
        CHECK(msg == 1234, "received %d across applications", msg);
        msg += 1 + urank;
        MPI_Send(&msg, 1, MPI_INT, 0, 8, u);
    }

    /* Two applications: an intercommunicator between them, the universe as
     * peer, the world as the local side. */
    if (napps == 2) {
        MPI_Comm inter;
        int remote_size, remote_leader = app == 0 ? sizes[0] : 0;
        MPI_Intercomm_create(MPI_COMM_WORLD, 0, u, remote_leader, 99, &inter);
        MPI_Comm_remote_size(inter, &remote_size);
        CHECK(remote_size == sizes[1 - app], "intercomm remote size %d", remote_size);
        MPI_Comm_free(&inter);
    }

    char name[MPI_MAX_OBJECT_NAME];
    int len;
    MPI_Comm_get_name(u, name, &len);
    CHECK(strcmp(name, "MPI_COMM_UNIVERSE") == 0, "universe is named '%s'", name);
}

static void check_errors(int app_size)
{
    MPI_Errhandler handler;
    int rc, buf = 0;

    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    /* Rank app_size exists in the real world (other applications follow)
     * but not in the application's world: the error must come back. */
    rc = MPI_Send(&buf, 1, MPI_INT, app_size, 0, MPI_COMM_WORLD);
    CHECK(rc != MPI_SUCCESS, "send to rank %d outside the application succeeded", app_size);

    MPI_Comm world = MPI_COMM_WORLD;
    rc = MPI_Comm_free(&world);
    CHECK(rc != MPI_SUCCESS, "MPI_Comm_free(MPI_COMM_WORLD) succeeded");

    /* The handle behind MPI_COMM_WORLD, as an error handler sees it, can't
     * be freed either; nor can the universe. */
    MPI_Comm_create_errhandler(record_error, &handler);
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, handler);
    MPI_Comm_call_errhandler(MPI_COMM_WORLD, MPI_ERR_OTHER);
    CHECK(raised_on != MPI_COMM_NULL, "error handler on world not called");
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Errhandler_free(&handler);
    if (raised_on != MPI_COMM_NULL) {
        MPI_Comm app_world = raised_on;
        rc = MPI_Comm_free(&app_world);
        CHECK(rc != MPI_SUCCESS, "freeing the application's world succeeded");
    }
    MPI_Comm u = MPI_COMM_UNIVERSE;
    MPI_Comm_set_errhandler(u, MPI_ERRORS_RETURN);
    rc = MPI_Comm_free(&u);
    CHECK(rc != MPI_SUCCESS, "freeing MPI_COMM_UNIVERSE succeeded");

    int size;
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    CHECK(size == app_size, "world broken after refused frees");
    MPI_Barrier(MPI_COMM_UNIVERSE);
}

int main(int argc, char **argv)
{
    int sizes[MAX_APPS], provided;
    if (argc != 2) {
        fprintf(stderr, "usage: compose SIZES (e.g. 2,2)\n");
        return 2;
    }
    int napps = parse_sizes(argv[1], sizes);

    MPI_Init_thread(&argc, &argv, MPI_THREAD_SINGLE, &provided);
    app = Remora_App_number();
    MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &world_size);
    if (app < 0 || app >= napps) {
        printf("FAIL appnum %d outside the %d applications given\n", app, napps);
        MPI_Abort(MPI_COMM_WORLD, 3);
    }
    int total = 0, offset = 0;
    for (int i = 0; i < napps; i++) {
        if (i < app)
            offset += sizes[i];
        total += sizes[i];
    }

    int keyval;
    MPI_Comm_create_keyval(MPI_COMM_NULL_COPY_FN, finalize_hook, &keyval, NULL);
    MPI_Comm_set_attr(MPI_COMM_SELF, keyval, NULL);

    CHECK(world_size == sizes[app], "world size %d, expected %d", world_size, sizes[app]);
    int one = 1, sum = 0;
    MPI_Allreduce(&one, &sum, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    CHECK(sum == sizes[app], "allreduce over world = %d", sum);

    check_attributes();
    check_derived(sizes[app]);
    check_universe(napps, sizes, total, offset);
    check_errors(sizes[app]);

    MPI_Finalize();
    CHECK(hook_sum == sizes[app], "finalize hook saw a world of %d", hook_sum);
    CHECK(Remora_Comm_universe() == MPI_COMM_NULL, "universe not released at finalize");
    if (failures == 0)
        printf("OK app=%d rank=%d/%d universe=%d/%d\n", app, world_rank, world_size,
               offset + world_rank, total);
    return failures ? 1 : 0;
}
