//! What every Hobbes C ABI (libhobbes, libxemem with XASM, libxpmem) needs:
//! a failure sets errno and keeps a message per thread for the library's
//! `*_last_error()`, and every export runs its body in [`guard`], so that an
//! error becomes the export's failure value and a panic never unwinds into C.
//!
//! Each C library links its own copy of this crate, so each has its own
//! per-thread message.

#![deny(missing_docs)]

use std::cell::RefCell;
use std::ffi::{c_char, c_int, CString};
use std::fmt::Display;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// An error that knows the errno C callers should see.
pub trait CError: Display {
    /// The errno value (`libc::E*`, positive) that [`guard`] sets when this
    /// error ends an export; the `Display` text becomes the message.
    fn errno(&self) -> c_int;
}

thread_local! {
    static LAST_ERROR: RefCell<Option<CString>> = const { RefCell::new(None) };
}

/// Record a failure: `errno` for C, `message` for `*_last_error()`.
pub fn record(errno: c_int, message: &str) {
    // Messages carry names and paths from callers and peers: a stray NUL must
    // not lose the message.
    let message = CString::new(message.replace('\0', "\\0")).unwrap_or_default();
    LAST_ERROR.with(|slot| *slot.borrow_mut() = Some(message));
    set_errno(errno);
}

/// This thread's last failure message, or "". The pointer stays valid until
/// the next failure on this thread.
pub fn last_error() -> *const c_char {
    LAST_ERROR.with(|slot| match &*slot.borrow() {
        Some(msg) => msg.as_ptr(),
        None => c"".as_ptr(),
    })
}

/// Run an export's body: on error, or a panic, record it and return
/// `on_error`. Successes leave errno and the message alone.
pub fn guard<T, E: CError>(name: &str, on_error: T, body: impl FnOnce() -> Result<T, E>) -> T {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(value)) => value,
        Ok(Err(e)) => {
            record(e.errno(), &e.to_string());
            on_error
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            record(libc::EIO, &format!("{name}: internal error: {what}"));
            on_error
        }
    }
}

fn set_errno(value: c_int) {
    // SAFETY: __errno_location returns a valid pointer to this thread's errno.
    unsafe { *libc::__errno_location() = value };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;

    #[derive(Debug)]
    struct Oops;
    impl Display for Oops {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("op: thing\0with a NUL is missing")
        }
    }
    impl CError for Oops {
        fn errno(&self) -> c_int {
            libc::ENOENT
        }
    }

    fn message() -> String {
        // SAFETY: last_error returns a valid NUL-terminated string.
        unsafe { CStr::from_ptr(last_error()) }
            .to_string_lossy()
            .into_owned()
    }

    fn errno() -> c_int {
        // SAFETY: as in set_errno.
        unsafe { *libc::__errno_location() }
    }

    #[test]
    fn errors_set_errno_and_the_message() {
        assert_eq!(guard("op", -1, || Err::<i32, _>(Oops)), -1);
        assert_eq!(errno(), libc::ENOENT);
        assert_eq!(message(), "op: thing\\0with a NUL is missing");
        // A success leaves both alone.
        assert_eq!(guard("op", -1, || Ok::<_, Oops>(3)), 3);
        assert_eq!(errno(), libc::ENOENT);
    }

    #[test]
    fn panics_become_eio() {
        let r = guard("xemem_get", 7, || -> Result<i32, Oops> { panic!("boom") });
        assert_eq!(r, 7);
        assert_eq!(errno(), libc::EIO);
        assert_eq!(message(), "xemem_get: internal error: boom");
    }
}
