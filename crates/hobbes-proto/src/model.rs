//! Typed records of the Node Information Service.
//!
//! These are stored in LMDB by `hobbes-nis` and returned by the daemon. Every
//! record carries `rev`, bumped on each write, so readers can tell a record
//! changed; the schema as a whole is versioned by [`SCHEMA_VERSION`] in the
//! [`NisHeader`]. See `docs/nis-schema.md`.

use serde::{Deserialize, Serialize};

/// Version of the record layout. Bump on any incompatible change.
///
/// 2: an enclave's `isolation` is `{summary, detail}` with a kind-tagged,
/// versioned `detail`, and `control` (a kind-tagged endpoint) replaces
/// `control_socket`. Records written at version 1 still decode.
pub const SCHEMA_VERSION: u32 = 2;

/// The oldest NIS layout this build still reads (its records decode into
/// the current types): a NIS from before an upgrade can be read, adopted by
/// a restarted daemon, and cleaned up.
pub const OLDEST_READABLE_SCHEMA_VERSION: u32 = 1;

/// Node-global enclave id. 0 is the host.
pub type EnclaveId = u64;
/// Node-global application id.
pub type AppId = u64;
/// Logical CPU number as Linux numbers it.
pub type CoreId = u32;
/// Memory block number (`/sys/devices/system/memory/memoryN`).
pub type BlockId = u32;

/// The host enclave (enclave 0), where `leviathan` runs.
pub const HOST_ENCLAVE: EnclaveId = 0;

/// Who owns a core or a memory block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "enclave")]
pub enum Ownership {
    /// Kept by the host (not under Leviathan's control).
    Host,
    /// Under Leviathan's control, not allocated.
    Free,
    /// Allocated to an enclave.
    Allocated(EnclaveId),
}

/// One logical CPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoreRecord {
    /// Linux CPU number (the NIS key).
    pub id: CoreId,
    /// NUMA node the CPU belongs to (sysfs topology).
    pub numa_node: u32,
    /// Physical package and core ids (from sysfs topology), for reporting.
    pub package: u32,
    /// Physical core id within the package (sysfs `core_id`); hyperthreads share it.
    pub core: u32,
    /// Host, free, or allocated to one (exclusive) enclave.
    pub ownership: Ownership,
    /// Shared (non-isolated) enclaves pinned to this core; they do not own it.
    #[serde(default)]
    pub shared_by: Vec<EnclaveId>,
    /// Bumped by the daemon on each write of this record.
    pub rev: u64,
}

/// One memory block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemBlockRecord {
    /// Block number (`/sys/devices/system/memory/memoryN`; synthesised
    /// 128 MiB blocks when the kernel exposes none). The NIS key.
    pub id: BlockId,
    /// Physical base address.
    pub base: u64,
    /// Bytes in the block (`block_size_bytes`).
    pub size: u64,
    /// NUMA node of the block.
    pub numa_node: u32,
    /// Host, free, or allocated to one enclave (an accounting partition
    /// enforced by memory cgroups; blocks are not offlined).
    pub ownership: Ownership,
    /// Bumped by the daemon on each write of this record.
    pub rev: u64,
}

/// Enclave kinds. The daemon has one implementation per kind behind one interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnclaveKind {
    /// The Linux host itself (enclave 0).
    Host,
    /// A partition of the node's cores and memory with its own namespaces.
    Native,
    /// A lightweight kernel on KVM (the Kitten analog) on exclusive cores,
    /// running unmodified static Linux programs with their system calls
    /// forwarded to the host.
    Lwk,
    /// A Linux virtual machine under QEMU (the Palacios analog): its own
    /// guest kernel and OS/R stack, its apps run by an agent in the guest.
    Vm,
}

impl EnclaveKind {
    /// Every kind (a new kind is added here, in the enum and in `as_str`;
    /// the XML spec and the `hobbes --kind` flag then know it).
    pub const ALL: [EnclaveKind; 4] = [
        EnclaveKind::Host,
        EnclaveKind::Native,
        EnclaveKind::Lwk,
        EnclaveKind::Vm,
    ];

    /// The kind's name as serialized and as the XML root element names it.
    pub fn as_str(self) -> &'static str {
        match self {
            EnclaveKind::Host => "host",
            EnclaveKind::Native => "native",
            EnclaveKind::Lwk => "lwk",
            EnclaveKind::Vm => "vm",
        }
    }

    /// The kind named `name` (as `as_str` spells it).
    pub fn from_name(name: &str) -> Option<EnclaveKind> {
        EnclaveKind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// The kinds an enclave can be created as (all but the host), as
    /// `<native>, <lwk>`-style text for error messages.
    pub fn creatable_list(open: &str, close: &str) -> String {
        EnclaveKind::ALL
            .iter()
            .filter(|k| **k != EnclaveKind::Host)
            .map(|k| format!("{open}{k}{close}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl std::fmt::Display for EnclaveKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Lifecycle of an enclave.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnclaveState {
    /// Resources reserved, control process starting.
    Starting,
    /// Its control process attached and heartbeats; apps may be launched.
    Running,
    /// Heartbeats stopped or the control process died.
    Crashed,
    /// Being torn down.
    Stopping,
}

impl std::fmt::Display for EnclaveState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EnclaveState::Starting => "starting",
            EnclaveState::Running => "running",
            EnclaveState::Crashed => "crashed",
            EnclaveState::Stopping => "stopping",
        })
    }
}

/// How an enclave is isolated, as its kind's driver describes what it really
/// applied (not what was requested). The daemon stores it without looking
/// inside; `summary` is kind-neutral, `detail` is typed per kind.
///
/// Decodes the flat shape of schema version 1 too (`exclusive_cores`,
/// `cpuset`, `memory_limit`, `namespaces`, `summary` side by side; every
/// enclave then was native): see `docs/nis-schema.md`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "IsolationWire")]
pub struct IsolationRecord {
    /// One line for people, written by the kind, e.g.
    /// "exclusive cpuset + memory limit (cgroup v2); pid/mnt/ipc/uts namespaces".
    pub summary: String,
    /// The kind's own, typed and versioned, description.
    pub detail: KindIsolation,
}

impl IsolationRecord {
    /// The native kind's description, when this is one.
    pub fn native(&self) -> Option<&NativeIsolation> {
        match &self.detail {
            KindIsolation::Native(n) => Some(n),
            _ => None,
        }
    }

    /// The LWK kind's description, when this is one.
    pub fn lwk(&self) -> Option<&LwkIsolation> {
        match &self.detail {
            KindIsolation::Lwk(l) => Some(l),
            _ => None,
        }
    }

    /// The VM kind's description, when this is one.
    pub fn vm(&self) -> Option<&VmIsolation> {
        match &self.detail {
            KindIsolation::Vm(v) => Some(v),
            _ => None,
        }
    }

    /// Whether the enclave owns its cores (no host task or other enclave runs
    /// on them), as far as its kind says; false for a kind this build does
    /// not know.
    pub fn exclusive_cores(&self) -> bool {
        match &self.detail {
            KindIsolation::Native(n) => n.exclusive_cores,
            KindIsolation::Lwk(l) => l.exclusive_cores,
            KindIsolation::Vm(v) => v.exclusive_cores,
            _ => false,
        }
    }

    /// Whether the enclave's processes are confined from the host's (their
    /// own namespaces, for the native kind; a guest in its own mount view,
    /// for the LWK kind); false for a kind this build does not know.
    pub fn confined(&self) -> bool {
        match &self.detail {
            KindIsolation::Native(n) => n.namespaces,
            KindIsolation::Lwk(l) => l.mount_namespace,
            // A guest kernel of its own: its processes see only the guest.
            KindIsolation::Vm(_) => true,
            _ => false,
        }
    }
}

/// A kind's description of the isolation it applied, tagged by kind
/// (`{"kind":"native",...}`). Each kind's payload carries its own `version`,
/// so a kind can change its description without touching the others.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "kind",
    rename_all = "snake_case",
    try_from = "KindIsolationWire"
)]
pub enum KindIsolation {
    /// No kind-specific description: the enclave's driver has not started it
    /// yet, or its kind has nothing to say beyond `summary`.
    #[default]
    None,
    /// The native kind: cgroups, namespaces and CPU affinity on the host kernel.
    Native(NativeIsolation),
    /// The LWK kind: a VM's vCPU threads on cgroup-confined cores, its RAM
    /// under a memory limit, its forwarded calls in a mount namespace.
    Lwk(LwkIsolation),
    /// The VM kind: a guest under QEMU on an accelerator, its vCPU threads
    /// pinned to cgroup-confined cores, its RAM under a memory limit.
    Vm(VmIsolation),
    /// A kind this build does not know (written by a newer daemon): its
    /// `summary` still reads. The daemon never writes it.
    #[serde(other)]
    Unknown,
}

/// The native kind's isolation, as applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NativeIsolation {
    /// Version of this description ([`NativeIsolation::VERSION`] when written;
    /// 1 when absent).
    #[serde(default = "version_1")]
    pub version: u32,
    /// Owns its cores (host tasks and other enclaves kept off them).
    pub exclusive_cores: bool,
    /// Confined by a cpuset cgroup (otherwise by CPU affinity only).
    pub cpuset: bool,
    /// Has a memory limit (cgroup).
    pub memory_limit: bool,
    /// Own PID, mount and UTS namespaces, and its own IPC namespace unless
    /// the record's `host_ipc`.
    pub namespaces: bool,
}

impl NativeIsolation {
    /// The version of [`NativeIsolation`] this build writes.
    pub const VERSION: u32 = 1;
}

/// The LWK kind's isolation, as applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LwkIsolation {
    /// Version of this description ([`LwkIsolation::VERSION`] when written;
    /// 1 when absent).
    #[serde(default = "version_1")]
    pub version: u32,
    /// Owns its cores: no host task or other enclave runs on them (always
    /// asked for: an LWK enclave is never shared).
    pub exclusive_cores: bool,
    /// Its vCPU threads are confined to its cores by a cpuset cgroup
    /// (otherwise pinned by CPU affinity only).
    pub cpuset: bool,
    /// Its guest RAM is charged to a memory cgroup limited to the enclave's memory.
    pub memory_limit: bool,
    /// Its monitor, and so every forwarded system call, runs in a mount
    /// namespace of its own that shows the enclave's NIS replica.
    pub mount_namespace: bool,
    /// System calls are forwarded through a polling proxy thread on the
    /// host's cores (otherwise each one exits to its vCPU's thread).
    #[serde(default)]
    pub syscall_proxy: bool,
}

impl LwkIsolation {
    /// The version of [`LwkIsolation`] this build writes.
    pub const VERSION: u32 = 1;
}

/// The VM kind's isolation, as applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmIsolation {
    /// Version of this description ([`VmIsolation::VERSION`] when written).
    #[serde(default = "version_1")]
    pub version: u32,
    /// What runs the guest: `kvm` (hardware virtualization) or `tcg`
    /// (QEMU's emulation: every guest instruction translated, far slower).
    pub accelerator: String,
    /// Owns its cores: no host task or other enclave runs on them.
    pub exclusive_cores: bool,
    /// QEMU is confined to the cores by a cpuset cgroup (otherwise its vCPU
    /// threads are pinned by CPU affinity only).
    pub cpuset: bool,
    /// Guest RAM and QEMU are charged to a memory cgroup limited to the
    /// enclave's memory.
    pub memory_limit: bool,
    /// Host directories are visible in the guest (virtiofs): the host's
    /// `/usr` read-only, and the spec's shares.
    pub host_files: bool,
}

impl VmIsolation {
    /// The version of [`VmIsolation`] this build writes.
    pub const VERSION: u32 = 1;
}

fn version_1() -> u32 {
    1
}

/// What a [`KindIsolation`] decodes from: the same JSON (`{"kind": ...}` and
/// the kind's fields), read as one flat struct. serde's internally tagged
/// enums buffer the whole object to find the tag first; records are decoded
/// on every NIS read, so this path stays allocation-light.
#[derive(Deserialize)]
struct KindIsolationWire {
    kind: String,
    version: Option<u32>,
    exclusive_cores: Option<bool>,
    cpuset: Option<bool>,
    memory_limit: Option<bool>,
    namespaces: Option<bool>,
    mount_namespace: Option<bool>,
    syscall_proxy: Option<bool>,
    accelerator: Option<String>,
    host_files: Option<bool>,
}

impl TryFrom<KindIsolationWire> for KindIsolation {
    type Error = String;
    fn try_from(w: KindIsolationWire) -> Result<Self, String> {
        let kind = w.kind.as_str();
        let need = |v: Option<bool>, field: &str| {
            v.ok_or_else(|| format!("{kind} isolation without `{field}`"))
        };
        Ok(match kind {
            "none" => KindIsolation::None,
            "native" => KindIsolation::Native(NativeIsolation {
                version: w.version.unwrap_or(1),
                exclusive_cores: need(w.exclusive_cores, "exclusive_cores")?,
                cpuset: need(w.cpuset, "cpuset")?,
                memory_limit: need(w.memory_limit, "memory_limit")?,
                namespaces: need(w.namespaces, "namespaces")?,
            }),
            "lwk" => KindIsolation::Lwk(LwkIsolation {
                version: w.version.unwrap_or(1),
                exclusive_cores: need(w.exclusive_cores, "exclusive_cores")?,
                cpuset: need(w.cpuset, "cpuset")?,
                memory_limit: need(w.memory_limit, "memory_limit")?,
                mount_namespace: need(w.mount_namespace, "mount_namespace")?,
                syscall_proxy: w.syscall_proxy.unwrap_or(false),
            }),
            "vm" => KindIsolation::Vm(VmIsolation {
                version: w.version.unwrap_or(1),
                accelerator: w
                    .accelerator
                    .ok_or_else(|| "vm isolation without `accelerator`".to_string())?,
                exclusive_cores: need(w.exclusive_cores, "exclusive_cores")?,
                cpuset: need(w.cpuset, "cpuset")?,
                memory_limit: need(w.memory_limit, "memory_limit")?,
                host_files: w.host_files.unwrap_or(false),
            }),
            _ => KindIsolation::Unknown,
        })
    }
}

/// What a [`ControlEndpoint`] decodes from (see [`KindIsolationWire`] for why).
#[derive(Deserialize)]
struct ControlEndpointWire {
    kind: String,
    version: Option<u32>,
    path: Option<String>,
}

impl TryFrom<ControlEndpointWire> for ControlEndpoint {
    type Error = String;
    fn try_from(w: ControlEndpointWire) -> Result<Self, String> {
        Ok(match w.kind.as_str() {
            "none" => ControlEndpoint::None,
            "unix_socket" => ControlEndpoint::UnixSocket {
                version: w.version.unwrap_or(1),
                path: w.path.ok_or("unix_socket endpoint without `path`")?,
            },
            _ => ControlEndpoint::Unknown,
        })
    }
}

/// What an [`IsolationRecord`] decodes from: the current shape (`summary`,
/// `detail`), or the flat shape of schema version 1 (`summary` and four
/// flags). One plain struct rather than an untagged enum: an untagged enum
/// buffers every record before trying each shape, which made an enclave
/// lookup in the NIS 60% slower.
#[derive(Deserialize)]
struct IsolationWire {
    #[serde(default)]
    summary: String,
    #[serde(default)]
    detail: Option<KindIsolation>,
    #[serde(default)]
    exclusive_cores: bool,
    #[serde(default)]
    cpuset: bool,
    #[serde(default)]
    memory_limit: bool,
    #[serde(default)]
    namespaces: bool,
}

impl From<IsolationWire> for IsolationRecord {
    fn from(w: IsolationWire) -> Self {
        let IsolationWire {
            summary,
            detail,
            exclusive_cores,
            cpuset,
            memory_limit,
            namespaces,
        } = w;
        if let Some(detail) = detail {
            return IsolationRecord { summary, detail };
        }
        IsolationRecord {
            // Schema version 1 knew one kind, and wrote the flags even
            // before the driver had reported (all false, summary empty).
            detail: if summary.is_empty()
                && !(exclusive_cores || cpuset || memory_limit || namespaces)
            {
                KindIsolation::None
            } else {
                KindIsolation::Native(NativeIsolation {
                    version: 1,
                    exclusive_cores,
                    cpuset,
                    memory_limit,
                    namespaces,
                })
            },
            summary,
        }
    }
}

/// Where an enclave's control agent serves clients (ping, file access), as
/// its kind's driver describes it, tagged by transport
/// (`{"kind":"unix_socket","version":1,"path":"..."}`). The daemon stores it
/// without looking inside; a client connects by it.
///
/// Schema version 1 stored a path string in `control_socket`; an
/// [`EnclaveRecord`] still decodes that (as [`ControlEndpoint::UnixSocket`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "kind",
    rename_all = "snake_case",
    try_from = "ControlEndpointWire"
)]
pub enum ControlEndpoint {
    /// None yet: the enclave's driver has not started it.
    #[default]
    None,
    /// A Unix stream socket on the host (the native kind's).
    UnixSocket {
        /// Version of this description ([`ControlEndpoint::UNIX_SOCKET_VERSION`]
        /// when written; 1 when absent).
        #[serde(default = "version_1")]
        version: u32,
        /// The socket's path on the host.
        path: String,
    },
    /// An endpoint of a kind this build does not know (written by a newer
    /// daemon). The daemon never writes it.
    #[serde(other)]
    Unknown,
}

impl ControlEndpoint {
    /// The version of [`ControlEndpoint::UnixSocket`] this build writes.
    pub const UNIX_SOCKET_VERSION: u32 = 1;

    /// A Unix socket endpoint at `path`.
    pub fn unix_socket(path: impl Into<String>) -> Self {
        ControlEndpoint::UnixSocket {
            version: Self::UNIX_SOCKET_VERSION,
            path: path.into(),
        }
    }

    /// The socket's path, for a Unix socket endpoint.
    pub fn unix_socket_path(&self) -> Option<&str> {
        match self {
            ControlEndpoint::UnixSocket { path, .. } => Some(path),
            _ => None,
        }
    }
}

impl std::fmt::Display for ControlEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ControlEndpoint::None => f.write_str("none"),
            ControlEndpoint::UnixSocket { path, .. } => write!(f, "socket {path}"),
            ControlEndpoint::Unknown => f.write_str("unknown endpoint"),
        }
    }
}

/// Decode `control`: the tagged endpoint, or schema version 1's
/// `control_socket` path (empty: none). A visitor, not an untagged enum, so
/// a record is not buffered to try each shape.
fn control_compat<'de, D: serde::Deserializer<'de>>(d: D) -> Result<ControlEndpoint, D::Error> {
    struct Compat;
    impl<'de> serde::de::Visitor<'de> for Compat {
        type Value = ControlEndpoint;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a control endpoint object, or a control socket path")
        }
        fn visit_str<E: serde::de::Error>(self, path: &str) -> Result<ControlEndpoint, E> {
            Ok(if path.is_empty() {
                ControlEndpoint::None
            } else {
                ControlEndpoint::unix_socket(path)
            })
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            map: A,
        ) -> Result<ControlEndpoint, A::Error> {
            ControlEndpoint::deserialize(serde::de::value::MapAccessDeserializer::new(map))
        }
    }
    d.deserialize_any(Compat)
}

/// One enclave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnclaveRecord {
    /// Node-global id, > 0 (never reused; the NIS key).
    pub id: EnclaveId,
    /// Unique name (1-64 of `[A-Za-z0-9._-]`, not all digits).
    pub name: String,
    /// Which driver runs it (`native` today).
    pub kind: EnclaveKind,
    /// Where it is in its lifecycle.
    pub state: EnclaveState,
    /// Enclave that created it (the host for now).
    pub parent: EnclaveId,
    /// Uid of the peer that created it (may destroy it, launch apps in it).
    pub owner_uid: u32,
    /// Gid of the peer that created it.
    pub owner_gid: u32,
    /// Shared enclaves are pinned to host cores and do not own them.
    pub shared: bool,
    /// In the host's IPC namespace rather than its own.
    #[serde(default)]
    pub host_ipc: bool,
    /// Cores it holds (pinned to, for a shared enclave); emptied when a
    /// crash is reclaimed.
    pub cores: Vec<CoreId>,
    /// Memory blocks it holds; emptied when a crash is reclaimed.
    pub mem_blocks: Vec<BlockId>,
    /// Memory limit in bytes (sum of the blocks' sizes).
    pub mem_bytes: u64,
    /// NUMA nodes of its memory (its cpuset's `mems`).
    pub numa_nodes: Vec<u32>,
    /// The isolation really applied, as its kind describes it.
    pub isolation: IsolationRecord,
    /// Host pid of the enclave's control process.
    pub control_pid: Option<u32>,
    /// Start time of the control process (clock ticks since boot, /proc/PID/stat
    /// field 22), so a recycled pid is never mistaken for it.
    pub control_start_time: Option<u64>,
    /// Where its control agent serves clients (ping, file access), as its
    /// kind describes it. Schema version 1's `control_socket` (a path) decodes
    /// as a Unix socket endpoint.
    #[serde(alias = "control_socket", deserialize_with = "control_compat")]
    pub control: ControlEndpoint,
    /// Directory of the NIS replica this enclave's processes read.
    pub nis_dir: String,
    /// When it was created, Unix ms.
    pub created_ms: u64,
    /// Last heartbeat from its control process, Unix ms (0 before the first).
    pub last_heartbeat_ms: u64,
    /// Why it crashed, when it did.
    pub crash_reason: Option<String>,
    /// The VM kind's settings (guest kernel, shares, accelerator), from its
    /// spec; absent for other kinds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<crate::spec::VmSpec>,
    /// The Slurm job step it was made for (the SPANK plugin's `--enclave`);
    /// absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slurm: Option<crate::slurm::SlurmStep>,
    /// The process whose end destroys it (`create_enclave`'s `bound_to_pid`:
    /// a step's slurmstepd); absent: it lives until destroyed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bound_to: Option<BoundProcess>,
    /// Its cgroup directories inside a Slurm step's (`place_task` on a node
    /// where Slurm confines jobs), removed when its last task ends; empty
    /// otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub step_cgroups: Vec<String>,
    /// Bumped by the daemon on each write of this record.
    pub rev: u64,
}

/// A host process named by pid and start time, so that a recycled pid is
/// never mistaken for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BoundProcess {
    /// Host pid.
    pub pid: u32,
    /// Its start time (clock ticks since boot, /proc/PID/stat field 22), as
    /// read when it was named; `None` when it could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<u64>,
}

/// Lifecycle of an application.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AppState {
    /// Recorded, launch sent to the control process, not yet started.
    Starting,
    /// Its process runs in the enclave.
    Running,
    /// Exited by itself (any exit code).
    Exited,
    /// Killed by a signal (crash, kill, or OOM).
    Crashed,
    /// Its enclave went away and its fate is unknown.
    Lost,
    /// Could not be started.
    Failed,
}

impl AppState {
    /// True once the app ended (any state but `starting` and `running`):
    /// the state no longer changes.
    pub fn is_final(self) -> bool {
        !matches!(self, AppState::Starting | AppState::Running)
    }
}

impl std::fmt::Display for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AppState::Starting => "starting",
            AppState::Running => "running",
            AppState::Exited => "exited",
            AppState::Crashed => "crashed",
            AppState::Lost => "lost",
            AppState::Failed => "failed",
        })
    }
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "how", content = "value")]
pub enum ExitStatus {
    /// Exited with this code (`{"how":"code","value":N}`), 0-255.
    Code(i32),
    /// Killed by this signal number (`{"how":"signal","value":N}`).
    Signal(i32),
}

impl ExitStatus {
    /// Shell convention: the code, or 128 + signal.
    pub fn shell_code(self) -> i32 {
        match self {
            ExitStatus::Code(c) => c,
            ExitStatus::Signal(s) => 128 + s,
        }
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitStatus::Code(c) => write!(f, "exit {c}"),
            ExitStatus::Signal(s) => write!(f, "signal {s}"),
        }
    }
}

/// A process of an app, with its node-global id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcId {
    /// Pid as seen inside the enclave.
    pub local: u32,
    /// Pid as seen by the host (node-global).
    pub global: u32,
}

/// One application.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppRecord {
    /// Node-global id, > 0, never reused (`HOBBES_APP_ID`; the NIS key).
    pub id: AppId,
    /// Display name (defaults to the program's file name).
    pub name: String,
    /// The enclave it runs in.
    pub enclave: EnclaveId,
    /// Uid of the peer that launched it; it runs with it.
    pub owner_uid: u32,
    /// Gid of the peer that launched it; it runs with it.
    pub owner_gid: u32,
    /// Program and arguments as launched.
    pub argv: Vec<String>,
    /// Working directory asked for, if any.
    pub cwd: Option<String>,
    /// Where it is in its lifecycle.
    pub state: AppState,
    /// Its processes: pid in the enclave and on the host (`global` 0 when
    /// it ended before it could be resolved).
    pub procs: Vec<ProcId>,
    /// How it ended; `None` while it runs (and for `lost` or `failed` apps).
    pub exit: Option<ExitStatus>,
    /// Why it failed to start, or extra detail about its end.
    pub detail: Option<String>,
    /// When the launch was recorded, Unix ms.
    pub started_ms: u64,
    /// When it ended, Unix ms; `None` while it runs.
    pub ended_ms: Option<u64>,
    /// Host path of the file holding all its stdout (`<state>/apps/ID/stdout`).
    pub stdout_log: String,
    /// Host path of the file holding all its stderr (`<state>/apps/ID/stderr`).
    pub stderr_log: String,
    /// A process that joined the enclave (`join_enclave`: a Slurm task)
    /// rather than one its control process launched; its end is reported by
    /// the joiner or seen by the daemon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub joined: Option<BoundProcess>,
    /// The Slurm task it is, for a joined task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slurm: Option<crate::slurm::SlurmTask>,
    /// Bumped by the daemon on each write of this record.
    pub rev: u64,
}

/// XEMEM segment id: node-global, allocated by the name server (the daemon).
/// Positive; XPMEM's API makes it a signed 64-bit integer.
pub type SegId = i64;

/// The page size backing a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PageKind {
    /// Base pages (4 KiB on x86-64), e.g. memory converted in place.
    Base,
    /// Transparent huge pages on shmem (`MADV_HUGEPAGE`).
    Thp,
    /// A `MFD_HUGETLB` memfd (reserved huge pages).
    Hugetlb,
}

impl std::fmt::Display for PageKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PageKind::Base => "4k",
            PageKind::Thp => "thp",
            PageKind::Hugetlb => "hugetlb",
        })
    }
}

/// Read-only or read-write access to a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    /// Map it read-only; the grant is a read-only reopening of the memfd.
    ReadOnly,
    /// Map it read-write (never granted for a composite segment).
    ReadWrite,
}

/// One exported XEMEM segment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentRecord {
    /// Node-global id, > 0 (the NIS key).
    pub segid: SegId,
    /// Unique name, indexed in the `segnames` database; `None`: anonymous.
    pub name: Option<String>,
    /// Segment length in bytes.
    pub size: u64,
    /// The pages backing it.
    pub page_kind: PageKind,
    /// Unix permission bits checked against a requester's uid/gid (XPMEM_PERMIT_MODE).
    pub mode: u32,
    /// Uid of the owner process (may always get and remove it).
    pub owner_uid: u32,
    /// Gid of the owner process (the group `mode`'s group bits apply to).
    pub owner_gid: u32,
    /// Where the owner runs: enclave, app (if known) and global pid.
    pub owner_enclave: EnclaveId,
    /// The owner's app, when it runs as one.
    pub owner_app: Option<AppId>,
    /// Host (global) pid of the owner process.
    pub owner_pid: u32,
    /// Start time of the owner (clock ticks after boot), so a recycled pid
    /// is never mistaken for it.
    pub owner_start_time: Option<u64>,
    /// The owner's descriptor numbers of the backing memfd (and eventfd), so a
    /// restarted name server can recover them (`pidfd_getfd`).
    pub owner_fd: i32,
    /// The owner's descriptor number of its eventfd, when `signalled`.
    pub owner_event_fd: Option<i32>,
    /// Address of the exported range in the owner (informational).
    pub owner_addr: u64,
    /// Inode of the backing memfd: identifies it in /proc/PID/maps (attachment
    /// counts) and after a recovery.
    #[serde(default)]
    pub backing_inode: u64,
    /// Where the segment starts in its backing file (page-aligned): 0 for a
    /// memfd made for the segment, the range's start for a segment that is
    /// part of a larger file (an enclave's RAM). Attachers map from here.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub backing_offset: u64,
    /// Has a signal channel (`xemem_make_signalled`).
    pub signalled: bool,
    /// When it was made, Unix ms.
    pub created_ms: u64,
    /// Bumped by the daemon on each write of this record.
    pub rev: u64,
    /// A composite (read-only, versioned) segment: the backing memfd is its
    /// extent table and this names the pool memfd the extents point into.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub composite: Option<CompositeInfo>,
}

pub(crate) fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// The pool of a composite segment (docs/xemem.md, "Composite segments").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompositeInfo {
    /// The owner's descriptor number of the pool memfd (recovery after a
    /// restart, `pidfd_getfd`).
    pub pool_owner_fd: i32,
    /// Inode of the pool memfd (checked on recovery).
    pub pool_inode: u64,
    /// Extents in the table when the segment was made.
    pub extents: u64,
}

/// A segment with its live attachment count, as `list_segments` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentInfo {
    /// The segment's NIS record (flattened into this object in JSON).
    #[serde(flatten)]
    pub record: SegmentRecord,
    /// Mappings of the segment in processes other than the owner; for a
    /// composite segment, holds on it instead (one per read-only get, kept
    /// by the grant and its attachments; docs/xemem.md).
    pub attachments: u32,
    /// Processes that hold a mapping (global pids), or a hold.
    pub attachers: Vec<u32>,
}

/// Lifecycle of a Remora job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Every rank launched, none ended in failure yet.
    Running,
    /// Every process exited 0.
    Finished,
    /// A process called MPI_Abort; the job was killed.
    Aborted,
    /// A process exited non-zero or crashed; the job was killed.
    Failed,
    /// Killed by a signal sent to the job (Ctrl-C, remora_signal).
    Killed,
}

impl JobState {
    /// True once the job ended (any state but `running`).
    pub fn is_final(self) -> bool {
        self != JobState::Running
    }
}

/// One application of a job, as launched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobAppRecord {
    /// Application name, unique in the job.
    pub name: String,
    /// The enclave its ranks run in.
    pub enclave: EnclaveId,
    /// Its MPI appnum: its index in the job, from 0.
    pub appnum: u32,
    /// Global rank of its first process; its ranks are contiguous.
    pub first_rank: u32,
    /// Number of processes (ranks).
    pub np: u32,
    /// One Leviathan app per rank, in rank order.
    pub app_ids: Vec<AppId>,
}

/// A Remora job: one PMI job spanning every application of a composition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    /// Node-global job id, > 0, never reused (`counters.next_job_id`).
    pub id: u64,
    /// The job's name, as launched.
    pub name: String,
    /// Uid of the peer that launched it (may signal it).
    pub owner_uid: u32,
    /// Where it is in its lifecycle.
    pub state: JobState,
    /// The PMI job's key-value space name (keys in the NIS `pmi` database).
    pub kvsname: String,
    /// Ranks in all (the PMI job size).
    pub size: u32,
    /// Its applications, in appnum order.
    pub apps: Vec<JobAppRecord>,
    /// The exit code of the first failure (MPI_Abort's code, a rank's exit
    /// code, or 128 + signal), 0 when every rank succeeded.
    pub exit_code: Option<i32>,
    /// What happened first, in words.
    pub failure: Option<String>,
    /// When it was launched, Unix ms.
    pub started_ms: u64,
    /// When it ended, Unix ms; `None` while running.
    pub ended_ms: Option<u64>,
    /// PMI barriers the job has completed (its progress through MPI_Init, fences...).
    #[serde(default)]
    pub barriers: u64,
    /// The job's MPI (which PMI server served it); absent: MPICH.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mpi: Option<crate::msg::MpiFlavor>,
    /// Bumped by the daemon on each write of this record.
    pub rev: u64,
}

/// Global process map entry: (enclave, local pid) <-> global pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcRecord {
    /// Host pid (the NIS key).
    pub global_pid: u32,
    /// The enclave it runs in.
    pub enclave: EnclaveId,
    /// Pid inside the enclave's PID namespace.
    pub local_pid: u32,
    /// The app it belongs to.
    pub app: AppId,
}

/// Which cgroup layout the daemon found at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CgroupMode {
    /// cgroup v1 controllers (possibly with an empty v2 hierarchy beside them).
    Legacy,
    /// cgroup v2 only.
    Unified,
    /// No usable cgroups (not root, or none mounted).
    None,
}

/// The NIS header: one record describing the node and the daemon, plus counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NisHeader {
    /// Layout version; a reader refuses any other than its [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// The node's hostname.
    pub hostname: String,
    /// Pid of the running daemon.
    pub daemon_pid: u32,
    /// Incremented at every daemon start.
    pub generation: u64,
    /// When the running daemon started, Unix ms.
    pub started_ms: u64,
    /// Last write to the NIS, Unix ms.
    pub updated_ms: u64,
    /// Cgroup layout detected at start.
    pub cgroup_mode: CgroupMode,
    /// True when the daemon runs with root features (cgroups, namespaces).
    pub privileged: bool,
    /// Path of the daemon (client) socket.
    pub socket: String,
    /// How often control processes heartbeat, ms.
    pub heartbeat_interval_ms: u64,
    /// Silence after which an enclave is marked crashed, ms.
    pub heartbeat_timeout_ms: u64,
    /// Id allocators and statistics.
    pub counters: Counters,
    /// Where XEMEM segments and XASM versions get their memory.
    #[serde(default)]
    pub segment_files: SegmentFiles,
    /// How this node runs VM enclaves (accelerator, image), as the VM kind
    /// says; absent from daemons without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_support: Option<String>,
}

/// Where XEMEM segments and XASM versions get their memory on this node
/// (docs/xemem.md, "Huge pages"), as `hobbes status` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentFiles {
    /// The daemon's huge-page tmpfs (`huge=within_size`): memory of 2 MiB
    /// and more is made there, as unnamed files (`O_TMPFILE`), and gets
    /// transparent huge pages whatever the node's shmem policy. `None`:
    /// memfds (base pages unless the node enables shmem THP or reserves
    /// hugetlb pages).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<String>,
    /// Why there is no such mount, when there is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
    /// Hugetlb pages the daemon reserved for its lifetime (`--hugepages`),
    /// which `alloc` takes first.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub hugetlb_reserved: u64,
}

/// Monotonic counters (ids are never reused).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Id the next enclave gets.
    pub next_enclave_id: EnclaveId,
    /// Id the next app gets.
    pub next_app_id: AppId,
    /// Enclaves created since the state was made.
    pub enclaves_created: u64,
    /// Enclaves destroyed since the state was made.
    pub enclaves_destroyed: u64,
    /// Enclaves marked crashed since the state was made.
    pub enclaves_crashed: u64,
    /// Apps launched since the state was made.
    pub apps_launched: u64,
    /// Segid the name server allocates next (0 in older states: start at 1).
    #[serde(default)]
    pub next_segid: SegId,
    /// XEMEM segments made since the state was made.
    #[serde(default)]
    pub segments_made: u64,
    /// Id the next Remora job gets (0 in older states: start at 1).
    #[serde(default)]
    pub next_job_id: u64,
}

/// Parse the kernel's list syntax (a CPU list: "0", "0-3", "0,2,4-5"),
/// sorted and without repeats; the error names the bad part. The inverse of
/// [`format_id_list`].
pub fn parse_id_list(text: &str) -> Result<Vec<u32>, String> {
    let mut out = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.trim().is_empty()) {
        let part = part.trim();
        let bad = || format!("bad CPU list {text:?}: {part:?} is not N or N-M");
        match part.split_once('-') {
            Some((a, b)) => {
                let a: u32 = a.trim().parse().map_err(|_| bad())?;
                let b: u32 = b.trim().parse().map_err(|_| bad())?;
                if a > b || b - a > 65536 {
                    return Err(bad());
                }
                out.extend(a..=b);
            }
            None => out.push(part.parse().map_err(|_| bad())?),
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// Ids in the kernel's list syntax, sorted and without repeats:
/// `[0, 1, 2, 5]` -> `"0-2,5"`; empty -> `""` (what cpusets, `hobbes` and the
/// NIS tools all write).
pub fn format_id_list(ids: &[u32]) -> String {
    let mut sorted = ids.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut parts = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        while i + 1 < sorted.len() && sorted[i + 1] == sorted[i] + 1 {
            i += 1;
        }
        parts.push(if sorted[i] == start {
            start.to_string()
        } else {
            format!("{start}-{}", sorted[i])
        });
        i += 1;
    }
    parts.join(",")
}

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An enclave record exactly as a schema-version-1 leviathan wrote it
    /// into the NIS (flat `isolation`, `control_socket` path).
    const V1_ENCLAVE: &str = r#"{"id":4,"name":"sim","kind":"native","state":"running",
        "parent":0,"owner_uid":0,"owner_gid":0,"shared":false,"host_ipc":false,
        "cores":[2,3],"mem_blocks":[8,9],"mem_bytes":268435456,"numa_nodes":[0],
        "isolation":{"exclusive_cores":true,"cpuset":true,"memory_limit":true,"namespaces":true,
            "summary":"exclusive cpuset + memory limit (cgroup v2); pid/mnt/ipc/uts namespaces"},
        "control_pid":4242,"control_start_time":99,
        "control_socket":"/run/hobbes/enclaves/4/control.sock",
        "nis_dir":"/run/hobbes/nis","created_ms":1,"last_heartbeat_ms":2,
        "crash_reason":null,"rev":7}"#;

    #[test]
    fn schema_1_enclave_records_decode_into_the_kind_descriptions() {
        let rec: EnclaveRecord = serde_json::from_str(V1_ENCLAVE).unwrap();
        assert_eq!(
            rec.isolation,
            IsolationRecord {
                summary: "exclusive cpuset + memory limit (cgroup v2); pid/mnt/ipc/uts namespaces"
                    .into(),
                detail: KindIsolation::Native(NativeIsolation {
                    version: 1,
                    exclusive_cores: true,
                    cpuset: true,
                    memory_limit: true,
                    namespaces: true,
                }),
            }
        );
        assert!(rec.isolation.exclusive_cores() && rec.isolation.confined());
        assert_eq!(
            rec.control,
            ControlEndpoint::unix_socket("/run/hobbes/enclaves/4/control.sock")
        );
        assert_eq!(rec.rev, 7);
        // Written back in the current shape, which decodes to the same record.
        let json = serde_json::to_value(&rec).unwrap();
        assert!(json.get("control_socket").is_none());
        assert_eq!(json["control"]["kind"], "unix_socket");
        assert_eq!(json["control"]["version"], 1);
        assert_eq!(json["isolation"]["detail"]["kind"], "native");
        assert_eq!(json["isolation"]["detail"]["version"], 1);
        assert!(json["isolation"].get("exclusive_cores").is_none());
        let again: EnclaveRecord = serde_json::from_value(json).unwrap();
        assert_eq!(again, rec);
    }

    #[test]
    fn lwk_isolation_round_trips_and_counts_as_exclusive() {
        let iso = IsolationRecord {
            summary: "exclusive cores (vCPU threads in a cpuset, cgroup v1) + guest RAM under the memory limit; own mount namespace; syscall proxy on host cores".into(),
            detail: KindIsolation::Lwk(LwkIsolation {
                version: LwkIsolation::VERSION,
                exclusive_cores: true,
                cpuset: true,
                memory_limit: true,
                mount_namespace: true,
                syscall_proxy: true,
            }),
        };
        let json = serde_json::to_value(&iso).unwrap();
        assert_eq!(json["detail"]["kind"], "lwk");
        assert_eq!(json["detail"]["mount_namespace"], true);
        let back: IsolationRecord = serde_json::from_value(json).unwrap();
        assert_eq!(back, iso);
        assert!(back.exclusive_cores() && back.confined());
        assert!(back.lwk().is_some() && back.native().is_none());
        // syscall_proxy may be absent (defaults off); a required flag may not.
        let lean: KindIsolation = serde_json::from_str(
            r#"{"kind":"lwk","exclusive_cores":true,"cpuset":false,"memory_limit":false,"mount_namespace":false}"#,
        )
        .unwrap();
        assert!(matches!(
            lean,
            KindIsolation::Lwk(LwkIsolation {
                version: 1,
                syscall_proxy: false,
                ..
            })
        ));
        let err = serde_json::from_str::<KindIsolation>(r#"{"kind":"lwk","exclusive_cores":true}"#)
            .unwrap_err();
        assert!(
            err.to_string().contains("lwk isolation without `cpuset`"),
            "{err}"
        );
    }

    #[test]
    fn schema_1_records_of_unstarted_or_degraded_enclaves_decode() {
        // Before its driver reported: default flags, empty summary and socket.
        let v1 = V1_ENCLAVE
            .replace(
                r#""isolation":{"exclusive_cores":true,"cpuset":true,"memory_limit":true,"namespaces":true,
            "summary":"exclusive cpuset + memory limit (cgroup v2); pid/mnt/ipc/uts namespaces"}"#,
                r#""isolation":{"exclusive_cores":false,"cpuset":false,"memory_limit":false,"namespaces":false,"summary":""}"#,
            )
            .replace(r#""/run/hobbes/enclaves/4/control.sock""#, r#""""#);
        let rec: EnclaveRecord = serde_json::from_str(&v1).unwrap();
        assert_eq!(rec.isolation, IsolationRecord::default());
        assert_eq!(rec.control, ControlEndpoint::None);
        // Degraded (no root): flags false but a summary.
        let v1 = V1_ENCLAVE.replace(
            r#""exclusive_cores":true,"cpuset":true,"memory_limit":true,"namespaces":true"#,
            r#""exclusive_cores":false,"cpuset":false,"memory_limit":false,"namespaces":false"#,
        );
        let rec: EnclaveRecord = serde_json::from_str(&v1).unwrap();
        let native = rec.isolation.native().expect("a native description");
        assert!(!native.exclusive_cores && !native.namespaces);
    }

    #[test]
    fn descriptions_of_unknown_kinds_decode_with_their_summary() {
        let iso: IsolationRecord = serde_json::from_str(
            r#"{"summary":"kvm, 4 vcpus","detail":{"kind":"unikernel","version":3,"vcpus":4}}"#,
        )
        .unwrap();
        assert_eq!(iso.summary, "kvm, 4 vcpus");
        assert_eq!(iso.detail, KindIsolation::Unknown);
        assert!(!iso.exclusive_cores());
        let ep: ControlEndpoint =
            serde_json::from_str(r#"{"kind":"virtio_serial","version":1,"port":2}"#).unwrap();
        assert_eq!(ep, ControlEndpoint::Unknown);
        assert_eq!(ep.unix_socket_path(), None);
        // A payload without `version` is version 1.
        let ep: ControlEndpoint =
            serde_json::from_str(r#"{"kind":"unix_socket","path":"/x"}"#).unwrap();
        assert_eq!(ep, ControlEndpoint::unix_socket("/x"));
        assert_eq!(
            serde_json::to_string(&ControlEndpoint::None).unwrap(),
            r#"{"kind":"none"}"#
        );
    }

    #[test]
    fn segment_records_without_composite_still_decode() {
        // A record as an older leviathan wrote it into the NIS.
        let old = r#"{"segid":3,"name":"grid","size":4096,"page_kind":"base","mode":384,
            "owner_uid":0,"owner_gid":0,"owner_enclave":0,"owner_app":null,"owner_pid":9,
            "owner_start_time":null,"owner_fd":5,"owner_event_fd":null,"owner_addr":0,
            "backing_inode":7,"signalled":false,"created_ms":1,"rev":1}"#;
        let rec: SegmentRecord = serde_json::from_str(old).unwrap();
        assert_eq!(rec.composite, None);
        assert!(!serde_json::to_string(&rec).unwrap().contains("composite"));
        let mut comp = rec.clone();
        comp.composite = Some(CompositeInfo {
            pool_owner_fd: 6,
            pool_inode: 8,
            extents: 2,
        });
        let back: SegmentRecord =
            serde_json::from_str(&serde_json::to_string(&comp).unwrap()).unwrap();
        assert_eq!(back, comp);
    }
}
