//! Client library for Hobbes.
//!
//! ```no_run
//! let mut client = hobbes_client::Client::connect_default()?;
//! for enclave in client.list_enclaves()? {
//!     println!("{} {}", enclave.id, enclave.name);
//! }
//! # Ok::<(), hobbes_client::ClientError>(())
//! ```

#![deny(missing_docs)]

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hobbes_proto::control::{EnclaveRequest, EnclaveResponse, FILE_CHUNK};
use hobbes_proto::fdpass;
use hobbes_proto::frame::{self, FrameError};
use hobbes_proto::model::{
    Access, AppId, AppRecord, BlockId, CoreId, CoreRecord, EnclaveId, EnclaveRecord, ExitStatus,
    JobRecord, MemBlockRecord, SegId, SegmentInfo, SegmentRecord,
};
use hobbes_proto::msg::{
    EnclaveRef, ErrorCode, ErrorReply, JobId, JobSpec, LaunchSpec, NodeStatus, Owner, Request,
    Response, Stream, XememMake,
};
use hobbes_proto::slurm::{SlurmStep, SlurmTask};
use hobbes_proto::spec::{CpuRequest, EnclaveSpec, MemRequest};

pub use hobbes_nis::{NisError, NisReader, NisSnapshot};
pub use hobbes_proto as proto;

pub mod human;
pub mod paths;

/// What `xemem_get_grant` hands out.
#[derive(Debug)]
pub struct SegmentGrant {
    /// The segment as the name server records it (size, owner, mode, page
    /// kind, composite or not).
    pub record: SegmentRecord,
    /// The segment's memfd (read-only reopening for read-only access); a
    /// composite segment's extent table.
    pub memfd: OwnedFd,
    /// A composite segment's pool memfd.
    pub pool: Option<OwnedFd>,
    /// The signal channel of a signalled segment.
    pub eventfd: Option<OwnedFd>,
}

/// Why a call to the daemon, to a control process, or to the NIS failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connecting to the socket failed: no daemon (or control process) there,
    /// or the socket is not accessible to this user. Also on a reconnect
    /// after the daemon closed an idle connection.
    #[error("cannot connect to leviathan at {path}: {source}{hint}", hint = connect_hint(source))]
    Connect {
        /// The socket connected to.
        path: PathBuf,
        /// The error from `connect(2)` (NotFound, ConnectionRefused,
        /// PermissionDenied...).
        source: io::Error,
    },
    /// Sending a request or reading its reply failed: the peer closed the
    /// connection, an i/o error, or a frame that does not decode. Whether
    /// the request was carried out is unknown.
    #[error("connection to {peer}: {source}")]
    Frame {
        /// The peer's socket path.
        peer: String,
        /// What went wrong with the frame.
        source: FrameError,
    },
    /// The daemon (or control process) refused the request.
    #[error("{0}")]
    Refused(ErrorReply),
    /// The peer answered with a reply of the wrong kind for the request
    /// (a protocol mismatch), or a grant lacked its descriptors.
    #[error("unexpected reply from {peer}: {got}")]
    Unexpected {
        /// The peer's socket path.
        peer: String,
        /// The reply received (its `Debug` form) or what it lacked.
        got: String,
    },
    /// Reading the Node Information Service directly failed.
    #[error(transparent)]
    Nis(#[from] NisError),
}

fn connect_hint(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
            " (is leviathan running? start it with `leviathan`, or set HOBBES_STATE_DIR)"
        }
        io::ErrorKind::PermissionDenied => " (the socket is not accessible to this user)",
        _ => "",
    }
}

impl ClientError {
    /// The daemon's error class, when the daemon refused.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Refused(r) => Some(r.code),
            _ => None,
        }
    }
}

/// The result of every client call.
pub type Result<T> = std::result::Result<T, ClientError>;

/// A connection to `leviathan`.
pub struct Client {
    stream: UnixStream,
    /// The socket, to reconnect when the daemon closed an idle connection.
    path: PathBuf,
    peer: String,
}

/// What [`Client::join_enclave`] answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    /// The app the joined process now is.
    pub app: AppRecord,
    /// The host pid whose namespaces to enter.
    pub ns_pid: u32,
    /// Which namespaces (`ipc`, `uts`, `pid`, `mnt`), in the order to enter them.
    pub namespaces: Vec<String>,
}

fn unexpected<T>(peer: &str, got: Response) -> Result<T> {
    match got {
        Response::Error(e) => Err(ClientError::Refused(e)),
        other => Err(ClientError::Unexpected {
            peer: peer.to_string(),
            got: format!("{other:?}"),
        }),
    }
}

impl Client {
    /// Connect to the daemon's client socket at `socket`. `Connect` when
    /// nothing listens there or this user may not open it.
    pub fn connect(socket: impl AsRef<Path>) -> Result<Self> {
        let path = socket.as_ref();
        let stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Client {
            stream,
            path: path.to_path_buf(),
            peer: path.display().to_string(),
        })
    }

    /// Connect to the socket named by `HOBBES_SOCKET`, or the default state directory's.
    pub fn connect_default() -> Result<Self> {
        Self::connect(paths::socket())
    }

    fn frame_err(&self) -> impl Fn(FrameError) -> ClientError + '_ {
        |source| ClientError::Frame {
            peer: self.peer.clone(),
            source,
        }
    }

    /// Send one request and hang up without waiting for its answer: the
    /// daemon serves each connection on a thread of its own and carries a
    /// request it has read through whole, so the work is done; only its
    /// answer (and so any refusal) is lost. For clean-ups off a caller's
    /// critical path (the SPANK plugin's step end, which `srun` waits for).
    /// Takes the client: an answer left unread would otherwise be taken for
    /// the next request's.
    pub fn post(mut self, req: &Request) -> Result<()> {
        self.send(req, &[])
    }

    /// Send one request and read one response, errors included as `Response::Error`.
    pub fn request(&mut self, req: &Request) -> Result<Response> {
        match self.send(req, &[]) {
            Ok(()) => self.read(),
            Err(ClientError::Refused(e)) => Ok(Response::Error(e)),
            Err(e) => Err(e),
        }
    }

    /// Send one request (with descriptors for `xemem_make`).
    ///
    /// The daemon closes connections that stay idle (see leviathan's
    /// `client_idle_timeout_s`). Writing to a connection its peer closed fails
    /// at once (`EPIPE`, nothing sent), so then the connection is opened again
    /// and the request sent once: no request is ever lost or sent twice, and
    /// a live connection costs no extra system call. A daemon that refused the
    /// connection (too many from this user) left its reason in the socket:
    /// that reason is the error, on every request.
    fn send(&mut self, req: &Request, fds: &[BorrowedFd<'_>]) -> Result<()> {
        let mut reopened = false;
        loop {
            let e = match fdpass::write_frame_with_fds(&self.stream, req, fds) {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            let peer_gone = matches!(&e, FrameError::Io(io) if matches!(
                io.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            ));
            if !peer_gone {
                return Err(self.frame_err()(e));
            }
            match frame::read_frame::<_, Response>(&mut self.stream) {
                Ok(Response::Error(reason)) => return Err(ClientError::Refused(reason)),
                Err(FrameError::Closed) if !reopened => {
                    // Closed while idle, without a word: nothing of ours was read.
                    self.reconnect()?;
                    reopened = true;
                }
                Ok(other) => {
                    return Err(ClientError::Unexpected {
                        peer: self.peer.clone(),
                        got: format!("{other:?} before any request"),
                    })
                }
                Err(_) => return Err(self.frame_err()(e)),
            }
        }
    }

    fn reconnect(&mut self) -> Result<()> {
        self.stream = UnixStream::connect(&self.path).map_err(|source| ClientError::Connect {
            path: self.path.clone(),
            source,
        })?;
        Ok(())
    }

    fn read(&mut self) -> Result<Response> {
        frame::read_frame(&mut self.stream).map_err(self.frame_err())
    }

    /// Send one request; a refusal becomes `Err(ClientError::Refused)`.
    pub fn call(&mut self, req: &Request) -> Result<Response> {
        match self.request(req)? {
            Response::Error(e) => Err(ClientError::Refused(e)),
            other => Ok(other),
        }
    }

    /// The node's status: daemon, cgroup layout, counters, enclaves' health.
    pub fn status(&mut self) -> Result<NodeStatus> {
        match self.call(&Request::Status)? {
            Response::Status(s) => Ok(*s),
            other => unexpected(&self.peer, other),
        }
    }

    /// Every core the daemon manages, with its owner, as the daemon sees it.
    pub fn list_cores(&mut self) -> Result<Vec<CoreRecord>> {
        match self.call(&Request::ListCores)? {
            Response::Cores { cores } => Ok(cores),
            other => unexpected(&self.peer, other),
        }
    }

    /// Every memory block the daemon manages, with its owner.
    pub fn list_memory(&mut self) -> Result<Vec<MemBlockRecord>> {
        match self.call(&Request::ListMemory)? {
            Response::Memory { blocks } => Ok(blocks),
            other => unexpected(&self.peer, other),
        }
    }

    /// Every enclave, enclave 0 (the host) included.
    pub fn list_enclaves(&mut self) -> Result<Vec<EnclaveRecord>> {
        match self.call(&Request::ListEnclaves)? {
            Response::Enclaves { enclaves } => Ok(enclaves),
            other => unexpected(&self.peer, other),
        }
    }

    /// The apps of one enclave, or of all enclaves with `None`; running and
    /// recently ended ones. `Refused` (NotFound) for an unknown enclave.
    pub fn list_apps(&mut self, enclave: Option<EnclaveRef>) -> Result<Vec<AppRecord>> {
        match self.call(&Request::ListApps { enclave })? {
            Response::Apps { apps } => Ok(apps),
            other => unexpected(&self.peer, other),
        }
    }

    /// One enclave's record, by id or name. `Refused` (NotFound) when there
    /// is none.
    pub fn enclave(&mut self, enclave: EnclaveRef) -> Result<EnclaveRecord> {
        self.enclave_reply(Request::GetEnclave { enclave })
    }

    /// One app's record. `Refused` (NotFound) when there is none (never
    /// launched, or forgotten since it ended).
    pub fn app(&mut self, app: AppId) -> Result<AppRecord> {
        match self.call(&Request::GetApp { app })? {
            Response::App(a) => Ok(*a),
            other => unexpected(&self.peer, other),
        }
    }

    fn enclave_reply(&mut self, req: Request) -> Result<EnclaveRecord> {
        match self.call(&req)? {
            Response::Enclave(e) => Ok(*e),
            other => unexpected(&self.peer, other),
        }
    }

    /// Create an enclave from `spec` and return its record once its control
    /// process runs. `Refused` when the name is taken (Conflict), the spec is
    /// invalid (InvalidSpec), or its cores or memory are not free (Overcommit).
    pub fn create_enclave(&mut self, spec: EnclaveSpec) -> Result<EnclaveRecord> {
        self.enclave_reply(Request::CreateEnclave {
            spec,
            slurm: None,
            bound_to_pid: None,
            owner: None,
            step_cpus: None,
        })
    }

    /// [`Client::create_enclave`] for a Slurm job step: the record carries
    /// `slurm`, and with `bound_to_pid` the daemon destroys the enclave when
    /// that process ends (`Refused` InvalidSpec when it does not exist).
    pub fn create_enclave_for_step(
        &mut self,
        spec: EnclaveSpec,
        slurm: Option<SlurmStep>,
        bound_to_pid: Option<u32>,
    ) -> Result<EnclaveRecord> {
        self.create_enclave_for_job(spec, slurm, bound_to_pid, None, None)
    }

    /// [`Client::create_enclave_for_step`] with the enclave's `owner`
    /// instead of the caller (root only: `Refused` PermissionDenied
    /// otherwise): the SPANK plugin gives the job's user its enclaves.
    /// `step_cpus`: the CPUs of the step's allocation on this node, which
    /// the enclave's cores come from where Slurm confines jobs.
    pub fn create_enclave_for_job(
        &mut self,
        spec: EnclaveSpec,
        slurm: Option<SlurmStep>,
        bound_to_pid: Option<u32>,
        owner: Option<Owner>,
        step_cpus: Option<Vec<CoreId>>,
    ) -> Result<EnclaveRecord> {
        self.enclave_reply(Request::CreateEnclave {
            spec,
            slurm,
            bound_to_pid,
            owner,
            step_cpus,
        })
    }

    /// Move host process `pid` into a running native enclave's cgroups and
    /// record it as an app (root only). Returns the app, and the pid whose
    /// namespaces (`/proc/<pid>/ns/<name>`, in the order given) the caller
    /// enters itself.
    pub fn join_enclave(
        &mut self,
        enclave: EnclaveRef,
        pid: u32,
        argv: Vec<String>,
        slurm: Option<SlurmTask>,
    ) -> Result<Joined> {
        self.join_enclave_as(enclave, pid, argv, slurm, None, false)
    }

    /// [`Client::join_enclave`], the app recorded as `owner`'s (default:
    /// the process's uid and gid when it joins); with `defer_cgroups` the
    /// process's cgroups are left to [`Client::place_task`].
    pub fn join_enclave_as(
        &mut self,
        enclave: EnclaveRef,
        pid: u32,
        argv: Vec<String>,
        slurm: Option<SlurmTask>,
        owner: Option<Owner>,
        defer_cgroups: bool,
    ) -> Result<Joined> {
        match self.call(&Request::JoinEnclave {
            enclave,
            pid,
            argv,
            slurm,
            owner,
            defer_cgroups,
        })? {
            Response::Joined {
                app,
                ns_pid,
                namespaces,
            } => Ok(Joined {
                app: *app,
                ns_pid,
                namespaces,
            }),
            other => unexpected(&self.peer, other),
        }
    }

    /// Put joined process `pid` into its enclave's cgroups, nested in its
    /// Slurm step's where Slurm confines jobs (root only); returns the app.
    pub fn place_task(&mut self, enclave: EnclaveRef, pid: u32) -> Result<AppRecord> {
        match self.call(&Request::PlaceTask { enclave, pid })? {
            Response::App(a) => Ok(*a),
            other => unexpected(&self.peer, other),
        }
    }

    /// Report how a joined app's process ended (root only); returns its
    /// final record.
    pub fn task_exited(&mut self, app: AppId, exit: ExitStatus) -> Result<AppRecord> {
        match self.call(&Request::TaskExited { app, exit })? {
            Response::App(a) => Ok(*a),
            other => unexpected(&self.peer, other),
        }
    }

    /// Stop an enclave's apps and control process and free its resources.
    /// Only its owner or root may (`Refused`: PermissionDenied); NotFound for
    /// an unknown enclave, InvalidSpec for enclave 0, Conflict while it is
    /// still starting.
    pub fn destroy_enclave(&mut self, enclave: EnclaveRef) -> Result<()> {
        match self.call(&Request::DestroyEnclave { enclave })? {
            Response::Ok => Ok(()),
            other => unexpected(&self.peer, other),
        }
    }

    /// Give an enclave more cores; returns its updated record. `Refused`
    /// (Overcommit) when the cores asked for are not free.
    pub fn assign_cpus(&mut self, enclave: EnclaveRef, cpus: CpuRequest) -> Result<EnclaveRecord> {
        self.enclave_reply(Request::AssignCpus { enclave, cpus })
    }

    /// Take cores (by host core id) back from an enclave; returns its updated
    /// record. `Refused` when a core is not the enclave's, or when it would
    /// be left without a core (destroy it instead).
    pub fn revoke_cpus(
        &mut self,
        enclave: EnclaveRef,
        cores: Vec<CoreId>,
    ) -> Result<EnclaveRecord> {
        self.enclave_reply(Request::RevokeCpus { enclave, cores })
    }

    /// Give an enclave more memory blocks; returns its updated record.
    /// `Refused` (Overcommit) when not enough blocks are free.
    pub fn assign_memory(
        &mut self,
        enclave: EnclaveRef,
        memory: MemRequest,
    ) -> Result<EnclaveRecord> {
        self.enclave_reply(Request::AssignMemory { enclave, memory })
    }

    /// Take memory blocks (by block id) back from an enclave; returns its
    /// updated record. `Refused` when a block is not the enclave's.
    pub fn revoke_memory(
        &mut self,
        enclave: EnclaveRef,
        blocks: Vec<BlockId>,
    ) -> Result<EnclaveRecord> {
        self.enclave_reply(Request::RevokeMemory { enclave, blocks })
    }

    /// Launch an app; returns once it runs (or failed to start).
    pub fn launch(&mut self, mut launch: LaunchSpec) -> Result<AppRecord> {
        launch.stream = false;
        match self.call(&Request::LaunchApp { launch })? {
            Response::App(a) => Ok(*a),
            other => unexpected(&self.peer, other),
        }
    }

    /// Launch an app and stream its output to `on_output` until it ends;
    /// returns its final record. `on_started` sees the record once it runs.
    pub fn launch_streaming(
        &mut self,
        mut launch: LaunchSpec,
        mut on_started: impl FnMut(&AppRecord),
        mut on_output: impl FnMut(Stream, &[u8]),
    ) -> Result<AppRecord> {
        launch.stream = true;
        match self.call(&Request::LaunchApp { launch })? {
            Response::App(a) => on_started(&a),
            other => return unexpected(&self.peer, other),
        }
        loop {
            match self.read()? {
                Response::Output { stream, data, .. } => on_output(stream, &data),
                Response::OutputDropped { bytes, .. } => on_output(
                    Stream::Stderr,
                    format!(
                        "[hobbes: {bytes} bytes of output dropped here; see the app's log file]\n"
                    )
                    .as_bytes(),
                ),
                Response::AppExited(a) => return Ok(*a),
                other => return unexpected(&self.peer, other),
            }
        }
    }

    /// Send signal number `signal` (1 to 64: `libc::SIGTERM`...) to an
    /// app's processes. Only its owner or root may (`Refused`:
    /// PermissionDenied); NotFound for an unknown app, Conflict once it ended,
    /// InvalidSpec for a number out of range.
    pub fn kill_app(&mut self, app: AppId, signal: i32) -> Result<()> {
        match self.call(&Request::KillApp { app, signal })? {
            Response::Ok => Ok(()),
            other => unexpected(&self.peer, other),
        }
    }

    /// Block until the app ends.
    pub fn wait_app(&mut self, app: AppId) -> Result<AppRecord> {
        match self.call(&Request::WaitApp { app })? {
            Response::App(a) => Ok(*a),
            other => unexpected(&self.peer, other),
        }
    }

    /// XEMEM: register `memfd` (and `eventfd`) as a segment. The name server
    /// keeps its own references; the caller keeps its descriptors open as long
    /// as the segment exists (a restarted daemon recovers them from it).
    pub fn xemem_make(
        &mut self,
        make: XememMake,
        memfd: BorrowedFd<'_>,
        eventfd: Option<BorrowedFd<'_>>,
    ) -> Result<SegmentRecord> {
        let mut fds = vec![memfd];
        fds.extend(eventfd);
        self.xemem_make_with(make, &fds)
    }

    /// XEMEM: register a composite segment (`make.composite` set): its
    /// extent table memfd, the pool memfd, and the eventfd when signalled.
    pub fn xemem_make_composite(
        &mut self,
        make: XememMake,
        table: BorrowedFd<'_>,
        pool: BorrowedFd<'_>,
        eventfd: Option<BorrowedFd<'_>>,
    ) -> Result<SegmentRecord> {
        let mut fds = vec![table, pool];
        fds.extend(eventfd);
        self.xemem_make_with(make, &fds)
    }

    fn xemem_make_with(
        &mut self,
        make: XememMake,
        fds: &[BorrowedFd<'_>],
    ) -> Result<SegmentRecord> {
        self.send(&Request::XememMake(Box::new(make)), fds)?;
        match self.read()? {
            Response::Segment(s) => Ok(*s),
            other => unexpected(&self.peer, other),
        }
    }

    /// XEMEM: access to a segment: its record, a descriptor of its memory
    /// (read-only when asked), and its eventfd when it is signalled. A
    /// composite segment's grant has two memory descriptors: use
    /// [`Client::xemem_get_grant`] for those.
    pub fn xemem_get(
        &mut self,
        segid: SegId,
        access: Access,
    ) -> Result<(SegmentRecord, OwnedFd, Option<OwnedFd>)> {
        let g = self.xemem_get_grant(segid, access)?;
        if g.pool.is_some() {
            return Err(ClientError::Unexpected {
                peer: self.peer.clone(),
                got: format!(
                    "segment {segid} is composite (a table and a pool); get it with xemem_get_grant"
                ),
            });
        }
        Ok((g.record, g.memfd, g.eventfd))
    }

    /// XEMEM: access to any segment, composite ones included.
    pub fn xemem_get_grant(&mut self, segid: SegId, access: Access) -> Result<SegmentGrant> {
        self.send(&Request::XememGet { segid, access }, &[])?;
        let (reply, fds): (Response, Vec<OwnedFd>) =
            fdpass::read_frame_with_fds(&self.stream).map_err(self.frame_err())?;
        match reply {
            Response::Segment(s) => {
                let missing = |what: &str| ClientError::Unexpected {
                    peer: self.peer.clone(),
                    got: format!("a grant of segment {segid} without its {what}"),
                };
                let mut fds = fds.into_iter();
                let memfd = fds.next().ok_or_else(|| missing("descriptor"))?;
                let pool = match s.composite {
                    Some(_) => Some(fds.next().ok_or_else(|| missing("pool descriptor"))?),
                    None => None,
                };
                let eventfd = fds.next();
                Ok(SegmentGrant {
                    record: *s,
                    memfd,
                    pool,
                    eventfd,
                })
            }
            other => unexpected(&self.peer, other),
        }
    }

    /// XEMEM: stop exporting a segment. Only its owner's uid or root may
    /// (`Refused`: PermissionDenied); an unknown segid is NotFound.
    pub fn xemem_remove(&mut self, segid: SegId) -> Result<()> {
        match self.call(&Request::XememRemove { segid })? {
            Response::Ok => Ok(()),
            other => unexpected(&self.peer, other),
        }
    }

    /// Name lookup through the daemon (the NIS answers the same without IPC:
    /// `nis()?.segment_by_name(name)`).
    pub fn xemem_lookup(&mut self, name: &str) -> Result<SegmentRecord> {
        match self.call(&Request::XememLookup {
            name: name.to_string(),
        })? {
            Response::Segment(s) => Ok(*s),
            other => unexpected(&self.peer, other),
        }
    }

    /// XEMEM: every segment on the node, with its attachments.
    pub fn xemem_list(&mut self) -> Result<Vec<SegmentInfo>> {
        match self.call(&Request::XememList)? {
            Response::Segments { segments } => Ok(segments),
            other => unexpected(&self.peer, other),
        }
    }

    /// Signal a segment's channel through the name server.
    pub fn xemem_signal(&mut self, segid: SegId) -> Result<()> {
        match self.call(&Request::XememSignal { segid })? {
            Response::Ok => Ok(()),
            other => unexpected(&self.peer, other),
        }
    }

    /// Remora: launch one MPI job and stream its output until it ends; returns
    /// the final record. `on_started` sees the record once every process runs.
    pub fn remora_launch(
        &mut self,
        job: JobSpec,
        mut on_started: impl FnMut(&JobRecord),
        mut on_output: impl FnMut(&str, u32, Stream, &[u8]),
    ) -> Result<JobRecord> {
        match self.call(&Request::RemoraLaunch { job })? {
            Response::Job(j) => on_started(&j),
            other => return unexpected(&self.peer, other),
        }
        loop {
            match self.read()? {
                Response::JobOutput {
                    app,
                    rank,
                    stream,
                    data,
                    ..
                } => on_output(&app, rank, stream, &data),
                Response::JobEnded(j) => return Ok(*j),
                other => return unexpected(&self.peer, other),
            }
        }
    }

    /// Send a signal to every process of a job.
    pub fn remora_signal(&mut self, job: JobId, signal: i32) -> Result<()> {
        match self.call(&Request::RemoraSignal { job, signal })? {
            Response::Ok => Ok(()),
            other => unexpected(&self.peer, other),
        }
    }

    /// Remora: every job the daemon records, running or ended.
    pub fn list_jobs(&mut self) -> Result<Vec<JobRecord>> {
        match self.call(&Request::ListJobs)? {
            Response::Jobs { jobs } => Ok(jobs),
            other => unexpected(&self.peer, other),
        }
    }

    /// Round trip daemon -> enclave control process, as measured by the daemon.
    pub fn ping_via_daemon(&mut self, enclave: EnclaveRef) -> Result<Duration> {
        match self.call(&Request::Ping { enclave })? {
            Response::Pong { rtt_us, .. } => Ok(Duration::from_micros(rtt_us)),
            other => unexpected(&self.peer, other),
        }
    }
}

/// A direct connection to one enclave's control process.
pub struct EnclaveConn {
    stream: UnixStream,
    peer: String,
    seq: u64,
}

impl EnclaveConn {
    /// Connect to an enclave's control socket
    /// (`<state>/enclaves/<id>/control.sock`). `Connect` when the control
    /// process is not there or this user may not open it.
    pub fn connect(socket: impl AsRef<Path>) -> Result<Self> {
        let path = socket.as_ref();
        let stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(EnclaveConn {
            stream,
            peer: path.display().to_string(),
            seq: 0,
        })
    }

    /// Connect to the control process of `enclave` at the endpoint its kind
    /// recorded (`record.control`). `Connect` (with `Unsupported`) when the
    /// endpoint is not a Unix socket (none yet, or a transport this client
    /// does not speak).
    pub fn to_enclave(record: &EnclaveRecord) -> Result<Self> {
        match record.control.unix_socket_path() {
            Some(path) => Self::connect(path),
            None => Err(ClientError::Connect {
                path: PathBuf::from(record.control.to_string()),
                source: io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!(
                        "enclave {} ({}) has no control endpoint this client can reach",
                        record.id, record.name
                    ),
                ),
            }),
        }
    }

    fn call(&mut self, req: &EnclaveRequest) -> Result<EnclaveResponse> {
        let peer = self.peer.clone();
        let err = |source| ClientError::Frame {
            peer: peer.clone(),
            source,
        };
        frame::write_frame(&mut self.stream, req).map_err(err)?;
        match frame::read_frame(&mut self.stream).map_err(err)? {
            EnclaveResponse::Error { message } => Err(ClientError::Refused(ErrorReply::new(
                ErrorCode::BadRequest,
                message,
            ))),
            ok => Ok(ok),
        }
    }

    /// One round trip to the control process.
    pub fn ping(&mut self) -> Result<(EnclaveId, Duration)> {
        self.seq += 1;
        let start = Instant::now();
        match self.call(&EnclaveRequest::Ping { seq: self.seq })? {
            EnclaveResponse::Pong { seq, enclave } if seq == self.seq => {
                Ok((enclave, start.elapsed()))
            }
            other => Err(ClientError::Unexpected {
                peer: self.peer.clone(),
                got: format!("{other:?}"),
            }),
        }
    }

    /// Attach to the enclave's console (a VM's serial console): the
    /// connection, from now on a raw byte stream both ways.
    pub fn console(mut self) -> Result<std::os::unix::net::UnixStream> {
        match self.call(&EnclaveRequest::Console)? {
            EnclaveResponse::ConsoleAttached => Ok(self.stream),
            other => Err(ClientError::Unexpected {
                peer: self.peer.clone(),
                got: format!("{other:?}"),
            }),
        }
    }

    /// Read a whole file as the enclave sees it, in chunks, up to `limit` bytes.
    pub fn read_file(&mut self, path: &str, limit: u64) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        loop {
            let want = FILE_CHUNK.min((limit - out.len() as u64).min(u32::MAX as u64) as u32);
            let req = EnclaveRequest::ReadFile {
                path: path.to_string(),
                offset: out.len() as u64,
                len: want,
            };
            match self.call(&req)? {
                EnclaveResponse::Data { data, eof } => {
                    out.extend_from_slice(&data);
                    if eof || data.is_empty() || out.len() as u64 >= limit {
                        return Ok(out);
                    }
                }
                other => {
                    return Err(ClientError::Unexpected {
                        peer: self.peer.clone(),
                        got: format!("{other:?}"),
                    })
                }
            }
        }
    }

    /// Write (create or truncate) a file in the enclave's view.
    pub fn write_file(&mut self, path: &str, data: &[u8], mode: u32) -> Result<()> {
        if data.is_empty() {
            return self.write_chunk(path, &[], false, mode);
        }
        for (i, chunk) in data.chunks(FILE_CHUNK as usize).enumerate() {
            self.write_chunk(path, chunk, i > 0, mode)?;
        }
        Ok(())
    }

    fn write_chunk(&mut self, path: &str, data: &[u8], append: bool, mode: u32) -> Result<()> {
        let req = EnclaveRequest::WriteFile {
            path: path.to_string(),
            data: data.to_vec(),
            append,
            mode,
        };
        match self.call(&req)? {
            EnclaveResponse::Written => Ok(()),
            other => Err(ClientError::Unexpected {
                peer: self.peer.clone(),
                got: format!("{other:?}"),
            }),
        }
    }
}

/// The Node Information Service this process should read: `HOBBES_NIS` inside
/// an enclave (its replica), the state directory's otherwise.
pub fn nis() -> Result<NisReader> {
    Ok(NisReader::open(paths::nis())?)
}

/// The enclave this process runs in (0, the host, outside any enclave).
pub fn my_enclave_id() -> EnclaveId {
    std::env::var(hobbes_proto::ENV_ENCLAVE_ID)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(hobbes_proto::model::HOST_ENCLAVE)
}

/// The app this process belongs to, if launched by Hobbes.
pub fn my_app_id() -> Option<AppId> {
    std::env::var(hobbes_proto::ENV_APP_ID)
        .ok()
        .and_then(|v| v.parse().ok())
}
