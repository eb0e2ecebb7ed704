//! `libxpmem.so`: XPMEM's user API (`include/xpmem.h`, same signatures and
//! constants as hpc/xpmem's) on XEMEM, so XPMEM programs build and run
//! unmodified, across enclaves, without the XPMEM kernel module.
//!
//! Failures return -1 (`(void *)-1` for `xpmem_attach`) and set errno;
//! `xpmem_last_error()` (an extension) has the message.

#![deny(missing_docs)]

use std::ffi::{c_char, c_int, c_void};

use hobbes_xemem::cabi::guard;
use hobbes_xemem::{Access, MakeOptions, XememError};

/// `xpmem_segid_t`: a segment id from `xpmem_make`, valid node-wide (any
/// process, any enclave); -1 means failure.
pub type XpmemSegid = i64;
/// `xpmem_apid_t`: an access permit from `xpmem_get`, valid only in the
/// process that got it; -1 means failure.
pub type XpmemApid = i64;

/// `xpmem_get` flag: attachments made with the permit are read-only.
pub const XPMEM_RDONLY: c_int = 0x1;
/// `xpmem_get` flag: attachments made with the permit are read-write
/// (the segment's permit mode must grant write access).
pub const XPMEM_RDWR: c_int = 0x2;
/// The only permit type: `permit_value` holds file-like mode bits.
pub const XPMEM_PERMIT_MODE: c_int = 0x1;
/// The size XPMEM uses with `vaddr == NULL` to share a whole address space
/// (then `xpmem_attach`'s offset is an address of the owner).
pub const XPMEM_MAXADDR_SIZE: usize = usize::MAX;
/// What `xpmem_version` reports: the XPMEM 2.6 interface.
pub const XPMEM_VERSION: c_int = 0x0002_6003;

/// `struct xpmem_addr`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct XpmemAddr {
    /// The permit to attach through (from `xpmem_get`).
    pub apid: XpmemApid,
    /// Byte offset into the segment where the attachment starts; must not
    /// be negative. Need not be page-aligned: the returned pointer is then
    /// `offset % page` bytes into the first mapped page.
    pub offset: libc::off_t,
}

const ATTACH_FAILED: *mut c_void = usize::MAX as *mut c_void;

fn invalid(op: &'static str, reason: impl Into<String>) -> XememError {
    XememError::InvalidArgument {
        op,
        reason: reason.into(),
    }
}

/// The interface version, [`XPMEM_VERSION`]. Never fails.
#[no_mangle]
pub extern "C" fn xpmem_version() -> c_int {
    XPMEM_VERSION
}

/// Share `[vaddr, vaddr+size)` with permit mode `permit_value` (octal bits
/// cast to a pointer, as in `(void *)0666`). `vaddr == NULL` with
/// `size == XPMEM_MAXADDR_SIZE` shares the whole address space: attachers
/// pass an address of this process as `xpmem_attach`'s offset, and the
/// range is converted in place when first attached (docs/xemem.md,
/// "Whole-address-space shares").
///
/// # Safety
/// The range is the caller's own memory (malloc'd, mmap'd, static, stack
/// it keeps alive): it is copied into shared memory and remapped in place
/// (same address, same contents), so no other thread may write or unmap it
/// while the call runs, and afterwards others granted the segment may
/// read (or write) it.
#[no_mangle]
pub unsafe extern "C" fn xpmem_make(
    vaddr: *mut c_void,
    size: usize,
    permit_type: c_int,
    permit_value: *mut c_void,
) -> XpmemSegid {
    const OP: &str = "xpmem_make";
    guard(OP, -1, || {
        if permit_type != XPMEM_PERMIT_MODE {
            return Err(invalid(
                OP,
                format!("permit_type {permit_type}: only XPMEM_PERMIT_MODE"),
            ));
        }
        let mode = u32::try_from(permit_value as usize)
            .ok()
            .filter(|m| m & !0o777 == 0)
            .ok_or_else(|| {
                invalid(
                    OP,
                    format!("permit_value {:#o} is not a mode", permit_value as usize),
                )
            })?;
        // XPMEM's mode 0 grants only the owner: our default.
        let opts = MakeOptions {
            mode,
            ..Default::default()
        };
        if vaddr.is_null() && size == XPMEM_MAXADDR_SIZE {
            return hobbes_xemem::wholeas::make_whole(&opts);
        }
        // SAFETY: the C caller's contract above: the range is its own,
        // and no thread writes or unmaps it during the call.
        unsafe { hobbes_xemem::make(vaddr.cast(), size, &opts) }
    })
}

/// Stop sharing a segment: it can no longer be got; existing attachments
/// stay mapped until detached. -1 with ENOENT for an unknown segid, EACCES
/// when it belongs to another uid (root may remove any), ECONNREFUSED when
/// no `leviathan` answers.
#[no_mangle]
pub extern "C" fn xpmem_remove(segid: XpmemSegid) -> c_int {
    guard("xpmem_remove", -1, || {
        hobbes_xemem::remove(segid).map(|_| 0)
    })
}

/// Access to a segment: `flags` is `XPMEM_RDONLY` or `XPMEM_RDWR`. The
/// requester's own permit arguments are ignored, as in XPMEM.
#[no_mangle]
pub extern "C" fn xpmem_get(
    segid: XpmemSegid,
    flags: c_int,
    permit_type: c_int,
    _permit_value: *mut c_void,
) -> XpmemApid {
    const OP: &str = "xpmem_get";
    guard(OP, -1, || {
        let access = match flags {
            XPMEM_RDONLY => Access::ReadOnly,
            XPMEM_RDWR => Access::ReadWrite,
            other => {
                return Err(invalid(
                    OP,
                    format!("flags {other:#x}: XPMEM_RDONLY or XPMEM_RDWR"),
                ))
            }
        };
        if permit_type != XPMEM_PERMIT_MODE {
            return Err(invalid(
                OP,
                format!("permit_type {permit_type}: only XPMEM_PERMIT_MODE"),
            ));
        }
        hobbes_xemem::get(segid, access)
    })
}

/// Give up a permit. Unlike XPMEM, its attachments stay mapped until
/// detached (or the process exits).
#[no_mangle]
pub extern "C" fn xpmem_release(apid: XpmemApid) -> c_int {
    guard("xpmem_release", -1, || {
        hobbes_xemem::release(apid).map(|_| 0)
    })
}

/// Map `size` bytes from `addr.offset` at `vaddr` (NULL: anywhere). `(void *)-1` on failure.
///
/// # Safety
/// A non-NULL `vaddr`: the page-rounded range there is the caller's to
/// replace (its own mapping or reservation, or an earlier attachment),
/// and nothing in the process uses or unmaps it as something else
/// afterwards. NULL is always safe.
#[no_mangle]
pub unsafe extern "C" fn xpmem_attach(
    addr: XpmemAddr,
    size: usize,
    vaddr: *mut c_void,
) -> *mut c_void {
    const OP: &str = "xpmem_attach";
    guard(OP, ATTACH_FAILED, || {
        let offset = u64::try_from(addr.offset)
            .map_err(|_| invalid(OP, format!("negative offset {}", addr.offset)))?;
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

/// Unmap the attachment that contains `vaddr`. -1 with EINVAL when no
/// attachment made by this process contains it.
#[no_mangle]
pub extern "C" fn xpmem_detach(vaddr: *mut c_void) -> c_int {
    guard("xpmem_detach", -1, || {
        hobbes_xemem::detach(vaddr.cast()).map(|_| 0)
    })
}

/// The message of this thread's last failed call ("" if none). (Extension.)
#[no_mangle]
pub extern "C" fn xpmem_last_error() -> *const c_char {
    guard("xpmem_last_error", c"".as_ptr(), || {
        Ok(hobbes_xemem::cabi::last_error())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errno() -> Option<i32> {
        std::io::Error::last_os_error().raw_os_error()
    }

    #[test]
    fn whole_address_space_with_a_bad_mode_is_refused() {
        // SAFETY: refused before any memory is touched.
        let r = unsafe {
            xpmem_make(
                std::ptr::null_mut(),
                XPMEM_MAXADDR_SIZE,
                XPMEM_PERMIT_MODE,
                0o1666 as *mut c_void,
            )
        };
        assert_eq!(r, -1);
        assert_eq!(errno(), Some(libc::EINVAL));
        // SAFETY: xpmem_last_error returns a valid NUL-terminated string.
        let msg = unsafe { std::ffi::CStr::from_ptr(xpmem_last_error()) };
        assert!(msg.to_string_lossy().contains("not a mode"));
    }

    #[test]
    fn bad_permits_and_flags() {
        // SAFETY: a bad permit type, refused before the range is touched.
        let r = unsafe { xpmem_make(4096 as *mut c_void, 4096, 2, 0o666 as *mut c_void) };
        assert_eq!((r, errno()), (-1, Some(libc::EINVAL)));
        // SAFETY: a bad mode, refused before the range is touched.
        let r = unsafe {
            xpmem_make(
                4096 as *mut c_void,
                4096,
                XPMEM_PERMIT_MODE,
                0o7777 as *mut c_void,
            )
        };
        assert_eq!((r, errno()), (-1, Some(libc::EINVAL)));
        let r = xpmem_get(1, 3, XPMEM_PERMIT_MODE, std::ptr::null_mut());
        assert_eq!((r, errno()), (-1, Some(libc::EINVAL)));
        assert_eq!(xpmem_version(), XPMEM_VERSION);
    }
}
