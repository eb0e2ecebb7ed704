/*
 * xpmem.h - XPMEM's user API, provided by libxpmem on XEMEM (Hobbes): the
 * same types, constants and functions as XPMEM's own header
 * (hpc/xpmem include/xpmem.h), without the kernel module or /dev/xpmem.
 * Processes share memory across enclaves through the leviathan name
 * server; programs written for XPMEM build and run unmodified.
 *
 * Link with -lxpmem (pkg-config --cflags --libs xpmem).
 *
 * Differences (docs/xemem.md):
 *   - xpmem_make(NULL, XPMEM_MAXADDR_SIZE, ...) shares the whole address
 *     space: xpmem_attach's offset is then an address of the owner, and the
 *     owner's library converts the range in place when it is first
 *     attached ("Whole-address-space shares": what differs, corner by
 *     corner; an attach of unmapped owner memory fails with EFAULT at once,
 *     and repeated attaches of one range return the same mapping).
 *   - xpmem_make of a range converts private memory in place into shared
 *     memory (same address, same contents); no other thread may write it
 *     meanwhile.
 *   - xpmem_release leaves the permit's attachments mapped until detached.
 *   - The kernel ioctl structures are not provided.
 * Failures return -1 ((void *)-1 for xpmem_attach) and set errno;
 * xpmem_last_error() (an extension) returns the message.
 */

#ifndef _XPMEM_H
#define _XPMEM_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * basic argument type definitions
 */
typedef int64_t xpmem_segid_t; /* segid returned from xpmem_make() */
typedef int64_t xpmem_apid_t;  /* apid returned from xpmem_get() */

struct xpmem_addr {
    xpmem_apid_t apid; /* apid that represents memory */
    off_t offset;      /* offset into apid's memory */
};

#define XPMEM_MAXADDR_SIZE (size_t)(-1L)

/*
 * flags for segment permissions
 */
#define XPMEM_RDONLY 0x1
#define XPMEM_RDWR   0x2

/*
 * Valid permit_type values for xpmem_make().
 */
#define XPMEM_PERMIT_MODE 0x1

extern int xpmem_version(void);
extern xpmem_segid_t xpmem_make(void *, size_t, int, void *);
extern int xpmem_remove(xpmem_segid_t);
extern xpmem_apid_t xpmem_get(xpmem_segid_t, int, int, void *);
extern int xpmem_release(xpmem_apid_t);
extern void *xpmem_attach(struct xpmem_addr, size_t, void *);
extern int xpmem_detach(void *);

/* Extension: the message of this thread's last failed call ("" if none). */
extern const char *xpmem_last_error(void);

#ifdef __cplusplus
}
#endif

#endif /* _XPMEM_H */
