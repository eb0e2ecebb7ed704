! Hello world in Fortran (gfortran -static: libgfortran and libquadmath
! linked in). Output: the same as hello.c (`hello, world`, `argc=N`,
! `argv[i]=...`), so one test checks every language.
program hello
  implicit none
  integer :: i, n
  character(len=4096) :: arg
  n = command_argument_count()
  write (*, '(a)') 'hello, world'
  write (*, '(a,i0)') 'argc=', n + 1
  do i = 1, n
    call get_command_argument(i, arg)
    write (*, '(a,i0,a,a)') 'argv[', i, ']=', trim(arg)
  end do
end program hello
