/* Runs until signalled. */
#include <mpi.h>
#include <stdio.h>
#include <unistd.h>

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    printf("spinning\n");
    fflush(stdout);
    for (;;) pause();
}
