/*
 * xasm.h - XASM, consistent copy-on-write snapshots of a producer's memory,
 * published as XEMEM segments (libxemem; docs/xasm.md).
 *
 * Link with -lxemem (pkg-config --cflags --libs xemem). XEMEM and XASM share
 * one library and one process state.
 *
 * A producer registers a region of its memory and calls xasm_snapshot()
 * whenever the contents are consistent (a time step): version N is published
 * as the read-only XEMEM segment "<name>@<N>" and announced on the region's
 * channel. Consumers in any enclave wait for versions and attach them; an
 * attached version never changes, and the producer keeps computing. Only the
 * pages written since the previous snapshot are copied.
 *
 * Threads: other threads may write the region between snapshots, never
 * during xasm_snapshot()/aspace_copy() (treat them as a barrier). A second
 * xasm_snapshot() (or aspace_copy) of a region while one is in progress in
 * another thread fails with EBUSY.
 *
 * Two plain APIs (producer, consumer) and the Kitten-style calls of the XASM
 * paper (arena_map_backed_region*, aspace_copy, then xemem_make of the copy;
 * consumers use xemem_lookup_segid/xemem_get(XEMEM_RDONLY)/xemem_attach).
 *
 * Errors: calls return -1 (NULL for pointers) and set errno; the message is
 * in xasm_last_error():
 *   EINVAL     bad argument or handle, misaligned or zero length, bad name
 *   ENOENT     no such region or version (not published yet, or reclaimed)
 *   EEXIST     the region name (or a segment name) is taken
 *   EBUSY      a snapshot of this region is already in progress
 *   ETIMEDOUT  xasm_wait_newer timed out
 *   EPIPE      the producer closed the region or exited
 *   ENOTSUP    the requested mechanism does not work on this kernel
 *   ENOSPC     the mprotect mechanism tracks at most 64 regions per process
 *   ECONNREFUSED  no name server (leviathan) is running
 *   else the failing system call's errno.
 *
 * Environment: HOBBES_XASM_MECHANISM=scan|mprotect forces the dirty-page
 * tracking mechanism of regions created without an explicit XASM_MECH_* flag.
 */

#ifndef XASM_H
#define XASM_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct xasm_region   xasm_region_t;
typedef struct xasm_consumer xasm_consumer_t;
typedef struct xasm_snapshot xasm_snapshot_t;

/* flags of xasm_region_create/register: a mechanism (default: the
 * environment's HOBBES_XASM_MECHANISM, else the best this kernel has) and
 * the permission bits of the region's segments (default 0600). */
#define XASM_MECH_SCAN     0x1  /* userfaultfd WP_ASYNC + PAGEMAP_SCAN (Linux 6.7+) */
#define XASM_MECH_MPROTECT 0x2  /* mprotect + SIGSEGV handler (any kernel) */
#define XASM_MODE(bits)    ((int)(((bits) & 0777) << 8))

/* ------------------------------------------------------------- producer */

/* A new region of len bytes (a multiple of the page size) of zeroed memory,
 * keeping the newest `keep` versions (0: 2). Its channel is published at
 * once under `name` (1-100 characters, no spaces, no '@'). */
int xasm_region_create(const char *name, size_t len, unsigned keep, int flags,
                       xasm_region_t **region);

/* Track [addr, addr+len) of this process's private anonymous memory in
 * place (page-aligned; no copy, no remap). The memory stays the caller's
 * (not unmapped by xasm_region_destroy). With the mprotect mechanism, system
 * calls that write into the region (read(2) into it) fail with EFAULT. */
int xasm_region_register(const char *name, void *addr, size_t len, unsigned keep,
                         int flags, xasm_region_t **region);

/* The region's memory (NULL on a bad handle), and its length (0). */
void  *xasm_region_addr(xasm_region_t *region);
size_t xasm_region_len(xasm_region_t *region);

/* Publish the current contents as the next version (1, 2, ...): *version
 * gets its number. Reclaims versions beyond `keep` that no consumer holds. */
int xasm_snapshot(xasm_region_t *region, uint64_t *version);

/* Retry reclaiming old versions that were held at their snapshot; returns
 * how many were reclaimed, or -1. */
int xasm_reclaim(xasm_region_t *region);

/* Close the channel (waiters get EPIPE), remove every version and the
 * channel; consumers' attachments stay valid. Unmaps created memory. */
int xasm_region_destroy(xasm_region_t *region);

/* ------------------------------------------------------------- consumer */

/* Open region `name`'s channel (ENOENT when it does not exist yet). */
int xasm_consumer_open(const char *name, xasm_consumer_t **consumer);

/* The latest published version (0 = none yet), without IPC. */
int xasm_latest(xasm_consumer_t *consumer, uint64_t *version);

/* Wait for a version newer than `than` (timeout_ms < 0: forever); *version
 * gets it. -1 with ETIMEDOUT on timeout, EPIPE when the producer is gone. */
int xasm_wait_newer(xasm_consumer_t *consumer, uint64_t than, int timeout_ms,
                    uint64_t *version);

/* Attach version `version` (0: the latest) read-only: *addr and *len get
 * the mapping, *snapshot the handle to release. Holding it keeps the
 * producer from reclaiming the version. */
int xasm_attach(xasm_consumer_t *consumer, uint64_t version, const void **addr,
                size_t *len, xasm_snapshot_t **snapshot);

/* The attached version's number (0 on a bad handle). */
uint64_t xasm_snapshot_version(xasm_snapshot_t *snapshot);

/* Detach and release a version. */
int xasm_snapshot_release(xasm_snapshot_t *snapshot);

int xasm_consumer_close(xasm_consumer_t *consumer);

/* The message of this thread's last failed xasm/Kitten-style call ("" if none). */
const char *xasm_last_error(void);

/* ------------------------------------------------- Kitten-style (paper) */

typedef uintptr_t vaddr_t;
typedef uintptr_t paddr_t;
typedef uint64_t  vmflags_t;
typedef uint64_t  bkflags_t;
typedef uint64_t  vmpagesize_t;

#define VM_READ     (1 << 0)
#define VM_WRITE    (1 << 1)
#define VM_EXEC     (1 << 2)
#define VM_USER     (1 << 6)
#define BK_ARENA    (1 << 0)
#define VM_PAGE_4KB ((vmpagesize_t)1 << 12)

/* This process's address space id (its pid), for the calls below. */
int aspace_get_myid(id_t *id);

/* A copy-on-write backed region of `extent` bytes at exactly `start`
 * (EEXIST when something is mapped there), belonging to address space `id`
 * and named `name` (its XASM region name). pagesz must be VM_PAGE_4KB (or 0);
 * backing_extent, flags, type and pmem are accepted and not used: the backing
 * pool grows as needed (docs/xasm.md). 0 or -1. */
int arena_map_backed_region(id_t id, vaddr_t start, size_t extent,
                            size_t backing_extent, vmflags_t flags, bkflags_t type,
                            vmpagesize_t pagesz, const char *name, paddr_t pmem);

/* As above, where the system picks: *start gets the address. */
int arena_map_backed_region_anywhere(id_t id, vaddr_t *start, size_t extent,
                                     size_t backing_extent, vmflags_t flags,
                                     bkflags_t type, vmpagesize_t pagesz,
                                     const char *name, paddr_t pmem);

/* Snapshot every backed region of address space `src` (flags must be 0);
 * *dest gets the version published. Then xemem_make(region.start, size,
 * sharename) publishes that copy (its first `size` bytes) under `sharename`
 * as a read-only segment, which pins the version until xemem_remove. */
int aspace_copy(id_t src, id_t *dest, int flags);

#ifdef __cplusplus
}
#endif

#endif /* XASM_H */
