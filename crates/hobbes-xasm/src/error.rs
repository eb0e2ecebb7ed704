//! Typed errors naming the operation and the region or version, each with
//! the errno the C API reports for it.

use hobbes_xemem::XememError;
use nix::errno::Errno;

#[derive(Debug, thiserror::Error)]
pub enum XasmError {
    /// Bad arguments: sizes, alignment, names, options (EINVAL).
    #[error("{op}: invalid argument: {reason}")]
    InvalidArgument { op: &'static str, reason: String },
    /// No such region or version (never published, or reclaimed) (ENOENT).
    #[error("{op}: {what}")]
    NotFound { op: &'static str, what: String },
    /// The requested mechanism does not work on this kernel (ENOTSUP).
    #[error("{op}: {reason}")]
    Unsupported { op: &'static str, reason: String },
    /// The producer closed the region or exited (EPIPE).
    #[error("{op}: region {region:?}: the producer is gone ({reason})")]
    ProducerGone {
        op: &'static str,
        region: String,
        reason: String,
    },
    /// Another call on the same object is in progress (EBUSY; C API).
    #[error("{op}: {what} is busy: {reason}")]
    Busy {
        op: &'static str,
        what: String,
        reason: String,
    },
    /// Out of a fixed resource (ENOSPC).
    #[error("{op}: {reason}")]
    NoSpace { op: &'static str, reason: String },
    /// A system call failed; its errno is kept.
    #[error("{op}: {what}: {call}: {errno}")]
    Sys {
        op: &'static str,
        what: String,
        call: &'static str,
        errno: Errno,
    },
    /// An XEMEM operation failed (its errno is kept).
    #[error("{op}: {what}: {source}")]
    Xemem {
        op: &'static str,
        what: String,
        #[source]
        source: XememError,
    },
}

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
