/* File I/O through system-call forwarding: `files IN OUT` reads IN (a path
 * relative to the working directory, so it resolves in the enclave's view),
 * writes OUT with every ASCII lower-case letter made upper-case, and checks
 * on the way what a program commonly asks of files: fstat's size against
 * lseek(SEEK_END), pread at an offset, the output read back, and both names
 * found by opendir/readdir (getdents64) of the working directory.
 *
 * Output (stdout, deterministic for a given input):
 *   in_bytes=N
 *   out_bytes=N
 *   fnv1a64=<16 hex digits: FNV-1a 64 of OUT's bytes>
 *   ok
 * exit 0; "FAIL: <step>: <errno text>" and exit 1 at the first check that
 * fails. A test writes IN, runs this, and compares OUT and the digest with
 * its own (`tr a-z A-Z < IN | <fnv1a64>`).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int fail(const char *step)
{
    printf("FAIL: %s: %s\n", step, errno ? strerror(errno) : "wrong result");
    return 1;
}

static int read_all(int fd, char *buf, size_t len)
{
    size_t got = 0;
    while (got < len) {
        ssize_t n = read(fd, buf + got, len - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        got += (size_t)n;
    }
    return 0;
}

/* Found as a whole entry name in the working directory (names with a '/'
 * are not in it: skip the check for them). */
static int in_cwd(const char *name)
{
    if (strchr(name, '/'))
        return 1;
    DIR *d = opendir(".");
    if (!d)
        return 0;
    struct dirent *e;
    int found = 0;
    while ((e = readdir(d)))
        found |= strcmp(e->d_name, name) == 0;
    closedir(d);
    return found;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: files IN OUT\n");
        return 2;
    }
    errno = 0;
    int fd = open(argv[1], O_RDONLY);
    if (fd < 0)
        return fail("open IN");
    struct stat st;
    if (fstat(fd, &st) < 0)
        return fail("fstat IN");
    size_t len = (size_t)st.st_size;
    if (lseek(fd, 0, SEEK_END) != (off_t)len)
        return fail("lseek SEEK_END != st_size");
    if (lseek(fd, 0, SEEK_SET) != 0)
        return fail("lseek SEEK_SET");
    char *buf = malloc(len + 1);
    if (!buf)
        return fail("malloc");
    if (read_all(fd, buf, len) < 0)
        return fail("read IN");
    char probe;
    if (len > 0 && (pread(fd, &probe, 1, (off_t)(len / 2)) != 1 || probe != buf[len / 2]))
        return fail("pread IN");
    close(fd);

    for (size_t i = 0; i < len; i++)
        if (buf[i] >= 'a' && buf[i] <= 'z')
            buf[i] -= 'a' - 'A';

    int out = open(argv[2], O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (out < 0)
        return fail("open OUT");
    /* Several writes (4 KiB each), as buffered I/O would make. */
    for (size_t off = 0; off < len;) {
        size_t n = len - off < 4096 ? len - off : 4096;
        ssize_t w = write(out, buf + off, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return fail("write OUT");
        off += (size_t)w;
    }
    if (close(out) < 0)
        return fail("close OUT");

    int back = open(argv[2], O_RDONLY);
    if (back < 0)
        return fail("reopen OUT");
    if (fstat(back, &st) < 0 || (size_t)st.st_size != len)
        return fail("fstat OUT size");
    char *check = malloc(len + 1);
    if (!check || read_all(back, check, len) < 0 || memcmp(check, buf, len) != 0)
        return fail("read back OUT");
    close(back);

    if (!in_cwd(argv[1]) || !in_cwd(argv[2]))
        return fail("readdir of the working directory");

    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)buf[i];
        h *= 0x100000001b3ull;
    }
    printf("in_bytes=%zu\nout_bytes=%zu\nfnv1a64=%016llx\nok\n", len, (size_t)st.st_size,
           (unsigned long long)h);
    return 0;
}
