//! Test harness: a real `leviathan` in a temporary state directory.
//!
//! Tests that need root print `SKIP <test>: <reason>` and return when it is
//! missing. Daemons are serialized (one node, one set of cgroups) and always
//! torn down: SIGTERM, then SIGKILL plus `leviathan cleanup` if needed, so the
//! host's cpuset is restored even when a test fails.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hobbes_client::proto::model::{AppRecord, EnclaveKind, ExitStatus};
use hobbes_client::proto::msg::{EnclaveRef, LaunchSpec, Stream};
use hobbes_client::proto::spec::{CpuRequest, EnclaveSpec, MemRequest};
use hobbes_client::Client;

/// The `leviathan` binary: cargo names it for this crate's tests; other
/// crates' tests (which include this harness by path) find it in their target
/// directory, next to their own `deps/` directory.
pub fn leviathan() -> &'static str {
    static PATH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        if let Some(p) = option_env!("CARGO_BIN_EXE_leviathan") {
            return p.to_string();
        }
        let exe = std::env::current_exe().expect("test executable");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target/<profile>");
        profile_dir.join("leviathan").display().to_string()
    })
}

static NODE: Mutex<()> = Mutex::new(());

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Print `SKIP <test>: <reason>` where the user sees it: straight to stdout,
/// past the test harness's output capture.
pub fn skip(test: &str, reason: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout(), "SKIP {test}: {reason}");
}

/// Returns false (after printing the SKIP line) when the test cannot run here.
pub fn require_root(test: &str) -> bool {
    if !is_root() {
        skip(test, "needs root (cgroups, namespaces)");
        return false;
    }
    if !Path::new("/sys/fs/cgroup").exists() {
        skip(test, "no /sys/fs/cgroup");
        return false;
    }
    true
}

pub fn ncpus() -> usize {
    // Not available_parallelism: while a daemon runs, our affinity is the host's cores.
    nix::unistd::sysconf(nix::unistd::SysconfVar::_NPROCESSORS_ONLN)
        .ok()
        .flatten()
        .unwrap_or(1) as usize
}

pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub child: Option<Child>,
    pub args: Vec<String>,
    _node: MutexGuard<'static, ()>,
}

/// Poll `f` until it returns Some, or panic after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Hold the node for this test (one daemon at a time per node).
pub fn lock_node() -> MutexGuard<'static, ()> {
    NODE.lock().unwrap_or_else(|p| p.into_inner())
}

/// A fresh state directory for a daemon.
pub fn state_tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("hobbes-test-")
        .tempdir()
        .expect("tempdir")
}

/// The daemon's flags in tests, with `extra` (a flag given there replaces its default).
pub fn daemon_args(extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "--host-cores".into(),
        "0".into(),
        "--host-memory".into(),
        "2048".into(),
        "--heartbeat-interval-ms".into(),
        "50".into(),
        "--heartbeat-timeout-ms".into(),
        "400".into(),
    ];
    // A flag given in `extra` replaces its default.
    for flag in extra.iter().filter(|a| a.starts_with("--")) {
        if let Some(i) = args.iter().position(|a| a == flag) {
            args.drain(i..i + 2);
        }
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

impl Daemon {
    /// Start a daemon: the host keeps core 0; fast heartbeats for tests.
    pub fn start(extra: &[&str]) -> Daemon {
        Daemon::start_locked(lock_node(), extra)
    }

    /// Start a daemon for a test that already holds the node ([`lock_node`]).
    pub fn start_locked(node: MutexGuard<'static, ()>, extra: &[&str]) -> Daemon {
        let dir = state_tempdir();
        let args = daemon_args(extra);
        let mut d = Daemon {
            dir,
            child: None,
            args,
            _node: node,
        };
        d.spawn();
        d
    }

    pub fn state_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("leviathan.sock")
    }

    pub fn nis_dir(&self) -> PathBuf {
        self.dir.path().join("nis")
    }

    /// (Re)start the daemon process on this state directory and wait until it answers.
    pub fn spawn(&mut self) {
        if is_root() && !self.args.iter().any(|a| a == "--unprivileged") {
            wait_for_node_lock();
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("leviathan.log"))
            .expect("log");
        let child = Command::new(leviathan())
            .arg("--state-dir")
            .arg(self.dir.path())
            .args(&self.args)
            .env("HOBBES_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn leviathan");
        self.child = Some(child);
        let sock = self.socket();
        let child = self.child.as_mut().expect("child");
        wait_for("leviathan to answer", Duration::from_secs(15), || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "leviathan exited early: {status}; log:\n{}",
                    std::fs::read_to_string(sock.with_file_name("leviathan.log"))
                        .unwrap_or_default()
                );
            }
            Client::connect(&sock)
                .ok()
                .and_then(|mut c| c.status().ok())
        });
    }

    pub fn client(&self) -> Client {
        Client::connect(self.socket()).expect("connect")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).expect("running")
    }

    /// SIGKILL the daemon (enclaves live on).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit; returns its exit status code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let start = Instant::now();
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return st.code();
            }
            if start.elapsed() > Duration::from_secs(15) {
                let _ = c.kill();
                let _ = c.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("leviathan.log")).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let clean = self.stop();
        if clean != Some(0) || std::thread::panicking() {
            eprintln!("--- leviathan log (exit {clean:?}) ---\n{}", self.log());
        }
        // Always: kill leftovers, remove cgroups, give the host its cores back.
        let _ = Command::new(leviathan())
            .arg("cleanup")
            .arg("--keep-state")
            .arg("--state-dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .status();
    }
}

/// `leviathan cleanup --keep-state EXTRA --state-dir DIR`, which must
/// succeed (the panic shows its stderr); returns what it printed.
pub fn cleanup_ok(state_dir: &Path, extra: &[&str]) -> String {
    let out = Command::new(leviathan())
        .args(["cleanup", "--keep-state"])
        .args(extra)
        .arg("--state-dir")
        .arg(state_dir)
        .output()
        .expect("run leviathan cleanup");
    assert!(
        out.status.success(),
        "leviathan cleanup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A binary of another workspace package, built next to `leviathan`. Always
/// asks cargo (a no-op when it is up to date): a probe left from an older
/// build would speak an older NIS schema. `None` (after a SKIP line) when it
/// cannot be built.
pub fn workspace_bin(test: &str, package: &str, bin: &str) -> Option<String> {
    let path = PathBuf::from(leviathan()).with_file_name(bin);
    let built = Command::new(env!("CARGO"))
        .args(["build", "-q", "-p", package, "--bin", bin])
        .status();
    if !built.is_ok_and(|s| s.success()) || !path.exists() {
        skip(
            test,
            &format!("{bin} is not built (cargo build -p {package})"),
        );
        return None;
    }
    Some(path.display().to_string())
}

/// One privileged leviathan per node: if another one (a benchmark, another
/// test binary) holds the node, wait for it to stop rather than fail.
pub fn wait_for_node_lock() {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(b"hobbes-leviathan-node-lock")
        .expect("abstract name");
    wait_for(
        "the node lock (another privileged leviathan runs)",
        Duration::from_secs(300),
        || {
            std::os::unix::net::UnixListener::bind_addr(&addr)
                .ok()
                .map(drop)
        },
    );
}

pub fn spec(name: &str, cores: u32, mib: u64, shared: bool) -> EnclaveSpec {
    EnclaveSpec {
        name: name.into(),
        kind: EnclaveKind::Native,
        shared,
        host_ipc: false,
        cpus: CpuRequest {
            count: cores,
            ..Default::default()
        },
        memory: MemRequest {
            size_mib: mib,
            ..Default::default()
        },
        vm: None,
    }
}

pub fn launch(enclave: &str, argv: &[&str]) -> LaunchSpec {
    LaunchSpec {
        enclave: EnclaveRef::Name(enclave.into()),
        name: None,
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: vec![],
        cwd: None,
        stream: true,
    }
}

/// Wait for an app launched without streaming and assert it exited 0 (its
/// logs in the message otherwise): (final record, its stdout).
pub fn wait_ok(c: &mut Client, app: &AppRecord) -> (AppRecord, String) {
    let rec = c.wait_app(app.id).unwrap();
    let out = std::fs::read_to_string(&rec.stdout_log).unwrap_or_default();
    let err = std::fs::read_to_string(&rec.stderr_log).unwrap_or_default();
    assert_eq!(
        rec.exit,
        Some(ExitStatus::Code(0)),
        "{} failed:\n{out}{err}",
        rec.argv.join(" ")
    );
    (rec, out)
}

/// Launch, stream, wait: (final record, stdout, stderr).
pub fn run_in(client: &mut Client, enclave: &str, argv: &[&str]) -> (AppRecord, String, String) {
    let mut out = Vec::new();
    let mut err = Vec::new();
    let rec = client
        .launch_streaming(
            launch(enclave, argv),
            |_| {},
            |s, d| match s {
                Stream::Stdout => out.extend_from_slice(d),
                Stream::Stderr => err.extend_from_slice(d),
            },
        )
        .expect("launch");
    (
        rec,
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
    )
}

/// The `key:` line of /proc/PID/status (or of a `cat` of it).
pub fn status_field(text: &str, key: &str) -> String {
    text.lines()
        .find(|l| l.starts_with(key))
        .map(|l| l[key.len()..].trim().to_string())
        .unwrap_or_default()
}

pub fn host_affinity_of(pid: u32) -> String {
    status_field(
        &std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default(),
        "Cpus_allowed_list:",
    )
}

/// [`run_in`] on a thread of its own, so a program that never ends fails
/// the test after `limit` instead of hanging it: (final record, stdout, stderr).
pub fn run_bounded(
    d: &Daemon,
    enclave: &str,
    argv: &[&str],
    limit: Duration,
) -> (AppRecord, String, String) {
    let sock = d.socket();
    let enclave = enclave.to_string();
    let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
    let what = argv.join(" ");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut c = Client::connect(sock).expect("connect");
        let argv: Vec<&str> = argv.iter().map(|s| s.as_str()).collect();
        let _ = tx.send(run_in(&mut c, &enclave, &argv));
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("{what} did not end within {limit:?}"))
}
