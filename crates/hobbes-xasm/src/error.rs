//! Typed errors naming the operation and the region or version, each with
//! the errno the C API reports for it.

use hobbes_xemem::XememError;
use nix::errno::Errno;

/// Why an XASM operation failed. Every variant names the operation (its C
/// name, which starts the message) and maps to one errno ([`errno`]) that
/// the C API (`xasm.h` in libxemem) sets.
///
/// [`errno`]: XasmError::errno
#[derive(Debug, thiserror::Error)]
pub enum XasmError {
    /// Bad arguments: sizes, alignment, names, options (EINVAL).
    #[error("{op}: invalid argument: {reason}")]
    InvalidArgument {
        /// The operation that failed, as its C name (`xasm_snapshot`);
        /// starts the message.
        op: &'static str,
        /// Which argument was wrong and what is expected instead.
        reason: String,
    },
    /// No such region or version (never published, or reclaimed) (ENOENT).
    #[error("{op}: {what}")]
    NotFound {
        /// The operation that failed, as its C name (`xasm_snapshot`);
        /// starts the message.
        op: &'static str,
        /// The region or version looked for, and why it is gone.
        what: String,
    },
    /// The requested mechanism does not work on this kernel (ENOTSUP).
    #[error("{op}: {reason}")]
    Unsupported {
        /// The operation that failed, as its C name (`xasm_snapshot`);
        /// starts the message.
        op: &'static str,
        /// Which dirty-tracking mechanism is unavailable and what the kernel
        /// lacks for it.
        reason: String,
    },
    /// The producer closed the region or exited (EPIPE).
    #[error("{op}: region {region:?}: the producer is gone ({reason})")]
    ProducerGone {
        /// The operation that failed, as its C name (`xasm_snapshot`);
        /// starts the message.
        op: &'static str,
        /// The region's name.
        region: String,
        /// How the consumer noticed (the channel segment was removed...).
        reason: String,
    },
    /// Another call on the same object is in progress (EBUSY; C API).
    #[error("{op}: {what} is busy: {reason}")]
    Busy {
        /// The operation that failed, as its C name (`xasm_snapshot`);
        /// starts the message.
        op: &'static str,
        /// The object in use (`region "grid"`).
        what: String,
        /// What is using it (another snapshot in progress), or why the call
        /// gave up; a retry may succeed.
        reason: String,
    },
    /// Out of a fixed resource (ENOSPC).
    #[error("{op}: {reason}")]
    NoSpace {
        /// The operation that failed, as its C name (`xasm_snapshot`);
        /// starts the message.
        op: &'static str,
        /// Which fixed resource ran out and its limit (the `mprotect`
        /// mechanism's per-process region slots).
        reason: String,
    },
    /// A system call failed; its errno is kept.
    #[error("{op}: {what}: {call}: {errno}")]
    Sys {
        /// The operation that failed, as its C name (`xasm_snapshot`);
        /// starts the message.
        op: &'static str,
        /// The region or version the call was about (`region grid`).
        what: String,
        /// The system call that failed (`pwritev`, `mmap`, `ioctl(UFFDIO_*)`).
        call: &'static str,
        /// Its errno, passed on to C callers unchanged.
        errno: Errno,
    },
    /// An XEMEM operation failed (its errno is kept).
    #[error("{op}: {what}: {source}")]
    Xemem {
        /// The operation that failed, as its C name (`xasm_snapshot`);
        /// starts the message.
        op: &'static str,
        /// The region or version being published, got or attached.
        what: String,
        /// XEMEM's error; its errno is the one C callers see.
        #[source]
        source: XememError,
    },
}

/// The result of every XASM operation.
pub type Result<T> = std::result::Result<T, XasmError>;

impl XasmError {
    /// The errno a C caller sees for this error.
    pub fn errno(&self) -> i32 {
        match self {
            XasmError::InvalidArgument { .. } => libc::EINVAL,
            XasmError::NotFound { .. } => libc::ENOENT,
            XasmError::Unsupported { .. } => libc::ENOTSUP,
            XasmError::ProducerGone { .. } => libc::EPIPE,
            XasmError::Busy { .. } => libc::EBUSY,
            XasmError::NoSpace { .. } => libc::ENOSPC,
            XasmError::Sys { errno, .. } => *errno as i32,
            XasmError::Xemem { source, .. } => source.errno(),
        }
    }

    pub(crate) fn invalid(op: &'static str, reason: impl Into<String>) -> Self {
        XasmError::InvalidArgument {
            op,
            reason: reason.into(),
        }
    }

    pub(crate) fn not_found(op: &'static str, what: impl Into<String>) -> Self {
        XasmError::NotFound {
            op,
            what: what.into(),
        }
    }

    /// A system call failure on `what` (a region or version name).
    pub(crate) fn sys(
        op: &'static str,
        what: impl Into<String>,
        call: &'static str,
    ) -> impl FnOnce(Errno) -> Self {
        let what = what.into();
        move |errno| XasmError::Sys {
            op,
            what,
            call,
            errno,
        }
    }

    pub(crate) fn xemem(
        op: &'static str,
        what: impl Into<String>,
    ) -> impl FnOnce(XememError) -> Self {
        let what = what.into();
        move |source| XasmError::Xemem { op, what, source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errnos_and_messages() {
        let e = XasmError::sys("xasm_snapshot", "region grid", "pwritev")(Errno::ENOSPC);
        assert_eq!(e.errno(), libc::ENOSPC);
        assert_eq!(
            e.to_string(),
            "xasm_snapshot: region grid: pwritev: ENOSPC: No space left on device"
        );
        let e = XasmError::ProducerGone {
            op: "xasm_wait_newer",
            region: "grid".into(),
            reason: "closed".into(),
        };
        assert_eq!(e.errno(), libc::EPIPE);
        assert!(e.to_string().contains("\"grid\""), "{e}");
        assert_eq!(XasmError::invalid("x", "y").errno(), libc::EINVAL);
        assert_eq!(XasmError::not_found("x", "y").errno(), libc::ENOENT);
    }
}
