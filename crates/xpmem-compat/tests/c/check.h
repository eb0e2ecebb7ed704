/* The failure check the libxpmem C tests share: print where and why
 * (errno and libxpmem's last error message), exit 1. */
#ifndef XPMEM_TEST_CHECK_H
#define XPMEM_TEST_CHECK_H

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include <xpmem.h>

#define CHECK(cond, ...)                                                     \
    do {                                                                     \
        if (!(cond)) {                                                       \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);             \
            fprintf(stderr, __VA_ARGS__);                                    \
            fprintf(stderr, " (errno %d: %s)\n", errno, xpmem_last_error()); \
            exit(1);                                                         \
        }                                                                    \
    } while (0)

#endif
