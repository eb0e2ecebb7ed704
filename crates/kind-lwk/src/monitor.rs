//! The LWK monitor: `leviathan lwk-monitor`, one per LWK enclave, started by
//! [`crate::LwkKind`]. It makes the enclave's VM and is its control agent:
//! the daemon link, heartbeats, the app table and output forwarding come
//! from `hobbes-agent`; this module places the monitor's threads, makes the
//! VM, and runs apps in it (`LwkRunner`).
//!
//! Start-up, in order (each step's failure is reported on stdout as
//! `error: <why>`, which the driver turns into the failed creation's message):
//! 1. take the credential out of the environment (before any thread);
//! 2. with `--namespaces`: a mount namespace of its own, the enclave's NIS
//!    replica bound over the primary's path;
//! 3. join `--memory-cgroup` (the enclave's limit), make the VM (guest RAM
//!    populated, so charged there), move to `--control-cgroup`;
//! 4. with `--vcpu-cgroup`: a launcher thread joins that cpuset (v1 `tasks`)
//!    and starts every app, so the vCPU threads are born on the enclave's
//!    cores while every other thread stays on the host's;
//! 5. bind the enclave socket, print `ready`, attach to the daemon.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};

use hobbes_agent::{Agent, AppIo, AppRunner, ExitReporter};
use hobbes_kind::monitor::{parse_cpu_list, say, stdout_to_null, CpuList};
use hobbes_proto::control::LaunchCommand;
use hobbes_proto::model::{AppId, ExitStatus};

/// How the driver starts the monitor (`leviathan lwk-monitor ...`).
#[derive(Debug, Clone, clap::Args)]
pub struct MonitorArgs {
    /// What every control agent takes (enclave, sockets, owner).
    #[command(flatten)]
    pub agent: hobbes_agent::AgentArgs,
    /// The enclave's cores, as a CPU list ("2-3"): the vCPUs run there.
    #[arg(long, value_parser = parse_cpu_list)]
    pub cores: CpuList,
    /// Cores the system-call proxy thread may poll on (the host's); absent:
    /// no proxy, every forwarded call exits to its vCPU's thread.
    #[arg(long, value_parser = parse_cpu_list)]
    pub proxy_cores: Option<CpuList>,
    /// Guest RAM, in bytes.
    #[arg(long)]
    pub guest_mem_bytes: u64,
    /// Make guest RAM in this directory (the daemon's huge-page tmpfs, so the
    /// guest's 2 MiB pages are 2 MiB on the host too and KVM maps them
    /// whole); absent: a memfd.
    #[arg(long)]
    pub memory_dir: Option<PathBuf>,
    /// The enclave's NUMA nodes, as a list ("0-1"): guest RAM comes from them.
    #[arg(long, value_parser = parse_cpu_list)]
    pub numa_nodes: Option<CpuList>,
    /// Run in a mount namespace of our own, with the NIS replica bound over
    /// the primary's path.
    #[arg(long, requires = "nis_replica")]
    pub namespaces: bool,
    /// The enclave's NIS replica (host path).
    #[arg(long, requires = "nis_mount")]
    pub nis_replica: Option<PathBuf>,
    /// Where the enclave sees its NIS (the primary's path).
    #[arg(long)]
    pub nis_mount: Option<PathBuf>,
    /// The cgroup (its `cgroup.procs`) the monitor sits in while guest RAM is
    /// made: the enclave's memory limit.
    #[arg(long, requires = "control_cgroup")]
    pub memory_cgroup: Option<PathBuf>,
    /// The cgroup the monitor moves to once its VM is made (outside the limit).
    #[arg(long)]
    pub control_cgroup: Option<PathBuf>,
    /// The cgroup one launcher thread joins (its `tasks`): every vCPU thread
    /// is born there, on the enclave's cores.
    #[arg(long)]
    pub vcpu_cgroup: Option<PathBuf>,
}

/// The body of `leviathan lwk-monitor`: make the VM (see the module's
/// documentation for the order), say `ready` on stdout, then run the agent
/// for ever. Returns an error only when start-up fails (after saying why on
/// stdout) or the daemon is unreachable at the first attempt.
pub fn run(args: MonitorArgs) -> anyhow::Result<()> {
    // Before any thread starts: no later copy of our environment has it.
    let credential = hobbes_agent::take_credential(hobbes_kind::CONTROL_CREDENTIAL_ENV);
    let agent = match prepare(&args, credential) {
        Ok(agent) => agent,
        Err(e) => {
            say(&format!("error: {e:#}"));
            return Err(e);
        }
    };
    say("ready");
    stdout_to_null();
    agent.run()
}

/// Steps 2-5 of start-up (see the module's documentation).
fn prepare(
    args: &MonitorArgs,
    credential: hobbes_proto::control::Credential,
) -> anyhow::Result<Agent> {
    // The guest's memory is the enclave's: the host's OOM killer must not
    // take it to make room for the host (the limit bounds it instead).
    let _ = std::fs::write("/proc/self/oom_score_adj", "-1000");
    if args.namespaces {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
            .map_err(|e| anyhow::anyhow!("cannot make a mount namespace: {e}"))?;
        hobbes_agent::mounts::make_private()?;
        if let (Some(replica), Some(target)) = (&args.nis_replica, &args.nis_mount) {
            hobbes_agent::mounts::bind_nis_replica(replica, target)?;
        }
    }
    if let Some(dir) = &args.memory_cgroup {
        join_cgroup(dir)?;
    }
    let guest = crate::vmm::make(
        args.guest_mem_bytes,
        args.memory_dir.as_deref(),
        args.numa_nodes.as_ref().map_or(&[][..], |n| &n.0[..]),
        &args.cores.0,
        args.proxy_cores.as_ref().map_or(&[][..], |c| &c.0[..]),
    )?;
    if let Some(dir) = &args.control_cgroup {
        join_cgroup(dir)?;
    }
    let launcher = match &args.vcpu_cgroup {
        Some(dir) => Some(VcpuLauncher::start(guest.clone(), dir)?),
        None => None,
    };
    let runner = Arc::new(LwkRunner::new(guest, launcher));
    args.agent.start(credential, runner)
}

/// Move this whole process into the cgroup `dir`.
fn join_cgroup(dir: &Path) -> anyhow::Result<()> {
    let procs = dir.join("cgroup.procs");
    let pid = std::process::id().to_string();
    std::fs::write(&procs, &pid)
        .map_err(|e| anyhow::anyhow!("failed to write {pid:?} to {}: {e}", procs.display()))
}

/// An LWK as the monitor drives it: the seam between the agent side and the
/// VMM (`crate::vmm` adapts `lwk_vmm::Lwk` to it; tests use a fake).
pub(crate) trait Guest: Send + Sync + 'static {
    /// A running app.
    type App: GuestApp;
    /// Start an app; the error names the reason (a bad binary's, say).
    fn launch(&self, req: lwk_vmm::LaunchRequest) -> Result<Self::App, String>;
}

/// A running app of a [`Guest`].
pub(crate) trait GuestApp: Clone + Send + Sync + 'static {
    /// Its pid in the guest.
    fn pid(&self) -> u32;
    /// Deliver `signal` (its default action).
    fn signal(&self, signal: i32) -> Result<(), String>;
    /// Block until it ended: its status, and what to say about it (a fault,
    /// the summary of its system calls).
    fn wait(&self) -> (ExitStatus, Option<String>);
}

/// Apps as guest programs.
pub(crate) struct LwkRunner<G: Guest> {
    guest: Arc<G>,
    /// Starts apps from the enclave's cpuset (see [`VcpuLauncher`]); `None`:
    /// from the calling thread.
    launcher: Option<VcpuLauncher<G>>,
    /// Running apps (each one's waiting thread removes it).
    apps: Arc<Mutex<HashMap<AppId, G::App>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<G: Guest> LwkRunner<G> {
    pub(crate) fn new(guest: Arc<G>, launcher: Option<VcpuLauncher<G>>) -> Self {
        LwkRunner {
            guest,
            launcher,
            apps: Arc::new(Mutex::new(HashMap::new())),
        }
    }
}

impl<G: Guest> AppRunner for LwkRunner<G> {
    fn launch(&self, cmd: &LaunchCommand, io: AppIo, exit: ExitReporter) -> Result<u32, String> {
        let argv0 = cmd.argv.first().ok_or("empty argv")?;
        if cmd.pmi_fd || io.inherited.is_some() {
            return Err(format!(
                "cannot start {argv0}: an LWK app cannot inherit a descriptor (Remora's socketpair PMI); use PMI over TCP"
            ));
        }
        let cwd = match &cmd.cwd {
            Some(c) => PathBuf::from(c),
            None => std::env::current_dir().map_err(|e| format!("no working directory: {e}"))?,
        };
        let program = resolve_program(argv0, &cmd.env, &cwd)
            .map_err(|why| format!("cannot start {argv0}: {why}"))?;
        // The VMM's refusal may start with the path it read; we name it already.
        let shown = format!("{}: ", program.display());
        let req = lwk_vmm::LaunchRequest {
            program,
            argv: cmd.argv.clone(),
            env: cmd.env.clone(),
            cwd,
            uid: cmd.uid,
            gid: cmd.gid,
            stdin: io.stdin,
            stdout: io.stdout,
            stderr: io.stderr,
        };
        let app = match &self.launcher {
            Some(l) => l.launch(req),
            None => self.guest.launch(req),
        }
        .map_err(|why| {
            let why = why.strip_prefix(&shown).unwrap_or(&why);
            format!("cannot start {argv0}: {why}")
        })?;
        let pid = app.pid();
        lock(&self.apps).insert(cmd.app, app.clone());
        // One waiting thread per app (`App::wait` blocks), on the host's
        // cores: started from here, not from the launcher.
        let waiter = {
            let id = cmd.app;
            let app = app.clone();
            let apps = self.apps.clone();
            std::thread::Builder::new()
                .name(format!("app-{id}"))
                .spawn(move || {
                    let (status, detail) = app.wait();
                    // Its handle goes before its end is told: a signal for
                    // it after that finds no app rather than an ended one.
                    lock(&apps).remove(&id);
                    exit.exited(status, detail);
                })
        };
        if let Err(e) = waiter {
            let _ = app.signal(libc::SIGKILL);
            lock(&self.apps).remove(&cmd.app);
            return Err(format!("cannot watch {argv0}: {e}"));
        }
        Ok(pid)
    }

    fn signal(&self, app: AppId, _local_pid: u32, signal: i32) -> Result<(), String> {
        let handle = lock(&self.apps).get(&app).cloned();
        match handle {
            Some(a) => a.signal(signal),
            None => Err(format!("app {app} is not running in this enclave")),
        }
    }

    fn kill_all(&self) {
        for app in lock(&self.apps).values() {
            let _ = app.signal(libc::SIGKILL);
        }
    }
}

/// A thread of the monitor in the enclave's cpuset (cgroup v1: its thread
/// id in the cpuset's `tasks`) that starts every app, so each vCPU thread
/// the VMM makes for it is born on the enclave's cores, while the monitor's
/// other threads (the daemon link, output, the proxy) stay on the host's.
pub(crate) struct VcpuLauncher<G: Guest> {
    jobs: Mutex<mpsc::Sender<LaunchJob<G>>>,
}

type LaunchJob<G> = (
    lwk_vmm::LaunchRequest,
    mpsc::Sender<Result<<G as Guest>::App, String>>,
);

impl<G: Guest> VcpuLauncher<G> {
    /// Start the thread and wait until it is in `cpuset` (whose `tasks` takes it).
    pub(crate) fn start(guest: Arc<G>, cpuset: &Path) -> anyhow::Result<Self> {
        let tasks = cpuset.join("tasks");
        let (placed_tx, placed) = mpsc::channel::<Result<(), String>>();
        let (tx, rx) = mpsc::channel::<LaunchJob<G>>();
        std::thread::Builder::new()
            .name("vcpu-launcher".into())
            .spawn(move || {
                let tid = nix::unistd::gettid().as_raw().to_string();
                let joined = std::fs::write(&tasks, &tid)
                    .map_err(|e| format!("failed to write {tid:?} to {}: {e}", tasks.display()));
                let ok = joined.is_ok();
                let _ = placed_tx.send(joined);
                if !ok {
                    return;
                }
                for (req, reply) in rx {
                    let _ = reply.send(guest.launch(req));
                }
            })?;
        placed
            .recv()
            .map_err(|_| anyhow::anyhow!("the vCPU launcher thread died"))?
            .map_err(|e| {
                anyhow::anyhow!("cannot put the vCPU launcher on the enclave's cores: {e}")
            })?;
        Ok(VcpuLauncher {
            jobs: Mutex::new(tx),
        })
    }

    fn launch(&self, req: lwk_vmm::LaunchRequest) -> Result<G::App, String> {
        let (reply, result) = mpsc::channel();
        lock(&self.jobs)
            .send((req, reply))
            .map_err(|_| "the vCPU launcher thread is gone".to_string())?;
        result
            .recv()
            .unwrap_or_else(|_| Err("the vCPU launcher thread is gone".into()))
    }
}

/// The default `PATH` of a launch without one (the daemon always sends one).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The executable `argv0` names, as `execvp` finds it: a name with a `/` as
/// it is (relative to the app's `cwd`, which the VMM resolves), anything
/// else searched in the launch's `PATH`.
fn resolve_program(argv0: &str, env: &[(String, String)], cwd: &Path) -> Result<PathBuf, String> {
    if argv0.contains('/') {
        return Ok(PathBuf::from(argv0));
    }
    let path = env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map_or(DEFAULT_PATH, |(_, v)| v.as_str());
    for dir in path.split(':') {
        let candidate = Path::new(if dir.is_empty() { "." } else { dir }).join(argv0);
        let on_host = cwd.join(&candidate);
        let executable = std::fs::metadata(&on_host).is_ok_and(|m| {
            use std::os::unix::fs::PermissionsExt;
            m.is_file() && m.permissions().mode() & 0o111 != 0
        });
        if executable {
            return Ok(candidate);
        }
    }
    Err(format!("no such program in PATH ({path})"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::OwnedFd;
    use std::sync::Condvar;
    use std::time::Duration;

    #[test]
    fn programs_are_found_as_execvp_finds_them() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let exe = bin.join("solver");
        std::fs::write(&exe, b"\x7fELF").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(bin.join("data"), b"").unwrap();
        let env = vec![(
            "PATH".to_string(),
            format!("/nonexistent:{}", bin.display()),
        )];
        assert_eq!(resolve_program("solver", &env, dir.path()).unwrap(), exe);
        // A relative PATH entry resolves against the app's working directory.
        let env_rel = vec![("PATH".to_string(), "bin".to_string())];
        assert_eq!(
            resolve_program("solver", &env_rel, dir.path()).unwrap(),
            PathBuf::from("bin/solver")
        );
        let e = resolve_program("data", &env, dir.path()).unwrap_err();
        assert!(e.contains("no such program in PATH"), "{e}");
        assert_eq!(
            resolve_program("./x", &env, dir.path()).unwrap(),
            PathBuf::from("./x")
        );
    }

    /// A guest whose apps end when told to (`finish`), or at a signal.
    #[derive(Default)]
    struct FakeGuest {
        launched: Mutex<Vec<(PathBuf, Vec<String>, PathBuf)>>,
        next_pid: Mutex<u32>,
        refuse: Mutex<Option<String>>,
    }

    /// How a fake app ends: its status and detail.
    type Ending = (ExitStatus, Option<String>);

    #[derive(Clone)]
    struct FakeApp {
        pid: u32,
        end: Arc<(Mutex<Option<Ending>>, Condvar)>,
        signals: Arc<Mutex<Vec<i32>>>,
        _stdout: Arc<OwnedFd>,
    }

    impl FakeApp {
        fn finish(&self, status: ExitStatus, detail: Option<String>) {
            *self.end.0.lock().unwrap() = Some((status, detail));
            self.end.1.notify_all();
        }
    }

    impl Guest for FakeGuest {
        type App = FakeApp;
        fn launch(&self, req: lwk_vmm::LaunchRequest) -> Result<FakeApp, String> {
            if let Some(why) = self.refuse.lock().unwrap().clone() {
                return Err(why);
            }
            self.launched.lock().unwrap().push((
                req.program.clone(),
                req.argv.clone(),
                req.cwd.clone(),
            ));
            let mut pid = self.next_pid.lock().unwrap();
            *pid += 1;
            Ok(FakeApp {
                pid: *pid,
                end: Arc::default(),
                signals: Arc::default(),
                _stdout: Arc::new(req.stdout),
            })
        }
    }

    impl GuestApp for FakeApp {
        fn pid(&self) -> u32 {
            self.pid
        }
        fn signal(&self, signal: i32) -> Result<(), String> {
            self.signals.lock().unwrap().push(signal);
            self.finish(
                ExitStatus::Signal(signal),
                Some("forwarded: write 1".into()),
            );
            Ok(())
        }
        fn wait(&self) -> (ExitStatus, Option<String>) {
            let mut end = self.end.0.lock().unwrap();
            loop {
                if let Some(e) = end.clone() {
                    return e;
                }
                end = self.end.1.wait(end).unwrap();
            }
        }
    }

    fn cmd(argv: &[&str], pmi_fd: bool) -> LaunchCommand {
        LaunchCommand {
            seq: 1,
            app: 7,
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            cwd: Some("/tmp".into()),
            uid: 1000,
            gid: 100,
            stdout_log: String::new(),
            stderr_log: String::new(),
            forward_output: false,
            pmi_fd,
        }
    }

    fn io(inherited: bool) -> AppIo {
        let null = || -> OwnedFd { std::fs::File::open("/dev/null").unwrap().into() };
        AppIo {
            stdin: null(),
            stdout: null(),
            stderr: null(),
            inherited: inherited.then(null),
        }
    }

    /// The runner driven through a real agent would need a daemon; the
    /// agent's own tests cover that side. Here: the runner's contract.
    #[test]
    fn the_runner_starts_signals_and_reports_apps_through_the_guest() {
        let guest = Arc::new(FakeGuest::default());
        let runner = LwkRunner::new(guest.clone(), None);
        let (reporter, ended) = hobbes_agent::testing::reporter(7);
        let pid = runner
            .launch(&cmd(&["true"], false), io(false), reporter)
            .unwrap();
        assert_eq!(pid, 1);
        let (program, argv, cwd) = guest.launched.lock().unwrap()[0].clone();
        assert!(program.ends_with("true"), "{program:?}");
        assert_eq!(
            (argv, cwd),
            (vec!["true".to_string()], PathBuf::from("/tmp"))
        );
        runner.signal(7, pid, libc::SIGTERM).unwrap();
        let (status, detail) = ended.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(status, ExitStatus::Signal(libc::SIGTERM));
        assert_eq!(detail.as_deref(), Some("forwarded: write 1"));
        // An ended app's handle is dropped.
        assert!(lock(&runner.apps).is_empty());
        let e = runner.signal(8, 9, libc::SIGTERM).unwrap_err();
        assert!(e.contains("app 8 is not running"), "{e}");
    }

    #[test]
    fn refusals_name_the_program_and_the_reason() {
        let guest = Arc::new(FakeGuest::default());
        *guest.refuse.lock().unwrap() = Some("./hello: a dynamic executable (it names an interpreter, /lib64/ld-linux-x86-64.so.2): build it with -static".into());
        let runner = LwkRunner::new(guest.clone(), None);
        let (reporter, _) = hobbes_agent::testing::reporter(7);
        let e = runner
            .launch(&cmd(&["./hello"], false), io(false), reporter)
            .unwrap_err();
        assert!(
            e.starts_with("cannot start ./hello: a dynamic executable"),
            "{e}"
        );
        let (reporter, _) = hobbes_agent::testing::reporter(7);
        let e = runner
            .launch(&cmd(&["./hello"], true), io(true), reporter)
            .unwrap_err();
        assert!(e.contains("cannot inherit a descriptor"), "{e}");
        let (reporter, _) = hobbes_agent::testing::reporter(7);
        let e = runner
            .launch(&cmd(&["no-such-solver"], false), io(false), reporter)
            .unwrap_err();
        assert!(
            e.starts_with("cannot start no-such-solver: no such program in PATH"),
            "{e}"
        );
    }
}
