//! Client <-> `leviathan` messages. One request, one response, except
//! `LaunchApp { stream: true }`, which is followed by `Output` frames and a
//! final `AppExited` on the same connection.

use serde::{Deserialize, Serialize};

use crate::model::{
    Access, AppId, AppRecord, BlockId, CoreId, CoreRecord, EnclaveId, EnclaveRecord, JobRecord,
    MemBlockRecord, NisHeader, PageKind, SegId, SegmentInfo, SegmentRecord,
};
use crate::spec::{CpuRequest, EnclaveSpec, MemRequest};

/// An enclave named by id or by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnclaveRef {
    Id(EnclaveId),
    Name(String),
}

impl EnclaveRef {
    /// Digits are an id, anything else a name (names may not be all digits).
    pub fn parse(s: &str) -> Self {
        match s.parse() {
            Ok(id) => EnclaveRef::Id(id),
            Err(_) => EnclaveRef::Name(s.to_string()),
        }
    }
}

impl std::fmt::Display for EnclaveRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EnclaveRef::Id(id) => write!(f, "{id}"),
            EnclaveRef::Name(n) => f.write_str(n),
        }
    }
}

/// What to launch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchSpec {
    pub enclave: EnclaveRef,
    /// Display name; defaults to the program's file name.
    #[serde(default)]
    pub name: Option<String>,
    pub argv: Vec<String>,
    /// Extra environment, on top of the enclave's base environment.
    #[serde(default)]
    pub env: Vec<(String, String)>,
    #[serde(default)]
    pub cwd: Option<String>,
    /// Stream stdout/stderr back on this connection until the app exits.
    #[serde(default)]
    pub stream: bool,
}

/// Which output stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    Stdout,
    Stderr,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "op")]
pub enum Request {
    /// Version handshake; optional.
    Hello {
        client: String,
    },
    Status,
    ListCores,
    ListMemory,
    ListEnclaves,
    ListApps {
        #[serde(default)]
        enclave: Option<EnclaveRef>,
    },
    GetEnclave {
        enclave: EnclaveRef,
    },
    GetApp {
        app: AppId,
    },
    CreateEnclave {
        spec: EnclaveSpec,
    },
    DestroyEnclave {
        enclave: EnclaveRef,
    },
    AssignCpus {
        enclave: EnclaveRef,
        cpus: CpuRequest,
    },
    RevokeCpus {
        enclave: EnclaveRef,
        cores: Vec<CoreId>,
    },
    AssignMemory {
        enclave: EnclaveRef,
        memory: MemRequest,
    },
    RevokeMemory {
        enclave: EnclaveRef,
        blocks: Vec<BlockId>,
    },
    LaunchApp {
        launch: LaunchSpec,
    },
    KillApp {
        app: AppId,
        signal: i32,
    },
    /// Block until the app ends; answers with its record.
    WaitApp {
        app: AppId,
    },
    /// Round trip daemon -> control process -> daemon.
    Ping {
        enclave: EnclaveRef,
    },
    /// Export memory: the frame carries the backing memfd (and an eventfd when
    /// `signalled`). See docs/xemem.md.
    XememMake(Box<XememMake>),
    XememRemove {
        segid: SegId,
    },
    /// Ask for access; the reply carries a descriptor of the segment
    /// (read-only for `read_only`) and its eventfd when signalled.
    XememGet {
        segid: SegId,
        access: Access,
    },
    XememLookup {
        name: String,
    },
    /// Remora: start one MPI job (an MPMD composition) and stream its output
    /// until it ends: `job`, then `job_output` frames, then `job_ended`.
    RemoraLaunch {
        job: JobSpec,
    },
    /// Send a signal to every process of a job.
    RemoraSignal {
        job: JobId,
        signal: i32,
    },
    ListJobs,
    XememList,
    /// Signal a segment's channel (wakes its waiters).
    XememSignal {
        segid: SegId,
    },
}

/// Node-global Remora job id.
pub type JobId = u64;

/// How MPI processes reach the PMI server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PmiMode {
    /// `PMI_PORT=127.0.0.1:port` + `PMI_ID` (TCP on loopback).
    #[default]
    Tcp,
    /// `PMI_FD`: a socketpair end inherited by the process.
    Socketpair,
}

/// One application of a job: `np` processes of `argv` in `enclave`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobApp {
    pub name: String,
    pub enclave: EnclaveRef,
    pub np: u32,
    pub argv: Vec<String>,
    #[serde(default)]
    pub env: Vec<(String, String)>,
    #[serde(default)]
    pub cwd: Option<String>,
}

/// A job to launch: applications in order (their index is their appnum,
/// their ranks are contiguous).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    pub name: String,
    pub apps: Vec<JobApp>,
    #[serde(default)]
    pub pmi: PmiMode,
    /// Preload the rank-space library (MPI_COMM_WORLD per application,
    /// MPI_COMM_UNIVERSE for all): on by default for more than one application.
    #[serde(default)]
    pub rank_spaces: Option<bool>,
}

/// What an owner exports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct XememMake {
    pub size: u64,
    #[serde(default)]
    pub name: Option<String>,
    /// A specific segid, if the caller wants one (must be free).
    #[serde(default)]
    pub segid: Option<SegId>,
    /// Permission bits for requesters (like a file's).
    pub mode: u32,
    pub page_kind: PageKind,
    pub signalled: bool,
    pub owner_fd: i32,
    #[serde(default)]
    pub owner_event_fd: Option<i32>,
    pub owner_addr: u64,
    /// A composite segment: the first descriptor is its extent table, the
    /// second the pool memfd (then the eventfd, when signalled); `size` must
    /// equal the table header's size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub composite: Option<XememComposite>,
    /// Segments of the caller to remove in the same step (at most
    /// [`MAX_RETIRE`]): an XASM version replacing the ones it retires, one
    /// request instead of one per segment. All or nothing: an unknown or
    /// foreign segid refuses the whole make.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retire: Vec<SegId>,
}

/// Most segments one make may retire.
pub const MAX_RETIRE: usize = 64;

/// What a composite make adds (docs/xemem.md, "Composite segments").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct XememComposite {
    /// The owner's descriptor number of the pool memfd.
    pub pool_owner_fd: i32,
}

impl Request {
    /// Short name for logs and errors.
    pub fn op(&self) -> &'static str {
        match self {
            Request::Hello { .. } => "hello",
            Request::Status => "status",
            Request::ListCores => "list_cores",
            Request::ListMemory => "list_memory",
            Request::ListEnclaves => "list_enclaves",
            Request::ListApps { .. } => "list_apps",
            Request::GetEnclave { .. } => "get_enclave",
            Request::GetApp { .. } => "get_app",
            Request::CreateEnclave { .. } => "create_enclave",
            Request::DestroyEnclave { .. } => "destroy_enclave",
            Request::AssignCpus { .. } => "assign_cpus",
            Request::RevokeCpus { .. } => "revoke_cpus",
            Request::AssignMemory { .. } => "assign_memory",
            Request::RevokeMemory { .. } => "revoke_memory",
            Request::LaunchApp { .. } => "launch_app",
            Request::KillApp { .. } => "kill_app",
            Request::WaitApp { .. } => "wait_app",
            Request::Ping { .. } => "ping",
            Request::XememMake(_) => "xemem_make",
            Request::XememRemove { .. } => "xemem_remove",
            Request::XememGet { .. } => "xemem_get",
            Request::XememLookup { .. } => "xemem_lookup",
            Request::XememList => "xemem_list",
            Request::RemoraLaunch { .. } => "remora_launch",
            Request::RemoraSignal { .. } => "remora_signal",
            Request::ListJobs => "list_jobs",
            Request::XememSignal { .. } => "xemem_signal",
        }
    }
}

/// Error classes; the message says what exactly and how to fix it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not a frame, wrong version, or undecodable message.
    BadRequest,
    TooLarge,
    NotFound,
    PermissionDenied,
    /// Not enough free cores or memory.
    Overcommit,
    InvalidSpec,
    /// The object is in the wrong state for this request (name taken, enclave crashed...).
    Conflict,
    /// The enclave's control process did not answer.
    Unavailable,
    Internal,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ErrorReply {
    pub code: ErrorCode,
    pub message: String,
}

impl ErrorReply {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorReply {
            code,
            message: message.into(),
        }
    }
}

/// Node overview.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub header: NisHeader,
    pub state_dir: String,
    pub cores_total: u32,
    pub cores_host: u32,
    pub cores_free: u32,
    pub cores_allocated: u32,
    pub mem_total: u64,
    pub mem_host: u64,
    pub mem_free: u64,
    pub mem_allocated: u64,
    pub enclaves: Vec<EnclaveRecord>,
    pub apps_running: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "reply")]
pub enum Response {
    Hello {
        server: String,
        protocol: u8,
    },
    Ok,
    Status(Box<NodeStatus>),
    Cores {
        cores: Vec<CoreRecord>,
    },
    Memory {
        blocks: Vec<MemBlockRecord>,
    },
    Enclaves {
        enclaves: Vec<EnclaveRecord>,
    },
    Apps {
        apps: Vec<AppRecord>,
    },
    Enclave(Box<EnclaveRecord>),
    App(Box<AppRecord>),
    /// A chunk of a streamed app's output.
    Output {
        app: AppId,
        stream: Stream,
        #[serde(with = "crate::b64")]
        data: Vec<u8>,
    },
    /// Output was dropped because this client read too slowly; the log file has it all.
    OutputDropped {
        app: AppId,
        bytes: u64,
    },
    /// The streamed app ended; last frame of a streamed launch.
    AppExited(Box<AppRecord>),
    Pong {
        enclave: EnclaveId,
        rtt_us: u64,
    },
    /// A segment's record (make, lookup); for get, the frame also carries the
    /// segment's descriptor, then its eventfd when signalled.
    Segment(Box<SegmentRecord>),
    Segments {
        segments: Vec<SegmentInfo>,
    },
    /// A job started (all its processes launched); first frame of `remora_launch`.
    Job(Box<JobRecord>),
    Jobs {
        jobs: Vec<JobRecord>,
    },
    /// A chunk of one rank's output.
    JobOutput {
        job: JobId,
        app: String,
        rank: u32,
        stream: Stream,
        #[serde(with = "crate::b64")]
        data: Vec<u8>,
    },
    /// The job ended; last frame of `remora_launch`.
    JobEnded(Box<JobRecord>),
    Error(ErrorReply),
}

impl Response {
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Response::Error(ErrorReply::new(code, message))
    }
}
