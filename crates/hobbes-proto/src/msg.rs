//! Client <-> `leviathan` messages. One request, one response, except
//! `LaunchApp { stream: true }`, which is followed by `Output` frames and a
//! final `AppExited` on the same connection.

use serde::{Deserialize, Serialize};

use crate::model::{
    Access, AppId, AppRecord, BlockId, CoreId, CoreRecord, EnclaveId, EnclaveRecord, ExitStatus,
    JobRecord, MemBlockRecord, NisHeader, PageKind, SegId, SegmentInfo, SegmentRecord,
};
use crate::slurm::{SlurmStep, SlurmTask};
use crate::spec::{CpuRequest, EnclaveSpec, MemRequest};

/// Who owns an enclave or app: the uid that may act on it besides root,
/// and its gid (`create_enclave`'s and `join_enclave`'s `owner`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// The owner's uid.
    pub uid: u32,
    /// The owner's gid.
    pub gid: u32,
}

/// An enclave named by id or by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnclaveRef {
    /// By node-global id (`{"id": 3}`); ids are never reused.
    Id(EnclaveId),
    /// By its unique name (`{"name": "sim"}`), as given in the spec.
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
    /// The enclave the app runs in; must be `running`.
    pub enclave: EnclaveRef,
    /// Display name; defaults to the program's file name.
    #[serde(default)]
    pub name: Option<String>,
    /// Program and arguments; `argv[0]` is looked up in the enclave's view
    /// (empty or not found: `invalid_spec`). argv and env together at most
    /// 1 MiB (`too_large`).
    pub argv: Vec<String>,
    /// Extra environment, on top of the enclave's base environment.
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// Working directory of the app in the enclave's view; `None`: the
    /// control process's default.
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
    /// The app's standard output (fd 1).
    Stdout,
    /// The app's standard error (fd 2).
    Stderr,
}

/// Client -> daemon, on the daemon socket (`docs/protocol.md` §4.1): JSON
/// tagged by `op`. Each is answered by one [`Response`] (a streamed launch or
/// `remora_launch` by several); a refused request changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "op")]
pub enum Request {
    /// Version handshake; optional.
    Hello {
        /// Free-form name and version of the client, for the daemon's logs.
        client: String,
    },
    /// Node overview; answered by [`Response::Status`]. Anyone may ask.
    Status,
    /// Every core of the node; answered by [`Response::Cores`].
    ListCores,
    /// Every memory block of the node; answered by [`Response::Memory`].
    ListMemory,
    /// Every enclave (the host, 0, has no record); answered by [`Response::Enclaves`].
    ListEnclaves,
    /// Apps, in id order; answered by [`Response::Apps`].
    ListApps {
        /// Only the apps of this enclave; `None`: apps of every enclave.
        #[serde(default)]
        enclave: Option<EnclaveRef>,
    },
    /// One enclave's record; answered by [`Response::Enclave`] or `not_found`.
    GetEnclave {
        /// The enclave to show.
        enclave: EnclaveRef,
    },
    /// One app's record; answered by [`Response::App`] or `not_found`.
    GetApp {
        /// The app to show.
        app: AppId,
    },
    /// Reserve resources and start an enclave; the peer becomes its owner.
    /// Answered by [`Response::Enclave`] once its control process attached.
    CreateEnclave {
        /// What to create (`docs/nis-schema.md`, "Enclave spec").
        spec: EnclaveSpec,
        /// The Slurm job step it is made for, recorded in the enclave's
        /// record (the SPANK plugin sets it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        slurm: Option<SlurmStep>,
        /// Destroy the enclave when this host process ends (a step's
        /// slurmstepd), also when it ends while the daemon is down. It must
        /// exist (`invalid_spec`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bound_to_pid: Option<u32>,
        /// The enclave's owner instead of the peer (root only:
        /// `permission_denied` otherwise): the SPANK plugin, root in
        /// slurmstepd, gives the job's user its step's enclaves.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        owner: Option<Owner>,
        /// The CPUs of the Slurm step's allocation on this node. On a node
        /// where Slurm confines jobs (`leviathan --slurm-cgroups`) the
        /// enclave's cores are taken from these (`overcommit` when too few
        /// are free); elsewhere they are recorded only.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        step_cpus: Option<Vec<CoreId>>,
    },
    /// Stop an enclave, kill its apps and return its cores and memory;
    /// answered by [`Response::Ok`]. Root or the enclave's owner.
    DestroyEnclave {
        /// The enclave to destroy.
        enclave: EnclaveRef,
    },
    /// Give an enclave more cores; answered by [`Response::Enclave`] (the
    /// updated record). Root or the enclave's owner.
    AssignCpus {
        /// The enclave to grow.
        enclave: EnclaveRef,
        /// Which cores, or how many, to add.
        cpus: CpuRequest,
    },
    /// Take cores back from an enclave; answered by [`Response::Enclave`].
    /// Root or the enclave's owner.
    RevokeCpus {
        /// The enclave to shrink.
        enclave: EnclaveRef,
        /// Linux CPU numbers the enclave holds now.
        cores: Vec<CoreId>,
    },
    /// Give an enclave more memory; answered by [`Response::Enclave`].
    /// Root or the enclave's owner.
    AssignMemory {
        /// The enclave to grow.
        enclave: EnclaveRef,
        /// How many MiB, or which blocks, to add.
        memory: MemRequest,
    },
    /// Take memory blocks back from an enclave; answered by
    /// [`Response::Enclave`]. Root or the enclave's owner.
    RevokeMemory {
        /// The enclave to shrink.
        enclave: EnclaveRef,
        /// Memory block ids the enclave holds now.
        blocks: Vec<BlockId>,
    },
    /// Start an app in an enclave, with the peer's uid/gid; answered by
    /// [`Response::App`] once it runs (then output frames when streamed).
    /// Root or the enclave's owner.
    LaunchApp {
        /// What to run, where, and whether to stream its output.
        launch: LaunchSpec,
    },
    /// Move an existing host process into a running native enclave: its
    /// cgroups (cores, memory limit) now, its namespaces by the caller, who
    /// enters those of the process the answer names. The process is recorded
    /// as a running app. Root only. Answered by [`Response::Joined`].
    JoinEnclave {
        /// The enclave to join; native and running.
        enclave: EnclaveRef,
        /// The host pid to move (a Slurm task before it execs its program).
        pid: u32,
        /// What it will run, for the app's record (at most 1 MiB).
        #[serde(default)]
        argv: Vec<String>,
        /// The Slurm task it is.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        slurm: Option<SlurmTask>,
        /// The app's owner; default: the process's uid and gid now (root,
        /// for a Slurm task before Slurm drops privileges).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        owner: Option<Owner>,
        /// Record the app and answer the namespaces, but leave the process's
        /// cgroups to a later [`Request::PlaceTask`] (the Slurm plugin joins
        /// from the task before slurmstepd puts it into the step's cgroups,
        /// and places it after).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        defer_cgroups: bool,
    },
    /// Put a joined app's process into its enclave's cgroups, answered by
    /// [`Response::App`]. Root only. On a node where Slurm confines jobs
    /// (`leviathan --slurm-cgroups`), a Slurm step's enclave nests in the
    /// step's cgroups the process is in (cgroup v1: `.../job_J/step_S/hobbes-<enclave>`),
    /// in each hierarchy where Slurm confines it; elsewhere the enclave's own.
    PlaceTask {
        /// The enclave the process joined.
        enclave: EnclaveRef,
        /// The joined process.
        pid: u32,
    },
    /// The end of a joined app, as its joiner saw it (a Slurm task's wait
    /// status); answered by [`Response::App`]. Root only.
    TaskExited {
        /// The joined app.
        app: AppId,
        /// How its process ended.
        exit: ExitStatus,
    },
    /// Send a signal to an app's process; answered by [`Response::Ok`]
    /// (`conflict` once it ended).
    /// Root or the app's owner.
    KillApp {
        /// The app to signal.
        app: AppId,
        /// Signal number, 1-64 (e.g. 15 for SIGTERM).
        signal: i32,
    },
    /// Block until the app ends; answers with its record.
    WaitApp {
        /// The app to wait for.
        app: AppId,
    },
    /// Round trip daemon -> control process -> daemon.
    Ping {
        /// The enclave whose control process to ping.
        enclave: EnclaveRef,
    },
    /// Export memory: the frame carries the backing memfd (and an eventfd when
    /// `signalled`). See docs/xemem.md.
    XememMake(Box<XememMake>),
    /// Remove a segment from the name server (root or its owner's uid);
    /// answered by [`Response::Ok`].
    XememRemove {
        /// The segment to remove.
        segid: SegId,
    },
    /// Ask for access; the reply carries a descriptor of the segment
    /// (read-only for `read_only`) and its eventfd when signalled.
    XememGet {
        /// The segment wanted.
        segid: SegId,
        /// Access asked for, checked against the segment's `mode` like a
        /// file's; `read_write` of a composite segment is refused.
        access: Access,
    },
    /// Find a segment by name; answered by [`Response::Segment`] or `not_found`.
    XememLookup {
        /// The name the owner gave at make.
        name: String,
    },
    /// Remora: start one MPI job (an MPMD composition) and stream its output
    /// until it ends: `job`, then `job_output` frames, then `job_ended`.
    RemoraLaunch {
        /// The applications to run as one job.
        job: JobSpec,
    },
    /// Send a signal to every process of a job.
    RemoraSignal {
        /// The job to signal (root or its owner).
        job: JobId,
        /// Signal number, 1-64.
        signal: i32,
    },
    /// Every Remora job the NIS holds; answered by [`Response::Jobs`].
    ListJobs,
    /// Every segment with its live attachments; answered by [`Response::Segments`].
    XememList,
    /// Signal a segment's channel (wakes its waiters).
    XememSignal {
        /// The segment to signal; it must have been made `signalled`.
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

/// The MPI library a job's programs are built against: it decides which PMI
/// server the daemon runs for the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MpiFlavor {
    /// MPICH (and its derivatives): PMI-1 ("simple PMI").
    Mpich,
    /// Open MPI 4.x: PMIx.
    #[serde(rename = "openmpi")]
    OpenMpi,
}

impl MpiFlavor {
    /// As the composition XML and messages spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            MpiFlavor::Mpich => "mpich",
            MpiFlavor::OpenMpi => "openmpi",
        }
    }

    /// People's name for it.
    pub fn display_name(self) -> &'static str {
        match self {
            MpiFlavor::Mpich => "MPICH",
            MpiFlavor::OpenMpi => "Open MPI",
        }
    }

    /// Parse `mpich` or `openmpi` (`open-mpi`, `ompi` too).
    pub fn parse(s: &str) -> Result<MpiFlavor, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "mpich" => Ok(MpiFlavor::Mpich),
            "openmpi" | "open-mpi" | "ompi" => Ok(MpiFlavor::OpenMpi),
            other => Err(format!("unknown MPI {other:?}: expected mpich or openmpi")),
        }
    }
}

/// One application of a job: `np` processes of `argv` in `enclave`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobApp {
    /// Application name, unique in the job (its communicator name in reports).
    pub name: String,
    /// Enclave its ranks run in.
    pub enclave: EnclaveRef,
    /// Number of processes (ranks), at least 1.
    pub np: u32,
    /// Program and arguments, the same for every rank.
    pub argv: Vec<String>,
    /// Extra environment for every rank, on top of the PMI variables.
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// Working directory of the ranks; `None`: the control process's default.
    #[serde(default)]
    pub cwd: Option<String>,
    /// The MPI its program is known to be built against (read from its ELF,
    /// or named in the composition): its ranks must then connect to the
    /// job's PMI server, and a rank that ends without having done so fails
    /// the job (it ran as a singleton, a silent wrong world). `None`: not
    /// known to be an MPI program (a script, say); no such check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mpi: Option<MpiFlavor>,
}

/// A job to launch: applications in order (their index is their appnum,
/// their ranks are contiguous).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    /// Job name, for listings and logs.
    pub name: String,
    /// The applications, in appnum order.
    pub apps: Vec<JobApp>,
    /// How ranks reach the PMI server; TCP by default.
    #[serde(default)]
    pub pmi: PmiMode,
    /// Preload the rank-space library (MPI_COMM_WORLD per application,
    /// MPI_COMM_UNIVERSE for all): on by default for more than one application.
    #[serde(default)]
    pub rank_spaces: Option<bool>,
    /// The MPI every program of the job is built against (one job, one MPI);
    /// `None` (clients from before Open MPI support): MPICH.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mpi: Option<MpiFlavor>,
}

/// What an owner exports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct XememMake {
    /// Segment length in bytes; `offset + size` must lie within the memfd
    /// sent along.
    pub size: u64,
    /// Where the segment starts in the memfd, page-aligned: 0 for a memfd
    /// made for the segment; the range of a larger file otherwise (an
    /// enclave's RAM file, for a segment in a guest's memory). Not with
    /// `composite`.
    #[serde(default, skip_serializing_if = "crate::model::is_zero")]
    pub offset: u64,
    /// Unique name to look it up by (`xemem_lookup`); `None`: anonymous.
    #[serde(default)]
    pub name: Option<String>,
    /// A specific segid, if the caller wants one (must be free).
    #[serde(default)]
    pub segid: Option<SegId>,
    /// Permission bits for requesters (like a file's).
    pub mode: u32,
    /// The pages backing the memfd.
    pub page_kind: PageKind,
    /// An eventfd is sent along (after the memfd) as the segment's signal channel.
    pub signalled: bool,
    /// The owner's own descriptor number of the memfd (for a composite, the
    /// table memfd), recorded so a restarted daemon can recover it.
    pub owner_fd: i32,
    /// The owner's descriptor number of the eventfd, when `signalled`.
    #[serde(default)]
    pub owner_event_fd: Option<i32>,
    /// Address of the range in the owner (informational).
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
            Request::JoinEnclave { .. } => "join_enclave",
            Request::TaskExited { .. } => "task_exited",
            Request::PlaceTask { .. } => "place_task",
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
    /// A frame or a launch's argv+env over the limits (4 MiB frame, 1 MiB argv+env).
    TooLarge,
    /// Unknown enclave, app, job or segment id or name.
    NotFound,
    /// The peer is neither root nor the owner (or lacks the segment's mode bits).
    PermissionDenied,
    /// Not enough free cores or memory.
    Overcommit,
    /// A request that can never succeed (bad name, unknown core, empty argv,
    /// program not found, a bad XEMEM table).
    InvalidSpec,
    /// The object is in the wrong state for this request (name taken, enclave crashed...).
    Conflict,
    /// Not now: the enclave's control process did not answer, or the daemon
    /// is shutting down, busy (this user holds too many connections) or out
    /// of file descriptors. Retrying later may succeed.
    Unavailable,
    /// The OS refused something; the message names the path and the data.
    Internal,
}

/// A refused request: the `error` reply's body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ErrorReply {
    /// The class of failure, for programs.
    pub code: ErrorCode,
    /// For people: MUST name the object, SHOULD say how to fix the problem.
    pub message: String,
}

impl ErrorReply {
    /// An error of class `code` with its message.
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
    /// The NIS header: daemon, cgroup mode, health settings, counters.
    pub header: NisHeader,
    /// The daemon's state directory (socket, NIS, logs).
    pub state_dir: String,
    /// Cores the node has.
    pub cores_total: u32,
    /// Cores kept by the host.
    pub cores_host: u32,
    /// Cores under Leviathan's control and not allocated.
    pub cores_free: u32,
    /// Cores allocated to enclaves (shared enclaves own none).
    pub cores_allocated: u32,
    /// Bytes of all memory blocks.
    pub mem_total: u64,
    /// Bytes of the blocks kept by the host.
    pub mem_host: u64,
    /// Bytes of the free blocks.
    pub mem_free: u64,
    /// Bytes of the blocks allocated to enclaves.
    pub mem_allocated: u64,
    /// Every enclave's record.
    pub enclaves: Vec<EnclaveRecord>,
    /// Apps in state `running`, over all enclaves.
    pub apps_running: u32,
    /// When the daemon manages part of the node (`leviathan --cpus`,
    /// `--memory`, `--memory-blocks`): the managed cores, as a CPU list
    /// ("4-15"). The counts above are then of the managed part only. Absent:
    /// the whole node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed_cores: Option<String>,
    /// With `managed_cores`: the node's online cores, as a CPU list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_cores: Option<String>,
    /// With `managed_cores`: bytes of the node's online memory blocks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_mem: Option<u64>,
}

/// Daemon -> client (`docs/protocol.md` §4): JSON tagged by `reply`. A
/// record reply is flattened into the object beside `reply`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "reply")]
pub enum Response {
    /// Answer to [`Request::Hello`].
    Hello {
        /// Daemon name and version, e.g. `leviathan 0.1.0`.
        server: String,
        /// The protocol version the daemon speaks ([`crate::PROTOCOL_VERSION`]).
        protocol: u8,
    },
    /// Success with nothing to return (destroy, kill, remove, signal).
    Ok,
    /// Answer to [`Request::Status`].
    Status(Box<NodeStatus>),
    /// Answer to [`Request::ListCores`].
    Cores {
        /// Every core, in id order.
        cores: Vec<CoreRecord>,
    },
    /// Answer to [`Request::ListMemory`].
    Memory {
        /// Every memory block, in id order.
        blocks: Vec<MemBlockRecord>,
    },
    /// Answer to [`Request::ListEnclaves`].
    Enclaves {
        /// Every enclave, in id order.
        enclaves: Vec<EnclaveRecord>,
    },
    /// Answer to [`Request::ListApps`].
    Apps {
        /// The apps asked for, in id order.
        apps: Vec<AppRecord>,
    },
    /// One enclave's record: get, create, assign and revoke answer with it.
    Enclave(Box<EnclaveRecord>),
    /// One app's record: get, launch (once running) and wait (once ended).
    App(Box<AppRecord>),
    /// Answer to [`Request::JoinEnclave`]: the process is in the enclave's
    /// cgroups and recorded as an app.
    Joined {
        /// The app the process now is (state `running`).
        app: Box<AppRecord>,
        /// The host pid whose namespaces the joiner enters (the enclave's
        /// control process, pid 1 of its PID namespace), by `/proc/<pid>/ns/<name>`.
        ns_pid: u32,
        /// Which of its namespaces, in the order to enter them (`ipc` unless
        /// the enclave keeps the host's, `uts`, `pid`, `mnt`); empty for an
        /// unprivileged daemon's enclave, which has none.
        namespaces: Vec<String>,
    },
    /// A chunk of a streamed app's output.
    Output {
        /// The streamed app.
        app: AppId,
        /// Which of its streams this chunk comes from.
        stream: Stream,
        /// The raw bytes (base64 in JSON), in the order the app wrote them.
        #[serde(with = "crate::b64")]
        data: Vec<u8>,
    },
    /// Output was dropped because this client read too slowly; the log file has it all.
    OutputDropped {
        /// The streamed app.
        app: AppId,
        /// Bytes dropped (sent after more than 8 MiB were queued).
        bytes: u64,
    },
    /// The streamed app ended; last frame of a streamed launch.
    AppExited(Box<AppRecord>),
    /// Answer to [`Request::Ping`].
    Pong {
        /// The enclave whose control process answered.
        enclave: EnclaveId,
        /// Round trip daemon -> control process -> daemon, in microseconds.
        rtt_us: u64,
    },
    /// A segment's record (make, lookup); for get, the frame also carries the
    /// segment's descriptor, then its eventfd when signalled.
    Segment(Box<SegmentRecord>),
    /// Answer to [`Request::XememList`].
    Segments {
        /// Every segment, with its live attachments.
        segments: Vec<SegmentInfo>,
    },
    /// A job started (all its processes launched); first frame of `remora_launch`.
    Job(Box<JobRecord>),
    /// Answer to [`Request::ListJobs`].
    Jobs {
        /// Every job, in id order.
        jobs: Vec<JobRecord>,
    },
    /// A chunk of one rank's output.
    JobOutput {
        /// The job.
        job: JobId,
        /// Name of the rank's application.
        app: String,
        /// Global rank (0-based) in the job.
        rank: u32,
        /// Which of its streams this chunk comes from.
        stream: Stream,
        /// The raw bytes (base64 in JSON).
        #[serde(with = "crate::b64")]
        data: Vec<u8>,
    },
    /// The job ended; last frame of `remora_launch`.
    JobEnded(Box<JobRecord>),
    /// The request was refused or failed; nothing changed.
    Error(ErrorReply),
}

impl Response {
    /// An `error` reply of class `code`.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Response::Error(ErrorReply::new(code, message))
    }
}
