//! XEMEM, the process side: export any page-aligned part of this process's
//! memory under a name, and map segments other processes (in any enclave)
//! exported, without copies, through the XPMEM operations: make, remove,
//! get, release, attach, detach, plus lookup by name, list, and per-segment
//! signals.
//!
//! ```no_run
//! use hobbes_xemem::{Access, Grant, MakeOptions, Segment};
//!
//! // Owner: 1 MiB of shared memory, huge pages where the node allows.
//! let opts = MakeOptions { name: Some("field".into()), mode: 0o644, ..Default::default() };
//! let seg = Segment::alloc(1 << 20, &opts)?;
//! // SAFETY: the segment's memory is ours and mapped for seg.len() bytes.
//! unsafe { seg.as_ptr().write_bytes(7, seg.len()) };
//!
//! // Any process, any enclave:
//! let segid = hobbes_xemem::lookup("field")?.expect("exported");
//! let grant = Grant::get(segid, Access::ReadOnly)?;
//! let view = grant.attach(0, 1 << 20)?;
//! // SAFETY: the attachment is mapped for view.len() bytes.
//! assert_eq!(unsafe { *view.as_ptr() }, 7);
//! # Ok::<(), hobbes_xemem::XememError>(())
//! ```
//!
//! A segment is a memfd: `make` converts memory in place when it is not one
//! already (see [`make`] and docs/xemem.md), the name server (`leviathan`)
//! hands its descriptor to permitted requesters, and `attach` is an `mmap`
//! of it. State (the connection, own segments, grants, attachments) is
//! process-global; all functions are thread-safe.

#![deny(missing_docs)]

#[doc(hidden)]
pub mod cabi;
pub mod composite;
mod error;
mod files;
mod hugepages;
mod maps;
mod state;
mod sys;
pub mod wholeas;
mod wrappers;

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use hobbes_proto::msg::{XememComposite, XememMake};
use hobbes_sys::mem::{self as mm, Advice, Mapping, Prot};
use hobbes_sys::MemfdFlags;

pub use error::{Result, XememError};
pub use hobbes_proto::model::{Access, PageKind, SegId, SegmentInfo, SegmentRecord};
pub use wrappers::{Attachment, Grant, Segment};

use state::{Backing, Mapped, OwnSegment, Retry, State};

/// An access permit id: process-local, positive.
pub type ApId = i64;

/// How to export a segment.
#[derive(Debug, Clone, Default)]
pub struct MakeOptions {
    /// A node-wide unique name others look the segment up by.
    pub name: Option<String>,
    /// A specific segid (must be free); the name server picks one otherwise.
    pub segid: Option<SegId>,
    /// Permission bits for requesters, like a file's (0 means 0o600). The
    /// owner's uid and root always have access.
    pub mode: u32,
    /// Give the segment a signal channel (an eventfd).
    pub signalled: bool,
}

/// Default permissions: the owner's uid (and root) only.
const DEFAULT_MODE: u32 = 0o600;

/// Export `[addr, addr+len)` as a segment and return its segid.
///
/// The range must be page-aligned and mapped: any memory works (malloc'd,
/// `mmap(MAP_PRIVATE|MAP_ANONYMOUS)`, stack, a segment from [`alloc`]);
/// [`make_mapping`] is the safe call for a [`hobbes_sys::Mapping`]. Memory that is not already a memfd this crate
/// made is converted in place: copied into a new memfd that is then mapped
/// `MAP_SHARED|MAP_FIXED` over the same addresses, so the pointer and the
/// contents stay the same. While `make` runs no other thread may write the
/// range (the copy would miss the write). Afterwards the range is read-write
/// shared memory: a `fork()` child shares it instead of copying it, and
/// unreadable parts (guard pages) read as zeros. Ranges in the brk heap may be
/// unmapped by malloc trimming the heap; export mmap'd memory or [`alloc`]'s.
/// See docs/xemem.md, "In-place conversion".
///
/// Errors: `InvalidArgument` (EINVAL) for a misaligned or empty range or a
/// bad mode, `NotMapped` (EFAULT) for an unmapped part, `Exists` (EEXIST)
/// when the name or requested segid is taken, `NoDaemon` (ECONNREFUSED).
///
/// # Safety
///
/// `[addr, addr+len)` must be the caller's to remap: memory it allocated
/// or mapped itself and that nothing else (an allocator's bookkeeping,
/// another thread's stack, a [`Mapping`] or buffer owned elsewhere) will
/// unmap, free or reuse behind its back. While `make` runs no thread may
/// write the range (the write could be lost) or unmap it. Afterwards the
/// range is shared memory: its contents are the same, but a `fork()`
/// child shares them, and every process the segment is granted to may read
/// it (and write it, with a read-write permit), so the caller must treat
/// it as memory others may change.
pub unsafe fn make(addr: *mut u8, len: usize, opts: &MakeOptions) -> Result<SegId> {
    // SAFETY: passed on from our caller (see above).
    unsafe { make_kind(addr as usize, len, opts) }.map(|(segid, _)| segid)
}

/// Export all of `mem` in place, as [`make`]: the mapping keeps its
/// address and contents and becomes shared memory backed by the segment's
/// memfd (read-write, whatever its protection was), still unmapped when
/// `mem` is dropped. Dropping `mem` does not remove the segment: attachers
/// keep their mappings until [`remove`].
///
/// Errors as for [`make`]; the mapping's length must be a multiple of the
/// page size.
pub fn make_mapping(mem: &mut Mapping, opts: &MakeOptions) -> Result<SegId> {
    // SAFETY: `mem` owns its range (unmapped only when it is dropped) and
    // is borrowed mutably, so no other safe code reads or writes it while
    // it is copied and remapped; what it maps afterwards is at least as
    // readable and writable as before.
    unsafe { make_kind(mem.addr(), mem.len(), opts) }.map(|(segid, _)| segid)
}

const MAKE: &str = "xemem_make";

/// Export `[offset, offset+len)` of a memfd this process holds, without
/// mapping or copying anything: the segment *is* that part of the file.
/// This is how memory that already lives in a shareable file becomes a
/// segment, such as a range of an enclave's RAM file exported on behalf of
/// its guest. `offset` and `len` must be multiples of the file's page size
/// (a hugetlb memfd's huge page) and the range inside the file; the name
/// server refuses anything else, or a descriptor that is not a memfd, with
/// `Invalid`. The process keeps its own duplicate of `file` until
/// [`remove`] (a restarted name server recovers it from there), and
/// attachers map from `offset` of the same file.
pub fn make_file_range(
    file: BorrowedFd<'_>,
    offset: u64,
    len: usize,
    opts: &MakeOptions,
) -> Result<SegId> {
    if opts.mode & !0o777 != 0 {
        return Err(XememError::invalid(
            MAKE,
            format!("mode {:o} has bits beyond 0777", opts.mode),
        ));
    }
    let own = file.try_clone_to_owned().map_err(io_err(MAKE))?;
    let meta = std::fs::File::from(own.try_clone().map_err(io_err(MAKE))?)
        .metadata()
        .map_err(io_err(MAKE))?;
    // A hugetlbfs file reports its huge page size as its block size.
    let page_kind = match meta.blksize() as usize > hobbes_sys::page_size() {
        true => PageKind::Hugetlb,
        false => PageKind::Base,
    };
    let mut st = state::lock();
    export(&mut st, 0, offset, len, own, page_kind, opts)
}

/// [`make`], with the page kind of the memory.
///
/// # Safety
///
/// As for [`make`].
unsafe fn make_kind(addr: usize, len: usize, opts: &MakeOptions) -> Result<(SegId, PageKind)> {
    let page = hobbes_sys::page_size();
    if len == 0 || !addr.is_multiple_of(page) || !len.is_multiple_of(page) {
        return Err(XememError::invalid(
            MAKE,
            format!(
                "range {addr:#x}+{len:#x} must be non-empty and aligned to the page size ({page})"
            ),
        ));
    }
    if addr.checked_add(len).is_none() {
        return Err(XememError::invalid(
            MAKE,
            "range wraps around the address space",
        ));
    }
    if opts.mode & !0o777 != 0 {
        return Err(XememError::invalid(
            MAKE,
            format!("mode {:o} has bits beyond 0777", opts.mode),
        ));
    }
    let mut st = state::lock();
    // SAFETY: passed on from our caller.
    let (memfd, page_kind) = unsafe { backing_for(&mut st, addr, len) }?;
    let segid = export(&mut st, addr, 0, len, memfd, page_kind, opts)?;
    Ok((segid, page_kind))
}

/// A descriptor of the memfd that backs exactly `[addr, addr+len)`,
/// converting the range in place when no such memfd exists yet.
///
/// # Safety
///
/// As for [`make`].
unsafe fn backing_for(st: &mut State, addr: usize, len: usize) -> Result<(OwnedFd, PageKind)> {
    let maps = maps::current().map_err(|e| XememError::Other {
        op: MAKE,
        reason: format!("cannot read /proc/self/maps: {e}"),
    })?;
    // Forget memfds whose mapping was unmapped or replaced since.
    st.backings
        .retain(|b| maps::is_backed_by(&maps, b.addr, b.len, b.inode));
    if let Some(b) = st.backings.iter().find(|b| b.addr == addr && b.len == len) {
        let fd = b.memfd.try_clone().map_err(io_err(MAKE))?;
        return Ok((fd, b.page_kind));
    }
    let end = addr + len;
    let exported: Vec<u64> = st.own.values().map(|s| s.inode).collect();
    if let Some(b) = st
        .backings
        .iter()
        .find(|b| b.addr < end && addr < b.addr + b.len && exported.contains(&b.inode))
    {
        // Converting would give this part of an exported segment a private
        // copy: its attachers would stop seeing the owner's writes.
        return Err(XememError::invalid(
            MAKE,
            format!(
                "range {addr:#x}+{len:#x} overlaps exported segment memory {:#x}+{:#x}; make exactly that range, or remove its segments first",
                b.addr, b.len
            ),
        ));
    }
    let pieces = maps::cover(&maps, addr, len).map_err(|at| XememError::NotMapped {
        op: MAKE,
        addr: at,
        start: addr,
        len,
    })?;
    // SAFETY: passed on from our caller.
    let backing = unsafe { convert_in_place(addr, len, &pieces) }?;
    let fd = backing.memfd.try_clone().map_err(io_err(MAKE))?;
    let page_kind = backing.page_kind;
    st.backings
        .retain(|b| b.addr >= end || addr >= b.addr + b.len);
    st.backings.push(backing);
    Ok((fd, page_kind))
}

/// Copy the range into a new memfd and map that over the range.
///
/// # Safety
///
/// As for [`make`]; `pieces` cover the range as `/proc/self/maps` shows it.
unsafe fn convert_in_place(addr: usize, len: usize, pieces: &[maps::Piece]) -> Result<Backing> {
    let (memfd, page_kind) =
        files::new_file(c"xemem", len).map_err(XememError::sys(MAKE, "memfd_create"))?;
    hobbes_sys::ftruncate(memfd.as_fd(), len as u64).map_err(XememError::sys(MAKE, "ftruncate"))?;
    let inode = hobbes_sys::inode(memfd.as_fd()).map_err(XememError::sys(MAKE, "fstat"))?;
    let mut tmp = Mapping::shared(memfd.as_fd(), len, 0, Prot::ReadWrite)
        .map_err(XememError::sys(MAKE, "mmap"))?;
    for p in pieces.iter().filter(|p| p.readable) {
        // SAFETY: the piece is mapped readable (pieces come from
        // /proc/self/maps, inside [addr, addr+len)) and, as `make` requires
        // of its caller, nobody writes it during the copy.
        let src = unsafe { std::slice::from_raw_parts(p.start as *const u8, p.end - p.start) };
        tmp.as_mut_slice()[p.start - addr..p.end - addr].copy_from_slice(src);
    }
    // SAFETY: `make`'s caller owns [addr, addr+len); the memfd now holds
    // the same contents, so what refers to the range sees no change.
    let replaced = unsafe { mm::mmap_shared_fixed(addr, len, Prot::ReadWrite, memfd.as_fd(), 0) };
    drop(tmp);
    replaced.map_err(XememError::sys(MAKE, "mmap(MAP_FIXED)"))?;
    Ok(Backing {
        addr,
        len,
        memfd,
        inode,
        page_kind,
    })
}

/// Register `memfd` with the name server as a segment.
fn export(
    st: &mut State,
    addr: usize,
    offset: u64,
    len: usize,
    memfd: OwnedFd,
    page_kind: PageKind,
    opts: &MakeOptions,
) -> Result<SegId> {
    let eventfd = match opts.signalled {
        true => Some(sys::eventfd().map_err(XememError::sys(MAKE, "eventfd"))?),
        false => None,
    };
    let inode = hobbes_sys::inode(memfd.as_fd()).map_err(XememError::sys(MAKE, "fstat"))?;
    let req = XememMake {
        size: len as u64,
        offset,
        name: opts.name.clone(),
        segid: opts.segid,
        mode: if opts.mode == 0 {
            DEFAULT_MODE
        } else {
            opts.mode
        },
        page_kind,
        signalled: opts.signalled,
        owner_fd: memfd.as_raw_fd(),
        owner_event_fd: eventfd.as_ref().map(|e| e.as_raw_fd()),
        owner_addr: addr as u64,
        composite: None,
        retire: Vec::new(),
    };
    let record = st.call(MAKE, Retry::Once, |c| {
        c.xemem_make(
            req.clone(),
            memfd.as_fd(),
            eventfd.as_ref().map(|e| e.as_fd()),
        )
    })?;
    st.own.insert(
        record.segid,
        OwnSegment {
            memfd,
            pool: None,
            eventfd,
            inode,
        },
    );
    Ok(record.segid)
}

/// Export a composite (read-only, versioned) segment of `size` bytes:
/// `table` is a memfd written with [`composite::write_table`] (its header's
/// size must equal `size`), `pool` the memfd its extents point into (at
/// least the table's pool size long). The name server keeps both; this
/// process keeps its descriptors until [`remove`] (a restarted name server
/// takes them back from here). Attachers get the extents mapped read-only
/// into one contiguous range; read-write gets are refused. See
/// docs/xemem.md, "Composite segments".
///
/// Errors: `InvalidArgument` for a bad table (naming the problem), a size
/// mismatch, a descriptor that is not a memfd or a pool too short;
/// `Exists`, `NoDaemon` as for [`make`].
pub fn make_composite(
    table: &OwnedFd,
    pool: &OwnedFd,
    size: u64,
    opts: &MakeOptions,
) -> Result<SegId> {
    make_composite_retiring(table, pool, size, opts, &[])
}

/// [`make_composite`], removing this process's segments `retire` in the same
/// request (at most [`hobbes_proto::msg::MAX_RETIRE`]): how an XASM version
/// replaces the versions it retires with one round trip. All or nothing: if
/// any of them cannot be removed, nothing is made and nothing removed.
pub fn make_composite_retiring(
    table: &OwnedFd,
    pool: &OwnedFd,
    size: u64,
    opts: &MakeOptions,
    retire: &[SegId],
) -> Result<SegId> {
    const OP: &str = "xemem_make_composite";
    if opts.mode & !0o777 != 0 {
        return Err(XememError::invalid(
            OP,
            format!("mode {:o} has bits beyond 0777", opts.mode),
        ));
    }
    // Check here first: the caller gets the same message the name server
    // would give, without a round trip.
    let (header, _) = composite::read_table(table.as_fd()).map_err(retag(OP))?;
    check_composite(OP, &header, size, pool.as_fd())?;
    if header.retired {
        return Err(XememError::invalid(OP, "the table is marked retired"));
    }
    // Our own descriptors, kept until remove: the caller may close its own,
    // and a restarted name server takes these back by number.
    let table = table.try_clone().map_err(io_err(OP))?;
    let pool = pool.try_clone().map_err(io_err(OP))?;
    let eventfd = match opts.signalled {
        true => Some(sys::eventfd().map_err(XememError::sys(OP, "eventfd"))?),
        false => None,
    };
    let inode = hobbes_sys::inode(table.as_fd()).map_err(XememError::sys(OP, "fstat"))?;
    let req = XememMake {
        size,
        offset: 0,
        name: opts.name.clone(),
        segid: opts.segid,
        mode: if opts.mode == 0 {
            DEFAULT_MODE
        } else {
            opts.mode
        },
        page_kind: PageKind::Base,
        signalled: opts.signalled,
        owner_fd: table.as_raw_fd(),
        owner_event_fd: eventfd.as_ref().map(|e| e.as_raw_fd()),
        owner_addr: 0,
        composite: Some(XememComposite {
            pool_owner_fd: pool.as_raw_fd(),
        }),
        retire: retire.to_vec(),
    };
    let mut st = state::lock();
    let record = st.call(OP, Retry::Once, |c| {
        c.xemem_make_composite(
            req.clone(),
            table.as_fd(),
            pool.as_fd(),
            eventfd.as_ref().map(|e| e.as_fd()),
        )
    })?;
    for segid in retire {
        st.own.remove(segid);
    }
    st.own.insert(
        record.segid,
        OwnSegment {
            memfd: table,
            pool: Some(pool),
            eventfd,
            inode,
        },
    );
    drop(st);
    // A name server older than `retire` ignores it: check (NIS, no IPC) and
    // remove what is left one by one. Segids are never reused, so what is
    // left is still ours.
    if !retire.is_empty() {
        if let Ok(nis) = nis(OP) {
            for &segid in retire {
                if matches!(nis.segment(segid), Ok(Some(_))) {
                    let _ = state::lock().call(OP, Retry::Idempotent, |c| c.xemem_remove(segid));
                }
            }
        }
    }
    Ok(record.segid)
}

/// A composite table fits a segment of `size` bytes and a pool descriptor.
fn check_composite(
    op: &'static str,
    header: &composite::TableHeader,
    size: u64,
    pool: std::os::fd::BorrowedFd<'_>,
) -> Result<()> {
    if header.size != size {
        return Err(XememError::invalid(
            op,
            format!(
                "segment size {size} differs from its table's size {}",
                header.size
            ),
        ));
    }
    let page = hobbes_sys::page_size() as u64;
    if !u64::from(header.page_size).is_multiple_of(page) {
        return Err(XememError::invalid(
            op,
            format!(
                "the table's page size {} is not a multiple of this node's page size {page}",
                header.page_size
            ),
        ));
    }
    let pool_len = hobbes_sys::file_len(pool).map_err(XememError::sys(op, "fstat"))?;
    if pool_len < header.pool_size {
        return Err(XememError::invalid(
            op,
            format!(
                "the pool is {pool_len} bytes; the table's extents need {}",
                header.pool_size
            ),
        ));
    }
    Ok(())
}

/// Report a table error under `op` (the caller's operation).
fn retag(op: &'static str) -> impl Fn(XememError) -> XememError {
    move |e| match e {
        XememError::InvalidArgument { reason, .. } => XememError::InvalidArgument { op, reason },
        XememError::Sys { call, errno, .. } => XememError::Sys { op, call, errno },
        other => other,
    }
}

/// Allocate `len` bytes of shared memory (rounded up to the page size used)
/// and export it. Huge pages where the node allows: hugetlb pages when
/// enough are free, else shmem THP when enabled, else base pages; the
/// segment records which ([`Segment::page_kind`]).
pub fn alloc(len: usize, opts: &MakeOptions) -> Result<Segment> {
    const OP: &str = "xemem_alloc";
    if len == 0 {
        return Err(XememError::invalid(OP, "length is zero"));
    }
    let mut last = None;
    let huge_tmpfs = files::huge_dir().is_some();
    for (kind, unit) in hugepages::candidates(len, hobbes_sys::page_size(), huge_tmpfs) {
        match map_new(kind, unit, len) {
            Ok(backing) => {
                let (addr, size) = (backing.addr, backing.len);
                state::lock().backings.push(backing);
                // SAFETY: memory we just mapped and nothing else refers to.
                return match unsafe { make_kind(addr, size, opts) } {
                    Ok((segid, kind)) => Ok(Segment::new(segid, addr, size, kind, true)),
                    Err(e) => {
                        wrappers::unmap_backing(addr, size);
                        Err(e)
                    }
                };
            }
            // Hugetlb pages can be taken by others between the check and
            // the mmap; THP may be refused: fall back to the next kind.
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| XememError::invalid(OP, "no page size to allocate with")))
}

/// A new memfd of `kind` mapped shared, aligned to `unit`.
fn map_new(kind: PageKind, unit: usize, len: usize) -> Result<Backing> {
    const OP: &str = "xemem_alloc";
    let size = hugepages::round_up(len, unit)
        .ok_or_else(|| XememError::invalid(OP, format!("length {len} is too large")))?;
    let memfd = match kind {
        PageKind::Hugetlb => hobbes_sys::memfd_create(c"xemem", MemfdFlags::HUGETLB),
        // The daemon's huge-page tmpfs where there is one, else a memfd
        // (the node's shmem policy gives it huge pages).
        PageKind::Thp => files::new_file(c"xemem", size).map(|(fd, _)| fd),
        PageKind::Base => hobbes_sys::memfd_create(c"xemem", MemfdFlags::empty()),
    }
    .map_err(XememError::sys(OP, "memfd_create"))?;
    hobbes_sys::ftruncate(memfd.as_fd(), size as u64).map_err(XememError::sys(OP, "ftruncate"))?;
    let inode = hobbes_sys::inode(memfd.as_fd()).map_err(XememError::sys(OP, "fstat"))?;
    let addr = if kind == PageKind::Base {
        // The backing owns the mapping from here (unmapped by `Segment`).
        Mapping::shared(memfd.as_fd(), size, 0, Prot::ReadWrite)
            .map_err(XememError::sys(OP, "mmap"))?
            .into_raw()
            .0
    } else {
        // Huge pages need huge-page-aligned addresses: reserve more address
        // space than needed, map at the aligned spot inside, drop the rest.
        let span = size
            .checked_add(unit)
            .ok_or_else(|| XememError::invalid(OP, format!("length {len} is too large")))?;
        let (res, span) = Mapping::reserve(span)
            .map_err(XememError::sys(OP, "mmap"))?
            .into_raw();
        let aligned = hugepages::round_up(res, unit).unwrap_or(res);
        // SAFETY: [aligned, aligned+size) lies inside our fresh reservation
        // [res, res+span), which nothing refers to.
        match unsafe { mm::mmap_shared_fixed(aligned, size, Prot::ReadWrite, memfd.as_fd(), 0) } {
            Ok(_) => {
                // SAFETY: the reservation's parts around the mapping: ours,
                // unused.
                unsafe {
                    let _ = mm::munmap(res, aligned - res);
                    let _ = mm::munmap(aligned + size, res + span - (aligned + size));
                }
                aligned
            }
            Err(e) => {
                // SAFETY: our reservation, unused.
                let _ = unsafe { mm::munmap(res, span) };
                return Err(XememError::sys(OP, "mmap")(e));
            }
        }
    };
    if kind == PageKind::Thp {
        let _ = mm::advise(addr, size, Advice::HugePage);
    }
    Ok(Backing {
        addr,
        len: size,
        memfd,
        inode,
        page_kind: kind,
    })
}

/// Stop exporting a segment this process made (root may remove any). Its
/// memory stays mapped here and in every attacher until they detach.
pub fn remove(segid: SegId) -> Result<()> {
    const OP: &str = "xemem_remove";
    let mut st = state::lock();
    let result = st.call(OP, Retry::Idempotent, |c| c.xemem_remove(segid));
    let own = st.own.remove(&segid);
    match (result, own) {
        (Ok(()), _) => Ok(()),
        // Already gone at the name server (a retry after a lost reply).
        (Err(XememError::NotFound { .. }), Some(_)) => Ok(()),
        (Err(e), own) => {
            // Keep the descriptors: the segment still exists; remove may be retried.
            if let Some(own) = own {
                st.own.insert(segid, own);
            }
            Err(e)
        }
    }
}

/// Ask for access to a segment. The name server checks the segment's mode
/// against this process's uid/gid (`r` for read-only, `rw` for read-write).
/// Returns a process-local access permit id for [`attach`].
///
/// A composite segment ([`make_composite`]) is read-only: read-write is
/// refused (`PermissionDenied`). A read-only get takes a hold on it (a shared
/// flock on the permit's own table descriptor, kept by the permit and by
/// each of its attachments) and validates its table; a version its producer
/// is reclaiming or has retired is `NotFound` ("... was reclaimed").
pub fn get(segid: SegId, access: Access) -> Result<ApId> {
    const OP: &str = "xemem_get";
    if segid <= 0 {
        return Err(XememError::invalid(
            OP,
            format!("segid {segid} is not positive"),
        ));
    }
    let mut st = state::lock();
    let g = st.call(OP, Retry::Idempotent, |c| c.xemem_get_grant(segid, access))?;
    let composite = match g.pool {
        Some(pool) => Some(take_hold(OP, &g.record, &g.memfd, pool)?),
        None => None,
    };
    let whole = match composite {
        None => wholeas::peer_for(&g.record, &g.memfd)?,
        Some(_) => None,
    };
    Ok(st.add_grant(state::Grant {
        segid,
        access,
        record: g.record,
        memfd: g.memfd,
        eventfd: g.eventfd,
        composite,
        whole,
    }))
}

/// Take the hold on a composite segment (a shared flock on our own open
/// file description of its table) and read its table. A producer that is
/// reclaiming the version holds the exclusive lock or has marked the table
/// retired: the version is gone (NotFound).
fn take_hold(
    op: &'static str,
    record: &SegmentRecord,
    table: &OwnedFd,
    pool: OwnedFd,
) -> Result<state::CompositeGrant> {
    let what = || match &record.name {
        Some(n) => format!("version {n} (segment {})", record.segid),
        None => format!("composite segment {}", record.segid),
    };
    if !hobbes_sys::try_lock_shared(table.as_fd()).map_err(XememError::sys(op, "flock"))? {
        return Err(XememError::not_found(
            op,
            format!("{} was reclaimed (its producer is removing it)", what()),
        ));
    }
    if composite::is_retired(table.as_fd()).map_err(retag(op))? {
        return Err(XememError::not_found(
            op,
            format!("{} was reclaimed", what()),
        ));
    }
    let (header, extents) = composite::read_table(table.as_fd()).map_err(retag(op))?;
    check_composite(op, &header, record.size, pool.as_fd())?;
    Ok(state::CompositeGrant { pool, extents })
}

/// Give up a permit. Attachments made with it stay valid until detached.
pub fn release(apid: ApId) -> Result<()> {
    state::lock()
        .grants
        .remove(&apid)
        .map(drop)
        .ok_or_else(|| XememError::not_found("xemem_release", format!("no access permit {apid}")))
}

/// Map `len` bytes of a segment from `offset` where the kernel chooses;
/// read-only when the permit is. As in XPMEM, an offset that is not
/// page-aligned maps from its page's start and the returned pointer points
/// `offset % page` bytes in. The mapping stays until [`detach`].
///
/// A composite segment's range is reserved, then the part of each extent
/// inside it is mapped read-only from the pool (one mapping per part); the
/// attachment keeps the hold until it is detached.
pub fn attach(apid: ApId, offset: u64, len: usize) -> Result<*mut u8> {
    // SAFETY: without an address nothing is mapped over.
    unsafe { attach_impl(apid, offset, len, None) }
}

/// [`attach`] at `at` (`MAP_FIXED`): the mapping replaces whatever is
/// mapped in the page-rounded range there. `at` must be `offset % unit`
/// bytes past a page boundary (the segment's page size), like `offset`.
///
/// # Safety
///
/// The page-rounded range at `at` must be the caller's to replace: mapped
/// or reserved by it (an earlier attachment, a reservation), with no
/// reference into it alive and nothing else (an allocator, a
/// [`Mapping`], another thread) that will use or unmap it as its own
/// afterwards.
pub unsafe fn attach_at(apid: ApId, offset: u64, len: usize, at: *mut u8) -> Result<*mut u8> {
    // SAFETY: passed on from our caller.
    unsafe { attach_impl(apid, offset, len, Some(at)) }
}

/// [`attach`] or [`attach_at`].
///
/// # Safety
///
/// With `at`, as for [`attach_at`].
unsafe fn attach_impl(apid: ApId, offset: u64, len: usize, at: Option<*mut u8>) -> Result<*mut u8> {
    const OP: &str = "xemem_attach";
    let mut st = state::lock();
    let grant = st
        .grants
        .get(&apid)
        .ok_or_else(|| XememError::not_found(OP, format!("no access permit {apid}")))?;
    if let Some(peer) = grant.whole.clone() {
        drop(st);
        // SAFETY: with an address, our caller owns the range.
        return unsafe { attach_whole(&peer, offset, len, at) };
    }
    let size = grant.record.size;
    let end = offset.checked_add(len as u64);
    if len == 0 || end.is_none_or(|e| e > size) {
        return Err(XememError::invalid(
            OP,
            format!(
                "{len} bytes at offset {offset} do not fit segment {} ({size} bytes)",
                grant.segid
            ),
        ));
    }
    let unit = match grant.record.page_kind {
        PageKind::Hugetlb => hugepages::hugetlb_page_size().unwrap_or_else(hobbes_sys::page_size),
        PageKind::Base | PageKind::Thp => hobbes_sys::page_size(),
    };
    let delta = (offset % unit as u64) as usize;
    let map_offset = offset - delta as u64;
    let map_len = hugepages::round_up(delta + len, unit)
        .ok_or_else(|| XememError::invalid(OP, format!("length {len} is too large")))?;
    let base_at = match at.map(|p| p as usize) {
        None => None,
        Some(p) if p % unit == delta && p != 0 => Some(p - delta),
        Some(p) => {
            return Err(XememError::invalid(
                OP,
                format!("address {p:#x} must be {delta} bytes past a {unit}-byte boundary, like offset {offset}"),
            ))
        }
    };
    let (base, hold) = match &grant.composite {
        Some(c) => {
            let hold = grant.memfd.try_clone().map_err(io_err(OP))?;
            // SAFETY: with an address, our caller owns the range.
            let base = unsafe { map_composite(base_at, map_offset, map_len, c) }?;
            (base, Some(hold))
        }
        None => {
            let prot = match grant.access {
                Access::ReadOnly => Prot::Read,
                Access::ReadWrite => Prot::ReadWrite,
            };
            let fd = grant.memfd.as_fd();
            // A segment that is part of a larger file starts at its offset.
            let map_offset = grant.record.backing_offset + map_offset;
            let base = match base_at {
                // The attachment table owns the mapping from here.
                None => Mapping::shared(fd, map_len, map_offset, prot).map(|m| m.into_raw().0),
                // SAFETY: with `at`, `attach_at`'s caller owns the range it
                // replaces (documented on `attach_at`).
                Some(at) => unsafe { mm::mmap_shared_fixed(at, map_len, prot, fd, map_offset) },
            }
            .map_err(XememError::sys(OP, "mmap"))?;
            if grant.record.page_kind == PageKind::Thp {
                let _ = mm::advise(base, map_len, Advice::HugePage);
            }
            (base, None)
        }
    };
    // A fixed mapping may have replaced (part of) an earlier attachment.
    let stale: Vec<usize> = st
        .attachments
        .range(..base + map_len)
        .filter(|(_, m)| m.base + m.len > base)
        .map(|(k, _)| *k)
        .collect();
    for k in stale {
        st.attachments.remove(&k);
    }
    st.attachments.insert(
        base,
        Mapped {
            base,
            len: map_len,
            hold,
        },
    );
    Ok((base + delta) as *mut u8)
}

/// Attach `len` bytes at owner address `offset` of a whole-address-space
/// share (see [`wholeas`]).
///
/// # Safety
///
/// With `at`, as for [`attach_at`].
unsafe fn attach_whole(
    peer: &std::sync::Arc<wholeas::Peer>,
    offset: u64,
    len: usize,
    at: Option<*mut u8>,
) -> Result<*mut u8> {
    const OP: &str = "xpmem_attach";
    let page = hobbes_sys::page_size();
    let too_far = || {
        XememError::invalid(
            OP,
            format!("{len} bytes at owner address {offset:#x} are past the address space"),
        )
    };
    let delta = (offset % page as u64) as usize;
    let vaddr = usize::try_from(offset - delta as u64).map_err(|_| too_far())?;
    let map_len = hugepages::round_up(delta + len, page).ok_or_else(too_far)?;
    if len == 0 || vaddr as u64 + map_len as u64 > wholeas::owner::AS_FILE_SIZE {
        return Err(too_far());
    }
    let base_at = match at.map(|p| p as usize) {
        None => None,
        Some(p) if p % page == delta && p != 0 => Some(p - delta),
        Some(p) => {
            return Err(XememError::invalid(
                OP,
                format!("address {p:#x} must be {delta} bytes past a page boundary, like offset {offset:#x}"),
            ))
        }
    };
    // SAFETY: with an address, our caller owns the range.
    let base = unsafe { wholeas::peer::attach(peer, vaddr, map_len, base_at) }?;
    Ok((base + delta) as *mut u8)
}

/// Map `[offset, offset+len)` of a composite segment (page-aligned) into
/// one range: reserve it (at `at`, or where the kernel picks), then map the
/// part of each extent that falls inside read-only from the pool, in place.
///
/// # Safety
///
/// With `at`, as for [`attach_at`].
unsafe fn map_composite(
    at: Option<usize>,
    offset: u64,
    len: usize,
    c: &state::CompositeGrant,
) -> Result<usize> {
    const OP: &str = "xemem_attach";
    let base = match at {
        // The attachment table owns the reservation from here.
        None => Mapping::reserve(len).map(|m| m.into_raw().0),
        // SAFETY: with `at`, `attach_at`'s caller owns the range it replaces.
        Some(at) => unsafe { mm::reserve_fixed(at, len) },
    }
    .map_err(XememError::sys(OP, "mmap"))?;
    let end = offset + len as u64;
    // Extents are sorted and contiguous: start at the one holding `offset`.
    let first = c
        .extents
        .partition_point(|e| e.seg_offset + e.len <= offset);
    for e in c.extents[first..].iter().take_while(|e| e.seg_offset < end) {
        let from = e.seg_offset.max(offset);
        let to = (e.seg_offset + e.len).min(end);
        let at = base + (from - offset) as usize;
        let pool_offset = e.pool_offset + (from - e.seg_offset);
        // SAFETY: [at, at+(to-from)) lies inside the reservation just made,
        // which nothing refers to yet.
        let mapped = unsafe {
            mm::mmap_shared_fixed(
                at,
                (to - from) as usize,
                Prot::Read,
                c.pool.as_fd(),
                pool_offset,
            )
        };
        if let Err(errno) = mapped {
            // SAFETY: our reservation (and the parts mapped into it), unused.
            let _ = unsafe { mm::munmap(base, len) };
            return Err(XememError::sys(OP, "mmap")(errno));
        }
    }
    Ok(base)
}

/// Unmap the attachment that contains `addr`.
pub fn detach(addr: *mut u8) -> Result<()> {
    const OP: &str = "xemem_detach";
    if let Some(done) = wholeas::peer::detach(addr as usize) {
        return done;
    }
    let mut st = state::lock();
    let (key, base, len) = st
        .attachment_at(addr as usize)
        .ok_or_else(|| XememError::invalid(OP, format!("no attachment at {:#x}", addr as usize)))?;
    // SAFETY: an attachment `attach` mapped and recorded; `detach`'s caller
    // gives it up (the pointers it holds are raw and no longer used).
    unsafe { mm::munmap(base, len) }.map_err(XememError::sys(OP, "munmap"))?;
    // Drops a composite attachment's hold.
    st.attachments.remove(&key);
    Ok(())
}

/// A new, empty file for `len` bytes of memory to export (XASM's version
/// pools use it): in the daemon's huge-page tmpfs when the node has one and
/// `len` holds a huge page, else a memfd named `name`; with the pages it will
/// get. docs/xemem.md, "Huge pages".
pub fn new_segment_file(name: &std::ffi::CStr, len: usize) -> Result<(OwnedFd, PageKind)> {
    files::new_file(name, len).map_err(XememError::sys("xemem_make", "memfd_create"))
}

/// Find a segment by name in the Node Information Service (no IPC).
pub fn lookup(name: &str) -> Result<Option<SegId>> {
    const OP: &str = "xemem_lookup";
    let rec = nis(OP)?
        .segment_by_name(name)
        .map_err(|e| XememError::client(OP, e.into()))?;
    Ok(rec.map(|r| r.segid))
}

/// The NIS, opened once per process: a read is then one LMDB read
/// transaction.
pub(crate) fn nis(op: &'static str) -> Result<&'static hobbes_client::NisReader> {
    static NIS: std::sync::OnceLock<hobbes_client::NisReader> = std::sync::OnceLock::new();
    match NIS.get() {
        Some(nis) => Ok(nis),
        None => {
            let opened = hobbes_client::nis().map_err(|e| XememError::client(op, e))?;
            Ok(NIS.get_or_init(|| opened))
        }
    }
}

/// Find a segment by name through the name server.
pub fn lookup_via_daemon(name: &str) -> Result<Option<SegId>> {
    match state::lock().call("xemem_lookup", Retry::Idempotent, |c| c.xemem_lookup(name)) {
        Ok(rec) => Ok(Some(rec.segid)),
        Err(XememError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Every segment on the node, with its attachments.
pub fn list() -> Result<Vec<SegmentInfo>> {
    state::lock().call("xemem_list", Retry::Idempotent, |c| c.xemem_list())
}

/// Signal a segment's channel: directly when this process holds its eventfd
/// (it made the segment, or has a permit), else through the name server.
pub fn signal(segid: SegId) -> Result<()> {
    const OP: &str = "xemem_signal";
    let mut st = state::lock();
    if let Ok(fd) = local_eventfd(&st, OP, segid) {
        return sys::eventfd_signal(fd.as_fd()).map_err(XememError::sys(OP, "write(eventfd)"));
    }
    st.call(OP, Retry::Once, |c| c.xemem_signal(segid))
}

/// Wait for one signal on a segment this process made or has a permit for,
/// and consume it (the seeds' `xemem_ack`). `None` waits forever. Returns
/// false on timeout.
pub fn wait(segid: SegId, timeout: Option<Duration>) -> Result<bool> {
    const OP: &str = "xemem_wait";
    // Wait on a duplicate, without the lock: other calls go on meanwhile.
    let fd = {
        let st = state::lock();
        local_eventfd(&st, OP, segid)?
            .try_clone_to_owned()
            .map_err(io_err(OP))?
    };
    sys::eventfd_wait(fd.as_fd(), timeout).map_err(XememError::sys(OP, "read(eventfd)"))
}

/// The eventfd of a signalled segment this process made or has a permit
/// for: poll it for readability, read 8 bytes to consume a signal. It stays
/// open until the segment is removed or the permit released.
pub fn signal_fd(segid: SegId) -> Result<RawFd> {
    let st = state::lock();
    local_eventfd(&st, "xemem_signal_fd", segid).map(|fd| fd.as_raw_fd())
}

fn local_eventfd<'a>(
    st: &'a State,
    op: &'static str,
    segid: SegId,
) -> Result<std::os::fd::BorrowedFd<'a>> {
    let (eventfd, known) = match st.own.get(&segid) {
        Some(own) => (own.eventfd.as_ref(), true),
        None => {
            let mut grants = st.grants.values().filter(|g| g.segid == segid).peekable();
            let known = grants.peek().is_some();
            (grants.find_map(|g| g.eventfd.as_ref()), known)
        }
    };
    match (eventfd, known) {
        (Some(fd), _) => Ok(fd.as_fd()),
        (None, true) => Err(XememError::invalid(
            op,
            format!("segment {segid} has no signal channel (make it signalled)"),
        )),
        (None, false) => Err(XememError::not_found(
            op,
            format!("segment {segid} was neither made nor got by this process"),
        )),
    }
}

fn io_err(op: &'static str) -> impl Fn(std::io::Error) -> XememError {
    move |e| XememError::Other {
        op,
        reason: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sys::testing::{fill, mmap_private, read};

    #[test]
    fn converts_private_memory_in_place() {
        let page = hobbes_sys::page_size();
        let addr = mmap_private(4 * page);
        // SAFETY: the test's own read-write mapping, nothing refers to it.
        unsafe {
            fill(addr, 4 * page, 0x5a);
            fill(addr + page, 1, 0x01);
        }
        let mut st = State::default_for_tests();
        // SAFETY: the test's own mapping, not used during the call.
        let (fd, kind) = unsafe { backing_for(&mut st, addr, 4 * page) }.unwrap();
        assert_eq!(kind, PageKind::Base);
        // Same pointer, same contents, now a shared mapping of the memfd.
        // SAFETY: still mapped (now shared), nothing writes it.
        let bytes = unsafe { read(addr, 4 * page) };
        assert_eq!(bytes[page], 0x01);
        assert!(bytes
            .iter()
            .enumerate()
            .all(|(i, b)| i == page || *b == 0x5a));
        let inode = hobbes_sys::inode(fd.as_fd()).unwrap();
        let maps = maps::current().unwrap();
        assert!(maps::is_backed_by(&maps, addr, 4 * page, inode));
        // Writes through either view meet.
        let mut other = Mapping::shared(fd.as_fd(), 4 * page, 0, Prot::ReadWrite).unwrap();
        other.as_mut_slice()[2 * page] = 0x77;
        // SAFETY: as above.
        assert_eq!(unsafe { read(addr + 2 * page, 1) }, [0x77]);
        // Making the same range again reuses the memfd.
        // SAFETY: as above.
        let (again, _) = unsafe { backing_for(&mut st, addr, 4 * page) }.unwrap();
        assert_eq!(hobbes_sys::inode(again.as_fd()).unwrap(), inode);
        drop(other);
        // SAFETY: the test's own mapping, no longer used.
        unsafe { mm::munmap(addr, 4 * page) }.unwrap();
    }

    #[test]
    fn refuses_unmapped_and_misaligned_ranges() {
        let page = hobbes_sys::page_size();
        let addr = mmap_private(3 * page);
        // SAFETY: the test's own mapping, not used there.
        unsafe { mm::munmap(addr + page, page) }.unwrap();
        let mut st = State::default_for_tests();
        // SAFETY: the test's own mapping (what is left of it), unused.
        match unsafe { backing_for(&mut st, addr, 3 * page) } {
            Err(e @ XememError::NotMapped { .. }) => {
                assert_eq!(e.errno(), libc::EFAULT);
                assert!(
                    e.to_string().contains(&format!("{:#x}", addr + page)),
                    "{e}"
                );
            }
            other => panic!("expected NotMapped, got {:?}", other.map(|_| ())),
        }
        // SAFETY: (and for the next two) refused before anything is touched; the
        // range is the test's own mapping in any case.
        let e = unsafe { make((addr + 1) as *mut u8, page, &MakeOptions::default()) }.unwrap_err();
        assert_eq!(e.errno(), libc::EINVAL);
        // SAFETY: as above.
        let e = unsafe { make(addr as *mut u8, 0, &MakeOptions::default()) }.unwrap_err();
        assert_eq!(e.errno(), libc::EINVAL);
        let opts = MakeOptions {
            mode: 0o4777,
            ..Default::default()
        };
        // SAFETY: as above.
        let e = unsafe { make(addr as *mut u8, page, &opts) }.unwrap_err();
        assert_eq!(e.errno(), libc::EINVAL);
        // SAFETY: the test's own mapping, no longer used.
        unsafe { mm::munmap(addr, 3 * page) }.unwrap();
    }

    #[test]
    fn unknown_permits_and_attachments() {
        assert_eq!(release(987_654).unwrap_err().errno(), libc::ENOENT);
        assert_eq!(attach(987_654, 0, 4096).unwrap_err().errno(), libc::ENOENT);
        assert_eq!(detach(8 as *mut u8).unwrap_err().errno(), libc::EINVAL);
        assert_eq!(
            wait(987_654, Some(Duration::ZERO)).unwrap_err().errno(),
            libc::ENOENT
        );
        assert_eq!(get(0, Access::ReadOnly).unwrap_err().errno(), libc::EINVAL);
    }
}
