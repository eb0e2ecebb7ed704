//! A `leviathan` started by a demo or tool when none answers: its state in a
//! temporary directory, stopped (and cleaned up after) when dropped. Used by
//! `hobbes demo` (hobbes-cli) and `hobbes demo insitu` (`hobbes-insitu demo`,
//! hobbes-workloads), which share it here rather than each keeping a copy.

#![deny(missing_docs)]

use std::fs::File;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use hobbes_client::proto::model::EnclaveId;
use hobbes_client::proto::msg::EnclaveRef;
use hobbes_client::Client;
use tempfile::TempDir;

/// How long an embedded daemon may take to answer, and to exit on SIGTERM.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Poll period of those condition waits.
const POLL: Duration = Duration::from_millis(20);

/// A client of the daemon that answers at `socket`, or of a new embedded
/// one (returned too, so the caller stops it). `announce` prints the step.
pub fn connect_or_start(
    socket: &Path,
    announce: impl Fn(&str),
) -> Result<(Client, Option<Embedded>, PathBuf)> {
    match Client::connect(socket).and_then(|mut c| {
        let st = c.status()?;
        Ok((c, st))
    }) {
        Ok((client, st)) => {
            announce(&format!(
                "using the running leviathan at {} (pid {})",
                socket.display(),
                st.header.daemon_pid
            ));
            Ok((client, None, socket.to_path_buf()))
        }
        Err(_) => {
            announce("starting leviathan (embedded, in a temporary state directory)");
            let mut daemon = Embedded::start()?;
            let client = daemon.wait_ready()?;
            let socket = daemon.socket();
            Ok((client, Some(daemon), socket))
        }
    }
}

/// A demo's clean-up: destroy enclaves `ids`, each over a fresh connection
/// to `socket` (after an error the demo's own may be mid-stream), saying
/// what happened to each.
pub fn destroy_enclaves(socket: &Path, ids: impl IntoIterator<Item = EnclaveId>) {
    for id in ids {
        match Client::connect(socket).and_then(|mut c| c.destroy_enclave(EnclaveRef::Id(id))) {
            Ok(()) => println!("      destroyed enclave {id}"),
            Err(e) => eprintln!("      could not destroy enclave {id}: {e}"),
        }
    }
}

/// A `leviathan` we started, with its state in a temporary directory.
/// Dropping it stops the daemon and removes the directory.
pub struct Embedded {
    /// `None` once stopped.
    child: Option<Child>,
    bin: PathBuf,
    dir: TempDir,
}

impl Embedded {
    fn start() -> Result<Self> {
        let bin = find_leviathan()?;
        let dir = tempfile::Builder::new()
            .prefix("hobbes-demo-")
            .tempdir()
            .context("cannot create a state directory for leviathan")?;
        let log_path = dir.path().join("leviathan.log");
        let log = File::create(&log_path)
            .with_context(|| format!("cannot create {}", log_path.display()))?;
        let mut cmd = Command::new(&bin);
        cmd.arg("--state-dir").arg(dir.path());
        // Keep core 0 for the host so an exclusive enclave can have another.
        if online_cpus() >= 2 {
            cmd.args(["--host-cores", "0"]);
        }
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // SAFETY: prctl is async-signal-safe, as required between fork and exec.
        // If the demo dies without cleaning up (SIGKILL), the daemon gets SIGTERM.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == -1 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        println!(
            "      {} --state-dir {} (pid {}), log in {}",
            bin.display(),
            dir.path().display(),
            child.id(),
            log_path.display()
        );
        Ok(Embedded {
            child: Some(child),
            bin,
            dir,
        })
    }

    fn socket(&self) -> PathBuf {
        hobbes_client::paths::socket_in(self.dir.path())
    }

    fn log_tail(&self) -> String {
        let log =
            std::fs::read_to_string(self.dir.path().join("leviathan.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Wait until the daemon answers a status request (not merely until its
    /// socket exists: it binds before it is ready to serve).
    fn wait_ready(&mut self) -> Result<Client> {
        let socket = self.socket();
        println!("      waiting for it to answer on {}", socket.display());
        let started = Instant::now();
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                bail!(
                    "leviathan exited during startup ({status}); its log:\n{}",
                    self.log_tail()
                );
            }
            if let Ok(mut client) = Client::connect(&socket) {
                if client.status().is_ok() {
                    println!("      ready after {} ms", started.elapsed().as_millis());
                    return Ok(client);
                }
            }
            if started.elapsed() >= READY_TIMEOUT {
                bail!(
                    "leviathan did not answer on {} within {} s; its log:\n{}",
                    socket.display(),
                    READY_TIMEOUT.as_secs(),
                    self.log_tail()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// SIGTERM, then a bounded wait; SIGKILL and `leviathan cleanup` if it hangs.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        println!("      stopping leviathan (pid {})", child.id());
        // The child is not reaped yet, so its pid cannot have been reused.
        if let Ok(pid) = libc::pid_t::try_from(child.id()) {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        match wait_timeout(&mut child, STOP_TIMEOUT) {
            Some(status) => println!("      leviathan exited ({status})"),
            None => {
                eprintln!(
                    "      leviathan did not exit within {} s: killing it and cleaning up",
                    STOP_TIMEOUT.as_secs()
                );
                let _ = child.kill();
                let _ = child.wait();
                // Enclaves of a killed daemon outlive it; this reclaims them.
                let _ = Command::new(&self.bin)
                    .arg("--state-dir")
                    .arg(self.dir.path())
                    .arg("cleanup")
                    .stdin(Stdio::null())
                    .status();
            }
        }
        println!("      removing {}", self.dir.path().display());
    }
}

impl Drop for Embedded {
    fn drop(&mut self) {
        self.stop();
        // `dir` is removed when the field drops, after this.
    }
}

/// Poll for the child's exit until `timeout`; `None` if it is still running.
fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if start.elapsed() < timeout => std::thread::sleep(POLL),
            _ => return None,
        }
    }
}

/// `leviathan` next to this executable, else in PATH.
fn find_leviathan() -> Result<PathBuf> {
    find_beside_or_in_path("leviathan").ok_or_else(|| {
        anyhow!(
            "no leviathan daemon answers and the leviathan binary is neither next to \
             {} nor in PATH: build it (`cargo build --release -p leviathan`) or start it yourself",
            this_program()
        )
    })
}

/// This executable's name, for messages.
fn this_program() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "this program".into())
}

/// The executable `name` next to this one (cargo builds every binary into
/// target/<profile>/), else the first in PATH.
pub fn find_beside_or_in_path(name: &str) -> Option<PathBuf> {
    let beside = std::env::current_exe()
        .ok()
        .map(|exe| exe.with_file_name(name));
    let in_path = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(name))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    beside.into_iter().chain(in_path).find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn online_cpus() -> libc::c_long {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }
}
