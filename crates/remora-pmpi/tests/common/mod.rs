//! Shared by the composition tests (compose.rs for MPICH, compose_ompi.rs
//! for Open MPI): bounded runs of compilers and MPI launchers in their own
//! process group, killed on timeout or panic.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

/// One compile or one MPI job; a hung job must not hang the test suite.
pub const TIMEOUT: Duration = Duration::from_secs(90);

/// Say why a test did nothing, past libtest's output capture (which only
/// takes print!/println!), so the SKIP shows in every run's log.
pub fn skip(line: &str) {
    let _ = writeln!(std::io::stdout(), "{line}");
}

/// One application of an MPMD job: process count, program, arguments, environment.
pub type AppRun<'a> = (usize, &'a Path, &'a [&'a str], Vec<(String, String)>);

/// What a finished child left.
pub struct Outcome {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Kills the child's whole process group (mpiexec.hydra, its proxies and
/// the MPI processes) unless disarmed: on timeout and on a panicking test.
struct KillGroup {
    pgid: i32,
    armed: bool,
}

impl Drop for KillGroup {
    fn drop(&mut self) {
        if self.armed {
            // SAFETY: kill(2) with a negative pid signals a process group we
            // created for this child (process_group(0)); no memory involved.
            unsafe {
                libc::kill(-self.pgid, libc::SIGKILL);
            }
        }
    }
}

/// Run `cmd` in its own process group with a bounded time, collecting output.
pub fn run(mut cmd: Command, what: &str) -> Outcome {
    use std::os::unix::process::CommandExt;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let mut guard = KillGroup {
        pgid: child.id() as i32,
        armed: true,
    };
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let err_reader = thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        let status = child.wait();
        let _ = tx.send((s, status));
    });
    let (stdout, status) = match rx.recv_timeout(TIMEOUT) {
        Ok(done) => done,
        Err(_) => panic!("{what} did not finish within {TIMEOUT:?} (killed)"),
    };
    guard.armed = false;
    let status = status.unwrap_or_else(|e| panic!("waiting for {what}: {e}"));
    Outcome {
        code: status.code(),
        stdout,
        stderr: err_reader.join().unwrap_or_default(),
    }
}

/// Output lines starting with `prefix`, sorted (ranks print in any order).
pub fn lines(out: &str, prefix: &str) -> Vec<String> {
    let mut v: Vec<String> = out
        .lines()
        .filter(|l| l.starts_with(prefix))
        .map(str::to_string)
        .collect();
    v.sort();
    v
}
