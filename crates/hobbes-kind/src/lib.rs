#![deny(missing_docs)]

//! Enclave kinds as plug-ins: the API between `leviathan` and the drivers of
//! its enclave kinds.
//!
//! A kind is a crate (`kind-native`, ...) with one type that implements
//! [`EnclaveDriver`]. The daemon builds a [`KindRegistry`] at start from one
//! registration list and from then on only asks the registry: it never names
//! a kind. A driver owns everything its kind puts on the node: the node-wide
//! set-up ([`EnclaveDriver::setup`], [`EnclaveDriver::teardown`]), each
//! enclave's OS-level objects ([`EnclaveDriver::start`],
//! [`EnclaveDriver::stop`]), and finding and removing what a killed daemon
//! left behind ([`EnclaveDriver::leftovers`], [`EnclaveDriver::clean_up`]).
//! Resources are handed over kind-neutrally ([`StartContext`]): core ids,
//! memory blocks and bytes, NUMA nodes; each kind maps them to its own
//! mechanism (cpusets, a VM's vCPUs and memory, ...).

use std::path::PathBuf;

pub mod monitor;

use hobbes_proto::model::{
    BlockId, ControlEndpoint, CoreId, EnclaveId, EnclaveKind, EnclaveRecord, IsolationRecord,
    NisHeader,
};

/// What a driver needs to start an enclave's control process.
#[derive(Debug, Clone)]
pub struct StartContext {
    /// The daemon's socket for control processes.
    pub daemon_socket: PathBuf,
    /// The enclave's cores.
    pub cores: Vec<CoreId>,
    /// The enclave's memory blocks.
    pub blocks: Vec<BlockId>,
    /// How many bytes of memory it may use (the blocks' sizes summed).
    pub mem_bytes: u64,
    /// The NUMA nodes its memory is on.
    pub numa_nodes: Vec<u32>,
    /// The enclave's directory on the host (made by the daemon, removed with
    /// the enclave): where the kind keeps its per-enclave files (the native
    /// kind: its control socket).
    pub enclave_dir: PathBuf,
    /// The enclave's NIS replica (a host path).
    pub nis_replica: PathBuf,
    /// The path the enclave sees its NIS at (the primary's path).
    pub nis_mount: PathBuf,
    /// The daemon's huge-page tmpfs (`huge=within_size`), when it has one: a
    /// kind that makes large memory files (an LWK's guest RAM) makes them
    /// there, so they get 2 MiB pages whatever the node's shmem policy.
    pub memory_dir: Option<PathBuf>,
    /// The secret the enclave's control agent presents when it attaches
    /// (`ControlUp::Attach.credential`): links are admitted by it, over any
    /// byte stream, not by the peer's pid. The driver hands it to its agent
    /// without exposing it to other users (the native kind: in the control
    /// process's environment, which only root can read).
    pub control_credential: String,
}

/// Environment variable that carries [`StartContext::control_credential`] to a
/// control process started as a local process (the native kind).
pub const CONTROL_CREDENTIAL_ENV: &str = "HOBBES_CONTROL_CREDENTIAL";

/// A running control process.
#[derive(Debug, Clone)]
pub struct Started {
    /// Its host pid.
    pub control_pid: u32,
    /// Its start time (`/proc/PID/stat` field 22), so a recycled pid is never
    /// mistaken for it.
    pub control_start_time: Option<u64>,
    /// The isolation really applied, described by the kind (recorded in the
    /// NIS as the enclave's `isolation`, shown by `hobbes`; the daemon does
    /// not look inside).
    pub isolation: IsolationRecord,
    /// Where the control process serves clients (recorded as the enclave's
    /// `control`; clients connect by it).
    pub control: ControlEndpoint,
}

/// What a driver returns: its errors are messages for the operator.
pub type DriverResult<T> = Result<T, String>;

/// The node, as the daemon hands it to every kind at start.
#[derive(Debug, Clone)]
pub struct NodeSetup {
    /// Every core the daemon manages.
    pub all_cores: Vec<CoreId>,
    /// The cores the host keeps.
    pub host_cores: Vec<CoreId>,
    /// The NUMA nodes of the node's memory.
    pub numa_nodes: Vec<u32>,
    /// Slurm confines this node's jobs in cgroups of its own
    /// (`leviathan --slurm-cgroups`): enclave cores are not cpu-exclusive,
    /// and a Slurm step's enclave nests in the step's cgroups.
    pub slurm_cgroups: bool,
}

/// An OS-level object of a kind (a cgroup, a VM) found on the node at start,
/// made by some daemon for enclave `enclave`: perhaps ours (recorded in our
/// NIS), perhaps one a killed daemon left.
pub trait Leftover: Send {
    /// The enclave it was made for (its id in the NIS of the daemon that made it).
    fn enclave(&self) -> EnclaveId;
    /// What it is, in one word, for messages ("cgroup").
    fn noun(&self) -> &str;
    /// Where it is, for messages (a cgroup's path).
    fn location(&self) -> String;
    /// The processes still in it (none: it can simply be removed).
    fn pids(&self) -> Vec<u32>;
    /// Remove it (it is empty).
    fn remove(&self) -> DriverResult<()>;
    /// Kill everything in it and remove it.
    fn kill_and_remove(&self) -> DriverResult<()>;
}

/// The operations every enclave kind provides.
pub trait EnclaveDriver: Send + Sync {
    /// The kind this driver runs (one driver per kind in a registry).
    fn kind(&self) -> EnclaveKind;
    /// Fill in what this kind reports in the NIS header (the native kind: the
    /// cgroup mode). Default: nothing.
    fn describe_node(&self, _header: &mut NisHeader) {}
    /// Prepare the node for this kind's enclaves once at daemon start (the
    /// native kind: parent cgroups, the host confined to its cores).
    /// Idempotent: a restarted daemon finds its set-up in place.
    fn setup(&self, _node: &NodeSetup) -> DriverResult<()> {
        Ok(())
    }
    /// Undo [`EnclaveDriver::setup`] (at shutdown, and by `leviathan cleanup`).
    fn teardown(&self) -> DriverResult<()> {
        Ok(())
    }
    /// Every OS-level enclave object of this kind on the node, whichever
    /// daemon made it.
    fn leftovers(&self) -> Vec<Box<dyn Leftover>> {
        Vec::new()
    }
    /// `leviathan cleanup` of one recorded enclave of a daemon that is gone:
    /// kill its processes and, when `node_is_ours` (no other daemon runs on
    /// the node, which might own an object of the same name), remove its
    /// OS-level objects.
    fn clean_up(&self, rec: &EnclaveRecord, node_is_ours: bool) -> DriverResult<()>;
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
    fn set_memory(&self, rec: &EnclaveRecord, numa_nodes: &[u32], bytes: u64) -> DriverResult<()>;
    /// Kill everything in the enclave and release what `start` set up. Idempotent.
    fn stop(&self, rec: &EnclaveRecord) -> DriverResult<()>;
    /// Does the enclave still exist at the OS level (after a daemon restart)?
    fn is_alive(&self, rec: &EnclaveRecord) -> bool;
    /// Put host process `pid` under the enclave's cores and memory limit, as
    /// its apps are (`join_enclave`: a Slurm task). By default a kind cannot:
    /// its programs run in a guest, not as host processes.
    fn join(&self, rec: &EnclaveRecord, pid: u32) -> DriverResult<()> {
        let _ = pid;
        Err(format!(
            "enclave {} is a {} enclave: it runs its programs in a guest, which a host process cannot join; only native enclaves can be joined",
            rec.name,
            self.kind()
        ))
    }
}

/// The drivers of a daemon, one per kind. Kinds without a driver (the host
/// enclave) have nothing to start or stop.
#[derive(Default)]
pub struct KindRegistry {
    /// In registration order (set-up runs in it, teardown in reverse).
    drivers: Vec<Box<dyn EnclaveDriver>>,
}

impl KindRegistry {
    /// A registry with no kind.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a kind. Panics if the kind has a driver already: two drivers for
    /// one kind is a bug in the registration list.
    pub fn register(&mut self, driver: Box<dyn EnclaveDriver>) -> &mut Self {
        let kind = driver.kind();
        assert!(
            self.get(kind).is_none(),
            "two drivers registered for kind {kind:?}"
        );
        self.drivers.push(driver);
        self
    }

    /// The driver of `kind`, if it has one.
    pub fn get(&self, kind: EnclaveKind) -> Option<&dyn EnclaveDriver> {
        self.drivers
            .iter()
            .find(|d| d.kind() == kind)
            .map(|d| d.as_ref())
    }

    /// Every driver, in registration order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &dyn EnclaveDriver> {
        self.drivers.iter().map(|d| d.as_ref())
    }

    /// No kind registered.
    pub fn is_empty(&self) -> bool {
        self.drivers.is_empty()
    }
}

/// What a daemon or `leviathan cleanup` knows when it builds its registry.
#[derive(Debug, Clone)]
pub struct KindEnv {
    /// Root features (cgroups, namespaces) may be used.
    pub privileged: bool,
    /// The `leviathan` executable, which doubles as the control process.
    pub exe: PathBuf,
}

/// Format core ids as a cpu list ("0-3,8"), as cpusets take them.
pub fn format_cpu_list(cores: &[CoreId]) -> String {
    hobbes_proto::model::format_id_list(cores)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake(EnclaveKind);

    impl EnclaveDriver for Fake {
        fn kind(&self) -> EnclaveKind {
            self.0
        }
        fn clean_up(&self, _: &EnclaveRecord, _: bool) -> DriverResult<()> {
            Ok(())
        }
        fn start(
            &self,
            _: &EnclaveRecord,
            _: &StartContext,
            _: &dyn Fn(&Started) -> DriverResult<()>,
        ) -> DriverResult<Started> {
            Err("fake".into())
        }
        fn set_cpus(&self, _: &EnclaveRecord, _: &[CoreId]) -> DriverResult<()> {
            Ok(())
        }
        fn set_memory(&self, _: &EnclaveRecord, _: &[u32], _: u64) -> DriverResult<()> {
            Ok(())
        }
        fn stop(&self, _: &EnclaveRecord) -> DriverResult<()> {
            Ok(())
        }
        fn is_alive(&self, _: &EnclaveRecord) -> bool {
            false
        }
    }

    #[test]
    fn registry_finds_drivers_by_kind() {
        let mut r = KindRegistry::new();
        assert!(r.is_empty());
        r.register(Box::new(Fake(EnclaveKind::Native)));
        assert_eq!(
            r.get(EnclaveKind::Native).unwrap().kind(),
            EnclaveKind::Native
        );
        assert!(r.get(EnclaveKind::Host).is_none());
        assert_eq!(r.iter().count(), 1);
    }

    #[test]
    #[should_panic(expected = "two drivers")]
    fn one_driver_per_kind() {
        let mut r = KindRegistry::new();
        r.register(Box::new(Fake(EnclaveKind::Native)));
        r.register(Box::new(Fake(EnclaveKind::Native)));
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(format_cpu_list(&[3, 0, 1, 2, 8, 10, 9]), "0-3,8-10");
        assert_eq!(format_cpu_list(&[]), "");
    }
}
