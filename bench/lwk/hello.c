/* The launch-to-exit probe of `hobbes-bench lwk`: a static glibc hello
 * world, so the time is the enclave's (load, start-up calls, exit), not the
 * program's. The same source as the LWK kind's language test, minus argv. */
#include <stdio.h>

int main(void)
{
    puts("hello, world");
    return 0;
}
