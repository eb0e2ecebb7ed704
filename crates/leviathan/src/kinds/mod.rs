//! Enclave kinds. Each kind implements [`EnclaveDriver`]; the daemon holds one
//! driver per kind and never looks inside. VM and lightweight-kernel enclaves
//! plug in here as new drivers without touching the native one.

use std::path::PathBuf;

use hobbes_proto::model::{CoreId, EnclaveKind, EnclaveRecord, Isolation};

pub mod native;

/// What a driver needs to start an enclave's control process.
#[derive(Debug, Clone)]
pub struct StartContext {
    /// The daemon's socket for control processes.
    pub daemon_socket: PathBuf,
    /// Comma-separated NUMA nodes of the enclave's memory (cpuset.mems).
    pub mems: String,
    /// The enclave's NIS replica, and the path it is mounted at inside.
    pub nis_replica: PathBuf,
    pub nis_mount: PathBuf,
    /// The secret the enclave's control agent presents when it attaches
    /// (`ControlUp::Attach.credential`): links are admitted by it, over any
    /// byte stream, not by the peer's pid. The driver hands it to its agent
    /// without exposing it to other users (the native kind: in the control
    /// process's environment, which only root can read).
    pub control_credential: String,
}

/// Environment variable that carries [`StartContext::control_credential`] to a
/// native control process.
pub const CONTROL_CREDENTIAL_ENV: &str = "HOBBES_CONTROL_CREDENTIAL";

/// A running control process.
#[derive(Debug, Clone)]
pub struct Started {
    pub control_pid: u32,
    pub control_start_time: Option<u64>,
    pub isolation: Isolation,
}

pub type DriverResult<T> = Result<T, String>;

/// The operations every enclave kind provides.
pub trait EnclaveDriver: Send + Sync {
    fn kind(&self) -> EnclaveKind;
    /// Set up isolation for `rec` and start its control process. `record` is
    /// called once the control process exists but before it runs, so the
    /// daemon knows its pid when it attaches.
    fn start(
        &self,
        rec: &EnclaveRecord,
        ctx: &StartContext,
        record: &dyn Fn(&Started) -> DriverResult<()>,
    ) -> DriverResult<Started>;
    /// Give the enclave exactly these cores.
    fn set_cpus(&self, rec: &EnclaveRecord, cores: &[CoreId]) -> DriverResult<()>;
    /// Give the enclave this much memory on these NUMA nodes.
    fn set_memory(&self, rec: &EnclaveRecord, mems: &str, bytes: u64) -> DriverResult<()>;
    /// Kill everything in the enclave and release what `start` set up. Idempotent.
    fn stop(&self, rec: &EnclaveRecord) -> DriverResult<()>;
    /// Does the enclave still exist at the OS level (after a daemon restart)?
    fn is_alive(&self, rec: &EnclaveRecord) -> bool;
}
