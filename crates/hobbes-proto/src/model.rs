//! Typed records of the Node Information Service.
//!
//! These are stored in LMDB by `hobbes-nis` and returned by the daemon. Every
//! record carries `rev`, bumped on each write, so readers can tell a record
//! changed; the schema as a whole is versioned by [`SCHEMA_VERSION`] in the
//! [`NisHeader`]. See `docs/nis-schema.md`.

use serde::{Deserialize, Serialize};

/// Version of the record layout. Bump on any incompatible change.
pub const SCHEMA_VERSION: u32 = 1;

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
    pub id: CoreId,
    pub numa_node: u32,
    /// Physical package and core ids (from sysfs topology), for reporting.
    pub package: u32,
    pub core: u32,
    pub ownership: Ownership,
    /// Shared (non-isolated) enclaves pinned to this core; they do not own it.
    #[serde(default)]
    pub shared_by: Vec<EnclaveId>,
    pub rev: u64,
}

/// One memory block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemBlockRecord {
    pub id: BlockId,
    /// Physical base address.
    pub base: u64,
    pub size: u64,
    pub numa_node: u32,
    pub ownership: Ownership,
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
}

impl EnclaveKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EnclaveKind::Host => "host",
            EnclaveKind::Native => "native",
        }
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

/// How an enclave is isolated, as really applied (not as requested).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Isolation {
    /// Owns its cores (host tasks and other enclaves kept off them).
    pub exclusive_cores: bool,
    /// Confined by a cpuset cgroup (otherwise by CPU affinity only).
    pub cpuset: bool,
    /// Has a memory limit (cgroup).
    pub memory_limit: bool,
    /// Own PID, mount, IPC and UTS namespaces.
    pub namespaces: bool,
    /// Human-readable summary, e.g. "exclusive cpuset+memory cgroup (v1), pid/mnt/ipc/uts ns".
    pub summary: String,
}

/// One enclave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnclaveRecord {
    pub id: EnclaveId,
    pub name: String,
    pub kind: EnclaveKind,
    pub state: EnclaveState,
    /// Enclave that created it (the host for now).
    pub parent: EnclaveId,
    pub owner_uid: u32,
    pub owner_gid: u32,
    /// Shared enclaves are pinned to host cores and do not own them.
    pub shared: bool,
    /// In the host's IPC namespace rather than its own.
    #[serde(default)]
    pub host_ipc: bool,
    pub cores: Vec<CoreId>,
    pub mem_blocks: Vec<BlockId>,
    /// Memory limit in bytes (sum of the blocks' sizes).
    pub mem_bytes: u64,
    pub numa_nodes: Vec<u32>,
    pub isolation: Isolation,
    /// Host pid of the enclave's control process.
    pub control_pid: Option<u32>,
    /// Start time of the control process (clock ticks since boot, /proc/PID/stat
    /// field 22), so a recycled pid is never mistaken for it.
    pub control_start_time: Option<u64>,
    /// Unix socket served by the control process (ping, file access).
    pub control_socket: String,
    /// Directory of the NIS replica this enclave's processes read.
    pub nis_dir: String,
    pub created_ms: u64,
    pub last_heartbeat_ms: u64,
    /// Why it crashed, when it did.
    pub crash_reason: Option<String>,
    pub rev: u64,
}

/// Lifecycle of an application.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AppState {
    Starting,
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
    Code(i32),
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
    pub id: AppId,
    pub name: String,
    pub enclave: EnclaveId,
    pub owner_uid: u32,
    pub owner_gid: u32,
    pub argv: Vec<String>,
    pub cwd: Option<String>,
    pub state: AppState,
    pub procs: Vec<ProcId>,
    pub exit: Option<ExitStatus>,
    /// Why it failed to start, or extra detail about its end.
    pub detail: Option<String>,
    pub started_ms: u64,
    pub ended_ms: Option<u64>,
    pub stdout_log: String,
    pub stderr_log: String,
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
    ReadOnly,
    ReadWrite,
}

/// One exported XEMEM segment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentRecord {
    pub segid: SegId,
    pub name: Option<String>,
    pub size: u64,
    pub page_kind: PageKind,
    /// Unix permission bits checked against a requester's uid/gid (XPMEM_PERMIT_MODE).
    pub mode: u32,
    pub owner_uid: u32,
    pub owner_gid: u32,
    /// Where the owner runs: enclave, app (if known) and global pid.
    pub owner_enclave: EnclaveId,
    pub owner_app: Option<AppId>,
    pub owner_pid: u32,
    pub owner_start_time: Option<u64>,
    /// The owner's descriptor numbers of the backing memfd (and eventfd), so a
    /// restarted name server can recover them (`pidfd_getfd`).
    pub owner_fd: i32,
    pub owner_event_fd: Option<i32>,
    /// Address of the exported range in the owner (informational).
    pub owner_addr: u64,
    /// Inode of the backing memfd: identifies it in /proc/PID/maps (attachment
    /// counts) and after a recovery.
    #[serde(default)]
    pub backing_inode: u64,
    /// Has a signal channel (`xemem_make_signalled`).
    pub signalled: bool,
    pub created_ms: u64,
    pub rev: u64,
    /// A composite (read-only, versioned) segment: the backing memfd is its
    /// extent table and this names the pool memfd the extents point into.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub composite: Option<CompositeInfo>,
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
    pub fn is_final(self) -> bool {
        self != JobState::Running
    }
}

/// One application of a job, as launched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobAppRecord {
    pub name: String,
    pub enclave: EnclaveId,
    pub appnum: u32,
    pub first_rank: u32,
    pub np: u32,
    /// One Leviathan app per rank, in rank order.
    pub app_ids: Vec<AppId>,
}

/// A Remora job: one PMI job spanning every application of a composition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: u64,
    pub name: String,
    pub owner_uid: u32,
    pub state: JobState,
    pub kvsname: String,
    pub size: u32,
    pub apps: Vec<JobAppRecord>,
    /// The exit code of the first failure (MPI_Abort's code, a rank's exit
    /// code, or 128 + signal), 0 when every rank succeeded.
    pub exit_code: Option<i32>,
    /// What happened first, in words.
    pub failure: Option<String>,
    pub started_ms: u64,
    pub ended_ms: Option<u64>,
    /// PMI barriers the job has completed (its progress through MPI_Init, fences...).
    #[serde(default)]
    pub barriers: u64,
    pub rev: u64,
}

/// Global process map entry: (enclave, local pid) <-> global pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcRecord {
    pub global_pid: u32,
    pub enclave: EnclaveId,
    pub local_pid: u32,
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
    pub schema_version: u32,
    pub hostname: String,
    pub daemon_pid: u32,
    /// Incremented at every daemon start.
    pub generation: u64,
    pub started_ms: u64,
    pub updated_ms: u64,
    pub cgroup_mode: CgroupMode,
    /// True when the daemon runs with root features (cgroups, namespaces).
    pub privileged: bool,
    pub socket: String,
    pub heartbeat_interval_ms: u64,
    pub heartbeat_timeout_ms: u64,
    pub counters: Counters,
}

/// Monotonic counters (ids are never reused).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub next_enclave_id: EnclaveId,
    pub next_app_id: AppId,
    pub enclaves_created: u64,
    pub enclaves_destroyed: u64,
    pub enclaves_crashed: u64,
    pub apps_launched: u64,
    #[serde(default)]
    pub next_segid: SegId,
    #[serde(default)]
    pub segments_made: u64,
    #[serde(default)]
    pub next_job_id: u64,
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
