/*
 * XASM from C (xasm.h, libxemem). Prints key=value lines.
 *
 *   xasm_test plain NAME          the producer/consumer API in one process
 *   xasm_test kitten NAME SHARE   the paper's Figure 3 (producer); runs
 *                                 itself as "figure4" for the consumer
 *   xasm_test figure4 SHARE SIZE  the paper's Figure 4 (consumer)
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <xasm.h>
#include <xemem.h>

#define CHECK(cond, what)                                                     \
    do {                                                                      \
        if (!(cond)) {                                                        \
            fprintf(stderr, "FAIL %s: errno %d: %s | %s\n", what, errno,      \
                    xasm_last_error(), xemem_last_error());                   \
            exit(1);                                                          \
        }                                                                     \
    } while (0)

static size_t pagesz(void) { return (size_t)sysconf(_SC_PAGESIZE); }
/* Print "key=rc errno=E", reading errno only after the call returned. */
static void report(const char *key, long long rc) {
    int e = errno;
    printf("%s=%lld errno=%d\n", key, rc, e);
}

#define PAGE_ROUND_UP(x) (((x) + pagesz() - 1) / pagesz() * pagesz())

/* ------------------------------------------------------------- plain API */

struct snapper {
    xasm_region_t *r;
    int ok, busy, other;
};

static void *snap_loop(void *arg) {
    struct snapper *s = arg;
    for (int i = 0; i < 50; i++) {
        uint64_t v;
        if (xasm_snapshot(s->r, &v) == 0)
            s->ok++;
        else if (errno == EBUSY)
            s->busy++;
        else
            s->other++;
    }
    return NULL;
}

struct waiter {
    xasm_consumer_t *c;
    uint64_t than;
    int rc, err;
};

static void *wait_gone(void *arg) {
    struct waiter *w = arg;
    uint64_t v = 0;
    w->rc = xasm_wait_newer(w->c, w->than, -1, &v);
    w->err = errno;
    return NULL;
}

static int plain(const char *name) {
    size_t page = pagesz(), n = 16;
    xasm_region_t *r = NULL;
    report("null_name", xasm_region_create(NULL, page, 0, 0, &r));
    report("bad_len", xasm_region_create(name, 100, 0, 0, &r));
    CHECK(xasm_region_create(name, n * page, 2, XASM_MODE(0644), &r) == 0, "create");
    unsigned char *mem = xasm_region_addr(r);
    CHECK(mem != NULL && xasm_region_len(r) == n * page, "addr/len");
    for (size_t i = 0; i < n; i++)
        memset(mem + i * page, (int)i + 1, page);
    uint64_t v = 0;
    CHECK(xasm_snapshot(r, &v) == 0, "snapshot 1");
    printf("first_version=%llu\n", (unsigned long long)v);

    xasm_consumer_t *c = NULL;
    CHECK(xasm_consumer_open(name, &c) == 0, "consumer_open");
    uint64_t latest = 0;
    CHECK(xasm_latest(c, &latest) == 0, "latest");
    printf("latest=%llu\n", (unsigned long long)latest);
    const void *p1;
    size_t len1;
    xasm_snapshot_t *s1;
    CHECK(xasm_attach(c, 1, &p1, &len1, &s1) == 0, "attach 1");
    int good = len1 == n * page;
    for (size_t i = 0; i < n; i++)
        good &= ((const unsigned char *)p1)[i * page + 7] == i + 1;
    memset(mem + 3 * page, 99, page);
    CHECK(xasm_snapshot(r, &v) == 0, "snapshot 2");
    good &= ((const unsigned char *)p1)[3 * page] == 4; /* v1 unchanged */
    const void *p2;
    size_t len2;
    xasm_snapshot_t *s2;
    CHECK(xasm_attach(c, 0, &p2, &len2, &s2) == 0, "attach latest");
    good &= xasm_snapshot_version(s2) == 2 && ((const unsigned char *)p2)[3 * page] == 99;
    printf("contents=%d\n", good);
    report("timeout", xasm_wait_newer(c, 2, 10, &v));
    CHECK(xasm_snapshot_release(s1) == 0 && xasm_snapshot_release(s2) == 0, "release");
    report("double_release", xasm_snapshot_release(s1));

    /* Two threads snapshot the same region: each call succeeds or is EBUSY. */
    struct snapper a = {r, 0, 0, 0}, b = {r, 0, 0, 0};
    pthread_t ta, tb;
    pthread_create(&ta, NULL, snap_loop, &a);
    pthread_create(&tb, NULL, snap_loop, &b);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    CHECK(xasm_latest(c, &latest) == 0, "latest after");
    printf("concurrent ok=%d busy=%d other=%d latest_ok=%d\n", a.ok + b.ok, a.busy + b.busy,
           a.other + b.other, latest == (uint64_t)(2 + a.ok + b.ok));
    printf("reclaim=%d\n", xasm_reclaim(r));
    report("bad_handle", xasm_snapshot((xasm_region_t *)(uintptr_t)12345, &v));
    printf("message=%d\n", strlen(xasm_last_error()) > 0);

    /* Destroy while a consumer waits: it gets EPIPE. */
    struct waiter w = {c, latest, 0, 0};
    pthread_t tw;
    pthread_create(&tw, NULL, wait_gone, &w);
    CHECK(xasm_region_destroy(r) == 0, "destroy");
    pthread_join(tw, NULL);
    printf("gone=%d errno=%d\n", w.rc, w.err);
    report("attach_gone", xasm_attach(c, 1, &p1, &len1, &s1));
    CHECK(xasm_consumer_close(c) == 0, "consumer_close");

    /* Registered in place: posix_memalign'ed memory, mprotect mechanism. */
    unsigned char *buf = NULL;
    CHECK(posix_memalign((void **)&buf, page, 8 * page) == 0, "posix_memalign");
    memset(buf, 5, 8 * page);
    char name2[128];
    snprintf(name2, sizeof name2, "%s-reg", name);
    xasm_region_t *r2;
    CHECK(xasm_region_register(name2, buf, 8 * page, 1, XASM_MECH_MPROTECT, &r2) == 0,
          "register");
    buf[page] = 6;
    CHECK(xasm_snapshot(r2, &v) == 0, "snapshot registered");
    CHECK(xasm_consumer_open(name2, &c) == 0, "open registered");
    CHECK(xasm_attach(c, v, &p1, &len1, &s1) == 0, "attach registered");
    good = ((const unsigned char *)p1)[page] == 6 && ((const unsigned char *)p1)[0] == 5;
    buf[0] = 7; /* tracked: the version keeps 5 */
    good &= ((const unsigned char *)p1)[0] == 5;
    CHECK(xasm_snapshot_release(s1) == 0 && xasm_consumer_close(c) == 0, "release registered");
    CHECK(xasm_region_destroy(r2) == 0, "destroy registered");
    buf[2 * page] = 8; /* the caller's memory again */
    printf("registered=%d\n", good && buf[0] == 7 && buf[2 * page] == 8);
    free(buf);
    return 0;
}

/* ------------------------------------------------ Kitten style (the paper) */

static int figure4(const char *share, size_t size) {
    xemem_segid_t segid = xemem_lookup_segid((char *)share);
    CHECK(segid != XEMEM_INVALID_SEGID, "xemem_lookup_segid");
    /* A snapshot is read-only: a read-write permit is refused. */
    xemem_apid_t rw = xemem_get(segid, XEMEM_RDWR);
    report("rw_get", rw);
    xemem_apid_t apid = xemem_get(segid, XEMEM_RDONLY);
    CHECK(apid > 0, "xemem_get");
    struct xemem_addr addr;
    addr.apid = apid;
    addr.offset = 0;
    unsigned char *data = xemem_attach(addr, PAGE_ROUND_UP(size), NULL);
    CHECK(data != (void *)-1, "xemem_attach");
    int good = 1;
    for (size_t i = 0; i < PAGE_ROUND_UP(size) / pagesz(); i++)
        for (size_t j = 0; j < pagesz(); j += 512)
            good &= data[i * pagesz() + j] == 'A' + i;
    printf("figure4_ok=%d\n", good);
    CHECK(xemem_detach(data) == 0 && xemem_release(apid) == 0, "detach/release");
    return 0;
}

static int kitten(const char *self, const char *name, const char *share) {
    size_t page = pagesz(), npages = 16, nbacking = 32;
    size_t filesize = 10 * page + 100;
    id_t my_aspace, dst = 0;
    CHECK(aspace_get_myid(&my_aspace) == 0, "aspace_get_myid");

    vaddr_t region = 0;
    report("huge_pages", arena_map_backed_region_anywhere(my_aspace, &region, npages * page, nbacking * page,
                                            VM_USER, BK_ARENA, (vmpagesize_t)2 << 20, name, 0));
    /* Figure 3. */
    int status = arena_map_backed_region_anywhere(my_aspace, &region, npages * pagesz(),
                                                  nbacking * pagesz(), VM_USER, BK_ARENA,
                                                  VM_PAGE_4KB, name, 0);
    CHECK(status == 0 && region != 0, "arena_map_backed_region_anywhere");
    unsigned char *mem = (unsigned char *)region;
    /* do simulation */
    for (size_t i = 0; i < npages; i++)
        memset(mem + i * page, 'A' + (int)i, page);
    xemem_segid_t early = xemem_make((void *)region, PAGE_ROUND_UP(filesize), (char *)share);
    report("make_before_copy", early);
    status = aspace_copy(my_aspace, &dst, 0);
    CHECK(status == 0, "aspace_copy");
    printf("copy=%u\n", (unsigned)dst);
    xemem_segid_t segid = xemem_make((void *)region, PAGE_ROUND_UP(filesize), (char *)share);
    CHECK(segid != XEMEM_INVALID_SEGID, "xemem_make of the copy");
    /* The simulation goes on: the published copy does not change. */
    memset(mem, 'z', npages * page);
    xemem_segid_t inside = xemem_make((void *)(region + page), page, (char *)"inside");
    report("make_inside", inside);
    report("copy_unknown", aspace_copy(my_aspace + 1000000, &dst, 0));

    /* The fixed-address variant: a free range, taken once. */
    void *probe = mmap(NULL, 4 * page, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(probe != MAP_FAILED, "mmap");
    munmap(probe, 4 * page);
    char fixed_name[128];
    snprintf(fixed_name, sizeof fixed_name, "%s-fixed", name);
    status = arena_map_backed_region(my_aspace, (vaddr_t)probe, 4 * page, 4 * page, VM_USER,
                                     BK_ARENA, VM_PAGE_4KB, fixed_name, 0);
    printf("fixed=%d\n", status);
    snprintf(fixed_name, sizeof fixed_name, "%s-fixed2", name);
    report("fixed_again", arena_map_backed_region(my_aspace, (vaddr_t)probe, 4 * page, 4 * page, VM_USER,
                                   BK_ARENA, VM_PAGE_4KB, fixed_name, 0));
    fflush(stdout);

    /* Figure 4, in another process. */
    char size_arg[32];
    snprintf(size_arg, sizeof size_arg, "%zu", filesize);
    pid_t child = fork();
    CHECK(child >= 0, "fork");
    if (child == 0) {
        execl(self, self, "figure4", share, size_arg, (char *)NULL);
        _exit(127);
    }
    int st = 0;
    CHECK(waitpid(child, &st, 0) == child, "waitpid");
    printf("consumer_exit=%d\n", WIFEXITED(st) ? WEXITSTATUS(st) : -1);

    /* The published copy pins version 1 beyond keep (2) until removed. */
    for (int i = 0; i < 4; i++)
        CHECK(aspace_copy(my_aspace, &dst, 0) == 0, "aspace_copy more");
    char v1[160];
    snprintf(v1, sizeof v1, "%s@1", name);
    printf("pinned=%d\n", xemem_lookup_segid(v1) != XEMEM_INVALID_SEGID);
    CHECK(xemem_remove(segid) == 0, "xemem_remove");
    CHECK(aspace_copy(my_aspace, &dst, 0) == 0, "aspace_copy after remove");
    printf("last_copy=%u released=%d\n", (unsigned)dst,
           xemem_lookup_segid(v1) == XEMEM_INVALID_SEGID);
    return 0;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc == 3 && strcmp(argv[1], "plain") == 0)
        return plain(argv[2]);
    if (argc == 4 && strcmp(argv[1], "kitten") == 0)
        return kitten(argv[0], argv[2], argv[3]);
    if (argc == 4 && strcmp(argv[1], "figure4") == 0)
        return figure4(argv[2], (size_t)strtoull(argv[3], NULL, 10));
    fprintf(stderr, "usage: %s plain NAME | kitten NAME SHARE | figure4 SHARE SIZE\n", argv[0]);
    return 2;
}
