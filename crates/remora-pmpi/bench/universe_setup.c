/* Cost of libremora's rank-space set-up against a plain MPI_Comm_dup.
 *
 * Run WITHOUT libremora, as a composed MPMD job, e.g.
 *   mpicc.mpich -O2 -o universe_setup universe_setup.c
 *   mpiexec.hydra -n 2 ./universe_setup : -n 2 ./universe_setup
 * or as a Remora job of two applications (--no-rank-spaces). It repeats
 * what libremora does inside MPI_Init -- the application's world, then a
 * dup of the world as the universe -- both ways libremora builds the
 * application's world: from the group of the application's ranks
 * (MPI_Comm_create_group, what it does under Remora, whose launcher tells
 * each process its application's ranks) and by a split of the world by
 * appnum (under another launcher); and, as the baseline, a single
 * MPI_Comm_dup of the world. Each ITERS times (argv[1], default 200), timed
 * by rank 0 between barriers. Prints, from world rank 0, one line per case:
 *   remora_setup_us median=<us> min=<us> ranks=<n> apps=<k>
 *   split_setup_us median=<us> min=<us> ranks=<n> apps=<k>
 *   comm_dup_us median=<us> min=<us> ranks=<n> apps=<k>
 */
#include <stdio.h>
#include <stdlib.h>

#include <mpi.h>

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void report(const char *name, double *t, int n, int ranks, int apps)
{
    qsort(t, n, sizeof *t, cmp_double);
    printf("%s median=%.2f min=%.2f ranks=%d apps=%d\n", name, t[n / 2] * 1e6, t[0] * 1e6, ranks,
           apps);
}

int main(int argc, char **argv)
{
    int iters = argc > 1 ? atoi(argv[1]) : 200;
    int rank, size, *appnum = NULL, flag = 0, app = 0, apps = 0;
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    MPI_Comm_get_attr(MPI_COMM_WORLD, MPI_APPNUM, &appnum, &flag);
    if (flag)
        app = *appnum;
    MPI_Allreduce(&app, &apps, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    apps += 1;
    if (iters < 1)
        iters = 1;

    /* The application's ranks (libremora gets them from the launcher; found
     * here once, untimed). Applications are contiguous in the world. */
    int *appnums = malloc(sizeof(int) * size), first = -1, np = 0;
    MPI_Allgather(&app, 1, MPI_INT, appnums, 1, MPI_INT, MPI_COMM_WORLD);
    for (int i = 0; i < size; i++)
        if (appnums[i] == app) {
            if (first < 0)
                first = i;
            np++;
        }
    free(appnums);
    MPI_Group world_group, app_group;
    int range[1][3] = {{first, first + np - 1, 1}};
    MPI_Comm_group(MPI_COMM_WORLD, &world_group);
    MPI_Group_range_incl(world_group, 1, range, &app_group);

    double *setup = malloc(sizeof(double) * iters), *split = malloc(sizeof(double) * iters),
           *dup = malloc(sizeof(double) * iters);
    for (int i = 0; i < iters; i++) {
        MPI_Comm app_world, universe;
        MPI_Barrier(MPI_COMM_WORLD);
        double t0 = MPI_Wtime();
        MPI_Comm_create_group(MPI_COMM_WORLD, app_group, 0x52454d, &app_world);
        MPI_Comm_dup(MPI_COMM_WORLD, &universe);
        MPI_Barrier(MPI_COMM_WORLD);
        setup[i] = MPI_Wtime() - t0;
        MPI_Comm_free(&app_world);
        MPI_Comm_free(&universe);

        MPI_Barrier(MPI_COMM_WORLD);
        t0 = MPI_Wtime();
        MPI_Comm_split(MPI_COMM_WORLD, app, 0, &app_world);
        MPI_Comm_dup(MPI_COMM_WORLD, &universe);
        MPI_Barrier(MPI_COMM_WORLD);
        split[i] = MPI_Wtime() - t0;
        MPI_Comm_free(&app_world);
        MPI_Comm_free(&universe);

        MPI_Comm copy;
        MPI_Barrier(MPI_COMM_WORLD);
        t0 = MPI_Wtime();
        MPI_Comm_dup(MPI_COMM_WORLD, &copy);
        MPI_Barrier(MPI_COMM_WORLD);
        dup[i] = MPI_Wtime() - t0;
        MPI_Comm_free(&copy);
    }
    if (rank == 0) {
        report("remora_setup_us", setup, iters, size, apps);
        report("split_setup_us", split, iters, size, apps);
        report("comm_dup_us", dup, iters, size, apps);
    }
    MPI_Group_free(&app_group);
    MPI_Group_free(&world_group);
    free(setup);
    free(split);
    free(dup);
    MPI_Finalize();
    return 0;
}
