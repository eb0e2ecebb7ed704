/* Composed: each application its own world; the universe across them. */
#include <mpi.h>
#include <remora.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv) {
    int wrank, wsize, urank, usize, app = -1, flag = 0, *appnum = NULL;
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &wrank);
    MPI_Comm_size(MPI_COMM_WORLD, &wsize);
    MPI_Comm_rank(MPI_COMM_UNIVERSE, &urank);
    MPI_Comm_size(MPI_COMM_UNIVERSE, &usize);
    MPI_Comm_get_attr(MPI_COMM_WORLD, MPI_APPNUM, &appnum, &flag);
    if (flag) app = *appnum;
    /* Sum of universe ranks: the union's sum. */
    int usum = 0, wsum = 0;
    MPI_Allreduce(&urank, &usum, 1, MPI_INT, MPI_SUM, MPI_COMM_UNIVERSE);
    MPI_Allreduce(&wrank, &wsum, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    /* Derived communicators stay inside the application's world. */
    MPI_Comm dup, half;
    MPI_Comm_dup(MPI_COMM_WORLD, &dup);
    int dsize;
    MPI_Comm_size(dup, &dsize);
    MPI_Comm_split(MPI_COMM_WORLD, wrank % 2, wrank, &half);
    int hsize;
    MPI_Comm_size(half, &hsize);
    /* A message from the first process of app 0 to the last of the universe. */
    int token = -1;
    if (urank == 0) {
        token = 4242;
        MPI_Send(&token, 1, MPI_INT, usize - 1, 7, MPI_COMM_UNIVERSE);
    } else if (urank == usize - 1) {
        MPI_Recv(&token, 1, MPI_INT, 0, 7, MPI_COMM_UNIVERSE, MPI_STATUS_IGNORE);
    }
    /* Under Slurm: the node it ran on. */
    const char *node = getenv("SLURMD_NODENAME");
    printf("compose app=%d wrank=%d wsize=%d urank=%d usize=%d usum=%d wsum=%d dup=%d half=%d token=%d pid=%d node=%s\n",
           app, wrank, wsize, urank, usize, usum, wsum, dsize, hsize, token, (int)getpid(),
           node != NULL ? node : "-");
    MPI_Comm_free(&half);
    MPI_Comm_free(&dup);
    MPI_Finalize();
    return 0;
}
