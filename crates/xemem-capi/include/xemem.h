/*
 * xemem.h - XEMEM, cross-enclave shared memory: the Hobbes seeds' C API
 * (libxemem), on the leviathan name server.
 *
 * Link with -lxemem (pkg-config --cflags --libs xemem).
 *
 * A process exports any page-aligned range of its memory (xemem_make), a
 * process in any enclave finds it by name (xemem_lookup_segid), asks for
 * access (xemem_get) and maps it (xemem_attach) without copies. Memory that
 * is not shared already is converted in place by xemem_make: same pointer,
 * same contents (docs/xemem.md, "In-place conversion"). No other thread may
 * write the range while xemem_make runs.
 *
 * Segments made here are accessible to the owner's uid and root only (mode
 * 0600); use libxpmem's xpmem_make for other permission modes.
 *
 * Errors: calls return -1, XEMEM_INVALID_SEGID, NULL, or (void *)-1 for
 * xemem_attach; they set errno and keep a message for xemem_last_error():
 *   EINVAL        bad argument (alignment, size, offset, flags, NULL)
 *   ENOENT        unknown segid, apid or name
 *   EACCES        the segment's mode does not grant this access
 *   EFAULT        part of the range to export is not mapped
 *   EEXIST        the name or requested segid is taken
 *   ECONNREFUSED  no name server (leviathan) is running
 *   ENOMEM, ...   a system call failed (its errno)
 *
 * The daemon is found through HOBBES_SOCKET / HOBBES_NIS / HOBBES_STATE_DIR,
 * as for libhobbes. All calls are thread-safe. Apids are process-local and
 * belong to this library (not to libxpmem, if a program links both).
 */

#ifndef XEMEM_H
#define XEMEM_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

#define XEMEM_SEG_NAME_LEN 64

typedef int64_t xemem_segid_t;
typedef int64_t xemem_apid_t;

#define XEMEM_INVALID_SEGID ((xemem_segid_t)-1)

/* flags for xemem_get */
#define XEMEM_RDONLY 0x1
#define XEMEM_RDWR   0x2

/* permit_type of XPMEM's calls (kept for source compatibility) */
#define XEMEM_PERMIT_MODE 0x1

struct xemem_segment {
    xemem_segid_t segid;
    char          name[XEMEM_SEG_NAME_LEN]; /* "" when unnamed; cut at 63 bytes */
    uint64_t      enclave_id;  /* the owner's enclave (hobbes_id_t) */
    uint64_t      app_id;      /* the owner's app, or (uint64_t)-1 */
};

struct xemem_addr {
    xemem_apid_t apid;   /* apid that represents memory */
    off_t        offset; /* offset into apid's memory */
};

/* Export [vaddr, vaddr+size) (page-aligned) under name (NULL: unnamed). */
xemem_segid_t xemem_make(void *vaddr, size_t size, char *name);

/* As xemem_make, with a signal channel: *fd receives an eventfd to poll()
 * for signals and to pass to xemem_ack. It stays open until xemem_remove. */
xemem_segid_t xemem_make_signalled(void *vaddr, size_t size, char *name, int *fd);

/* As xemem_make, under the segid `request`. 0, or -1 (EEXIST when taken). */
int xemem_make_segid(void *vaddr, size_t size, char *name, xemem_segid_t request);

/* Stop exporting. Existing attachments stay valid until detached. */
int xemem_remove(xemem_segid_t segid);

/* Access to a segment (XEMEM_RDONLY or XEMEM_RDWR): an apid, or -1. */
xemem_apid_t xemem_get(xemem_segid_t segid, int flags);

/* Give up a permit; its attachments stay valid until detached. */
int xemem_release(xemem_apid_t apid);

/* Signal the segment of a permit, or a segment by segid. */
int xemem_signal(xemem_apid_t apid);
int xemem_signal_segid(xemem_segid_t segid);

/* Consume one signal from a segment's eventfd (blocks until there is one). */
int xemem_ack(int fd);

/* Map size bytes from addr.offset at vaddr (MAP_FIXED; NULL: anywhere).
 * An offset inside a page maps from the page start and returns a pointer
 * offset bytes in, as XPMEM does. Read-only permits map read-only.
 * Returns (void *)-1 on failure. */
void *xemem_attach(struct xemem_addr addr, size_t size, void *vaddr);
/* Same as xemem_attach (Linux shared mappings are always cached). */
void *xemem_attach_nocache(struct xemem_addr addr, size_t size, void *vaddr);

/* Unmap the attachment containing vaddr. */
int xemem_detach(void *vaddr);

/* The segid exported under name, or XEMEM_INVALID_SEGID (ENOENT). */
xemem_segid_t xemem_lookup_segid(char *name);

/* Every segment on the node (malloc'd; free() it); *num_segments gets the
 * count. NULL with *num_segments == 0 when there are none. */
struct xemem_segment *xemem_get_segment_list(int *num_segments);

/* How many segments the node has, or -1. (Extension.) */
int xemem_num_segments(void);

/* Message of this thread's last failed call ("" if none). (Extension.) */
const char *xemem_last_error(void);

#ifdef __cplusplus
}
#endif

#endif /* XEMEM_H */
