//! Typed errors, each with the errno the C APIs report for it.

use hobbes_client::ClientError;
use hobbes_client::NisError;
use hobbes_proto::frame::FrameError;
use hobbes_proto::msg::ErrorCode;
use nix::errno::Errno;

/// Why an XEMEM operation failed. Every variant names the operation (its C
/// name, which starts the message) and maps to one errno ([`errno`]) that
/// libxemem and libxpmem set.
///
/// [`errno`]: XememError::errno
#[derive(Debug, thiserror::Error)]
pub enum XememError {
    /// Bad arguments: alignment, sizes, offsets, flags (EINVAL).
    #[error("{op}: invalid argument: {reason}")]
    InvalidArgument {
        /// The operation that failed, as its C name (`xemem_make`); starts
        /// the message.
        op: &'static str,
        /// Which argument was wrong and what is expected instead.
        reason: String,
    },
    /// Unknown segid, apid, name or attachment (ENOENT).
    #[error("{op}: {what}")]
    NotFound {
        /// The operation that failed, as its C name (`xemem_make`); starts
        /// the message.
        op: &'static str,
        /// What was looked for and not found, or the name server's message.
        what: String,
    },
    /// The segment's permit mode does not grant this access (EACCES).
    #[error("{op}: {reason}")]
    PermissionDenied {
        /// The operation that failed, as its C name (`xemem_make`); starts
        /// the message.
        op: &'static str,
        /// Who owns the segment and what was asked, or the name server's
        /// message.
        reason: String,
    },
    /// Part of the range is not mapped (EFAULT).
    #[error("{op}: address {addr:#x} (in range {start:#x}+{len:#x}) is not mapped")]
    NotMapped {
        /// The operation that failed, as its C name (`xemem_make`); starts
        /// the message.
        op: &'static str,
        /// The first address in the range that is not mapped.
        addr: usize,
        /// The start of the range the caller passed.
        start: usize,
        /// The length of that range, in bytes.
        len: usize,
    },
    /// No name server to talk to (ECONNREFUSED).
    #[error("{op}: {source}")]
    NoDaemon {
        /// The operation that failed, as its C name (`xemem_make`); starts
        /// the message.
        op: &'static str,
        /// The client error: the socket that refused, or the NIS that is
        /// missing.
        source: ClientError,
    },
    /// The requested segid (or name) is taken (EEXIST).
    #[error("{op}: {reason}")]
    Exists {
        /// The operation that failed, as its C name (`xemem_make`); starts
        /// the message.
        op: &'static str,
        /// The name server's message naming what is taken.
        reason: String,
    },
    /// The daemon is out of room for this request (ENOSPC).
    #[error("{op}: {reason}")]
    NoSpace {
        /// The operation that failed, as its C name (`xemem_make`); starts
        /// the message.
        op: &'static str,
        /// The name server's message saying what ran out.
        reason: String,
    },
    /// A system call failed; its errno (ENOMEM, EACCES, ...) is kept.
    #[error("{op}: {call}: {errno}")]
    Sys {
        /// The operation that failed, as its C name (`xemem_make`); starts
        /// the message.
        op: &'static str,
        /// The system call that failed (`mmap`, `memfd_create`).
        call: &'static str,
        /// Its errno, passed on to C callers unchanged.
        errno: Errno,
    },
    /// Anything else: a broken connection, an unexpected reply (EIO).
    #[error("{op}: {reason}")]
    Other {
        /// The operation that failed, as its C name (`xemem_make`); starts
        /// the message.
        op: &'static str,
        /// What went wrong, for the message.
        reason: String,
    },
}

/// The result of every XEMEM operation.
pub type Result<T> = std::result::Result<T, XememError>;

impl XememError {
    /// The errno a C caller sees for this error.
    pub fn errno(&self) -> i32 {
        match self {
            XememError::InvalidArgument { .. } => libc::EINVAL,
            XememError::NotFound { .. } => libc::ENOENT,
            XememError::PermissionDenied { .. } => libc::EACCES,
            XememError::NotMapped { .. } => libc::EFAULT,
            XememError::NoDaemon { .. } => libc::ECONNREFUSED,
            XememError::Exists { .. } => libc::EEXIST,
            XememError::NoSpace { .. } => libc::ENOSPC,
            XememError::Sys { errno, .. } => *errno as i32,
            XememError::Other { .. } => libc::EIO,
        }
    }

    pub(crate) fn invalid(op: &'static str, reason: impl Into<String>) -> Self {
        XememError::InvalidArgument {
            op,
            reason: reason.into(),
        }
    }

    pub(crate) fn not_found(op: &'static str, what: impl Into<String>) -> Self {
        XememError::NotFound {
            op,
            what: what.into(),
        }
    }

    pub(crate) fn sys(op: &'static str, call: &'static str) -> impl FnOnce(Errno) -> Self {
        move |errno| XememError::Sys { op, call, errno }
    }

    /// Classify a client failure for `op`.
    pub(crate) fn client(op: &'static str, e: ClientError) -> Self {
        let reason = e.to_string();
        match &e {
            ClientError::Connect { source, .. }
                if source.kind() == std::io::ErrorKind::PermissionDenied =>
            {
                XememError::PermissionDenied { op, reason }
            }
            ClientError::Connect { .. } => XememError::NoDaemon { op, source: e },
            ClientError::Nis(NisError::Missing(_) | NisError::NoHeader(_)) => {
                XememError::NoDaemon { op, source: e }
            }
            ClientError::Refused(reply) => match reply.code {
                ErrorCode::NotFound => XememError::NotFound { op, what: reason },
                ErrorCode::PermissionDenied => XememError::PermissionDenied { op, reason },
                ErrorCode::Conflict => XememError::Exists { op, reason },
                ErrorCode::Overcommit | ErrorCode::TooLarge => XememError::NoSpace { op, reason },
                ErrorCode::BadRequest | ErrorCode::InvalidSpec => {
                    XememError::InvalidArgument { op, reason }
                }
                ErrorCode::Unavailable | ErrorCode::Internal => XememError::Other { op, reason },
            },
            _ => XememError::Other { op, reason },
        }
    }
}

/// True when the connection itself failed (the daemon went away or
/// restarted): the request may not have been seen, so a fresh connection is
/// worth one retry for idempotent requests.
pub(crate) fn connection_broke(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Frame {
            source: FrameError::Closed | FrameError::Io(_),
            ..
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use hobbes_proto::msg::ErrorReply;

    fn refused(code: ErrorCode) -> XememError {
        XememError::client(
            "xemem_get",
            ClientError::Refused(ErrorReply {
                code,
                message: "nope".into(),
            }),
        )
    }

    #[test]
    fn daemon_refusals_map_to_errno() {
        assert_eq!(refused(ErrorCode::NotFound).errno(), libc::ENOENT);
        assert_eq!(refused(ErrorCode::PermissionDenied).errno(), libc::EACCES);
        assert_eq!(refused(ErrorCode::Conflict).errno(), libc::EEXIST);
        assert_eq!(refused(ErrorCode::InvalidSpec).errno(), libc::EINVAL);
        assert_eq!(refused(ErrorCode::Overcommit).errno(), libc::ENOSPC);
        assert_eq!(refused(ErrorCode::Internal).errno(), libc::EIO);
        assert_eq!(refused(ErrorCode::NotFound).to_string(), "xemem_get: nope");
    }

    #[test]
    fn no_daemon_is_econnrefused() {
        let e = XememError::client(
            "xemem_make",
            ClientError::Connect {
                path: "/nonexistent/leviathan.sock".into(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            },
        );
        assert_eq!(e.errno(), libc::ECONNREFUSED);
        assert!(e.to_string().contains("leviathan"), "{e}");
    }

    #[test]
    fn syscall_errors_keep_errno() {
        let e = XememError::sys("xemem_attach", "mmap")(Errno::ENOMEM);
        assert_eq!(e.errno(), libc::ENOMEM);
        assert!(
            e.to_string().starts_with("xemem_attach: mmap: ENOMEM"),
            "{e}"
        );
    }
}
