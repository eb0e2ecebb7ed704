//! `leviathan`, the node manager daemon (enclave 0).
//!
//! Threads: one accepts clients on `leviathan.sock` (a thread per
//! connection), one accepts enclave control processes on `control.sock` (a
//! thread per enclave link), one checks health, one reaps children, and the
//! main thread waits for SIGTERM/SIGINT.
//!
//! Every change to the node's state is one NIS write transaction
//! (`NisWriter::update`), which reads and writes atomically: allocation
//! decisions and their records can never race.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use hobbes_nis::NisWriter;
use hobbes_proto::model::{AppId, EnclaveId};
use hobbes_proto::msg::{ErrorCode, ErrorReply};

use crate::config::Config;
use crate::kinds::{EnclaveDriver, KindRegistry};

mod admission;
mod apps;
mod enclaves;
mod link;
mod locks;
pub mod remora;
mod server;
mod startup;
mod xemem;

pub use startup::{cleanup, cleanup_with, run, run_with};

/// Paths inside the state directory.
#[derive(Debug, Clone)]
pub struct StatePaths {
    pub root: PathBuf,
}

impl StatePaths {
    pub fn socket(&self) -> PathBuf {
        self.root.join("leviathan.sock")
    }
    pub fn control_socket(&self) -> PathBuf {
        self.root.join("control.sock")
    }
    pub fn pid_file(&self) -> PathBuf {
        self.root.join("leviathan.pid")
    }
    pub fn nis(&self) -> PathBuf {
        self.root.join("nis")
    }
    pub fn enclave_dir(&self, id: EnclaveId) -> PathBuf {
        self.root.join("enclaves").join(id.to_string())
    }
    /// The secret that admits enclave `id`'s control link (root-only file).
    pub fn control_credential(&self, id: EnclaveId) -> PathBuf {
        self.enclave_dir(id).join("control.credential")
    }
    pub fn app_dir(&self, id: AppId) -> PathBuf {
        self.root.join("apps").join(id.to_string())
    }
}

/// A request refused: what the client sees.
pub type Refusal = ErrorReply;

pub fn refuse(code: ErrorCode, message: impl Into<String>) -> Refusal {
    ErrorReply::new(code, message)
}

pub fn internal(e: impl std::fmt::Display) -> Refusal {
    ErrorReply::new(ErrorCode::Internal, e.to_string())
}

/// The daemon's shared state.
pub struct Daemon {
    pub cfg: Config,
    pub paths: StatePaths,
    pub nis: Arc<NisWriter>,
    pub privileged: bool,
    /// One driver per enclave kind (`crate::kinds::registry`).
    kinds: KindRegistry,
    /// Live links to control processes, and a condition for "a link appeared".
    links: Mutex<HashMap<EnclaveId, Arc<link::Link>>>,
    links_changed: Condvar,
    /// Clients waiting on apps (wait, streamed output).
    subs: Mutex<HashMap<AppId, Vec<apps::Subscriber>>>,
    /// Enclaves found alive at start, waiting for their control process to reattach.
    reattach_deadline: Mutex<HashMap<EnclaveId, Instant>>,
    shutting_down: AtomicBool,
    /// Client connections per uid, to refuse floods without locking anyone out.
    admission: std::sync::Arc<admission::Admission>,
    /// Bounds log lines about one user's refused connections and requests.
    log_limiter: admission::LogLimiter,
    /// Descriptors held back for answering clients at `EMFILE` and for shutdown.
    fd_reserve: admission::FdReserve,
    /// XEMEM: the name server's references to every segment's memory.
    backings: Mutex<HashMap<hobbes_proto::model::SegId, xemem::Backing>>,
    /// Remora jobs still running.
    jobs: Mutex<HashMap<hobbes_proto::msg::JobId, Arc<remora::LiveJob>>>,
}

impl Daemon {
    fn driver(&self, kind: hobbes_proto::model::EnclaveKind) -> Option<&dyn EnclaveDriver> {
        self.kinds.get(kind)
    }

    pub fn heartbeat_timeout(&self) -> Duration {
        Duration::from_millis(self.cfg.heartbeat_timeout_ms)
    }

    fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }
}

/// Unix time in ms.
pub fn now_ms() -> u64 {
    hobbes_proto::model::now_ms()
}

/// Remove a directory tree, ignoring "not found".
pub fn remove_tree(path: &Path) {
    if let Err(e) = std::fs::remove_dir_all(path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove");
        }
    }
}
