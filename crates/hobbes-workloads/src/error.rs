//! Errors: each names the operation, the object and the reason.

/// What went wrong, and where.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad parameters (sizes, names, mode combinations).
    #[error("{op}: invalid argument: {reason}")]
    Invalid { op: &'static str, reason: String },
    /// A coupling call failed: `object` is the region or segment.
    #[error("{op} {object}: {reason}")]
    Coupling {
        op: &'static str,
        object: String,
        reason: String,
    },
    /// A bounded wait ran out.
    #[error("{op} {object}: timed out after {secs:.1} s: {reason}")]
    Timeout {
        op: &'static str,
        object: String,
        secs: f64,
        reason: String,
    },
    /// Published state that does not parse (wrong magic, sizes beyond the region).
    #[error("{op}: bad published state in {object}: {reason}")]
    BadState {
        op: &'static str,
        object: String,
        reason: String,
    },
    /// Processes, files, plots.
    #[error("{op} {object}: {reason}")]
    Io {
        op: &'static str,
        object: String,
        reason: String,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn invalid(op: &'static str, reason: impl Into<String>) -> Self {
        Error::Invalid {
            op,
            reason: reason.into(),
        }
    }

    pub(crate) fn coupling(
        op: &'static str,
        object: impl Into<String>,
        reason: impl std::fmt::Display,
    ) -> Self {
        Error::Coupling {
            op,
            object: object.into(),
            reason: reason.to_string(),
        }
    }

    pub(crate) fn io(
        op: &'static str,
        object: impl Into<String>,
        reason: impl std::fmt::Display,
    ) -> Self {
        Error::Io {
            op,
            object: object.into(),
            reason: reason.to_string(),
        }
    }

    pub(crate) fn bad_state(op: &'static str, object: &str, reason: impl Into<String>) -> Self {
        Error::BadState {
            op,
            object: object.to_string(),
            reason: reason.into(),
        }
    }
}
