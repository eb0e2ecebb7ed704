/*
 * XPMEM tests in the style of XPMEM's own test suite: an owner shares
 * MAP_PRIVATE|MAP_ANONYMOUS memory it initialised, other processes (this
 * program again, exec'd) attach it and increment every int, and the owner
 * verifies. Prints key=value lines; exits non-zero on the first failure.
 *
 *   xpmem_test share NPROCS    one share, NPROCS attachers in turn
 *   xpmem_test two_shares      two shares, one attacher for both
 *   xpmem_test errors          invalid calls, and calls without a daemon
 *   xpmem_test attach SEGID... (child) increment every int of each segment
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <xpmem.h>

#define PAGES 4

static size_t share_size(void) { return PAGES * (size_t)sysconf(_SC_PAGESIZE); }

#include "check.h"

static int *owner_memory(int base) {
    int *mem = mmap(NULL, share_size(), PROT_READ | PROT_WRITE,
                    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(mem != MAP_FAILED, "mmap");
    for (size_t i = 0; i < share_size() / sizeof(int); i++)
        mem[i] = base + (int)i;
    return mem;
}

static xpmem_segid_t share(int *mem) {
    xpmem_segid_t segid = xpmem_make(mem, share_size(), XPMEM_PERMIT_MODE, (void *)0666);
    CHECK(segid > 0, "xpmem_make");
    return segid;
}

static int verify(const int *mem, int base, int increments) {
    for (size_t i = 0; i < share_size() / sizeof(int); i++)
        if (mem[i] != base + (int)i + increments) {
            fprintf(stderr, "int %zu is %d, expected %d\n", i, mem[i],
                    base + (int)i + increments);
            return 0;
        }
    return 1;
}

/* Run this program as `attach seg...` and wait for it. */
static void run_attacher(int nseg, const xpmem_segid_t *segids) {
    pid_t pid = fork();
    CHECK(pid >= 0, "fork");
    if (pid == 0) {
        char args[4][32];
        char *argv[6] = {"xpmem_test", "attach", NULL, NULL, NULL, NULL};
        for (int i = 0; i < nseg && i < 4; i++) {
            snprintf(args[i], sizeof args[i], "%lld", (long long)segids[i]);
            argv[2 + i] = args[i];
        }
        execv("/proc/self/exe", argv);
        _exit(127);
    }
    int status;
    CHECK(waitpid(pid, &status, 0) == pid, "waitpid");
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "attacher status %d", status);
}

static int attach_and_increment(xpmem_segid_t segid) {
    xpmem_apid_t apid = xpmem_get(segid, XPMEM_RDWR, XPMEM_PERMIT_MODE, NULL);
    CHECK(apid > 0, "xpmem_get %lld", (long long)segid);
    struct xpmem_addr addr = {.apid = apid, .offset = 0};
    int *mem = xpmem_attach(addr, share_size(), NULL);
    CHECK(mem != (void *)-1, "xpmem_attach");
    for (size_t i = 0; i < share_size() / sizeof(int); i++)
        mem[i]++;
    CHECK(xpmem_detach(mem) == 0, "xpmem_detach");
    CHECK(xpmem_release(apid) == 0, "xpmem_release");
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2)
        return 2;
    const char *mode = argv[1];
    if (strcmp(mode, "attach") == 0) {
        for (int i = 2; i < argc; i++)
            attach_and_increment(strtoll(argv[i], NULL, 10));
        return 0;
    }
    if (strcmp(mode, "share") == 0 && argc == 3) {
        int nprocs = atoi(argv[2]);
        int *mem = owner_memory(1000);
        xpmem_segid_t segid = share(mem);
        for (int p = 0; p < nprocs; p++)
            run_attacher(1, &segid);
        printf("share_verified=%d\n", verify(mem, 1000, nprocs));
        /* The owner can attach its own share read-only, too. */
        xpmem_apid_t apid = xpmem_get(segid, XPMEM_RDONLY, XPMEM_PERMIT_MODE, NULL);
        CHECK(apid > 0, "xpmem_get RDONLY");
        struct xpmem_addr addr = {.apid = apid, .offset = 8};
        int *view = xpmem_attach(addr, sizeof(int), NULL);
        CHECK(view != (void *)-1, "xpmem_attach at offset 8");
        printf("view_at_8=%d\n", *view);
        CHECK(xpmem_detach(view) == 0 && xpmem_release(apid) == 0, "detach/release");
        CHECK(xpmem_remove(segid) == 0, "xpmem_remove");
        errno = 0;
        xpmem_apid_t gone = xpmem_get(segid, XPMEM_RDWR, XPMEM_PERMIT_MODE, NULL);
        printf("get_removed=%lld errno=%d\n", (long long)gone, errno);
        return 0;
    }
    if (strcmp(mode, "two_shares") == 0) {
        int *a = owner_memory(0), *b = owner_memory(50000);
        xpmem_segid_t segids[2] = {share(a), share(b)};
        CHECK(segids[0] != segids[1], "distinct segids");
        run_attacher(2, segids);
        run_attacher(1, &segids[1]);
        printf("first_verified=%d\n", verify(a, 0, 1));
        printf("second_verified=%d\n", verify(b, 50000, 2));
        CHECK(xpmem_remove(segids[0]) == 0 && xpmem_remove(segids[1]) == 0, "remove");
        return 0;
    }
    if (strcmp(mode, "errors") == 0) {
        printf("version_positive=%d\n", xpmem_version() > 0);
        errno = 0;
        xpmem_segid_t s = xpmem_make(NULL, XPMEM_MAXADDR_SIZE, XPMEM_PERMIT_MODE, (void *)0666);
        printf("whole_space=%lld errno=%d\n", (long long)s, errno);
        printf("whole_space_message=%s\n", xpmem_last_error());
        int *mem = owner_memory(0);
        errno = 0;
        s = xpmem_make((char *)mem + 1, 4096, XPMEM_PERMIT_MODE, (void *)0666);
        printf("misaligned=%lld errno=%d\n", (long long)s, errno);
        errno = 0;
        xpmem_apid_t unknown = xpmem_get(999999, XPMEM_RDWR, XPMEM_PERMIT_MODE, NULL);
        printf("unknown_get=%lld errno=%d\n", (long long)unknown, errno);
        struct xpmem_addr addr = {.apid = 424242, .offset = 0};
        errno = 0;
        void *p = xpmem_attach(addr, 4096, NULL);
        printf("unknown_attach=%d errno=%d\n", p == (void *)-1 ? -1 : 0, errno);
        return 0;
    }
    return 2;
}
