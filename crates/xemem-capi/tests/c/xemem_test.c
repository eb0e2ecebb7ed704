/*
 * The seeds' XEMEM API from C: an owner exports 4 pages of private memory
 * under a name with a signal channel; a second process (this program,
 * exec'd) looks the name up, attaches, increments every byte and signals;
 * the owner waits, acks and verifies. Prints key=value lines.
 *
 *   xemem_test owner NAME
 *   xemem_test attacher NAME   (child)
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <xemem.h>

#define CHECK(cond, what)                                                     \
    do {                                                                      \
        if (!(cond)) {                                                        \
            fprintf(stderr, "FAIL %s: errno %d: %s\n", what, errno,           \
                    xemem_last_error());                                      \
            exit(1);                                                          \
        }                                                                     \
    } while (0)

static size_t size(void) { return 4 * (size_t)sysconf(_SC_PAGESIZE); }

static int attacher(char *name) {
    xemem_segid_t segid = xemem_lookup_segid(name);
    CHECK(segid != XEMEM_INVALID_SEGID, "xemem_lookup_segid");
    xemem_apid_t apid = xemem_get(segid, XEMEM_RDWR);
    CHECK(apid > 0, "xemem_get");
    struct xemem_addr addr = {.apid = apid, .offset = 0};
    unsigned char *mem = xemem_attach(addr, size(), NULL);
    CHECK(mem != (void *)-1, "xemem_attach");
    for (size_t i = 0; i < size(); i++)
        mem[i]++;
    CHECK(xemem_signal(apid) == 0, "xemem_signal");
    CHECK(xemem_detach(mem) == 0, "xemem_detach");
    CHECK(xemem_release(apid) == 0, "xemem_release");
    return 0;
}

static int owner(char *name) {
    unsigned char *mem = mmap(NULL, size(), PROT_READ | PROT_WRITE,
                              MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(mem != MAP_FAILED, "mmap");
    memset(mem, 41, size());
    int fd = -1;
    xemem_segid_t segid = xemem_make_signalled(mem, size(), name, &fd);
    CHECK(segid > 0 && fd >= 0, "xemem_make_signalled");
    printf("lookup_matches=%d\n", xemem_lookup_segid(name) == segid);

    int n = -1;
    struct xemem_segment *list = xemem_get_segment_list(&n);
    int listed = 0;
    for (int i = 0; list && i < n; i++)
        listed |= list[i].segid == segid && strcmp(list[i].name, name) == 0;
    free(list);
    printf("listed=%d num_segments=%d\n", listed, xemem_num_segments());

    pid_t pid = fork();
    CHECK(pid >= 0, "fork");
    if (pid == 0) {
        char *argv[] = {"xemem_test", "attacher", name, NULL};
        execv("/proc/self/exe", argv);
        _exit(127);
    }
    struct pollfd p = {.fd = fd, .events = POLLIN};
    CHECK(poll(&p, 1, 30000) == 1, "poll for the signal");
    CHECK(xemem_ack(fd) == 0, "xemem_ack");
    int status;
    CHECK(waitpid(pid, &status, 0) == pid, "waitpid");
    printf("attacher_exit=%d\n", WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    int ok = 1;
    for (size_t i = 0; i < size(); i++)
        ok &= mem[i] == 42;
    printf("verified=%d\n", ok);

    CHECK(xemem_remove(segid) == 0, "xemem_remove");
    errno = 0;
    xemem_segid_t gone = xemem_lookup_segid(name);
    printf("lookup_removed=%lld errno=%d\n", (long long)gone, errno);
    errno = 0;
    xemem_apid_t bad = xemem_get(segid, 7);
    printf("bad_flags=%lld errno=%d\n", (long long)bad, errno);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "owner") == 0)
        return owner(argv[2]);
    if (argc == 3 && strcmp(argv[1], "attacher") == 0)
        return attacher(argv[2]);
    return 2;
}
