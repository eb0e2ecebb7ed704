//! `libxemem`: the seeds' XEMEM C API (`include/xemem.h`) on
//! [`hobbes_xemem`], and XASM's (`include/xasm.h`, [`xasm`]) on
//! [`hobbes_xasm`]. Every export returns -1 / `XEMEM_INVALID_SEGID` / NULL
//! (`(void *)-1` for `xemem_attach`, like XPMEM) on failure, sets errno and
//! keeps a message for `xemem_last_error()`, and never unwinds into C.
//!
//! Raw pointers are only touched in `ffi.rs`.

#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

use std::ffi::{c_char, c_int, c_void};

use hobbes_xemem::cabi::guard;
use hobbes_xemem::{Access, MakeOptions, SegId, XememError};

mod ffi;
pub mod xasm;

/// `xemem_segid_t`: a segment id, valid node-wide (any process, any
/// enclave); [`XEMEM_INVALID_SEGID`] means failure.
pub type XememSegid = i64;
/// `xemem_apid_t`: an access permit from `xemem_get`, valid only in the
/// process that got it; -1 means failure.
pub type XememApid = i64;

/// The failure value of segid-returning calls.
pub const XEMEM_INVALID_SEGID: XememSegid = -1;
/// `xemem_get` flag: attachments made with the permit are read-only.
pub const XEMEM_RDONLY: c_int = 0x1;
/// `xemem_get` flag: attachments made with the permit are read-write.
pub const XEMEM_RDWR: c_int = 0x2;
/// Size of [`XememSegment::name`], terminating NUL included: longer names
/// are cut at 63 bytes.
pub const XEMEM_SEG_NAME_LEN: usize = 64;

/// `struct xemem_addr`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct XememAddr {
    /// The permit to attach through (from `xemem_get`).
    pub apid: XememApid,
    /// Byte offset into the segment where the attachment starts; must not
    /// be negative. Need not be page-aligned: the returned pointer is then
    /// `offset % page` bytes into the first mapped page.
    pub offset: libc::off_t,
}

/// `struct xemem_segment`, as `xemem_get_segment_list` returns them.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct XememSegment {
    /// The segment's id.
    pub segid: XememSegid,
    /// Its name, NUL-terminated: "" when unnamed, cut at 63 bytes.
    pub name: [c_char; XEMEM_SEG_NAME_LEN],
    /// The enclave of the process that made it (a `hobbes_id_t`).
    pub enclave_id: u64,
    /// The app that made it, or `(uint64_t)-1` (`HOBBES_INVALID_ID`) for a
    /// process Hobbes did not launch.
    pub app_id: u64,
}

/// `(void *)-1`: XPMEM's failed attach.
const ATTACH_FAILED: *mut c_void = usize::MAX as *mut c_void;
/// `HOBBES_INVALID_ID`, for segments of processes Hobbes did not launch.
const INVALID_ID: u64 = u64::MAX;

/// Export `[vaddr, vaddr+size)` (or publish the copy of the XASM region
/// there) for the `xemem_make*` calls.
///
/// # Safety
///
/// The C caller's contract of `xemem_make`: `name` is NULL or a
/// NUL-terminated string, and the range is the caller's (see
/// [`xemem_make`]).
unsafe fn make(
    op: &'static str,
    vaddr: *mut c_void,
    size: usize,
    name: *const c_char,
    signalled: bool,
    segid: Option<SegId>,
) -> hobbes_xemem::Result<SegId> {
    // SAFETY: the C contract: name is NULL or a NUL-terminated string.
    let name = unsafe { ffi::opt_str(op, name) }?;
    // An XASM region (the Kitten-style flow, the paper's Figure 3): publish
    // its copy under `name` instead of converting the range.
    if let Some(region) = hobbes_xasm::registry::region_at(vaddr as usize, size) {
        if signalled || segid.is_some() {
            return Err(XememError::InvalidArgument {
                op,
                reason: format!(
                    "range overlaps XASM region {region:?}: its copy is published with plain xemem_make"
                ),
            });
        }
        return hobbes_xasm::registry::publish_copy(vaddr as usize, size, name)
            .unwrap_or_else(|| {
                Err(hobbes_xasm::XasmError::NotFound {
                    op,
                    what: format!("XASM region {region:?} went away"),
                })
            })
            .map_err(xasm::as_xemem);
    }
    let opts = MakeOptions {
        name: name.map(str::to_owned),
        segid,
        mode: 0,
        signalled,
    };
    // SAFETY: the C caller's contract (documented on `xemem_make`): the
    // range is its own memory, remapped in place, and no thread writes it
    // while the call runs.
    unsafe { hobbes_xemem::make(vaddr.cast(), size, &opts) }
}

/// Export `[vaddr, vaddr+size)` (page-aligned) under `name` (or none, NULL).
/// The segment is accessible to the owner's uid and root (mode 0600).
///
/// # Safety
/// `name` is NULL or a NUL-terminated string. The range is the caller's
/// own memory (malloc'd, mmap'd, static, stack it keeps alive): it is
/// copied into shared memory and remapped in place (same address, same
/// contents), so no other thread may write or unmap it while the call
/// runs, and afterwards others granted the segment may read (or write) it.
#[no_mangle]
pub unsafe extern "C" fn xemem_make(
    vaddr: *mut c_void,
    size: usize,
    name: *mut c_char,
) -> XememSegid {
    guard("xemem_make", XEMEM_INVALID_SEGID, || {
        // SAFETY: our caller's contract, as `make` requires.
        unsafe { make("xemem_make", vaddr, size, name, false, None) }
    })
}

/// As `xemem_make`, with a signal channel: `*fd` receives the eventfd to
/// poll for signals and pass to `xemem_ack`. It stays open until remove.
///
/// # Safety
/// As `xemem_make` (`name`, the range); `fd` is writable.
#[no_mangle]
pub unsafe extern "C" fn xemem_make_signalled(
    vaddr: *mut c_void,
    size: usize,
    name: *mut c_char,
    fd: *mut c_int,
) -> XememSegid {
    const OP: &str = "xemem_make_signalled";
    guard(OP, XEMEM_INVALID_SEGID, || {
        if fd.is_null() {
            return Err(XememError::InvalidArgument {
                op: OP,
                reason: "fd is NULL".into(),
            });
        }
        // SAFETY: our caller's contract (as `xemem_make`'s), as `make` requires.
        let segid = unsafe { make(OP, vaddr, size, name, true, None) }?;
        let efd = hobbes_xemem::signal_fd(segid)?;
        // SAFETY: fd is non-NULL and writable per the contract above.
        unsafe { ffi::write_out(OP, fd, efd) }?;
        Ok(segid)
    })
}

/// As `xemem_make`, under the segid `request` (EEXIST when taken). 0 or -1.
///
/// # Safety
/// As `xemem_make`.
#[no_mangle]
pub unsafe extern "C" fn xemem_make_segid(
    vaddr: *mut c_void,
    size: usize,
    name: *mut c_char,
    request: XememSegid,
) -> c_int {
    guard("xemem_make_segid", -1, || {
        // SAFETY: our caller's contract (as `xemem_make`'s), as `make` requires.
        unsafe { make("xemem_make_segid", vaddr, size, name, false, Some(request)) }.map(|_| 0)
    })
}

/// Stop exporting a segment; attachments stay mapped until detached. 0, or
/// -1 with errno: ENOENT for an unknown segid, EACCES when it belongs to
/// another uid (root may remove any), ECONNREFUSED without `leviathan`.
#[no_mangle]
pub extern "C" fn xemem_remove(segid: XememSegid) -> c_int {
    guard("xemem_remove", -1, || {
        hobbes_xemem::remove(segid)?;
        // A published XASM copy no longer pins its version.
        hobbes_xasm::registry::segment_removed(segid);
        Ok(0)
    })
}

fn access(op: &'static str, flags: c_int) -> hobbes_xemem::Result<Access> {
    match flags {
        XEMEM_RDONLY => Ok(Access::ReadOnly),
        XEMEM_RDWR => Ok(Access::ReadWrite),
        other => Err(XememError::InvalidArgument {
            op,
            reason: format!("flags {other:#x}: give XEMEM_RDONLY or XEMEM_RDWR"),
        }),
    }
}

/// Access to a segment (`XEMEM_RDONLY` or `XEMEM_RDWR`): an apid, or -1.
#[no_mangle]
pub extern "C" fn xemem_get(segid: XememSegid, flags: c_int) -> XememApid {
    guard("xemem_get", -1, || {
        hobbes_xemem::get(segid, access("xemem_get", flags)?)
    })
}

/// Give up a permit; its attachments stay mapped until detached. 0, or -1
/// with ENOENT for an unknown apid.
#[no_mangle]
pub extern "C" fn xemem_release(apid: XememApid) -> c_int {
    guard("xemem_release", -1, || {
        hobbes_xemem::release(apid).map(|_| 0)
    })
}

/// Map `size` bytes of the permit's segment from `addr.offset`, at `vaddr`
/// (replacing what is there) or where the kernel picks (NULL).
/// `(void *)-1` on failure.
///
/// # Safety
/// A non-NULL `vaddr`: the page-rounded range there is the caller's to
/// replace (its own mapping or reservation, or an earlier attachment),
/// and nothing in the process uses or unmaps it as something else
/// afterwards. NULL is always safe.
#[no_mangle]
pub unsafe extern "C" fn xemem_attach(
    addr: XememAddr,
    size: usize,
    vaddr: *mut c_void,
) -> *mut c_void {
    guard("xemem_attach", ATTACH_FAILED, || {
        let offset = u64::try_from(addr.offset).map_err(|_| XememError::InvalidArgument {
            op: "xemem_attach",
            reason: format!("negative offset {}", addr.offset),
        })?;
        if vaddr.is_null() {
            hobbes_xemem::attach(addr.apid, offset, size).map(|p| p.cast())
        } else {
            // SAFETY: the C caller's contract above: the range at `vaddr`
            // is its own to replace.
            unsafe { hobbes_xemem::attach_at(addr.apid, offset, size, vaddr.cast()) }
                .map(|p| p.cast())
        }
    })
}

/// Same as `xemem_attach`: Linux mappings of shared memory are always cached.
///
/// # Safety
/// As `xemem_attach`.
#[no_mangle]
pub unsafe extern "C" fn xemem_attach_nocache(
    addr: XememAddr,
    size: usize,
    vaddr: *mut c_void,
) -> *mut c_void {
    // SAFETY: our caller's contract is `xemem_attach`'s.
    unsafe { xemem_attach(addr, size, vaddr) }
}

/// Unmap the attachment that contains `vaddr`. 0, or -1 with EINVAL when no
/// attachment made by this process contains it.
#[no_mangle]
pub extern "C" fn xemem_detach(vaddr: *mut c_void) -> c_int {
    guard("xemem_detach", -1, || {
        hobbes_xemem::detach(vaddr.cast()).map(|_| 0)
    })
}

/// Signal the segment of permit `apid`.
#[no_mangle]
pub extern "C" fn xemem_signal(apid: XememApid) -> c_int {
    guard("xemem_signal", -1, || {
        let segid = hobbes_xemem::cabi::grant_segid(apid)?;
        hobbes_xemem::signal(segid).map(|_| 0)
    })
}

/// Signal a segment by segid (no permit needed).
#[no_mangle]
pub extern "C" fn xemem_signal_segid(segid: XememSegid) -> c_int {
    guard("xemem_signal_segid", -1, || {
        hobbes_xemem::signal(segid).map(|_| 0)
    })
}

/// Consume one signal from a segment's eventfd (blocks until there is one).
#[no_mangle]
pub extern "C" fn xemem_ack(fd: c_int) -> c_int {
    guard("xemem_ack", -1, || hobbes_xemem::cabi::ack(fd).map(|_| 0))
}

/// The segid exported under `name`, or `XEMEM_INVALID_SEGID` (ENOENT).
///
/// # Safety
/// `name` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn xemem_lookup_segid(name: *mut c_char) -> XememSegid {
    const OP: &str = "xemem_lookup_segid";
    guard(OP, XEMEM_INVALID_SEGID, || {
        // SAFETY: per the contract above.
        let name =
            unsafe { ffi::opt_str(OP, name) }?.ok_or_else(|| XememError::InvalidArgument {
                op: OP,
                reason: "name is NULL".into(),
            })?;
        hobbes_xemem::lookup(name)?.ok_or_else(|| XememError::NotFound {
            op: OP,
            what: format!("no segment named {name:?}"),
        })
    })
}

fn c_name(name: Option<&str>) -> [c_char; XEMEM_SEG_NAME_LEN] {
    let mut out = [0 as c_char; XEMEM_SEG_NAME_LEN];
    // Longer names are cut (the last byte stays NUL), as in the seeds.
    for (dst, src) in out
        .iter_mut()
        .zip(name.unwrap_or("").bytes().take(XEMEM_SEG_NAME_LEN - 1))
    {
        *dst = src as c_char;
    }
    out
}

/// Every segment on the node (malloc'd; free it); `*num_segments` gets the
/// count. NULL with a count of 0 when there are none; NULL with errno set on
/// failure.
///
/// # Safety
/// `num_segments` is writable.
#[no_mangle]
pub unsafe extern "C" fn xemem_get_segment_list(num_segments: *mut c_int) -> *mut XememSegment {
    const OP: &str = "xemem_get_segment_list";
    guard(OP, std::ptr::null_mut(), || {
        if num_segments.is_null() {
            return Err(XememError::InvalidArgument {
                op: OP,
                reason: "num_segments is NULL".into(),
            });
        }
        let list: Vec<XememSegment> = hobbes_xemem::list()?
            .into_iter()
            .map(|s| XememSegment {
                segid: s.record.segid,
                name: c_name(s.record.name.as_deref()),
                enclave_id: s.record.owner_enclave,
                app_id: s.record.owner_app.unwrap_or(INVALID_ID),
            })
            .collect();
        let buf = ffi::malloc_array(OP, &list)?;
        // SAFETY: non-NULL and writable per the contract above.
        unsafe { ffi::write_out(OP, num_segments, ffi::count(list.len())) }?;
        Ok(buf)
    })
}

/// How many segments the node has, or -1.
#[no_mangle]
pub extern "C" fn xemem_num_segments() -> c_int {
    guard("xemem_num_segments", -1, || {
        Ok(ffi::count(hobbes_xemem::list()?.len()))
    })
}

/// The message of this thread's last failed call ("" if none).
#[no_mangle]
pub extern "C" fn xemem_last_error() -> *const c_char {
    guard("xemem_last_error", c"".as_ptr(), || {
        Ok(hobbes_xemem::cabi::last_error())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_cut_and_terminated() {
        let n = c_name(Some(&"x".repeat(100)));
        assert_eq!(n[XEMEM_SEG_NAME_LEN - 2], b'x' as c_char);
        assert_eq!(n[XEMEM_SEG_NAME_LEN - 1], 0);
        assert_eq!(c_name(None), [0; XEMEM_SEG_NAME_LEN]);
    }

    #[test]
    fn bad_flags_are_einval() {
        assert_eq!(xemem_get(1, 7), -1);
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::EINVAL)
        );
    }
}
