/* A program that crashes, for crash detection: `crash` or `crash segv`
 * writes through a null pointer (page fault, vector 14: SIGSEGV, exit 139);
 * `crash abort` calls abort() (SIGABRT through tgkill, exit 134); `crash ill`
 * executes ud2 (invalid opcode, vector 6: SIGILL, exit 132). Prints
 * "crashing: <how>" first (flushed), so a test knows output got out before
 * the fault.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv)
{
    const char *how = argc > 1 ? argv[1] : "segv";
    printf("crashing: %s\n", how);
    fflush(stdout);
    if (strcmp(how, "segv") == 0) {
        /* volatile: the compiler may not drop or reorder the store. */
        *(volatile int *)0 = 42;
    } else if (strcmp(how, "abort") == 0) {
        abort();
    } else if (strcmp(how, "ill") == 0) {
        __asm__ volatile("ud2");
    } else {
        fprintf(stderr, "crash: unknown way %s: use segv, abort or ill\n", how);
        return 2;
    }
    return 3; /* not reached */
}
