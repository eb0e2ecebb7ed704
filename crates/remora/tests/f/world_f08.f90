! A `use mpi_f08` program: its world's rank and size, and an allreduce over
! it; under a two-application Remora job each application sees its own world.
program world_f08
  use mpi_f08
  implicit none
  integer :: rank, nprocs, total, one
  call MPI_Init()
  call MPI_Comm_rank(MPI_COMM_WORLD, rank)
  call MPI_Comm_size(MPI_COMM_WORLD, nprocs)
  one = 1
  call MPI_Allreduce(one, total, 1, MPI_INTEGER, MPI_SUM, MPI_COMM_WORLD)
  print '(A,I0,A,I0,A,I0)', 'f08 wrank=', rank, ' wsize=', nprocs, ' wsum=', total
  call MPI_Finalize()
end program world_f08
