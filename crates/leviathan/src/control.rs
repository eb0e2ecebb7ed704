//! The enclave control process (the original's `lnx_inittask`).
//!
//! One runs inside every native enclave: pid 1 of its PID namespace (or a
//! subreaper in the unprivileged mode). It keeps one connection to the
//! daemon, over which it receives launch/signal commands and sends
//! heartbeats, app starts, exits and output; it launches and reaps the
//! enclave's apps; and it serves the enclave's own socket (ping, files in the
//! enclave's view). When the daemon goes away it keeps its apps running and
//! reconnects, reporting everything that happened meanwhile.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

use hobbes_proto::control::{
    AppReport, ControlDown, ControlUp, EnclaveRequest, EnclaveResponse, LaunchCommand, FILE_CHUNK,
};
use hobbes_proto::frame::{read_frame, write_frame, FrameError};
use hobbes_proto::model::{AppId, EnclaveId, ExitStatus};
use hobbes_proto::msg::Stream;

use crate::sys;

/// How the daemon started us (command line of `leviathan enclave-init`).
#[derive(Debug, Clone, clap::Args)]
pub struct ControlArgs {
    /// The id of the enclave this process controls; sent in its `attach`.
    #[arg(long)]
    pub enclave: EnclaveId,
    /// The daemon's socket for control processes.
    #[arg(long)]
    pub daemon_socket: PathBuf,
    /// The socket this control process serves.
    #[arg(long)]
    pub enclave_socket: PathBuf,
    /// Uid of the enclave's owner: besides root, the only peer allowed to
    /// read and write files through the enclave socket.
    #[arg(long)]
    pub owner_uid: u32,
    /// Gid of the enclave's owner, passed along with the uid (apps run with
    /// the uid/gid the daemon sends in each launch, not with these).
    #[arg(long)]
    pub owner_gid: u32,
    /// We run in new namespaces (pid 1): mount our own /proc, and bind the
    /// enclave's NIS replica over the primary's path.
    #[arg(long)]
    pub namespaces: bool,
    /// The enclave's NIS replica (host path).
    #[arg(long, requires = "nis_mount")]
    pub nis_replica: Option<PathBuf>,
    /// Where the enclave sees its NIS (the primary's path, hidden under the replica).
    #[arg(long)]
    pub nis_mount: Option<PathBuf>,
    /// The cgroup every app joins (the enclave's memory limit). We stay
    /// outside it: an enclave at its limit must not starve the process that
    /// sends its heartbeats and reaps its apps.
    #[arg(long)]
    pub app_cgroup: Option<PathBuf>,
}

struct App {
    local_pid: u32,
    exit: Option<ExitStatus>,
    /// Output pipes still being forwarded: the exit is reported after the
    /// last byte of output, so a streaming client sees all of it first.
    open_pipes: u32,
    /// `Started` went out: an exit is never reported before the start.
    start_reported: bool,
    exit_reported: bool,
}

struct Ctl {
    args: ControlArgs,
    apps: Mutex<HashMap<AppId, App>>,
    /// Signalled when a child is spawned (the reaper waits for one).
    spawned: Condvar,
    /// Writer half of the daemon connection, when connected.
    link: Mutex<Option<UnixStream>>,
    /// Heartbeat interval from the daemon's welcome (0 before it).
    heartbeat_ms: AtomicU64,
    /// What admits our link to the daemon (given at start, in our environment).
    credential: hobbes_proto::control::Credential,
    /// The thread that forks apps already inside their cgroup, once it is
    /// there (see [`Launcher`]); until then, and where threads cannot sit
    /// apart (cgroup v2), apps move in between fork and exec.
    launcher: OnceLock<Launcher>,
}

/// A thread of ours that sits in the apps' memory cgroup and forks every
/// app, so each app is born under the enclave's limit. Moving each app in
/// between fork and exec instead takes the cgroup core's threadgroup lock
/// for writing, which waits for an RCU grace period: 6-14 ms per launch on
/// this node, measured, when launches are not back to back (it made a
/// one-rank Remora job 11 ms slower). cgroup v1 lets one thread sit in a
/// cgroup apart from its process; the rest of the control process (its
/// heartbeats, and its memory charges, which go to its first thread's
/// cgroup) stays outside the limit.
struct Launcher {
    jobs: Mutex<mpsc::Sender<LaunchJob>>,
}

/// One launch handed to the [`Launcher`], and where its result goes.
struct LaunchJob {
    cmd: Box<LaunchCommand>,
    inherited: Option<OwnedFd>,
    reply: mpsc::Sender<Result<u32, String>>,
}

/// Start the launcher thread: it moves itself into the apps' cgroup (its
/// thread id into v1's `tasks`) and, if that works, takes the launches.
fn start_launcher(ctl: &Arc<Ctl>) {
    let Some(tasks) = ctl.args.app_cgroup.as_ref().map(|d| d.join("tasks")) else {
        return;
    };
    if !tasks.exists() {
        return; // cgroup v2: a process's threads share its cgroup.
    }
    let enclave = ctl.args.enclave;
    let ctl = ctl.clone();
    let spawned = std::thread::Builder::new()
        .name("launcher".into())
        .spawn(move || {
            let tid = nix::unistd::gettid().as_raw();
            if let Err(e) = std::fs::write(&tasks, tid.to_string()) {
                eprintln!(
                    "enclave {}: launching apps without a launcher thread in {}: {e}",
                    ctl.args.enclave,
                    tasks.display()
                );
                return;
            }
            let (tx, rx) = mpsc::channel::<LaunchJob>();
            let _ = ctl.launcher.set(Launcher {
                jobs: Mutex::new(tx),
            });
            for job in rx {
                let result = launch(&ctl, &job.cmd, job.inherited, false);
                let _ = job.reply.send(result);
            }
        });
    if let Err(e) = spawned {
        eprintln!("enclave {enclave}: no launcher thread: {e}");
    }
}

/// Launch `cmd`: on the launcher thread when it is in place, else here,
/// moving the app into its cgroup before exec.
fn launch_app(
    ctl: &Arc<Ctl>,
    cmd: Box<LaunchCommand>,
    inherited: Option<OwnedFd>,
) -> Result<u32, String> {
    let Some(launcher) = ctl.launcher.get() else {
        return launch(ctl, &cmd, inherited, true);
    };
    let (reply, result) = mpsc::channel();
    let job = LaunchJob {
        cmd,
        inherited,
        reply,
    };
    let sent = launcher
        .jobs
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .send(job);
    match sent {
        Ok(()) => result
            .recv()
            .unwrap_or_else(|_| Err("the launcher thread is gone".into())),
        Err(mpsc::SendError(job)) => launch(ctl, &job.cmd, job.inherited, true),
    }
}

impl Ctl {
    fn send(&self, msg: &ControlUp) {
        let mut link = self.link.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(stream) = link.as_mut() {
            if write_frame(stream, msg).is_err() {
                *link = None;
            }
        }
    }
}

/// The body of `leviathan enclave-init`: set up the enclave's mounts (with
/// `namespaces`) or become a subreaper (without), take the control credential
/// out of the environment, serve the enclave socket, reap apps, send
/// heartbeats, and keep the daemon link up. Returns an error only when start-up
/// fails: the enclave socket cannot be bound, a mount fails, or the daemon is
/// unreachable at the first attempt. Afterwards a lost link is retried every
/// 100 ms for ever, and a `shutdown` from the daemon exits the process (as pid 1,
/// taking the whole PID namespace with it).
pub fn run(args: ControlArgs) -> anyhow::Result<()> {
    // An app that outgrows the enclave's memory limit must be what the OOM
    // killer takes, never the process that reaps and reports it.
    // (Unprivileged, lowering the score needs CAP_SYS_RESOURCE: then it stays.)
    let _ = std::fs::write("/proc/self/oom_score_adj", "-1000");
    if args.namespaces {
        setup_mounts(&args)?;
    } else {
        sys::set_child_subreaper()?;
    }
    // Take the credential out of our environment before any thread starts
    // (apps get an environment of their own; this keeps it out of any other
    // copy we might make).
    let credential = hobbes_proto::control::Credential(
        std::env::var(crate::kinds::CONTROL_CREDENTIAL_ENV).unwrap_or_default(),
    );
    std::env::remove_var(crate::kinds::CONTROL_CREDENTIAL_ENV);
    let ctl = Arc::new(Ctl {
        credential,
        args: args.clone(),
        apps: Mutex::new(HashMap::new()),
        spawned: Condvar::new(),
        link: Mutex::new(None),
        heartbeat_ms: AtomicU64::new(0),
        launcher: OnceLock::new(),
    });
    start_launcher(&ctl);

    let _ = std::fs::remove_file(&args.enclave_socket);
    let listener = UnixListener::bind(&args.enclave_socket)
        .map_err(|e| anyhow::anyhow!("cannot bind {}: {e}", args.enclave_socket.display()))?;
    // Anyone may connect; each connection is authorized by its peer credentials.
    std::fs::set_permissions(&args.enclave_socket, std::fs::Permissions::from_mode(0o666))?;
    {
        let ctl = ctl.clone();
        std::thread::Builder::new()
            .name("enclave-socket".into())
            .spawn(move || serve_enclave_socket(ctl, listener))?;
    }
    {
        let ctl = ctl.clone();
        std::thread::Builder::new()
            .name("reaper".into())
            .spawn(move || reap(ctl))?;
    }
    {
        let ctl = ctl.clone();
        std::thread::Builder::new()
            .name("heartbeat".into())
            .spawn(move || heartbeat(ctl))?;
    }
    daemon_link(ctl)
}

/// Own mount namespace: stop propagation to the host, a /proc that shows this
/// enclave's PID namespace, and the enclave's NIS replica where the NIS is.
/// (Each enclave reads its own replica: LMDB identifies readers by pid, and
/// pids collide across PID namespaces.)
fn setup_mounts(args: &ControlArgs) -> anyhow::Result<()> {
    use nix::mount::{mount, MsFlags};
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| anyhow::anyhow!("cannot make mounts private: {e}"))?;
    mount(
        Some("proc"),
        "/proc",
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|e| anyhow::anyhow!("cannot mount /proc: {e}"))?;
    if let (Some(replica), Some(target)) = (&args.nis_replica, &args.nis_mount) {
        mount(
            Some(replica),
            target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot bind the NIS replica {} over {}: {e}",
                replica.display(),
                target.display()
            )
        })?;
    }
    Ok(())
}

/// Keep a connection to the daemon; reconnect when it goes away.
fn daemon_link(ctl: Arc<Ctl>) -> anyhow::Result<()> {
    let mut first = true;
    loop {
        let stream = match UnixStream::connect(&ctl.args.daemon_socket) {
            Ok(s) => s,
            Err(e) => {
                if first {
                    anyhow::bail!(
                        "cannot reach the daemon at {}: {e}",
                        ctl.args.daemon_socket.display()
                    );
                }
                // The daemon is restarting: retry until it is back.
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if !first {
            std::thread::sleep(Duration::from_millis(20));
        }
        first = false;
        if let Err(e) = serve_daemon(&ctl, stream) {
            eprintln!("enclave {}: daemon link: {e}", ctl.args.enclave);
        }
        *ctl.link.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

fn serve_daemon(ctl: &Arc<Ctl>, mut stream: UnixStream) -> anyhow::Result<()> {
    let reports: Vec<AppReport> = ctl
        .apps
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|(id, a)| AppReport {
            app: *id,
            local_pid: a.local_pid,
            exit: a.exit,
        })
        .collect();
    write_frame(
        &mut stream,
        &ControlUp::Attach {
            enclave: ctl.args.enclave,
            apps: reports,
            credential: ctl.credential.clone(),
        },
    )?;
    match read_frame::<_, ControlDown>(&mut stream)? {
        ControlDown::Welcome {
            heartbeat_interval_ms,
        } => ctl
            .heartbeat_ms
            .store(heartbeat_interval_ms, Ordering::Relaxed),
        other => anyhow::bail!("expected welcome, got {other:?}"),
    }
    *ctl.link.lock().unwrap_or_else(|p| p.into_inner()) = Some(stream.try_clone()?);
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
                let (seq, app) = (cmd.seq, cmd.app);
                let inherited = if cmd.pmi_fd { fds.pop() } else { None };
                match launch_app(ctl, cmd, inherited) {
                    Ok(local_pid) => {
                        ctl.send(&ControlUp::Started {
                            seq,
                            app,
                            local_pid,
                        });
                        let mut apps = ctl.apps.lock().unwrap_or_else(|p| p.into_inner());
                        if let Some(a) = apps.get_mut(&app) {
                            a.start_reported = true;
                        }
                        report_exit_if_done(ctl, apps, app);
                    }
                    Err(error) => ctl.send(&ControlUp::LaunchFailed { seq, app, error }),
                }
            }
            ControlDown::Signal { seq, app, signal } => {
                let pid = ctl
                    .apps
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&app)
                    .filter(|a| a.exit.is_none())
                    .map(|a| a.local_pid);
                let error = match pid {
                    Some(pid) => sys::kill(pid, signal)
                        .err()
                        .map(|e| format!("kill({pid}, {signal}): {e}")),
                    None => Some(format!("app {app} is not running in this enclave")),
                };
                ctl.send(&ControlUp::Done { seq, error });
            }
            ControlDown::Ping { seq } => ctl.send(&ControlUp::Pong { seq }),
            ControlDown::Forget { app } => {
                let mut apps = ctl.apps.lock().unwrap_or_else(|p| p.into_inner());
                if apps.get(&app).is_some_and(|a| a.exit.is_some()) {
                    apps.remove(&app);
                }
            }
            ControlDown::Shutdown => {
                // Pid 1 exiting makes the kernel kill the whole PID namespace.
                let apps = ctl.apps.lock().unwrap_or_else(|p| p.into_inner());
                for a in apps.values().filter(|a| a.exit.is_none()) {
                    let _ = sys::kill(a.local_pid, libc::SIGKILL);
                }
                std::process::exit(0);
            }
        }
    }
}

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

/// Fork and exec an app; with `move_into_cgroup`, the child moves itself into the
/// apps' cgroup before exec (else it is born there: see [`Launcher`]).
fn launch(
    ctl: &Arc<Ctl>,
    cmd: &LaunchCommand,
    inherited: Option<OwnedFd>,
    move_into_cgroup: bool,
) -> Result<u32, String> {
    let program = cmd.argv.first().ok_or("empty argv")?;
    let stdout = open_log(&cmd.stdout_log, cmd.uid, cmd.gid)?;
    let stderr = open_log(&cmd.stderr_log, cmd.uid, cmd.gid)?;
    // Opened here, as root: the kernel checks the app's move (after its
    // setuid) against the credentials the file was opened with.
    let app_cgroup = match ctl.args.app_cgroup.as_ref().filter(|_| move_into_cgroup) {
        Some(dir) => {
            let procs = dir.join("cgroup.procs");
            Some(
                OpenOptions::new()
                    .write(true)
                    .open(&procs)
                    .map_err(|e| format!("cannot open {}: {e}", procs.display()))?,
            )
        }
        None => None,
    };
    let mut command = Command::new(program);
    command
        .args(&cmd.argv[1..])
        .env_clear()
        .envs(cmd.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .uid(cmd.uid)
        .gid(cmd.gid);
    // Own session (so own process group: signals meant for the control process
    // never reach apps), as mpiexec.hydra gives each rank: the scheduler then
    // shares the CPU between apps as between sessions (autogroups), instead of
    // squeezing every app of the node into the daemon's session's one share.
    // SAFETY: between fork and exec the closure only calls setsid, a syscall.
    unsafe {
        command.pre_exec(|| sys::new_session().map_err(io::Error::from));
    }
    if let Some(cwd) = &cmd.cwd {
        command.current_dir(cwd);
    }
    if cmd.pmi_fd {
        let fd = inherited
            .as_ref()
            .ok_or("the launch names a PMI descriptor but carries none")?
            .as_raw_fd();
        // The descriptor arrived close-on-exec; the app keeps it at the same number.
        command.env("PMI_FD", fd.to_string());
        let keep_open = move || {
            // SAFETY: `fd` is open in the child (inherited through the
            // fork, and `inherited` outlives the spawn) while this runs.
            let fd = unsafe { BorrowedFd::borrow_raw(fd) };
            sys::clear_cloexec(fd).map_err(io::Error::from)
        };
        // SAFETY: between fork and exec, fcntl on a descriptor we own is async-signal-safe.
        unsafe {
            command.pre_exec(keep_open);
        }
    }
    if let Some(procs) = &app_cgroup {
        let fd = procs.as_raw_fd();
        // Into the enclave's memory cgroup before exec, so all of the app's
        // memory is charged there (and that of every process it forks).
        // SAFETY: between fork and exec the closure only calls write(2) on a
        // descriptor we own (close-on-exec: the app does not keep it).
        unsafe {
            command.pre_exec(move || join_cgroup(fd));
        }
    }
    // Apps must not inherit our exemption from the OOM killer.
    // SAFETY: between fork and exec the closure only calls open/write/close,
    // which are async-signal-safe, on a static path and buffer.
    unsafe {
        command.pre_exec(|| sys::reset_oom_score_adj().map_err(io::Error::from));
    }
    if cmd.forward_output {
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
    } else {
        command
            .stdout(stdout.try_clone().map_err(|e| e.to_string())?)
            .stderr(stderr.try_clone().map_err(|e| e.to_string())?);
    }
    // Hold the table while spawning so the reaper cannot see the pid before we record it.
    let mut apps = ctl.apps.lock().unwrap_or_else(|p| p.into_inner());
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot start {program}: {e}"))?;
    let local_pid = child.id();
    let open_pipes = if cmd.forward_output { 2 } else { 0 };
    apps.insert(
        cmd.app,
        App {
            local_pid,
            exit: None,
            open_pipes,
            start_reported: false,
            exit_reported: false,
        },
    );
    drop(apps);
    ctl.spawned.notify_all();
    if cmd.forward_output {
        for (pipe, log, stream) in [
            (
                child
                    .stdout
                    .take()
                    .map(|p| Box::new(p) as Box<dyn Read + Send>),
                stdout,
                Stream::Stdout,
            ),
            (
                child
                    .stderr
                    .take()
                    .map(|p| Box::new(p) as Box<dyn Read + Send>),
                stderr,
                Stream::Stderr,
            ),
        ] {
            if let Some(pipe) = pipe {
                let ctl = ctl.clone();
                let app = cmd.app;
                let _ = std::thread::Builder::new()
                    .name("output".into())
                    .spawn(move || forward(ctl, app, stream, pipe, log));
            }
        }
    }
    // The reaper waits for it (waitpid(-1)); dropping `child` does not.
    Ok(local_pid)
}

/// Move the calling process into the cgroup whose `cgroup.procs` is open as
/// `fd` ("0" names the writer). Async-signal-safe: for use between fork and exec.
fn join_cgroup(fd: std::os::fd::RawFd) -> std::io::Result<()> {
    // SAFETY: write(2) from a static buffer on a descriptor the caller owns.
    let n = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
    if n == 1 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Copy an app's output to its log and to the daemon.
fn forward(
    ctl: Arc<Ctl>,
    app: AppId,
    stream: Stream,
    mut pipe: Box<dyn Read + Send>,
    mut log: File,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match pipe.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let _ = log.write_all(&buf[..n]);
                ctl.send(&ControlUp::Output {
                    app,
                    stream,
                    data: buf[..n].to_vec(),
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let mut apps = ctl.apps.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(a) = apps.get_mut(&app) {
        a.open_pipes = a.open_pipes.saturating_sub(1);
    }
    report_exit_if_done(&ctl, apps, app);
}

/// Send `Exited` once the app has exited and its output is drained.
fn report_exit_if_done(
    ctl: &Ctl,
    mut apps: std::sync::MutexGuard<'_, HashMap<AppId, App>>,
    id: AppId,
) {
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
    };
    drop(apps);
    ctl.send(&msg);
}

/// Reap every child (as pid 1, orphans too) and report apps' exits.
fn reap(ctl: Arc<Ctl>) {
    loop {
        match waitpid(Pid::from_raw(-1), None) {
            Ok(WaitStatus::Exited(pid, code)) => {
                exited(&ctl, pid.as_raw() as u32, ExitStatus::Code(code))
            }
            Ok(WaitStatus::Signaled(pid, sig, _)) => {
                exited(&ctl, pid.as_raw() as u32, ExitStatus::Signal(sig as i32))
            }
            Ok(_) => {}
            Err(nix::errno::Errno::ECHILD) => {
                // No children: wait until we spawn one (orphans reparented to us
                // are picked up within the timeout).
                let apps = ctl.apps.lock().unwrap_or_else(|p| p.into_inner());
                let _ = ctl.spawned.wait_timeout(apps, Duration::from_millis(200));
            }
            Err(_) => {}
        }
    }
}

fn exited(ctl: &Arc<Ctl>, pid: u32, status: ExitStatus) {
    let mut apps = ctl.apps.lock().unwrap_or_else(|p| p.into_inner());
    let Some((&id, app)) = apps
        .iter_mut()
        .find(|(_, a)| a.local_pid == pid && a.exit.is_none())
    else {
        return;
    };
    app.exit = Some(status);
    if app.open_pipes > 0 {
        // A descendant may hold the pipes open forever: report anyway after a grace period.
        let ctl = ctl.clone();
        let _ = std::thread::Builder::new()
            .name("exit-grace".into())
            .spawn(move || {
                std::thread::sleep(Duration::from_secs(2));
                let mut apps = ctl.apps.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(a) = apps.get_mut(&id) {
                    a.open_pipes = 0;
                }
                report_exit_if_done(&ctl, apps, id);
            });
    }
    report_exit_if_done(ctl, apps, id);
}

fn heartbeat(ctl: Arc<Ctl>) {
    let mut seq = 0;
    loop {
        // 0 until the daemon's welcome tells us the interval.
        let interval = ctl.heartbeat_ms.load(Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(if interval == 0 {
            10
        } else {
            interval
        }));
        if interval > 0 {
            seq += 1;
            ctl.send(&ControlUp::Heartbeat { seq });
        }
    }
}

fn serve_enclave_socket(ctl: Arc<Ctl>, listener: UnixListener) {
    for stream in listener.incoming().flatten() {
        let ctl = ctl.clone();
        let _ = std::thread::Builder::new()
            .name("enclave-client".into())
            .spawn(move || {
                let _ = serve_client(&ctl, stream);
            });
    }
}

fn serve_client(ctl: &Ctl, mut stream: UnixStream) -> anyhow::Result<()> {
    let peer = sys::peer_cred(&stream)?;
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
            EnclaveRequest::Ping { seq } => EnclaveResponse::Pong { seq, enclave: ctl.args.enclave },
            _ if peer.uid != 0 && peer.uid != ctl.args.owner_uid => EnclaveResponse::Error {
                message: format!(
                    "permission denied: uid {} is neither root nor the owner (uid {}) of enclave {}",
                    peer.uid, ctl.args.owner_uid, ctl.args.enclave
                ),
            },
            EnclaveRequest::ReadFile { path, offset, len } => {
                sys::with_fs_identity(peer.uid, peer.gid, || read_chunk(&path, offset, len.min(FILE_CHUNK)))
                    .unwrap_or_else(|message| EnclaveResponse::Error { message })
            }
            EnclaveRequest::WriteFile { path, data, append, mode } => {
                sys::with_fs_identity(peer.uid, peer.gid, || write_chunk(&path, &data, append, mode))
                    .unwrap_or_else(|message| EnclaveResponse::Error { message })
            }
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
