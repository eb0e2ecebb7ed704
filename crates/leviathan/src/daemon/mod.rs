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

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hobbes_nis::NisWriter;
use hobbes_proto::model::{AppId, EnclaveId};
use hobbes_proto::msg::{ErrorCode, ErrorReply};

use crate::config::Config;
use crate::kinds::{EnclaveDriver, KindRegistry};

mod admission;
mod apps;
mod bound;
mod enclaves;
mod hugetlb;
mod link;
mod locks;
pub mod remora;
mod segment_mount;
mod server;
mod startup;
mod xemem;

pub use startup::{cleanup, cleanup_with, run, run_with};

/// Paths inside the state directory: the one place that names its layout, used
/// by the daemon and by `leviathan cleanup`. Nothing is created here.
#[derive(Debug, Clone)]
pub struct StatePaths {
    /// The state directory itself ([`Config::state_dir`]).
    pub root: PathBuf,
}

impl StatePaths {
    /// `<state>/leviathan.sock`: the client socket (mode 0666; every request
    /// authorized from `SO_PEERCRED`).
    pub fn socket(&self) -> PathBuf {
        self.root.join("leviathan.sock")
    }
    /// `<state>/control.sock`: where control processes attach (mode 0600).
    pub fn control_socket(&self) -> PathBuf {
        self.root.join("control.sock")
    }
    /// `<state>/leviathan.pid`: the running daemon's pid, and the file whose
    /// `flock` makes one daemon per state directory (`locks::lock_state_dir`).
    pub fn pid_file(&self) -> PathBuf {
        self.root.join("leviathan.pid")
    }
    /// `<state>/managed.json`: the part of the node the state directory
    /// was created to manage (`--cpus`, `--memory`, `--memory-blocks`);
    /// absent for the whole node. A restart must ask for the same.
    pub fn managed(&self) -> PathBuf {
        self.root.join("managed.json")
    }
    /// `<state>/nis`: the LMDB environment of the primary NIS.
    pub fn nis(&self) -> PathBuf {
        self.root.join("nis")
    }
    /// `<state>/enclaves/<id>`: enclave `id`'s directory (its control socket,
    /// NIS replica and control credential); removed when the enclave is.
    pub fn enclave_dir(&self, id: EnclaveId) -> PathBuf {
        self.root.join("enclaves").join(id.to_string())
    }
    /// The secret that admits enclave `id`'s control link (root-only file).
    pub fn control_credential(&self, id: EnclaveId) -> PathBuf {
        self.enclave_dir(id).join("control.credential")
    }
    /// `<state>/apps/<id>`: app `id`'s `stdout` and `stderr` logs; removed
    /// when the app's record is.
    pub fn app_dir(&self, id: AppId) -> PathBuf {
        self.root.join("apps").join(id.to_string())
    }
}

/// A request refused: what the client sees.
pub type Refusal = ErrorReply;

/// A refusal with `code` and `message` (protocol.md §4.2): the message must
/// name the object and should say how to fix the problem.
pub fn refuse(code: ErrorCode, message: impl Into<String>) -> Refusal {
    ErrorReply::new(code, message)
}

/// An `internal` refusal from an error the OS or the NIS gave: the message is
/// the error's text, which should name the path and the data.
pub fn internal(e: impl std::fmt::Display) -> Refusal {
    ErrorReply::new(ErrorCode::Internal, e.to_string())
}

/// The daemon's shared state.
pub struct Daemon {
    /// The configuration it was started with (validated).
    pub cfg: Config,
    /// The layout of its state directory.
    pub paths: StatePaths,
    /// The NIS writer: the daemon is the only writer, every change one transaction.
    pub nis: Arc<NisWriter>,
    /// Root and not configured `unprivileged`: enclaves get cgroups and
    /// namespaces; otherwise the degraded mode (affinity only).
    pub privileged: bool,
    /// One driver per enclave kind (`crate::kinds::registry`).
    kinds: KindRegistry,
    /// The link service (`link.rs`): live links to control processes, and
    /// the enclaves awaited to reattach after a restart.
    links: link::Links,
    /// The apps service's subscribers (`apps.rs`): clients waiting on apps
    /// (wait, streamed output).
    subs: apps::Subscribers,
    /// Joins as they are recorded (`apps.rs`): `place_task` may arrive
    /// before the join it places.
    joins: apps::JoinEvents,
    shutting_down: AtomicBool,
    /// Client connections per uid, to refuse floods without locking anyone out.
    admission: std::sync::Arc<admission::Admission>,
    /// Bounds log lines about one user's refused connections and requests.
    log_limiter: admission::LogLimiter,
    /// Descriptors held back for answering clients at `EMFILE` and for shutdown.
    fd_reserve: admission::FdReserve,
    /// The XEMEM name server (`xemem.rs`): its references to every segment's memory.
    xemem: xemem::NameServer,
    /// The Remora service (`remora.rs`): jobs still running.
    jobs: remora::Jobs,
    /// When the daemon manages part of the node: the node's cores and
    /// memory, for `hobbes status` (the NIS holds only the managed part).
    subset_of: Option<NodeTotals>,
}

/// The node's online cores and memory, whatever part of it a daemon manages.
#[derive(Debug, Clone)]
pub(crate) struct NodeTotals {
    /// Online cores (an unprivileged daemon: those of its affinity).
    pub cores: Vec<hobbes_proto::model::CoreId>,
    /// Bytes of the online memory blocks.
    pub mem: u64,
}

impl Daemon {
    fn driver(&self, kind: hobbes_proto::model::EnclaveKind) -> Option<&dyn EnclaveDriver> {
        self.kinds.get(kind)
    }

    /// [`Config::heartbeat_timeout_ms`] as a `Duration`: how long a control
    /// link may stay silent before the health thread marks the enclave crashed.
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
