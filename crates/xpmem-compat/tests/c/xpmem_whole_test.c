/*
 * Whole-address-space XPMEM shares, as UCX, Open MPI and MPICH use them:
 * the owner calls xpmem_make(NULL, XPMEM_MAXADDR_SIZE, ...); attachers (this
 * program again, exec'd) xpmem_get the segid and xpmem_attach ranges by the
 * owner's addresses. Prints key=value lines; exits non-zero on the first
 * failure. Synchronisation is by pipes, never by sleeping.
 *
 *   xpmem_whole_test regions      heap (brk and mmap'd), stack, .bss, .data
 *   xpmem_whole_test remap        owner munmap + mmap at the same address
 *   xpmem_whole_test mremap       owner mremap of converted memory
 *   xpmem_whole_test concurrent   an owner thread writes while converted
 *   xpmem_whole_test fork         fork() in the owner after conversion
 *   xpmem_whole_test cache        re-attaching the same range
 *   xpmem_whole_test realloc      free + malloc of a large buffer, read by a
 *                                 cached attachment with no round trip
 *   xpmem_whole_test perms        modes against another uid (needs root)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <xpmem.h>

#include "check.h"

static long page;

/* Static data: .bss (zero-initialised, anonymous) and .data (initialised,
 * a private mapping of this executable). */
static int bss_ints[8192];
static int data_ints[2048] = {1};

static xpmem_segid_t make_whole(int mode) {
    xpmem_segid_t segid =
        xpmem_make(NULL, XPMEM_MAXADDR_SIZE, XPMEM_PERMIT_MODE, (void *)(uintptr_t)mode);
    CHECK(segid > 0, "xpmem_make(NULL, XPMEM_MAXADDR_SIZE)");
    return segid;
}

static void fill(int *p, size_t n, int base) {
    for (size_t i = 0; i < n; i++)
        p[i] = base + (int)i;
}

static int check(const int *p, size_t n, int base) {
    for (size_t i = 0; i < n; i++)
        if (p[i] != base + (int)i) {
            fprintf(stderr, "int %zu is %d, expected %d\n", i, p[i], base + (int)i);
            return 0;
        }
    return 1;
}

/* Run this program with `args` (NULL-terminated) and wait for it. */
static int run(char *const args[]) {
    fflush(stdout);
    pid_t pid = fork();
    CHECK(pid >= 0, "fork");
    if (pid == 0) {
        execv("/proc/self/exe", args);
        _exit(127);
    }
    int status;
    CHECK(waitpid(pid, &status, 0) == pid, "waitpid");
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static pid_t start(char *const args[]) {
    fflush(stdout);
    pid_t pid = fork();
    CHECK(pid >= 0, "fork");
    if (pid == 0) {
        execv("/proc/self/exe", args);
        _exit(127);
    }
    return pid;
}

static int wait_for(pid_t pid) {
    int status;
    CHECK(waitpid(pid, &status, 0) == pid, "waitpid");
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static char *num(long long v) {
    char *s = malloc(32);
    snprintf(s, 32, "%lld", v);
    return s;
}

static xpmem_apid_t get(const char *segid, int flags) {
    xpmem_apid_t apid = xpmem_get(strtoll(segid, NULL, 10), flags, XPMEM_PERMIT_MODE, NULL);
    CHECK(apid > 0, "xpmem_get %s", segid);
    return apid;
}

static void *attach(xpmem_apid_t apid, uintptr_t addr, size_t len) {
    struct xpmem_addr a = {.apid = apid, .offset = (off_t)addr};
    void *p = xpmem_attach(a, len, NULL);
    CHECK(p != (void *)-1, "xpmem_attach %#lx+%zu", (unsigned long)addr, len);
    return p;
}

static void put(int fd, char c) { CHECK(write(fd, &c, 1) == 1, "write pipe"); }
static char take(int fd) {
    char c;
    CHECK(read(fd, &c, 1) == 1, "read pipe");
    return c;
}

/* ------------------------------------------------------------- regions */

/* attach-regions SEGID (ADDR NINTS BASE)...: verify and increment each. */
static int attach_regions(int argc, char **argv) {
    xpmem_apid_t apid = get(argv[2], XPMEM_RDWR);
    for (int i = 3; i + 2 < argc; i += 3) {
        uintptr_t addr = strtoull(argv[i], NULL, 0);
        size_t n = strtoull(argv[i + 1], NULL, 0);
        int base = atoi(argv[i + 2]);
        int *p = attach(apid, addr, n * sizeof(int));
        CHECK(check(p, n, base), "region %d at %#lx", i / 3, (unsigned long)addr);
        for (size_t k = 0; k < n; k++)
            p[k]++;
        CHECK(xpmem_detach(p) == 0, "xpmem_detach");
    }
    CHECK(xpmem_release(apid) == 0, "xpmem_release");
    return 0;
}

static int regions(void) {
    int stack_ints[1024];
    int *small = malloc(16 * 1024 * sizeof(int));   /* brk heap */
    int *big = malloc(4 * 1024 * 1024 * sizeof(int)); /* mmap'd chunk */
    CHECK(small && big, "malloc");
    struct {
        int *p;
        size_t n;
        int base;
    } r[] = {
        {stack_ints, 1024, 100}, {small, 16 * 1024, 2000}, {big, 4 * 1024 * 1024, 30000},
        {bss_ints, 8192, 400000}, {data_ints, 2048, 5000000},
    };
    for (size_t i = 0; i < 5; i++)
        fill(r[i].p, r[i].n, r[i].base);
    xpmem_segid_t segid = make_whole(0666);
    char *args[3 + 3 * 5 + 1] = {"xpmem_whole_test", "attach-regions", num(segid)};
    for (size_t i = 0; i < 5; i++) {
        args[3 + 3 * i] = num((long long)(uintptr_t)r[i].p);
        args[4 + 3 * i] = num((long long)r[i].n);
        args[5 + 3 * i] = num(r[i].base);
    }
    args[3 + 3 * 5] = NULL;
    CHECK(run(args) == 0, "attacher");
    const char *names[] = {"stack", "brk_heap", "mmap_heap", "bss", "data"};
    for (size_t i = 0; i < 5; i++)
        printf("%s_verified=%d\n", names[i], check(r[i].p, r[i].n, r[i].base + 1));
    /* The owner's own memory is still its own: writes show in place. */
    stack_ints[0] = 7;
    printf("stack_still_works=%d\n", stack_ints[0] == 7);
    CHECK(xpmem_remove(segid) == 0, "xpmem_remove");
    free(small);
    free(big);
    return 0;
}

/* --------------------------------------------------------------- remap */

static sigjmp_buf segv_jump;
static void on_segv(int sig) {
    (void)sig;
    siglongjmp(segv_jump, 1);
}

/* One round trip to the owner's service (an attach of a range not attached
 * before): it answers only after handling every unmap the owner made
 * before, so afterwards no attachment shows pages the owner unmapped. */
static void barrier(xpmem_apid_t apid, uintptr_t sync_addr) {
    static int k;
    int *p = attach(apid, sync_addr + (uintptr_t)(k++ % 8) * page, page);
    CHECK(xpmem_detach(p) == 0, "detach");
}

/* attach-remap SEGID ADDR NINTS TO_OWNER FROM_OWNER SYNC_ADDR */
static int attach_remap(char **argv) {
    xpmem_apid_t apid = get(argv[2], XPMEM_RDWR);
    uintptr_t addr = strtoull(argv[3], NULL, 0);
    size_t n = strtoull(argv[4], NULL, 0);
    int to_owner = atoi(argv[5]), from_owner = atoi(argv[6]);
    uintptr_t sync_addr = strtoull(argv[7], NULL, 0);
    volatile int *p = attach(apid, addr, n * sizeof(int));
    printf("before=%d\n", check((const int *)p, n, 10));
    put(to_owner, 'a'); /* owner: munmap, mmap new memory there, fill 20... */
    take(from_owner);
    barrier(apid, sync_addr);
    printf("follows_new_mapping=%d\n", check((const int *)p, n, 20));
    /* And the attachment still reaches the owner's new memory. */
    p[1] = 4242;
    put(to_owner, 'b'); /* owner: checks 4242, then munmaps for good */
    take(from_owner);
    barrier(apid, sync_addr);
    struct sigaction sa = {.sa_handler = on_segv};
    sigaction(SIGSEGV, &sa, NULL);
    sigaction(SIGBUS, &sa, NULL);
    int faulted = 0, value = -1;
    if (sigsetjmp(segv_jump, 1) == 0)
        value = p[0];
    else
        faulted = 1;
    printf("unmapped_faults=%d\n", faulted);
    if (!faulted)
        printf("unmapped_read=%d\n", value);
    return 0;
}

static int remap(void) {
    size_t n = 4 * page / sizeof(int);
    int *mem = mmap(NULL, 4 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(mem != MAP_FAILED, "mmap");
    fill(mem, n, 10);
    xpmem_segid_t segid = make_whole(0666);
    int up[2], down[2];
    CHECK(pipe(up) == 0 && pipe(down) == 0, "pipe");
    char *args[] = {"xpmem_whole_test", "attach-remap", num(segid),
                    num((long long)(uintptr_t)mem), num((long long)n), num(up[1]),
                    num(down[0]), num((long long)(uintptr_t)bss_ints), NULL};
    pid_t child = start(args);
    take(up[0]);
    CHECK(munmap(mem, 4 * page) == 0, "munmap");
    int *again = mmap(mem, 4 * page, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    CHECK(again == mem, "mmap at the same address");
    fill(again, n, 20);
    put(down[1], 'a');
    take(up[0]);
    printf("attacher_write_seen=%d\n", again[1] == 4242);
    CHECK(munmap(again, 4 * page) == 0, "munmap");
    put(down[1], 'b');
    printf("attacher_status=%d\n", wait_for(child));
    return 0;
}

/* attach-mremap SEGID OLD NEW NINTS TO_OWNER FROM_OWNER */
static int attach_mremap(char **argv) {
    xpmem_apid_t apid = get(argv[2], XPMEM_RDWR);
    uintptr_t old = strtoull(argv[3], NULL, 0), new = strtoull(argv[4], NULL, 0);
    size_t n = strtoull(argv[5], NULL, 0);
    int to_owner = atoi(argv[6]), from_owner = atoi(argv[7]);
    volatile int *p = attach(apid, old, n * sizeof(int));
    printf("before=%d\n", check((const int *)p, n, 10));
    put(to_owner, 'a'); /* owner: mremap old -> new */
    take(from_owner);
    int *q = attach(apid, new, n * sizeof(int)); /* a round trip, too */
    printf("moved_contents=%d\n", check(q, n, 10));
    q[0] = 99;
    struct sigaction sa = {.sa_handler = on_segv};
    sigaction(SIGSEGV, &sa, NULL);
    sigaction(SIGBUS, &sa, NULL);
    int faulted = 0;
    if (sigsetjmp(segv_jump, 1) == 0)
        (void)p[0];
    else
        faulted = 1;
    printf("old_address_faults=%d\n", faulted);
    put(to_owner, 'b');
    return 0;
}

static int moved(void) {
    size_t n = 4 * page / sizeof(int);
    int *mem = mmap(NULL, 4 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    int *dest = mmap(NULL, 4 * page, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(mem != MAP_FAILED && dest != MAP_FAILED, "mmap");
    fill(mem, n, 10);
    xpmem_segid_t segid = make_whole(0666);
    int up[2], down[2];
    CHECK(pipe(up) == 0 && pipe(down) == 0, "pipe");
    char *args[] = {"xpmem_whole_test", "attach-mremap", num(segid),
                    num((long long)(uintptr_t)mem), num((long long)(uintptr_t)dest),
                    num((long long)n), num(up[1]), num(down[0]), NULL};
    pid_t child = start(args);
    take(up[0]);
    int *to = mremap(mem, 4 * page, 4 * page, MREMAP_MAYMOVE | MREMAP_FIXED, dest);
    CHECK(to == dest, "mremap");
    printf("owner_moved_contents=%d\n", check(to, n, 10));
    put(down[1], 'a');
    take(up[0]);
    printf("attacher_write_at_new_address=%d\n", to[0] == 99);
    printf("attacher_status=%d\n", wait_for(child));
    return 0;
}

/* ---------------------------------------------------------- concurrent */

#define CONC_INTS (16u * 1024 * 1024 / sizeof(int))
#define CONC_STRIDE (1024 + 1)
static int *conc;
static unsigned passes;
static atomic_int stop_writer, writer_started;

/* Increment one int of every page, pass after pass: a write lost during the
 * conversion (it landed in the old page after the copy) is an increment
 * lost for good, which the final check sees. */
static void *writer(void *arg) {
    (void)arg;
    while (!atomic_load(&stop_writer)) {
        for (size_t i = 0; i < CONC_INTS; i += CONC_STRIDE)
            conc[i]++;
        passes++;
        atomic_store(&writer_started, 1);
    }
    return NULL;
}

/* attach-read SEGID ADDR NBYTES: attach and read one int. */
static int attach_read(char **argv) {
    xpmem_apid_t apid = get(argv[2], XPMEM_RDONLY);
    volatile int *p = attach(apid, strtoull(argv[3], NULL, 0), strtoull(argv[4], NULL, 0));
    printf("attached_first_int=%d\n", p[0]);
    return 0;
}

static int concurrent(void) {
    conc = mmap(NULL, CONC_INTS * sizeof(int), PROT_READ | PROT_WRITE,
                MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(conc != MAP_FAILED, "mmap");
    xpmem_segid_t segid = make_whole(0666);
    pthread_t t;
    CHECK(pthread_create(&t, NULL, writer, NULL) == 0, "pthread_create");
    while (!atomic_load(&writer_started))
        ;
    char *args[] = {"xpmem_whole_test", "attach-read", num(segid),
                    num((long long)(uintptr_t)conc), num((long long)(CONC_INTS * sizeof(int))),
                    NULL};
    /* fork + exec: the fork privatizes nothing (no range is converted yet);
     * the attach converts the buffer while the writer writes it. */
    int status = run(args);
    atomic_store(&stop_writer, 1);
    pthread_join(t, NULL);
    CHECK(status == 0, "attacher");
    size_t lost = 0;
    for (size_t i = 0; i < CONC_INTS; i += CONC_STRIDE)
        lost += (unsigned)conc[i] != passes;
    printf("passes=%u\n", passes);
    printf("lost_writes=%zu\n", lost);
    return 0;
}

/* ---------------------------------------------------------------- fork */

static int forked(void) {
    int *mem = mmap(NULL, 4 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(mem != MAP_FAILED, "mmap");
    mem[0] = 1;
    xpmem_segid_t segid = make_whole(0666);
    char *args[] = {"xpmem_whole_test", "attach-read", num(segid),
                    num((long long)(uintptr_t)mem), num(4 * page), NULL};
    CHECK(run(args) == 0, "attacher"); /* converts mem */
    int to_child[2], to_parent[2];
    CHECK(pipe(to_child) == 0 && pipe(to_parent) == 0, "pipe");
    fflush(stdout);
    pid_t pid = fork();
    CHECK(pid >= 0, "fork");
    if (pid == 0) {
        take(to_child[0]); /* the parent wrote 2 */
        int seen = mem[0];
        mem[0] = 3;
        put(to_parent[1], (char)seen);
        _exit(0);
    }
    mem[0] = 2;
    put(to_child[1], 'x');
    char seen = take(to_parent[0]);
    CHECK(wait_for(pid) == 0, "child");
    printf("child_saw=%d\n", seen);
    printf("parent_has=%d\n", mem[0]);
    /* Attachers still reach the parent's memory after the fork. */
    CHECK(run(args) == 0, "attacher after fork");
    return 0;
}

/* --------------------------------------------------------------- cache */

/* attach-cache SEGID ADDR NBYTES */
static int attach_cache(char **argv) {
    xpmem_apid_t apid = get(argv[2], XPMEM_RDWR);
    uintptr_t addr = strtoull(argv[3], NULL, 0);
    size_t len = strtoull(argv[4], NULL, 0);
    int *a = attach(apid, addr, len);
    int *b = attach(apid, addr, len);
    printf("live_reattach_same=%d\n", a == b);
    CHECK(xpmem_detach(b) == 0, "detach");
    printf("still_mapped=%d\n", a[0] == 77);
    CHECK(xpmem_detach(a) == 0, "detach");
    int *c = attach(apid, addr, len);
    printf("reattach_after_detach_same=%d\n", c == a);
    int *d = attach(apid, addr + page, len - page);
    printf("other_range_differs=%d\n", d != c && d[0] == 78);
    return 0;
}

static int cache(void) {
    int *mem = mmap(NULL, 4 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(mem != MAP_FAILED, "mmap");
    mem[0] = 77;
    mem[page / sizeof(int)] = 78;
    xpmem_segid_t segid = make_whole(0666);
    char *args[] = {"xpmem_whole_test", "attach-cache", num(segid),
                    num((long long)(uintptr_t)mem), num(4 * page), NULL};
    CHECK(run(args) == 0, "attacher");
    return 0;
}

/* ------------------------------------------------------------- realloc */

/* attach-realloc SEGID ADDR NINTS TO_OWNER FROM_OWNER: the owner frees its
 * buffer and allocates a new one (told through a pipe, as UCX tells its peer
 * through shared memory); the attacher reads through its cached attachment
 * with no request to the owner in between. */
static int attach_realloc(char **argv) {
    xpmem_apid_t apid = get(argv[2], XPMEM_RDONLY);
    uintptr_t addr = strtoull(argv[3], NULL, 0);
    size_t n = strtoull(argv[4], NULL, 0);
    int to_owner = atoi(argv[5]), from_owner = atoi(argv[6]);
    const int *p = attach(apid, addr, n * sizeof(int));
    printf("first=%d\n", check(p, n, 100));
    int round;
    for (round = 1; round <= 20; round++) {
        put(to_owner, 'r'); /* owner: free, malloc, fill 100 + round */
        CHECK(take(from_owner) == 's', "owner's answer");
        const int *q = attach(apid, addr, n * sizeof(int)); /* the cache */
        if (!check(q, n, 100 + round)) {
            printf("stale_round=%d\n", round);
            break;
        }
    }
    printf("all_rounds_new=%d\n", round > 20);
    put(to_owner, 'q');
    return 0;
}

static int realloc_case(void) {
    size_t bytes = 4 << 20, n = bytes / sizeof(int);
    /* As UCX does: the share first (at MPI_Init), the buffers after. */
    xpmem_segid_t segid = make_whole(0666);
    int *buf = malloc(bytes);
    CHECK(buf != NULL, "malloc");
    fill(buf, n, 100);
    int up[2], down[2];
    CHECK(pipe(up) == 0 && pipe(down) == 0, "pipe");
    char *args[] = {"xpmem_whole_test", "attach-realloc", num(segid),
                    num((long long)(uintptr_t)buf), num((long long)n), num(up[1]),
                    num(down[0]), NULL};
    pid_t child = start(args);
    close(up[1]); /* the attacher's ends: an attacher that dies ends the loop */
    close(down[0]);
    int same = 1;
    char c;
    for (int round = 1; read(up[0], &c, 1) == 1 && c == 'r'; round++) {
        free(buf);
        int *next = malloc(bytes);
        CHECK(next != NULL, "malloc");
        same &= next == buf;
        buf = next;
        fill(buf, n, 100 + round);
        put(down[1], 's');
    }
    printf("same_address=%d\n", same);
    printf("attacher_status=%d\n", wait_for(child));
    return 0;
}

/* --------------------------------------------------------------- perms */

/* attach-perms SEG0600 SEG0644 ADDR, run as root, drops to nobody. */
static int attach_perms(char **argv) {
    CHECK(setgid(65534) == 0 && setuid(65534) == 0, "setuid nobody");
    errno = 0;
    xpmem_apid_t a = xpmem_get(strtoll(argv[2], NULL, 10), XPMEM_RDONLY, XPMEM_PERMIT_MODE, NULL);
    printf("private_get=%lld errno=%d\n", (long long)a, errno);
    errno = 0;
    a = xpmem_get(strtoll(argv[3], NULL, 10), XPMEM_RDWR, XPMEM_PERMIT_MODE, NULL);
    printf("readable_rdwr_get=%lld errno=%d\n", (long long)a, errno);
    a = get(argv[3], XPMEM_RDONLY);
    int *p = attach(a, strtoull(argv[4], NULL, 0), page);
    printf("readable_rdonly_value=%d\n", p[0]);
    return 0;
}

static int perms(void) {
    int *mem = mmap(NULL, page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(mem != MAP_FAILED, "mmap");
    mem[0] = 31337;
    xpmem_segid_t priv = make_whole(0600), readable = make_whole(0644);
    char *args[] = {"xpmem_whole_test", "attach-perms", num(priv), num(readable),
                    num((long long)(uintptr_t)mem), NULL};
    CHECK(run(args) == 0, "attacher");
    return 0;
}

int main(int argc, char **argv) {
    page = sysconf(_SC_PAGESIZE);
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc < 2)
        return 2;
    const char *m = argv[1];
    if (!strcmp(m, "attach-regions"))
        return attach_regions(argc, argv);
    if (!strcmp(m, "attach-remap") && argc == 8)
        return attach_remap(argv);
    if (!strcmp(m, "attach-mremap") && argc == 8)
        return attach_mremap(argv);
    if (!strcmp(m, "mremap"))
        return moved();
    if (!strcmp(m, "attach-read") && argc == 5)
        return attach_read(argv);
    if (!strcmp(m, "attach-cache") && argc == 5)
        return attach_cache(argv);
    if (!strcmp(m, "attach-realloc") && argc == 7)
        return attach_realloc(argv);
    if (!strcmp(m, "realloc"))
        return realloc_case();
    if (!strcmp(m, "attach-perms") && argc == 5)
        return attach_perms(argv);
    if (!strcmp(m, "regions"))
        return regions();
    if (!strcmp(m, "remap"))
        return remap();
    if (!strcmp(m, "concurrent"))
        return concurrent();
    if (!strcmp(m, "fork"))
        return forked();
    if (!strcmp(m, "cache"))
        return cache();
    if (!strcmp(m, "perms"))
        return perms();
    return 2;
}
