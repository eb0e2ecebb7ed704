! One application of a composition, in Fortran, built for each binding:
! -DMPIF (include 'mpif.h'), nothing (use mpi), -DF08 (use mpi_f08).
! Prints "fortran app=A rank=R size=S sum=X half=H universe=U/N usum=M msg=G".
program compose_fortran
#if defined(F08)
    use mpi_f08
#elif !defined(MPIF)
    use mpi
#endif
    use, intrinsic :: iso_c_binding, only: c_int
    implicit none
#if defined(MPIF)
    include 'mpif.h'
#endif
#if defined(F08)
    type(MPI_Comm) :: half, universe
#else
    integer :: half, universe
#endif
    interface
        function remora_universe() bind(C, name="Remora_Comm_universe_f")
            import :: c_int
            integer(c_int) :: remora_universe
        end function remora_universe
    end interface
    integer :: ierr, rank, nprocs, total, half_count, one, urank, usize, usum, msg
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

#if defined(F08)
    universe%MPI_VAL = remora_universe()
#else
    universe = remora_universe()
#endif
    call MPI_Comm_rank(universe, urank, ierr)
    call MPI_Comm_size(universe, usize, ierr)
    call MPI_Allreduce(urank + 1, usum, 1, MPI_INTEGER, MPI_SUM, universe, ierr)
    ! From the universe's first process to its last (another application)
    ! and back.
    msg = 0
    if (urank == 0) then
        msg = 1234
        call MPI_Send(msg, 1, MPI_INTEGER, usize - 1, 7, universe, ierr)
        call MPI_Recv(msg, 1, MPI_INTEGER, usize - 1, 8, universe, MPI_STATUS_IGNORE, ierr)
    else if (urank == usize - 1) then
        call MPI_Recv(msg, 1, MPI_INTEGER, 0, 7, universe, MPI_STATUS_IGNORE, ierr)
        msg = msg + 1
        call MPI_Send(msg, 1, MPI_INTEGER, 0, 8, universe, ierr)
    end if
    print '(7(a,i0),a,i0,a,i0,a,i0)', 'fortran app=', appnum, ' rank=', rank, ' size=', nprocs, &
        ' sum=', total, ' half=', half_count, ' universe=', urank, '/', usize, ' usum=', usum, &
        ' msg=', msg
    call MPI_Finalize(ierr)
end program compose_fortran
