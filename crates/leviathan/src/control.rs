//! The native kind's enclave control process (the original's `lnx_inittask`).
//!
//! One runs inside every native enclave: pid 1 of its PID namespace (or a
//! subreaper in the unprivileged mode). The kind-neutral part of it (the
//! link to the daemon with its heartbeats and reconnects, the app table and
//! its exit rules, output forwarding, the enclave socket) is
//! `hobbes_agent::Agent`, shared with the other kinds' agents; what is
//! native is here: the mounts of its namespaces, and [`NativeRunner`], which
//! forks and execs apps as host processes under the enclave's memory limit
//! and reaps them.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

use hobbes_agent::{AppIo, AppRunner, ExitReporter};
use hobbes_proto::control::LaunchCommand;
use hobbes_proto::model::{AppId, EnclaveId, ExitStatus};

use crate::sys;

/// How the daemon started us (command line of `leviathan enclave-init`).
#[derive(Debug, Clone, clap::Args)]
pub struct ControlArgs {
    /// What every control agent takes (enclave, sockets, owner).
    #[command(flatten)]
    pub agent: hobbes_agent::AgentArgs,
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

/// The body of `leviathan enclave-init`: set up the enclave's mounts (with
/// `namespaces`) or become a subreaper (without), take the control credential
/// out of the environment, start reaping, serve the enclave socket, and run
/// the agent (heartbeats, the daemon link). Returns an error only when
/// start-up fails: the enclave socket cannot be bound, a mount fails, or the
/// daemon is unreachable at the first attempt. Afterwards a lost link is
/// retried every 100 ms for ever, and a `shutdown` from the daemon exits the
/// process (as pid 1, taking the whole PID namespace with it).
pub fn run(args: ControlArgs) -> anyhow::Result<()> {
    // An app that outgrows the enclave's memory limit must be what the OOM
    // killer takes, never the process that reaps and reports it.
    // (Unprivileged, lowering the score needs CAP_SYS_RESOURCE: then it stays.)
    let _ = std::fs::write("/proc/self/oom_score_adj", "-1000");
    if args.namespaces {
        hobbes_agent::mounts::make_private()?;
        hobbes_agent::mounts::mount_proc()?;
        if let (Some(replica), Some(target)) = (&args.nis_replica, &args.nis_mount) {
            hobbes_agent::mounts::bind_nis_replica(replica, target)?;
        }
    } else {
        sys::set_child_subreaper()?;
    }
    // Before any thread starts (apps get an environment of their own; this
    // keeps it out of any other copy we might make).
    let credential = hobbes_agent::take_credential(crate::kinds::CONTROL_CREDENTIAL_ENV);
    let runner = Arc::new(NativeRunner {
        app_cgroup: args.app_cgroup.clone(),
        running: Mutex::new(HashMap::new()),
        spawned: Condvar::new(),
        launcher: OnceLock::new(),
    });
    start_launcher(&runner, args.agent.enclave);
    {
        let runner = runner.clone();
        std::thread::Builder::new()
            .name("reaper".into())
            .spawn(move || runner.reap())?;
    }
    args.agent.start(credential, runner)?.run()
}

/// Apps as host processes: forked and exec'd under the enclave's memory
/// limit, reaped here (as pid 1, orphans too).
struct NativeRunner {
    /// The cgroup every app joins (see [`ControlArgs::app_cgroup`]).
    app_cgroup: Option<PathBuf>,
    /// Running apps by pid: the reaper reports their ends here. Held while
    /// an app is spawned, so the reaper cannot see its pid before it is here.
    running: Mutex<HashMap<u32, ExitReporter>>,
    /// Signalled when a child is spawned (the reaper waits for one).
    spawned: Condvar,
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
    io: AppIo,
    exit: ExitReporter,
    reply: mpsc::Sender<Result<u32, String>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Start the launcher thread: it moves itself into the apps' cgroup (its
/// thread id into v1's `tasks`) and, if that works, takes the launches.
fn start_launcher(runner: &Arc<NativeRunner>, enclave: EnclaveId) {
    let Some(tasks) = runner.app_cgroup.as_ref().map(|d| d.join("tasks")) else {
        return;
    };
    if !tasks.exists() {
        return; // cgroup v2: a process's threads share its cgroup.
    }
    let runner = runner.clone();
    let spawned = std::thread::Builder::new()
        .name("launcher".into())
        .spawn(move || {
            let tid = nix::unistd::gettid().as_raw();
            if let Err(e) = std::fs::write(&tasks, tid.to_string()) {
                eprintln!(
                    "enclave {enclave}: launching apps without a launcher thread in {}: {e}",
                    tasks.display()
                );
                return;
            }
            let (tx, rx) = mpsc::channel::<LaunchJob>();
            let _ = runner.launcher.set(Launcher {
                jobs: Mutex::new(tx),
            });
            for job in rx {
                let result = runner.spawn(&job.cmd, job.io, job.exit, false);
                let _ = job.reply.send(result);
            }
        });
    if let Err(e) = spawned {
        eprintln!("enclave {enclave}: no launcher thread: {e}");
    }
}

impl AppRunner for NativeRunner {
    /// On the launcher thread when it is in place, else here, moving the
    /// app into its cgroup before exec.
    fn launch(&self, cmd: &LaunchCommand, io: AppIo, exit: ExitReporter) -> Result<u32, String> {
        let Some(launcher) = self.launcher.get() else {
            return self.spawn(cmd, io, exit, true);
        };
        let (reply, result) = mpsc::channel();
        let job = LaunchJob {
            cmd: Box::new(cmd.clone()),
            io,
            exit,
            reply,
        };
        match lock(&launcher.jobs).send(job) {
            Ok(()) => result
                .recv()
                .unwrap_or_else(|_| Err("the launcher thread is gone".into())),
            Err(mpsc::SendError(job)) => self.spawn(&job.cmd, job.io, job.exit, true),
        }
    }

    fn signal(&self, _app: AppId, local_pid: u32, signal: i32) -> Result<(), String> {
        sys::kill(local_pid, signal).map_err(|e| format!("kill({local_pid}, {signal}): {e}"))
    }

    fn kill_all(&self) {
        // Pid 1 exiting (next) makes the kernel kill the rest of the PID namespace.
        for pid in lock(&self.running).keys() {
            let _ = sys::kill(*pid, libc::SIGKILL);
        }
    }
}

impl NativeRunner {
    /// Fork and exec an app; with `move_into_cgroup`, the child moves itself
    /// into the apps' cgroup before exec (else it is born there: see [`Launcher`]).
    fn spawn(
        &self,
        cmd: &LaunchCommand,
        io: AppIo,
        exit: ExitReporter,
        move_into_cgroup: bool,
    ) -> Result<u32, String> {
        let program = cmd.argv.first().ok_or("empty argv")?;
        // Opened here, as root: the kernel checks the app's move (after its
        // setuid) against the credentials the file was opened with.
        let app_cgroup = match self.app_cgroup.as_ref().filter(|_| move_into_cgroup) {
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
            .stdin(Stdio::from(io.stdin))
            .stdout(Stdio::from(io.stdout))
            .stderr(Stdio::from(io.stderr))
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
        let inherited: Option<OwnedFd> = io.inherited;
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
        // Hold the table while spawning so the reaper cannot see the pid before we record it.
        let mut running = lock(&self.running);
        let child = command
            .spawn()
            .map_err(|e| format!("cannot start {program}: {e}"))?;
        let local_pid = child.id();
        running.insert(local_pid, exit);
        drop(running);
        self.spawned.notify_all();
        // `command` (dropped on return) holds our copies of the app's output
        // pipes: the agent sees them close when the app and its children do.
        // The reaper waits for it (waitpid(-1)); dropping `child` does not.
        drop(inherited);
        Ok(local_pid)
    }

    /// Reap every child (as pid 1, orphans too) and report apps' exits.
    fn reap(&self) {
        loop {
            match waitpid(Pid::from_raw(-1), None) {
                Ok(WaitStatus::Exited(pid, code)) => {
                    self.exited(pid.as_raw() as u32, ExitStatus::Code(code))
                }
                Ok(WaitStatus::Signaled(pid, sig, _)) => {
                    self.exited(pid.as_raw() as u32, ExitStatus::Signal(sig as i32))
                }
                Ok(_) => {}
                Err(nix::errno::Errno::ECHILD) => {
                    // No children: wait until we spawn one (orphans reparented to us
                    // are picked up within the timeout).
                    let running = lock(&self.running);
                    let _ = self
                        .spawned
                        .wait_timeout(running, Duration::from_millis(200));
                }
                Err(_) => {}
            }
        }
    }

    fn exited(&self, pid: u32, status: ExitStatus) {
        let reporter = lock(&self.running).remove(&pid);
        if let Some(reporter) = reporter {
            reporter.exited(status, None);
        }
    }
}

/// Move the calling process into the cgroup whose `cgroup.procs` is open as
/// `fd` ("0" names the writer). Async-signal-safe: for use between fork and exec.
fn join_cgroup(fd: std::os::fd::RawFd) -> std::io::Result<()> {
    // SAFETY: write(2) from a static buffer on a descriptor we own.
    let n = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
    if n == 1 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
