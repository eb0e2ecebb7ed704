/* Cost of libremora's rank-space set-up against a plain MPI_Comm_dup.
 *
 * Run WITHOUT libremora, as a composed MPMD job, e.g.
 *   mpicc.mpich -O2 -o universe_setup universe_setup.c
 *   mpiexec.hydra -n 2 ./universe_setup : -n 2 ./universe_setup
 * It repeats what libremora does inside MPI_Init -- split the world by
 * appnum, dup the world as the universe -- and, as the baseline, a single
 * MPI_Comm_dup of the world; each ITERS times (argv[1], default 200), timed
 * by rank 0 between barriers. Prints, from world rank 0, one line per case:
 *   remora_setup_us median=<us> min=<us> ranks=<n> apps=<k>
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
    double *setup = malloc(sizeof(double) * iters), *dup = malloc(sizeof(double) * iters);

    for (int i = 0; i < iters; i++) {
        MPI_Comm app_world, universe;
        MPI_Barrier(MPI_COMM_WORLD);
        double t0 = MPI_Wtime();
        MPI_Comm_split(MPI_COMM_WORLD, app, 0, &app_world);
        MPI_Comm_dup(MPI_COMM_WORLD, &universe);
        MPI_Barrier(MPI_COMM_WORLD);
        setup[i] = MPI_Wtime() - t0;
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
        report("comm_dup_us", dup, iters, size, apps);
    }
    free(setup);
    free(dup);
    MPI_Finalize();
    return 0;
}
