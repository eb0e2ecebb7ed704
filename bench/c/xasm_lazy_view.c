// XASM design experiment (docs/xasm.md, "Mapping count"): what a consumer-side lazy
// view would cost. A region-size anonymous view registered with userfaultfd
// (MISSING); a handler thread answers each fault with UFFDIO_COPY of `run` pages from
// a pool memfd (the page's published slot). Against today's zero-copy view: the pool
// mapped shared and every page touched. Not part of the build:
//
//   gcc -O2 -o /tmp/xasm_lazy_view bench/c/xasm_lazy_view.c -lpthread
//   /tmp/xasm_lazy_view MIB RUN HANDLER_CPU TOUCHER_CPU     # e.g. 256 16 0 0
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include <sched.h>

static long PG = 4096;
static size_t npages;
static int uffd;
static char *pool;      /* the pool, mapped read-only */
static char *view;
static size_t run;
static int handler_cpu;

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }

static void *handler(void *arg) {
    (void)arg;
    if (handler_cpu >= 0) { cpu_set_t s; CPU_ZERO(&s); CPU_SET(handler_cpu, &s); sched_setaffinity(0, sizeof s, &s); }
    for (;;) {
        struct uffd_msg m;
        struct pollfd p = { .fd = uffd, .events = POLLIN };
        if (poll(&p, 1, -1) < 0) continue;
        if (read(uffd, &m, sizeof m) != sizeof m) continue;
        if (m.event != UFFD_EVENT_PAGEFAULT) continue;
        size_t page = (m.arg.pagefault.address - (uintptr_t)view) / PG;
        size_t first = page - page % run;
        size_t n = run; if (first + n > npages) n = npages - first;
        struct uffdio_copy c = { .dst = (uintptr_t)view + first * PG, .src = (uintptr_t)pool + first * PG, .len = n * PG, .mode = 0 };
        if (ioctl(uffd, UFFDIO_COPY, &c) < 0) {
            /* EEXIST: part already there; fall back to the one page */
            struct uffdio_copy one = { .dst = (uintptr_t)view + page * PG, .src = (uintptr_t)pool + page * PG, .len = PG, .mode = 0 };
            ioctl(uffd, UFFDIO_COPY, &one);
        }
    }
    return NULL;
}

int main(int argc, char **argv) {
    size_t mib = argc > 1 ? atol(argv[1]) : 256;
    run = argc > 2 ? atol(argv[2]) : 1;
    handler_cpu = argc > 3 ? atoi(argv[3]) : -1;
    int toucher_cpu = argc > 4 ? atoi(argv[4]) : -1;
    if (toucher_cpu >= 0) { cpu_set_t s; CPU_ZERO(&s); CPU_SET(toucher_cpu, &s); sched_setaffinity(0, sizeof s, &s); }
    npages = mib * 1024 * 1024 / PG;
    int fd = memfd_create("pool", 0);
    ftruncate(fd, npages * PG);
    char *w = mmap(NULL, npages * PG, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    for (size_t i = 0; i < npages; i++) w[i * PG] = (char)i;
    pool = mmap(NULL, npages * PG, PROT_READ, MAP_SHARED, fd, 0);
    for (size_t i = 0; i < npages; i++) (void)*(volatile char *)(pool + i * PG);
    /* baseline: map the pool shared and touch every page (today's zero-copy view) */
    double t0 = now();
    char *direct = mmap(NULL, npages * PG, PROT_READ, MAP_SHARED, fd, 0);
    long sum = 0;
    for (size_t i = 0; i < npages; i++) sum += direct[i * PG];
    double t_direct = now() - t0;
    /* lazy view */
    uffd = syscall(SYS_userfaultfd, O_CLOEXEC | UFFD_USER_MODE_ONLY);
    struct uffdio_api api = { .api = UFFD_API, .features = 0 };
    if (uffd < 0 || ioctl(uffd, UFFDIO_API, &api) < 0) { perror("uffd"); return 1; }
    view = mmap(NULL, npages * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    struct uffdio_register r = { .range = { .start = (uintptr_t)view, .len = npages * PG }, .mode = UFFDIO_REGISTER_MODE_MISSING };
    if (ioctl(uffd, UFFDIO_REGISTER, &r) < 0) { perror("register"); return 1; }
    pthread_t th; pthread_create(&th, NULL, handler, NULL);
    t0 = now();
    long sum2 = 0;
    for (size_t i = 0; i < npages; i++) sum2 += view[i * PG];
    double t_lazy = now() - t0;
    printf("%zu MiB run=%zu handler_cpu=%d: direct map+touch %.1f ms (%.0f ns/page), lazy uffd copy %.1f ms (%.0f ns/page) ratio %.2fx sums %s\n",
           mib, run, handler_cpu, t_direct * 1e3, t_direct * 1e9 / npages, t_lazy * 1e3, t_lazy * 1e9 / npages, t_lazy / t_direct, sum == sum2 ? "equal" : "DIFFER");
    return 0;
}
