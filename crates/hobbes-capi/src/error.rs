//! Failure reporting across the C boundary: an errno value plus a message
//! kept per thread for `hobbes_last_error()`, and the panic guard every
//! export runs in.

use std::fmt::Display;
use std::io;
use std::os::raw::c_int;

use hobbes_client::{ClientError, NisError};
use hobbes_proto::frame::FrameError;
use hobbes_proto::msg::ErrorCode;

/// A failure on its way to C.
#[derive(Debug)]
pub struct Error {
    pub errno: c_int,
    pub message: String,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn new(errno: c_int, message: impl Display) -> Self {
        Error {
            errno,
            message: message.to_string(),
        }
    }

    pub fn invalid(message: impl Display) -> Self {
        Self::new(libc::EINVAL, message)
    }

    pub fn not_found(message: impl Display) -> Self {
        Self::new(libc::ENOENT, message)
    }
}

fn io_errno(e: &io::Error) -> c_int {
    match e.kind() {
        // No socket, or nobody listening on it: no daemon.
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => libc::ECONNREFUSED,
        io::ErrorKind::PermissionDenied => libc::EACCES,
        _ => e.raw_os_error().unwrap_or(libc::EIO),
    }
}

fn code_errno(code: ErrorCode) -> c_int {
    match code {
        ErrorCode::BadRequest | ErrorCode::InvalidSpec => libc::EINVAL,
        ErrorCode::TooLarge => libc::E2BIG,
        ErrorCode::NotFound => libc::ENOENT,
        ErrorCode::PermissionDenied => libc::EACCES,
        ErrorCode::Overcommit => libc::ENOSPC,
        ErrorCode::Conflict => libc::EBUSY,
        ErrorCode::Unavailable => libc::ETIMEDOUT,
        ErrorCode::Internal => libc::EIO,
    }
}

fn nis_errno(e: &NisError) -> c_int {
    match e {
        // No NIS (or no header yet) means no daemon has published the node.
        NisError::Missing(_) | NisError::NoHeader(_) => libc::ECONNREFUSED,
        NisError::Schema { .. } => libc::EPROTO,
        NisError::Lmdb {
            source: heed::Error::Io(io),
            ..
        } => io_errno(io),
        NisError::Lmdb { .. } => libc::EIO,
        NisError::Io { source, .. } => io_errno(source),
    }
}

fn frame_errno(e: &FrameError) -> c_int {
    match e {
        FrameError::Closed => libc::ECONNRESET,
        FrameError::Io(io) => io_errno(io),
        FrameError::BadMagic(_) | FrameError::Version { .. } | FrameError::Malformed(_) => {
            libc::EPROTO
        }
        FrameError::TooLarge { .. } => libc::EMSGSIZE,
        FrameError::TooManyFds { .. } => libc::ETOOMANYREFS,
        FrameError::Idle(_) | FrameError::Stalled(_) => libc::ETIMEDOUT,
    }
}

impl From<ClientError> for Error {
    fn from(e: ClientError) -> Self {
        let errno = match &e {
            ClientError::Connect { source, .. } => io_errno(source),
            ClientError::Frame { source, .. } => frame_errno(source),
            ClientError::Refused(reply) => code_errno(reply.code),
            ClientError::Unexpected { .. } => libc::EPROTO,
            ClientError::Nis(n) => nis_errno(n),
        };
        Error::new(errno, e)
    }
}

impl From<NisError> for Error {
    fn from(e: NisError) -> Self {
        Error::new(nis_errno(&e), e)
    }
}

impl cabi_support::CError for Error {
    fn errno(&self) -> c_int {
        self.errno
    }
}

impl Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

pub use cabi_support::last_error;

/// Run an export's body: on error (or panic, which must never unwind into C)
/// record it and return `on_error`.
pub fn guard<T>(name: &str, on_error: T, body: impl FnOnce() -> Result<T>) -> T {
    cabi_support::guard(name, on_error, body)
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
    fn panics_become_errors() {
        let got = guard("hobbes_test", -1, || -> Result<i32> { panic!("boom") });
        assert_eq!(got, -1);
        assert!(last().contains("boom"), "{}", last());
        assert_eq!(io::Error::last_os_error().raw_os_error(), Some(libc::EIO));
    }

    #[test]
    fn errors_set_errno_and_message() {
        let got = guard("hobbes_test", -1, || -> Result<i32> {
            Err(Error::not_found("no enclave 9\0with a nul"))
        });
        assert_eq!(got, -1);
        assert_eq!(
            io::Error::last_os_error().raw_os_error(),
            Some(libc::ENOENT)
        );
        assert!(last().starts_with("no enclave 9"), "{}", last());
    }
}
