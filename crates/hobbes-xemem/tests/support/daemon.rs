//! A real `leviathan` for XEMEM tests, in a temporary state directory;
//! shared by the test suites of hobbes-xemem, xemem-capi and xpmem-compat.
//!
//! XEMEM needs no root features, so the daemon runs `--unprivileged`: it
//! never touches cgroups and can run beside a node's real daemon. When the
//! binary is missing the test prints `SKIP <test>: <reason>` and returns.

#![allow(dead_code)]

use std::ffi::OsString;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Environment variables that would point a child at another daemon.
pub const HOBBES_VARS: [&str; 5] = [
    "HOBBES_ENCLAVE_ID",
    "HOBBES_APP_ID",
    "HOBBES_SOCKET",
    "HOBBES_NIS",
    "HOBBES_STATE_DIR",
];

/// Print `SKIP <test>: <reason>` straight to stdout, past the harness's capture.
pub fn skip(test: &str, reason: &str) {
    let _ = writeln!(std::io::stdout(), "SKIP {test}: {reason}");
}

/// `<target>/<profile>`, from this executable's `<target>/<profile>/deps/<name>-HASH`.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(Path::parent)
        .expect("test executable lives in <target>/<profile>/deps")
        .to_path_buf()
}

pub struct Daemon {
    child: Child,
    pub dir: tempfile::TempDir,
}

impl Daemon {
    /// Start one, or print why not (and return None).
    pub fn start(test: &str) -> Option<Daemon> {
        let exe = std::env::var_os("HOBBES_TEST_LEVIATHAN")
            .map(PathBuf::from)
            .unwrap_or_else(|| profile_dir().join("leviathan"));
        if !exe.exists() {
            skip(
                test,
                &format!("{} not built (cargo build -p leviathan)", exe.display()),
            );
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("xemem-test-")
            .tempdir()
            .expect("tempdir");
        let log = File::create(dir.path().join("leviathan.log")).expect("log file");
        let mut cmd = Command::new(&exe);
        cmd.arg("--state-dir")
            .arg(dir.path())
            .args(["--host-cores", "0", "--unprivileged"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log);
        for var in HOBBES_VARS {
            cmd.env_remove(var);
        }
        let child = cmd.spawn().expect("spawn leviathan");
        let mut d = Daemon { child, dir };
        let sock = d.socket();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let up = hobbes_client::Client::connect(&sock)
                .and_then(|mut c| c.status())
                .is_ok();
            if up {
                return Some(d);
            }
            if let Ok(Some(status)) = d.child.try_wait() {
                panic!("leviathan exited ({status}):\n{}", d.log());
            }
            assert!(
                Instant::now() < deadline,
                "leviathan not up after 20 s:\n{}",
                d.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn state_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("leviathan.sock")
    }

    /// The variables a client of this daemon needs.
    pub fn env(&self) -> Vec<(&'static str, OsString)> {
        vec![("HOBBES_STATE_DIR", self.dir.path().into())]
    }

    /// Point a command at this daemon (and no other).
    pub fn configure(&self, cmd: &mut Command) {
        for var in HOBBES_VARS {
            cmd.env_remove(var);
        }
        cmd.envs(self.env());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("leviathan.log")).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                if std::thread::panicking() {
                    eprintln!("--- leviathan log ---\n{}", self.log());
                }
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run `cmd` to completion, killing it after `limit` (a hung peer must not
/// hang the test).
pub fn run_with_timeout(cmd: &mut Command, limit: Duration) -> std::process::Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.expect("wait"),
        Err(_) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            panic!("{cmd:?} ran past {limit:?}");
        }
    }
}
