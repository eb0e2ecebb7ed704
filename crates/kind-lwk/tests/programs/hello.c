/* Hello world for the LWK kind's language tests, built as glibc static, glibc
 * static-pie, musl static and musl static-pie (scripts/lwk-programs.sh).
 * Prints its arguments so a test also checks that argv reached the program
 * (the initial stack the loader builds).
 *
 * Output, for `hello a b`:
 *   hello, world
 *   argc=3
 *   argv[1]=a
 *   argv[2]=b
 */
#include <stdio.h>

int main(int argc, char **argv)
{
    printf("hello, world\nargc=%d\n", argc);
    for (int i = 1; i < argc; i++)
        printf("argv[%d]=%s\n", i, argv[i]);
    return 0;
}
