//! libxemem's XASM calls (`include/xasm.h`) on [`hobbes_xasm`]: the plain
//! producer/consumer API and the Kitten-style calls of the XASM paper.
//!
//! Handles are small integers behind opaque pointers, looked up in
//! process-global registries: a stale or foreign handle is EINVAL, never a
//! crash. Every export returns -1 / NULL on failure, sets errno, keeps a
//! message for `xasm_last_error()` and never unwinds into C.

use std::collections::BTreeMap;
use std::ffi::{c_char, c_int, c_void};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hobbes_xasm::registry::{self, Region};
use hobbes_xasm::{Consumer, Mechanism, Producer, RegionOptions, Snapshot, XasmError};
use hobbes_xemem::XememError;

use crate::ffi;

/// Region flag: track dirty pages with userfaultfd `WP_ASYNC` +
/// `PAGEMAP_SCAN` (Linux 6.7+); creation fails with ENOTSUP where the kernel
/// lacks it. At most one `XASM_MECH_*` flag; none takes
/// `HOBBES_XASM_MECHANISM`, else the best this kernel has.
pub const XASM_MECH_SCAN: c_int = 0x1;
/// Region flag: track dirty pages with `mprotect` and a SIGSEGV handler
/// (any kernel); system calls that write into the region fail with EFAULT.
pub const XASM_MECH_MPROTECT: c_int = 0x2;
const MODE_SHIFT: c_int = 8;
const KNOWN_FLAGS: c_int = XASM_MECH_SCAN | XASM_MECH_MPROTECT | (0o777 << MODE_SHIFT);
/// `VM_PAGE_4KB`.
const VM_PAGE_4KB: u64 = 1 << 12;

/// Opaque C handle types.
///
/// `xasm_region_t`: a producer's region, from `xasm_region_create` or
/// `xasm_region_register`, valid until `xasm_region_destroy`.
#[repr(C)]
pub struct XasmRegion {
    _private: [u8; 0],
}
/// `xasm_consumer_t`: an open consumer of one region, from
/// `xasm_consumer_open`, valid until `xasm_consumer_close`.
#[repr(C)]
pub struct XasmConsumer {
    _private: [u8; 0],
}
/// `xasm_snapshot_t`: one attached version, from `xasm_attach`, valid until
/// `xasm_snapshot_release`; while it lives the producer cannot reclaim the
/// version.
#[repr(C)]
pub struct XasmSnapshot {
    _private: [u8; 0],
}

/// Run an export's body; on error or panic record it and return `on_error`.
/// The message goes to the library's one per-thread slot, which
/// `xasm_last_error()` and `xemem_last_error()` both read.
fn guard<T>(name: &str, on_error: T, body: impl FnOnce() -> Result<T, XasmError>) -> T {
    cabi_support::guard(name, on_error, || body().map_err(CXasmError))
}

/// [`XasmError`] as the C ABI reports it.
struct CXasmError(XasmError);

impl std::fmt::Display for CXasmError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl cabi_support::CError for CXasmError {
    fn errno(&self) -> c_int {
        self.0.errno()
    }
}

fn invalid(op: &'static str, reason: impl Into<String>) -> XasmError {
    XasmError::InvalidArgument {
        op,
        reason: reason.into(),
    }
}

/// Map an XASM failure inside an XEMEM call (the `xemem_make` hook) to the
/// XEMEM error C sees, keeping the errno and the message.
pub(crate) fn as_xemem(e: XasmError) -> XememError {
    let op = "xemem_make";
    let reason = e.to_string();
    match e {
        XasmError::Xemem { source, .. } => source,
        XasmError::InvalidArgument { .. } => XememError::InvalidArgument { op, reason },
        XasmError::NotFound { .. } => XememError::NotFound { op, what: reason },
        XasmError::NoSpace { .. } => XememError::NoSpace { op, reason },
        other => XememError::Sys {
            op,
            call: "xasm",
            errno: nix::errno::Errno::from_raw(other.errno()),
        },
    }
}

/// Borrow a required C string argument.
///
/// # Safety
/// `ptr` is NULL or a NUL-terminated string live for `'a`.
unsafe fn required_str<'a>(
    op: &'static str,
    what: &str,
    ptr: *const c_char,
) -> Result<&'a str, XasmError> {
    // SAFETY: per the caller's contract.
    match unsafe { ffi::opt_str(op, ptr) } {
        Ok(Some(s)) => Ok(s),
        Ok(None) => Err(invalid(op, format!("{what} is NULL"))),
        Err(e) => Err(invalid(op, format!("{what}: {e}"))),
    }
}

/// Store through an out-parameter (EINVAL when NULL).
///
/// # Safety
/// `ptr` is NULL or valid and aligned for a write of `T`.
unsafe fn out<T>(op: &'static str, ptr: *mut T, value: T) -> Result<(), XasmError> {
    // SAFETY: per the caller's contract.
    unsafe { ffi::write_out(op, ptr, value) }.map_err(|e| invalid(op, e.to_string()))
}

fn options(
    op: &'static str,
    name: &str,
    keep: u32,
    flags: c_int,
) -> Result<RegionOptions, XasmError> {
    if flags & !KNOWN_FLAGS != 0 {
        return Err(invalid(
            op,
            format!("unknown flags {:#x}", flags & !KNOWN_FLAGS),
        ));
    }
    let mechanism = match flags & (XASM_MECH_SCAN | XASM_MECH_MPROTECT) {
        0 => None,
        XASM_MECH_SCAN => Some(Mechanism::Scan),
        XASM_MECH_MPROTECT => Some(Mechanism::Mprotect),
        _ => {
            return Err(invalid(
                op,
                "give one of XASM_MECH_SCAN and XASM_MECH_MPROTECT",
            ))
        }
    };
    Ok(RegionOptions {
        name: name.to_string(),
        mode: ((flags >> MODE_SHIFT) & 0o777) as u32,
        keep: if keep == 0 {
            hobbes_xasm::DEFAULT_KEEP
        } else {
            keep as usize
        },
        mechanism,
        max_extents: hobbes_xasm::DEFAULT_MAX_EXTENTS,
    })
}

fn region(op: &'static str, r: *mut XasmRegion) -> Result<Arc<Region>, XasmError> {
    registry::get(r as usize as u64)
        .ok_or_else(|| invalid(op, format!("{r:p} is not a live xasm_region_t")))
}

// ---------------------------------------------------------------- producer

/// Register a new region and write its handle to `out_region`.
///
/// # Safety
/// `out_region` is non-NULL and writable.
unsafe fn hand_out(
    op: &'static str,
    p: Producer,
    out_region: *mut *mut XasmRegion,
) -> Result<c_int, XasmError> {
    let r = registry::insert(p, None);
    // SAFETY: per this function's contract.
    unsafe { out(op, out_region, r.id() as usize as *mut XasmRegion) }?;
    Ok(0)
}

#[no_mangle]
/// # Safety
/// `name` is a NUL-terminated string; `out_region` is writable.
pub unsafe extern "C" fn xasm_region_create(
    name: *const c_char,
    len: usize,
    keep: u32,
    flags: c_int,
    out_region: *mut *mut XasmRegion,
) -> c_int {
    const OP: &str = "xasm_region_create";
    guard(OP, -1, || {
        if out_region.is_null() {
            return Err(invalid(OP, "region is NULL"));
        }
        // SAFETY: per the contract above.
        let name = unsafe { required_str(OP, "name", name) }?;
        let p = Producer::create(len, &options(OP, name, keep, flags)?)?;
        // SAFETY: checked non-NULL; writable per the contract above.
        unsafe { hand_out(OP, p, out_region) }
    })
}

#[no_mangle]
/// # Safety
/// `name` is a NUL-terminated string; `[addr, addr+len)` is private memory
/// of the caller that stays mapped until `xasm_region_destroy`;
/// `out_region` is writable.
pub unsafe extern "C" fn xasm_region_register(
    name: *const c_char,
    addr: *mut c_void,
    len: usize,
    keep: u32,
    flags: c_int,
    out_region: *mut *mut XasmRegion,
) -> c_int {
    const OP: &str = "xasm_region_register";
    guard(OP, -1, || {
        if out_region.is_null() {
            return Err(invalid(OP, "region is NULL"));
        }
        // SAFETY: per the contract above.
        let name = unsafe { required_str(OP, "name", name) }?;
        let opts = options(OP, name, keep, flags)?;
        // SAFETY: the caller owns the range until destroy (contract above).
        let p = unsafe { Producer::register(addr.cast(), len, &opts) }?;
        // SAFETY: checked non-NULL; writable per the contract above.
        unsafe { hand_out(OP, p, out_region) }
    })
}

/// The region's first byte (page-aligned): the memory the producer
/// writes between snapshots. NULL with EINVAL for a stale or foreign
/// handle.
#[no_mangle]
pub extern "C" fn xasm_region_addr(r: *mut XasmRegion) -> *mut c_void {
    guard("xasm_region_addr", std::ptr::null_mut(), || {
        Ok(region("xasm_region_addr", r)?.addr() as *mut c_void)
    })
}

/// The region's length in bytes (a multiple of the page size). 0 with
/// EINVAL for a stale or foreign handle.
#[no_mangle]
pub extern "C" fn xasm_region_len(r: *mut XasmRegion) -> usize {
    guard("xasm_region_len", 0, || {
        Ok(region("xasm_region_len", r)?.len())
    })
}

#[no_mangle]
/// # Safety
/// `version` is NULL or writable.
pub unsafe extern "C" fn xasm_snapshot(r: *mut XasmRegion, version: *mut u64) -> c_int {
    const OP: &str = "xasm_snapshot";
    guard(OP, -1, || {
        let info = region(OP, r)?.snapshot(OP)?;
        if !version.is_null() {
            // SAFETY: non-NULL and writable per the contract above.
            unsafe { out(OP, version, info.version) }?;
        }
        Ok(0)
    })
}

/// Retry reclaiming old versions that consumers held at their snapshot
/// (`xasm_snapshot` does this too); returns how many were reclaimed, or -1.
/// A stale or foreign handle sets EINVAL.
#[no_mangle]
pub extern "C" fn xasm_reclaim(r: *mut XasmRegion) -> c_int {
    const OP: &str = "xasm_reclaim";
    guard(OP, -1, || {
        let n = region(OP, r)?.with(|p| p.reclaim())?;
        Ok(c_int::try_from(n).unwrap_or(c_int::MAX))
    })
}

/// Close the region: waiting consumers get EPIPE, every version and the
/// channel are removed (consumers' attachments stay valid), and memory from
/// `xasm_region_create` is unmapped (registered memory stays the caller's).
/// The handle is invalid afterwards. 0, or -1 with EINVAL for a stale or
/// foreign handle.
#[no_mangle]
pub extern "C" fn xasm_region_destroy(r: *mut XasmRegion) -> c_int {
    const OP: &str = "xasm_region_destroy";
    guard(OP, -1, || {
        let region = registry::remove(r as usize as u64)
            .ok_or_else(|| invalid(OP, format!("{r:p} is not a live xasm_region_t")))?;
        // Dropped here unless another thread is still inside a call on it
        // (then when that call returns).
        drop(region);
        Ok(0)
    })
}

// ---------------------------------------------------------------- consumer

static NEXT_HANDLE: AtomicU64 = AtomicU64::new(1);
static CONSUMERS: Mutex<BTreeMap<u64, Arc<Consumer>>> = Mutex::new(BTreeMap::new());
static SNAPSHOTS: Mutex<BTreeMap<u64, Snapshot>> = Mutex::new(BTreeMap::new());

fn lock<T>(m: &'static Mutex<T>) -> MutexGuard<'static, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn consumer(op: &'static str, c: *mut XasmConsumer) -> Result<Arc<Consumer>, XasmError> {
    lock(&CONSUMERS)
        .get(&(c as usize as u64))
        .cloned()
        .ok_or_else(|| invalid(op, format!("{c:p} is not an open xasm_consumer_t")))
}

#[no_mangle]
/// # Safety
/// `name` is a NUL-terminated string; `out_consumer` is writable.
pub unsafe extern "C" fn xasm_consumer_open(
    name: *const c_char,
    out_consumer: *mut *mut XasmConsumer,
) -> c_int {
    const OP: &str = "xasm_consumer_open";
    guard(OP, -1, || {
        if out_consumer.is_null() {
            return Err(invalid(OP, "consumer is NULL"));
        }
        // SAFETY: per the contract above.
        let name = unsafe { required_str(OP, "name", name) }?;
        let c = Consumer::open(name)?;
        let id = NEXT_HANDLE.fetch_add(1, Ordering::Relaxed);
        lock(&CONSUMERS).insert(id, Arc::new(c));
        // SAFETY: checked non-NULL; writable per the contract above.
        unsafe { out(OP, out_consumer, id as usize as *mut XasmConsumer) }?;
        Ok(0)
    })
}

#[no_mangle]
/// # Safety
/// `version` is writable.
pub unsafe extern "C" fn xasm_latest(c: *mut XasmConsumer, version: *mut u64) -> c_int {
    const OP: &str = "xasm_latest";
    guard(OP, -1, || {
        let v = consumer(OP, c)?.latest().unwrap_or(0);
        // SAFETY: per the contract above.
        unsafe { out(OP, version, v) }?;
        Ok(0)
    })
}

#[no_mangle]
/// # Safety
/// `version` is writable.
pub unsafe extern "C" fn xasm_wait_newer(
    c: *mut XasmConsumer,
    than: u64,
    timeout_ms: c_int,
    version: *mut u64,
) -> c_int {
    const OP: &str = "xasm_wait_newer";
    guard(OP, -1, || {
        if version.is_null() {
            return Err(invalid(OP, "version is NULL"));
        }
        let c = consumer(OP, c)?;
        let timeout = u64::try_from(timeout_ms).ok().map(Duration::from_millis);
        match c.wait_newer(than, timeout)? {
            Some(v) => {
                // SAFETY: non-NULL and writable per the contract above.
                unsafe { out(OP, version, v) }?;
                Ok(0)
            }
            None => Err(XasmError::Sys {
                op: OP,
                what: format!(
                    "region {:?}: no version newer than {than} within {timeout_ms} ms",
                    c.name()
                ),
                call: "wait",
                errno: nix::errno::Errno::ETIMEDOUT,
            }),
        }
    })
}

#[no_mangle]
/// # Safety
/// `addr`, `len` and `out_snapshot` are writable.
pub unsafe extern "C" fn xasm_attach(
    c: *mut XasmConsumer,
    version: u64,
    addr: *mut *const c_void,
    len: *mut usize,
    out_snapshot: *mut *mut XasmSnapshot,
) -> c_int {
    const OP: &str = "xasm_attach";
    guard(OP, -1, || {
        if addr.is_null() || len.is_null() || out_snapshot.is_null() {
            return Err(invalid(OP, "addr, len and snapshot must not be NULL"));
        }
        let c = consumer(OP, c)?;
        let snap = match version {
            0 => c.attach_latest()?.ok_or_else(|| XasmError::NotFound {
                op: OP,
                what: format!("region {:?} has no version yet", c.name()),
            })?,
            v => c.attach(v)?,
        };
        let (p, n) = (snap.as_ptr().cast::<c_void>(), snap.len());
        let id = NEXT_HANDLE.fetch_add(1, Ordering::Relaxed);
        lock(&SNAPSHOTS).insert(id, snap);
        // SAFETY: checked non-NULL; writable per the contract above.
        unsafe {
            out(OP, addr, p)?;
            out(OP, len, n)?;
            out(OP, out_snapshot, id as usize as *mut XasmSnapshot)?;
        }
        Ok(0)
    })
}

/// The attached version's number (1, 2, ...), or 0 with EINVAL for a
/// stale or foreign handle.
#[no_mangle]
pub extern "C" fn xasm_snapshot_version(s: *mut XasmSnapshot) -> u64 {
    const OP: &str = "xasm_snapshot_version";
    guard(OP, 0, || {
        lock(&SNAPSHOTS)
            .get(&(s as usize as u64))
            .map(|s| s.version())
            .ok_or_else(|| invalid(OP, format!("{s:p} is not an attached xasm_snapshot_t")))
    })
}

/// Detach a version and release its hold, so the producer may reclaim
/// it; the handle and the memory from `xasm_attach` are invalid afterwards.
/// 0, or -1 with EINVAL for a stale or foreign handle.
#[no_mangle]
pub extern "C" fn xasm_snapshot_release(s: *mut XasmSnapshot) -> c_int {
    const OP: &str = "xasm_snapshot_release";
    guard(OP, -1, || {
        let snap = lock(&SNAPSHOTS)
            .remove(&(s as usize as u64))
            .ok_or_else(|| invalid(OP, format!("{s:p} is not an attached xasm_snapshot_t")))?;
        drop(snap);
        Ok(0)
    })
}

/// Close a consumer; the handle is invalid afterwards. Snapshots attached
/// through it stay valid until released. 0, or -1 with EINVAL for a stale or
/// foreign handle.
#[no_mangle]
pub extern "C" fn xasm_consumer_close(c: *mut XasmConsumer) -> c_int {
    const OP: &str = "xasm_consumer_close";
    guard(OP, -1, || {
        lock(&CONSUMERS)
            .remove(&(c as usize as u64))
            .map(drop)
            .ok_or_else(|| invalid(OP, format!("{c:p} is not an open xasm_consumer_t")))?;
        Ok(0)
    })
}

/// The message of this thread's last failed XASM or XEMEM call (""
/// if none): the same per-thread slot as `xemem_last_error()`. The pointer
/// stays valid until the next failure on this thread.
#[no_mangle]
pub extern "C" fn xasm_last_error() -> *const c_char {
    cabi_support::last_error()
}

// ------------------------------------------------------------ Kitten-style

#[no_mangle]
/// # Safety
/// `id` is writable.
pub unsafe extern "C" fn aspace_get_myid(id: *mut libc::id_t) -> c_int {
    const OP: &str = "aspace_get_myid";
    guard(OP, -1, || {
        // SAFETY: per the contract above.
        unsafe { out(OP, id, std::process::id() as libc::id_t) }?;
        Ok(0)
    })
}

/// Checks shared by the two arena calls; returns the region options.
///
/// # Safety
/// `name` is NULL or a NUL-terminated string.
unsafe fn arena_options(
    op: &'static str,
    name: *const c_char,
    pagesz: u64,
) -> Result<RegionOptions, XasmError> {
    if pagesz != 0 && pagesz != VM_PAGE_4KB {
        return Err(invalid(
            op,
            format!(
                "page size {pagesz:#x}: only VM_PAGE_4KB is supported (tracking is per base page)"
            ),
        ));
    }
    // SAFETY: per the contract above.
    let name = unsafe { required_str(op, "name", name) }?;
    options(op, name, 0, 0)
}

#[no_mangle]
#[allow(clippy::too_many_arguments)]
/// # Safety
/// `name` is a NUL-terminated string.
pub unsafe extern "C" fn arena_map_backed_region(
    id: libc::id_t,
    start: usize,
    extent: usize,
    _backing_extent: usize,
    _flags: u64,
    _kind: u64,
    pagesz: u64,
    name: *const c_char,
    _pmem: usize,
) -> c_int {
    const OP: &str = "arena_map_backed_region";
    guard(OP, -1, || {
        // SAFETY: per the contract above.
        let opts = unsafe { arena_options(OP, name, pagesz) }?;
        let p = Producer::create_at(start, extent, &opts)?;
        registry::insert(p, Some(u64::from(id)));
        Ok(0)
    })
}

#[no_mangle]
#[allow(clippy::too_many_arguments)]
/// # Safety
/// `start` is writable; `name` is a NUL-terminated string.
pub unsafe extern "C" fn arena_map_backed_region_anywhere(
    id: libc::id_t,
    start: *mut usize,
    extent: usize,
    _backing_extent: usize,
    _flags: u64,
    _kind: u64,
    pagesz: u64,
    name: *const c_char,
    _pmem: usize,
) -> c_int {
    const OP: &str = "arena_map_backed_region_anywhere";
    guard(OP, -1, || {
        if start.is_null() {
            return Err(invalid(OP, "start is NULL"));
        }
        // SAFETY: per the contract above.
        let opts = unsafe { arena_options(OP, name, pagesz) }?;
        let p = Producer::create(extent, &opts)?;
        let r = registry::insert(p, Some(u64::from(id)));
        // SAFETY: checked non-NULL; writable per the contract above.
        unsafe { out(OP, start, r.addr()) }?;
        Ok(0)
    })
}

#[no_mangle]
/// # Safety
/// `dest` is writable.
pub unsafe extern "C" fn aspace_copy(
    src: libc::id_t,
    dest: *mut libc::id_t,
    flags: c_int,
) -> c_int {
    const OP: &str = "aspace_copy";
    guard(OP, -1, || {
        if flags != 0 {
            return Err(invalid(OP, format!("flags {flags:#x}: none are defined")));
        }
        if dest.is_null() {
            return Err(invalid(OP, "dest is NULL"));
        }
        let v = registry::aspace_copy(u64::from(src))?;
        // SAFETY: checked non-NULL; writable per the contract above.
        unsafe { out(OP, dest, libc::id_t::try_from(v).unwrap_or(libc::id_t::MAX)) }?;
        Ok(0)
    })
}
