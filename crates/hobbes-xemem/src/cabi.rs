//! Support for the C ABIs built on this crate (libxemem, libxpmem): errno
//! plus a per-thread message for every failure, and the panic guard each
//! export runs in. Not part of the Rust API.

use crate::{sys, ApId, Result, SegId, XememError};

pub use cabi_support::last_error;

/// Run an export's body: on error, or a panic (which must never unwind into
/// C), record it and return `on_error`. Successes leave errno alone.
pub fn guard<T>(name: &str, on_error: T, body: impl FnOnce() -> Result<T>) -> T {
    cabi_support::guard(name, on_error, body)
}

impl cabi_support::CError for XememError {
    fn errno(&self) -> i32 {
        XememError::errno(self)
    }
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
