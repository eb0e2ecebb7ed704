! One application of a composition, in Fortran with `use mpi` (the same
! bindings serve mpif.h). Prints "fortran app=A rank=R size=S sum=X half=H".
program compose_mpi
    use mpi
    implicit none
    integer :: ierr, rank, nprocs, total, half_count, half, one
    integer(kind=MPI_ADDRESS_KIND) :: appnum
    logical :: flag

    call MPI_Init(ierr)
    call MPI_Comm_rank(MPI_COMM_WORLD, rank, ierr)
    call MPI_Comm_size(MPI_COMM_WORLD, nprocs, ierr)
    one = 1
    call MPI_Allreduce(one, total, 1, MPI_INTEGER, MPI_SUM, MPI_COMM_WORLD, ierr)
    call MPI_Comm_get_attr(MPI_COMM_WORLD, MPI_APPNUM, appnum, flag, ierr)
    if (.not. flag) appnum = -1
    call MPI_Comm_split(MPI_COMM_WORLD, mod(rank, 2), rank, half, ierr)
    call MPI_Allreduce(one, half_count, 1, MPI_INTEGER, MPI_SUM, half, ierr)
    call MPI_Comm_free(half, ierr)
    print '(5(a,i0))', 'fortran app=', appnum, ' rank=', rank, ' size=', nprocs, &
        ' sum=', total, ' half=', half_count
    call MPI_Finalize(ierr)
end program compose_mpi
