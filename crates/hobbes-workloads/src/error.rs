//! Errors: each names the operation, the object and the reason.

/// What went wrong, and where.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad parameters (sizes, names, mode combinations).
    #[error("{op}: invalid argument: {reason}")]
    Invalid {
        /// The operation refused, e.g. `"init state"`.
        op: &'static str,
        /// What is wrong with the parameters.
        reason: String,
    },
    /// A coupling call failed: `object` is the region or segment.
    #[error("{op} {object}: {reason}")]
    Coupling {
        /// The coupling operation that failed (create, attach, snapshot, ...).
        op: &'static str,
        /// The region or segment name (`R`, `R@N`, `R.ctl`).
        object: String,
        /// The underlying error (from XASM, XEMEM or the system), as text.
        reason: String,
    },
    /// A bounded wait ran out.
    #[error("{op} {object}: timed out after {secs:.1} s: {reason}")]
    Timeout {
        /// The operation that waited.
        op: &'static str,
        /// The region or segment waited on.
        object: String,
        /// How long it waited, in seconds (the `--timeout`, 60 s by default).
        secs: f64,
        /// What it waited for (a step acknowledged, a region to appear, a lock, ...).
        reason: String,
    },
    /// Published state that does not parse (wrong magic, sizes beyond the region).
    #[error("{op}: bad published state in {object}: {reason}")]
    BadState {
        /// The operation that read the state.
        op: &'static str,
        /// The region or version the state came from.
        object: String,
        /// Which check failed.
        reason: String,
    },
    /// Processes, files, plots.
    #[error("{op} {object}: {reason}")]
    Io {
        /// The operation that failed (spawn, wait, write, plot, ...).
        op: &'static str,
        /// The program, file or path involved.
        object: String,
        /// The underlying error, as text.
        reason: String,
    },
}

/// `Result` with this crate's [`Error`].
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
