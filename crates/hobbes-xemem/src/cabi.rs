//! Support for the C ABIs built on this crate (libxemem, libxpmem): errno
//! plus a per-thread message for every failure, and the panic guard each
//! export runs in. Not part of the Rust API.

use std::cell::RefCell;
use std::ffi::{c_char, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::{sys, ApId, Result, SegId, XememError};

thread_local! {
    static LAST_ERROR: RefCell<Option<CString>> = const { RefCell::new(None) };
}

/// Record a failure: errno for C, the message for `*_last_error()`.
pub fn record(e: &XememError) {
    record_raw(e.errno(), &e.to_string());
}

fn record_raw(errno: i32, message: &str) {
    // Messages include names from C; a stray NUL must not lose the message.
    let message = CString::new(message.replace('\0', "\\0")).unwrap_or_default();
    LAST_ERROR.with(|slot| *slot.borrow_mut() = Some(message));
    sys::set_errno(errno);
}

/// This thread's last failure message, or "". Valid until the next failure
/// on this thread.
pub fn last_error() -> *const c_char {
    LAST_ERROR.with(|slot| match &*slot.borrow() {
        Some(msg) => msg.as_ptr(),
        None => c"".as_ptr(),
    })
}

/// Consume one signal from an eventfd (`xemem_ack`): blocks until one is there.
pub fn ack(fd: std::os::fd::RawFd) -> Result<()> {
    sys::eventfd_ack_raw(fd)
        .map(drop)
        .map_err(XememError::sys("xemem_ack", "read(eventfd)"))
}

/// The segment a permit is for (`xemem_signal` takes an apid).
pub fn grant_segid(apid: ApId) -> Result<SegId> {
    crate::state::lock()
        .grants
        .get(&apid)
        .map(|g| g.segid)
        .ok_or_else(|| XememError::not_found("xemem_signal", format!("no access permit {apid}")))
}

/// Run an export's body: on error, or a panic (which must never unwind into
/// C), record it and return `on_error`. Successes leave errno alone.
pub fn guard<T>(name: &str, on_error: T, body: impl FnOnce() -> Result<T>) -> T {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(value)) => value,
        Ok(Err(e)) => {
            record(&e);
            on_error
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            record_raw(libc::EIO, &format!("{name}: internal error: {what}"));
            on_error
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;

    fn last() -> String {
        // SAFETY: last_error always returns a valid NUL-terminated string.
        unsafe { CStr::from_ptr(last_error()) }
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn errors_and_panics_set_errno_and_message() {
        let got = guard("xemem_test", -1, || -> Result<i32> {
            Err(XememError::invalid("xemem_make", "bad\0size"))
        });
        assert_eq!(got, -1);
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::EINVAL)
        );
        assert!(
            last().starts_with("xemem_make: invalid argument: bad"),
            "{}",
            last()
        );
        let got = guard("xemem_test", -2, || -> Result<i32> { panic!("boom") });
        assert_eq!(got, -2);
        assert!(last().contains("boom"), "{}", last());
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::EIO)
        );
    }
}
