#![deny(missing_docs)]

//! The kind-neutral half of an enclave's control agent.
//!
//! Every enclave kind has one agent on the host that speaks for the enclave
//! (the native kind's control process, `leviathan enclave-init`; the LWK
//! kind's monitor, `leviathan lwk-monitor`). What they share lives here:
//!
//! * the link to `leviathan` (docs/protocol.md §5): attach with the
//!   credential and the app reports, welcome, heartbeats, ping, and
//!   reconnecting every 100 ms for as long as the daemon is away, with the
//!   apps running on ([`Agent::run`]);
//! * the app table and its exit rules: `started` before `exited`, `exited`
//!   after the app's last forwarded byte of output (or 2 s after its end,
//!   when something else keeps its output open), exits kept until the
//!   daemon says `forget`;
//! * the apps' log files and output forwarding;
//! * the enclave socket (docs/protocol.md §6): ping, and file access in the
//!   agent's mount view ([`Agent::serve_enclave_socket`]).
//!
//! What differs per kind is behind [`AppRunner`]: start an app given its
//! [`LaunchCommand`] and descriptors and return a local pid, signal it, kill
//! everything at shutdown. A runner reports an app's end through the
//! [`ExitReporter`] it got with the launch, from any thread.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hobbes_proto::control::{
    AppReport, ControlDown, ControlUp, Credential, EnclaveRequest, EnclaveResponse, LaunchCommand,
    FILE_CHUNK,
};
use hobbes_proto::frame::{read_frame, write_frame, FrameError};
use hobbes_proto::model::{AppId, EnclaveId, ExitStatus};
use hobbes_proto::msg::Stream;

pub mod mounts;

/// How long an app's exit waits for its output pipes to close before it is
/// reported anyway (a descendant, or a kind's helper, may hold them forever).
pub const OUTPUT_GRACE: Duration = Duration::from_secs(2);

/// How often a lost daemon link is retried.
pub const RECONNECT_INTERVAL: Duration = Duration::from_millis(100);

/// Who the agent is, for the daemon.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The enclave the agent speaks for; sent in its `attach`.
    pub enclave: EnclaveId,
    /// The daemon's socket for control agents.
    pub daemon_socket: PathBuf,
    /// What admits the agent's link ([`take_credential`]).
    pub credential: Credential,
}

/// The arguments every control agent is started with (`leviathan
/// enclave-init` and `leviathan lwk-monitor` flatten them into theirs).
#[derive(Debug, Clone, clap::Args)]
pub struct AgentArgs {
    /// The id of the enclave this agent runs; sent in its `attach`.
    #[arg(long)]
    pub enclave: EnclaveId,
    /// The daemon's socket for control agents.
    #[arg(long)]
    pub daemon_socket: PathBuf,
    /// The enclave socket this agent serves (ping, files in its view).
    #[arg(long)]
    pub enclave_socket: PathBuf,
    /// Uid of the enclave's owner: besides root, the only peer that may read
    /// and write files through the enclave socket.
    #[arg(long)]
    pub owner_uid: u32,
    /// Gid of the enclave's owner, passed along with the uid (apps run with
    /// the uid/gid the daemon sends in each launch, not with these).
    #[arg(long)]
    pub owner_gid: u32,
}

impl AgentArgs {
    /// The agent these arguments describe, admitted by `credential`, with
    /// `runner` for its kind, serving its enclave socket already.
    pub fn start(
        &self,
        credential: Credential,
        runner: Arc<dyn AppRunner>,
    ) -> anyhow::Result<Agent> {
        let agent = Agent::new(
            AgentConfig {
                enclave: self.enclave,
                daemon_socket: self.daemon_socket.clone(),
                credential,
            },
            runner,
        );
        agent.serve_enclave_socket(&self.enclave_socket, self.owner_uid)?;
        Ok(agent)
    }
}

/// Take the control credential out of environment variable `var` (the
/// daemon puts it there; `hobbes_kind::CONTROL_CREDENTIAL_ENV`) and remove
/// it, so no copy of the environment made later (an app's, a child's) has
/// it. Call it before any thread starts.
pub fn take_credential(var: &str) -> Credential {
    let credential = Credential(std::env::var(var).unwrap_or_default());
    std::env::remove_var(var);
    credential
}

/// The descriptors an app gets, made by the agent: the kind hands them to
/// the app (a process's stdio, a guest's descriptors 0-2).
#[derive(Debug)]
pub struct AppIo {
    /// Descriptor 0: `/dev/null`.
    pub stdin: OwnedFd,
    /// Descriptor 1: the write end of a pipe the agent forwards (a client
    /// streams the output), else the app's stdout log file.
    pub stdout: OwnedFd,
    /// Descriptor 2, like `stdout`.
    pub stderr: OwnedFd,
    /// A descriptor the launch carried for the app (Remora's `PMI_FD`), when
    /// `LaunchCommand::pmi_fd` is set.
    pub inherited: Option<OwnedFd>,
}

/// What a kind does to run apps; the agent does the rest.
pub trait AppRunner: Send + Sync + 'static {
    /// Start `cmd`'s program with `io`. Returns the app's pid in the
    /// enclave once it runs, or why it cannot run (a message naming the
    /// program and the reason, which becomes the app's `detail`). The app's
    /// end goes to `exit`, exactly once, from any thread, possibly before
    /// this returns. The runner must drop its copies of `io`'s descriptors
    /// once the app no longer needs them: the app's exit is reported after
    /// its output pipes close.
    fn launch(&self, cmd: &LaunchCommand, io: AppIo, exit: ExitReporter) -> Result<u32, String>;

    /// Send `signal` to running app `app` (pid `local_pid` in the enclave).
    fn signal(&self, app: AppId, local_pid: u32, signal: i32) -> Result<(), String>;

    /// The daemon asked for the enclave's end: kill every app. The agent's
    /// process exits right after.
    fn kill_all(&self);

    /// A client pinged the enclave (its socket's `ping`): check that the
    /// enclave answers, beyond this agent (a VM's guest agent). Default: the
    /// agent answering is the enclave answering.
    fn ping(&self) -> Result<(), String> {
        Ok(())
    }

    /// Read up to `len` bytes at `offset` of `path` as the enclave sees it,
    /// with `uid`/`gid` as the file-system identity. Default: in this
    /// process's mount view (the enclave's, for kinds whose agent lives in it).
    fn read_file(
        &self,
        uid: u32,
        gid: u32,
        path: &str,
        offset: u64,
        len: u32,
    ) -> Result<EnclaveResponse, String> {
        hobbes_sys::creds::with_fs_identity(uid, gid, || read_chunk(path, offset, len))
    }

    /// Write `data` to `path` as the enclave sees it, as `uid`/`gid`
    /// (default: in this process's mount view).
    fn write_file(
        &self,
        uid: u32,
        gid: u32,
        path: &str,
        data: &[u8],
        append: bool,
        mode: u32,
    ) -> Result<EnclaveResponse, String> {
        hobbes_sys::creds::with_fs_identity(uid, gid, || write_chunk(path, data, append, mode))
    }

    /// The enclave's console, for `hobbes console`: a relay that carries a
    /// client's connection to the console and back until either side closes
    /// it, or why there is none (the default: this kind has no console).
    fn console(&self) -> Result<ConsoleRelay, String> {
        Err("this kind of enclave has no console".into())
    }
}

/// Relays one client's connection (after `console_attached`) to an
/// enclave's console until either side closes; from [`AppRunner::console`].
pub type ConsoleRelay = Box<dyn FnOnce(UnixStream) + Send>;

/// What a kind's runner may ask of the agent that drives it.
#[derive(Clone)]
pub struct AgentHandle {
    shared: Arc<Shared>,
}

impl AgentHandle {
    /// The enclave is lost (a VM's guest died): tell the daemon why, so the
    /// enclave is marked crashed with `reason`, kill what is left and exit.
    pub fn fatal(&self, reason: &str) -> ! {
        eprintln!("enclave {}: {reason}", self.shared.cfg.enclave);
        self.shared.send(&ControlUp::Fatal {
            reason: reason.to_string(),
        });
        self.shared.runner.kill_all();
        std::process::exit(1);
    }
}

/// Where a runner reports one app's end. Cheap to clone, usable from any
/// thread; the first report counts, later ones are ignored.
#[derive(Clone)]
pub struct ExitReporter {
    sink: Arc<dyn ExitSink>,
    app: AppId,
}

/// What receives [`ExitReporter`]'s reports: the agent's app table (or a
/// test's channel).
trait ExitSink: Send + Sync {
    fn exited(&self, app: AppId, status: ExitStatus, detail: Option<String>);
}

/// The agent's table as an [`ExitSink`].
struct AgentSink(Arc<Shared>);

impl ExitSink for AgentSink {
    fn exited(&self, app: AppId, status: ExitStatus, detail: Option<String>) {
        self.0.exited(app, status, detail);
    }
}

impl ExitReporter {
    /// The app the reporter is for.
    pub fn app(&self) -> AppId {
        self.app
    }

    /// App ended with `status`; `detail` is what the kind knows beyond it,
    /// for people (a guest fault, a summary of system calls). Reported to
    /// the daemon once its output is drained.
    pub fn exited(&self, status: ExitStatus, detail: Option<String>) {
        self.sink.exited(self.app, status, detail);
    }
}

impl std::fmt::Debug for ExitReporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ExitReporter(app {})", self.app)
    }
}

/// One app the agent tracks.
struct App {
    /// 0 while its launch is under way.
    local_pid: u32,
    exit: Option<ExitStatus>,
    detail: Option<String>,
    /// Output pipes still being forwarded: the exit is reported after the
    /// last byte of output, so a streaming client sees all of it first.
    open_pipes: u32,
    /// `Started` went out: an exit is never reported before the start.
    start_reported: bool,
    exit_reported: bool,
}

/// An app's output pipe to forward: its read end, the log it goes to, which stream.
type OutputPipe = (OwnedFd, File, Stream);

/// The state the agent's threads share.
struct Shared {
    cfg: AgentConfig,
    runner: Arc<dyn AppRunner>,
    apps: Mutex<HashMap<AppId, App>>,
    /// Writer half of the daemon connection, when connected.
    link: Mutex<Option<UnixStream>>,
    /// Heartbeat interval from the daemon's welcome (0 before it).
    heartbeat_ms: AtomicU64,
}

/// An enclave's control agent: build it with the kind's runner, serve the
/// enclave socket, then [`Agent::run`].
pub struct Agent {
    shared: Arc<Shared>,
}

impl Agent {
    /// An agent for `cfg`'s enclave whose apps `runner` runs.
    pub fn new(cfg: AgentConfig, runner: Arc<dyn AppRunner>) -> Agent {
        Agent {
            shared: Arc::new(Shared {
                cfg,
                runner,
                apps: Mutex::new(HashMap::new()),
                link: Mutex::new(None),
                heartbeat_ms: AtomicU64::new(0),
            }),
        }
    }

    /// A handle for the kind's runner (see [`AgentHandle`]).
    pub fn handle(&self) -> AgentHandle {
        AgentHandle {
            shared: self.shared.clone(),
        }
    }

    /// Bind the enclave socket at `path` (replacing a stale one; anyone may
    /// connect, each request is authorized by the peer's credentials) and
    /// serve it on a thread: ping for anyone; file access for root and
    /// `owner_uid`, with the peer's fsuid/fsgid, in this process's mount
    /// view (the enclave's).
    pub fn serve_enclave_socket(&self, path: &Path, owner_uid: u32) -> anyhow::Result<()> {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)
            .map_err(|e| anyhow::anyhow!("cannot bind {}: {e}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
        let enclave = self.shared.cfg.enclave;
        let runner = self.shared.runner.clone();
        std::thread::Builder::new()
            .name("enclave-socket".into())
            .spawn(move || {
                for stream in listener.incoming().flatten() {
                    let runner = runner.clone();
                    let _ = std::thread::Builder::new()
                        .name("enclave-client".into())
                        .spawn(move || {
                            let _ = serve_client(enclave, owner_uid, &*runner, stream);
                        });
                }
            })?;
        Ok(())
    }

    /// Send heartbeats and keep the daemon link up, for ever. Returns an
    /// error only when the daemon is unreachable at the first attempt;
    /// afterwards a lost link is retried every 100 ms while the apps run on,
    /// and a `shutdown` from the daemon kills the apps and exits the process.
    pub fn run(self) -> anyhow::Result<()> {
        let shared = self.shared.clone();
        std::thread::Builder::new()
            .name("heartbeat".into())
            .spawn(move || heartbeat(&shared))?;
        let mut first = true;
        loop {
            let stream = match UnixStream::connect(&self.shared.cfg.daemon_socket) {
                Ok(s) => s,
                Err(e) => {
                    if first {
                        anyhow::bail!(
                            "cannot reach the daemon at {}: {e}",
                            self.shared.cfg.daemon_socket.display()
                        );
                    }
                    // The daemon is restarting: retry until it is back.
                    std::thread::sleep(RECONNECT_INTERVAL);
                    continue;
                }
            };
            if !first {
                std::thread::sleep(Duration::from_millis(20));
            }
            first = false;
            if let Err(e) = self.shared.serve_daemon(stream) {
                eprintln!("enclave {}: daemon link: {e}", self.shared.cfg.enclave);
            }
            *lock(&self.shared.link) = None;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn send(&self, msg: &ControlUp) {
        let mut link = lock(&self.link);
        if let Some(stream) = link.as_mut() {
            if write_frame(stream, msg).is_err() {
                *link = None;
            }
        }
    }

    /// What the daemon must know about our apps when we (re)attach.
    fn reports(&self) -> Vec<AppReport> {
        lock(&self.apps)
            .iter()
            .filter(|(_, a)| a.local_pid != 0)
            .map(|(id, a)| AppReport {
                app: *id,
                local_pid: a.local_pid,
                exit: a.exit,
                detail: a.detail.clone(),
            })
            .collect()
    }

    /// One connection to the daemon, from `attach` until it drops.
    fn serve_daemon(self: &Arc<Self>, mut stream: UnixStream) -> anyhow::Result<()> {
        write_frame(
            &mut stream,
            &ControlUp::Attach {
                enclave: self.cfg.enclave,
                apps: self.reports(),
                credential: self.cfg.credential.clone(),
            },
        )?;
        match read_frame::<_, ControlDown>(&mut stream)? {
            ControlDown::Welcome {
                heartbeat_interval_ms,
            } => self
                .heartbeat_ms
                .store(heartbeat_interval_ms, Ordering::Relaxed),
            other => anyhow::bail!("expected welcome, got {other:?}"),
        }
        *lock(&self.link) = Some(stream.try_clone()?);
        loop {
            // A launch may carry a descriptor for the app (Remora's PMI_FD).
            let (msg, mut fds): (ControlDown, Vec<OwnedFd>) =
                match hobbes_proto::fdpass::read_frame_with_fds(&stream) {
                    Ok(m) => m,
                    Err(FrameError::Closed) => return Ok(()),
                    Err(e) if !e.is_fatal() => continue,
                    Err(e) => return Err(e.into()),
                };
            match msg {
                ControlDown::Welcome { .. } => {}
                ControlDown::Launch(cmd) => {
                    let inherited = if cmd.pmi_fd { fds.pop() } else { None };
                    self.launch(&cmd, inherited);
                }
                ControlDown::Signal { seq, app, signal } => {
                    let error = self.signal(app, signal).err();
                    self.send(&ControlUp::Done { seq, error });
                }
                ControlDown::Ping { seq } => self.send(&ControlUp::Pong { seq }),
                ControlDown::Forget { app } => {
                    let mut apps = lock(&self.apps);
                    if apps.get(&app).is_some_and(|a| a.exit.is_some()) {
                        apps.remove(&app);
                    }
                }
                ControlDown::Shutdown => {
                    self.runner.kill_all();
                    std::process::exit(0);
                }
            }
        }
    }

    fn signal(&self, app: AppId, signal: i32) -> Result<(), String> {
        let pid = lock(&self.apps)
            .get(&app)
            .filter(|a| a.exit.is_none() && a.local_pid != 0)
            .map(|a| a.local_pid);
        match pid {
            Some(pid) => self.runner.signal(app, pid, signal),
            None => Err(format!("app {app} is not running in this enclave")),
        }
    }

    /// Serve one `launch`: open the logs, make the output pipes, have the
    /// runner start the app, answer `started` or `launch_failed`.
    fn launch(self: &Arc<Self>, cmd: &LaunchCommand, inherited: Option<OwnedFd>) {
        let (seq, app) = (cmd.seq, cmd.app);
        match self.start(cmd, inherited) {
            Ok((local_pid, pipes)) => {
                self.send(&ControlUp::Started {
                    seq,
                    app,
                    local_pid,
                });
                let mut apps = lock(&self.apps);
                if let Some(a) = apps.get_mut(&app) {
                    a.start_reported = true;
                }
                drop(apps);
                // After `started`, so a client sees the start before any
                // output (the pipes hold what the app wrote meanwhile).
                self.forward_all(app, pipes);
                self.report_exit_if_done(lock(&self.apps), app);
            }
            Err(error) => self.send(&ControlUp::LaunchFailed { seq, app, error }),
        }
    }

    /// Start `cmd` through the runner; returns its pid and the output pipes
    /// to forward.
    fn start(
        self: &Arc<Self>,
        cmd: &LaunchCommand,
        inherited: Option<OwnedFd>,
    ) -> Result<(u32, Vec<OutputPipe>), String> {
        match cmd.argv.first() {
            Some(program) if !program.is_empty() => {}
            _ => return Err("empty argv".into()),
        }
        if cmd.pmi_fd && inherited.is_none() {
            return Err("the launch names a PMI descriptor but carries none".into());
        }
        let stdout_log = open_log(&cmd.stdout_log, cmd.uid, cmd.gid)?;
        let stderr_log = open_log(&cmd.stderr_log, cmd.uid, cmd.gid)?;
        let stdin = File::open("/dev/null")
            .map_err(|e| format!("cannot open /dev/null: {e}"))?
            .into();
        let (io, pipes) = if cmd.forward_output {
            let (out_r, out_w) = pipe()?;
            let (err_r, err_w) = pipe()?;
            let io = AppIo {
                stdin,
                stdout: out_w,
                stderr: err_w,
                inherited,
            };
            (
                io,
                vec![
                    (out_r, stdout_log, Stream::Stdout),
                    (err_r, stderr_log, Stream::Stderr),
                ],
            )
        } else {
            let io = AppIo {
                stdin,
                stdout: stdout_log.into(),
                stderr: stderr_log.into(),
                inherited,
            };
            (io, Vec::new())
        };
        {
            let mut apps = lock(&self.apps);
            if apps.contains_key(&cmd.app) {
                return Err(format!(
                    "app {} is running in this enclave already",
                    cmd.app
                ));
            }
            // In the table before the runner starts it: its end may be
            // reported before `launch` returns.
            apps.insert(
                cmd.app,
                App {
                    local_pid: 0,
                    exit: None,
                    detail: None,
                    open_pipes: pipes.len() as u32,
                    start_reported: false,
                    exit_reported: false,
                },
            );
        }
        let reporter = ExitReporter {
            sink: Arc::new(AgentSink(self.clone())),
            app: cmd.app,
        };
        let local_pid = match self.runner.launch(cmd, io, reporter) {
            Ok(pid) => pid,
            Err(e) => {
                lock(&self.apps).remove(&cmd.app);
                return Err(e);
            }
        };
        if let Some(a) = lock(&self.apps).get_mut(&cmd.app) {
            a.local_pid = local_pid;
        }
        Ok((local_pid, pipes))
    }

    /// One thread per output pipe of `app`, copying it to its log and to us.
    fn forward_all(self: &Arc<Self>, app: AppId, pipes: Vec<OutputPipe>) {
        for (pipe, log, stream) in pipes {
            let shared = self.clone();
            let spawned = std::thread::Builder::new()
                .name("output".into())
                .spawn(move || shared.forward(app, stream, File::from(pipe), log));
            if spawned.is_err() {
                // Nobody reads that pipe: do not wait for it to close.
                let mut apps = lock(&self.apps);
                if let Some(a) = apps.get_mut(&app) {
                    a.open_pipes = a.open_pipes.saturating_sub(1);
                }
            }
        }
    }

    /// Copy an app's output to its log and to the daemon.
    fn forward(self: Arc<Self>, app: AppId, stream: Stream, mut pipe: File, mut log: File) {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match pipe.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let _ = log.write_all(&buf[..n]);
                    self.send(&ControlUp::Output {
                        app,
                        stream,
                        data: buf[..n].to_vec(),
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        let mut apps = lock(&self.apps);
        if let Some(a) = apps.get_mut(&app) {
            a.open_pipes = a.open_pipes.saturating_sub(1);
        }
        self.report_exit_if_done(apps, app);
    }

    fn exited(self: &Arc<Self>, id: AppId, status: ExitStatus, detail: Option<String>) {
        let mut apps = lock(&self.apps);
        let Some(app) = apps.get_mut(&id).filter(|a| a.exit.is_none()) else {
            return;
        };
        app.exit = Some(status);
        app.detail = detail;
        if app.open_pipes > 0 {
            // Something else may hold the pipes open forever: report anyway
            // after a grace period.
            let shared = self.clone();
            let _ = std::thread::Builder::new()
                .name("exit-grace".into())
                .spawn(move || {
                    std::thread::sleep(OUTPUT_GRACE);
                    let mut apps = lock(&shared.apps);
                    if let Some(a) = apps.get_mut(&id) {
                        a.open_pipes = 0;
                    }
                    shared.report_exit_if_done(apps, id);
                });
        }
        self.report_exit_if_done(apps, id);
    }

    /// Send `Exited` once the app has exited, its start went out and its
    /// output is drained.
    fn report_exit_if_done(&self, mut apps: MutexGuard<'_, HashMap<AppId, App>>, id: AppId) {
        let Some(app) = apps.get_mut(&id) else { return };
        let Some(status) = app.exit else { return };
        if app.open_pipes > 0 || !app.start_reported || app.exit_reported {
            return;
        }
        app.exit_reported = true;
        let msg = ControlUp::Exited {
            app: id,
            local_pid: app.local_pid,
            status,
            detail: app.detail.clone(),
        };
        drop(apps);
        self.send(&msg);
    }
}

/// Helpers for testing a kind's [`AppRunner`] without a daemon (feature
/// `testing`, for dev-dependencies).
#[cfg(feature = "testing")]
pub mod testing {
    use std::sync::mpsc;
    use std::sync::{Arc, Mutex};

    use hobbes_proto::model::{AppId, ExitStatus};

    use super::{ExitReporter, ExitSink};

    struct ChannelSink(Mutex<mpsc::Sender<(ExitStatus, Option<String>)>>);

    impl ExitSink for ChannelSink {
        fn exited(&self, _app: AppId, status: ExitStatus, detail: Option<String>) {
            let _ = self
                .0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .send((status, detail));
        }
    }

    /// A reporter for app `app` whose reports arrive on the channel returned with it.
    pub fn reporter(app: AppId) -> (ExitReporter, mpsc::Receiver<(ExitStatus, Option<String>)>) {
        let (tx, rx) = mpsc::channel();
        let sink = Arc::new(ChannelSink(Mutex::new(tx)));
        (ExitReporter { sink, app }, rx)
    }
}

/// A pipe whose ends are close-on-exec: (read, write).
fn pipe() -> Result<(OwnedFd, OwnedFd), String> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| format!("cannot make an output pipe: {e}"))
}

/// Open (append) an app's log file, readable by its owner.
fn open_log(path: &str, uid: u32, gid: u32) -> Result<File, String> {
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
        .map_err(|e| format!("cannot open log {path}: {e}"))?;
    // The app's owner reads its own logs.
    let _ = std::os::unix::fs::fchown(&f, Some(uid), Some(gid));
    Ok(f)
}

fn heartbeat(shared: &Shared) {
    let mut seq = 0;
    loop {
        // 0 until the daemon's welcome tells us the interval.
        let interval = shared.heartbeat_ms.load(Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(if interval == 0 {
            10
        } else {
            interval
        }));
        if interval > 0 {
            seq += 1;
            shared.send(&ControlUp::Heartbeat { seq });
        }
    }
}

fn serve_client(
    enclave: EnclaveId,
    owner_uid: u32,
    runner: &dyn AppRunner,
    mut stream: UnixStream,
) -> anyhow::Result<()> {
    let peer = hobbes_sys::creds::peer_cred(&stream)?;
    loop {
        let req: EnclaveRequest = match read_frame(&mut stream) {
            Ok(r) => r,
            Err(FrameError::Closed) => return Ok(()),
            Err(e) => {
                let _ = write_frame(
                    &mut stream,
                    &EnclaveResponse::Error {
                        message: e.to_string(),
                    },
                );
                if e.is_fatal() {
                    return Ok(());
                }
                continue;
            }
        };
        let reply = match req {
            EnclaveRequest::Ping { seq } => match runner.ping() {
                Ok(()) => EnclaveResponse::Pong { seq, enclave },
                Err(message) => EnclaveResponse::Error { message },
            },
            _ if peer.uid != 0 && peer.uid != owner_uid => EnclaveResponse::Error {
                message: format!(
                    "permission denied: uid {} is neither root nor the owner (uid {owner_uid}) of enclave {enclave}",
                    peer.uid
                ),
            },
            EnclaveRequest::ReadFile { path, offset, len } => runner
                .read_file(peer.uid, peer.gid, &path, offset, len.min(FILE_CHUNK))
                .unwrap_or_else(|message| EnclaveResponse::Error { message }),
            EnclaveRequest::WriteFile {
                path,
                data,
                append,
                mode,
            } => runner
                .write_file(peer.uid, peer.gid, &path, &data, append, mode)
                .unwrap_or_else(|message| EnclaveResponse::Error { message }),
            EnclaveRequest::Console => match runner.console() {
                Ok(relay) => {
                    write_frame(&mut stream, &EnclaveResponse::ConsoleAttached)?;
                    relay(stream);
                    return Ok(());
                }
                Err(message) => EnclaveResponse::Error { message },
            },
        };
        write_frame(&mut stream, &reply)?;
    }
}

fn read_chunk(path: &str, offset: u64, len: u32) -> Result<EnclaveResponse, String> {
    let mut f = File::open(path).map_err(|e| format!("cannot open {path}: {e}"))?;
    if offset > 0 {
        f.seek(SeekFrom::Start(offset))
            .map_err(|e| format!("cannot seek {path}: {e}"))?;
    }
    let mut data = Vec::with_capacity(len as usize);
    Read::by_ref(&mut f)
        .take(len as u64)
        .read_to_end(&mut data)
        .map_err(|e| format!("cannot read {path}: {e}"))?;
    // Files under /proc report size 0: a short read is the end.
    let eof = (data.len() as u32) < len;
    Ok(EnclaveResponse::Data { data, eof })
}

fn write_chunk(
    path: &str,
    data: &[u8],
    append: bool,
    mode: u32,
) -> Result<EnclaveResponse, String> {
    let mut opts = OpenOptions::new();
    opts.write(true).create(true).mode(mode & 0o7777);
    if append {
        opts.append(true);
    } else {
        opts.truncate(true);
    }
    let mut f = opts
        .open(path)
        .map_err(|e| format!("cannot open {path} for writing: {e}"))?;
    f.write_all(data)
        .map_err(|e| format!("cannot write {path}: {e}"))?;
    Ok(EnclaveResponse::Written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;
    use std::time::Instant;

    /// Writes a line to the app's stdout, closes it, and reports the app's
    /// end before `launch` even returns (the table must take that).
    struct Runner;

    impl AppRunner for Runner {
        fn launch(
            &self,
            cmd: &LaunchCommand,
            io: AppIo,
            exit: ExitReporter,
        ) -> Result<u32, String> {
            if cmd.argv[0] == "bad" {
                return Err("cannot start bad: not an ELF file".into());
            }
            let mut out = File::from(io.stdout);
            out.write_all(b"hello\n").unwrap();
            drop(out);
            exit.exited(ExitStatus::Code(3), Some("forwarded: write 1".into()));
            Ok(42)
        }
        fn signal(&self, _: AppId, _: u32, _: i32) -> Result<(), String> {
            Ok(())
        }
        fn kill_all(&self) {}
    }

    fn launch(dir: &Path, app: AppId, program: &str) -> ControlDown {
        ControlDown::Launch(Box::new(LaunchCommand {
            seq: app,
            app,
            argv: vec![program.into()],
            env: vec![],
            cwd: None,
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
            stdout_log: dir.join(format!("{app}.out")).display().to_string(),
            stderr_log: dir.join(format!("{app}.err")).display().to_string(),
            forward_output: true,
            pmi_fd: false,
        }))
    }

    /// The next message that is not a heartbeat.
    fn next(stream: &mut UnixStream) -> ControlUp {
        loop {
            match read_frame::<_, ControlUp>(stream).unwrap() {
                ControlUp::Heartbeat { .. } => {}
                other => return other,
            }
        }
    }

    /// Accept the agent's connection: its attach (checked), then welcome.
    fn accept(listener: &UnixListener) -> (UnixStream, Vec<AppReport>) {
        let (mut stream, _) = listener.accept().unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let ControlUp::Attach {
            enclave,
            apps,
            credential,
        } = read_frame::<_, ControlUp>(&mut stream).unwrap()
        else {
            panic!("no attach first");
        };
        assert_eq!(enclave, 5);
        assert!(credential.matches(&Credential("secret".into())));
        write_frame(
            &mut stream,
            &ControlDown::Welcome {
                heartbeat_interval_ms: 10,
            },
        )
        .unwrap();
        (stream, apps)
    }

    #[test]
    fn the_agent_follows_the_control_protocol_and_reattaches_with_its_apps() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("control.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let agent = Agent::new(
            AgentConfig {
                enclave: 5,
                daemon_socket: sock.clone(),
                credential: Credential("secret".into()),
            },
            Arc::new(Runner),
        );
        std::thread::spawn(move || agent.run());
        let (mut stream, apps) = accept(&listener);
        assert!(apps.is_empty());

        // Started, then the output, then the exit with its detail: in that
        // order although the runner reported the end first.
        write_frame(&mut stream, &launch(dir.path(), 1, "good")).unwrap();
        assert_eq!(
            next(&mut stream),
            ControlUp::Started {
                seq: 1,
                app: 1,
                local_pid: 42
            }
        );
        assert_eq!(
            next(&mut stream),
            ControlUp::Output {
                app: 1,
                stream: Stream::Stdout,
                data: b"hello\n".to_vec()
            }
        );
        assert_eq!(
            next(&mut stream),
            ControlUp::Exited {
                app: 1,
                local_pid: 42,
                status: ExitStatus::Code(3),
                detail: Some("forwarded: write 1".into()),
            }
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("1.out")).unwrap(),
            "hello\n"
        );
        // A launch the runner refuses.
        write_frame(&mut stream, &launch(dir.path(), 2, "bad")).unwrap();
        assert_eq!(
            next(&mut stream),
            ControlUp::LaunchFailed {
                seq: 2,
                app: 2,
                error: "cannot start bad: not an ELF file".into()
            }
        );
        // An ended app cannot be signalled; a ping is answered.
        write_frame(
            &mut stream,
            &ControlDown::Signal {
                seq: 9,
                app: 1,
                signal: 15,
            },
        )
        .unwrap();
        let ControlUp::Done {
            seq: 9,
            error: Some(e),
        } = next(&mut stream)
        else {
            panic!("no done");
        };
        assert!(e.contains("app 1 is not running"), "{e}");
        write_frame(&mut stream, &ControlDown::Ping { seq: 11 }).unwrap();
        assert_eq!(next(&mut stream), ControlUp::Pong { seq: 11 });

        // The daemon goes away before it recorded the exit: the agent
        // reconnects and reports it.
        drop(stream);
        let start = Instant::now();
        let (mut stream, apps) = accept(&listener);
        assert!(start.elapsed() < Duration::from_secs(5));
        assert_eq!(
            apps,
            vec![AppReport {
                app: 1,
                local_pid: 42,
                exit: Some(ExitStatus::Code(3)),
                detail: Some("forwarded: write 1".into()),
            }]
        );
        // Once the daemon has it, the agent forgets it.
        write_frame(&mut stream, &ControlDown::Forget { app: 1 }).unwrap();
        write_frame(&mut stream, &ControlDown::Ping { seq: 12 }).unwrap();
        assert_eq!(next(&mut stream), ControlUp::Pong { seq: 12 });
        drop(stream);
        let (_stream, apps) = accept(&listener);
        assert!(apps.is_empty(), "{apps:?}");
    }

    #[test]
    fn the_credential_leaves_the_environment() {
        std::env::set_var("HOBBES_AGENT_TEST_CREDENTIAL", "abc");
        let c = take_credential("HOBBES_AGENT_TEST_CREDENTIAL");
        assert!(c.matches(&Credential("abc".into())));
        assert!(std::env::var_os("HOBBES_AGENT_TEST_CREDENTIAL").is_none());
    }
}
