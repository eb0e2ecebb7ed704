//! What the Remora test files share: running `remora` against a test
//! daemon with a deadline, and reading the ranks' output lines.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::common::{ncpus, require_root, skip, spec, Daemon};

#[path = "mpi_build.rs"]
mod mpi_build;
pub use mpi_build::build_mpi_programs;

/// The `remora` binary under test.
pub const REMORA: &str = env!("CARGO_BIN_EXE_remora");

/// Run `remora args` against `d` with `env` added; killed (and the test
/// failed) after `limit`.
pub fn remora_with(d: &Daemon, args: &[&str], env: &[(&str, &Path)], limit: Duration) -> Output {
    let child = Command::new(REMORA)
        .arg("--socket")
        .arg(d.socket())
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, *v)))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = std::thread::spawn(move || child.wait_with_output().unwrap());
    let deadline = std::time::Instant::now() + limit;
    while !out.is_finished() {
        if std::time::Instant::now() > deadline {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            panic!("remora {args:?} ran past {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    out.join().unwrap()
}

/// The lines of `out`'s stdout that hold `word`.
pub fn lines_of(out: &Output, word: &str) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(word))
        .map(str::to_string)
        .collect()
}

/// `key=value` in a line (-999 when absent).
pub fn field(line: &str, key: &str) -> i64 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or(-999)
}

/// Root, two cores and the test's programs (`programs`, which prints its own
/// SKIP line when it cannot build them); then a daemon with the enclaves the
/// tests use: `sim` (exclusive) and `ana` (shared), one core each.
pub fn setup_with<P>(test: &str, programs: impl FnOnce(&str) -> Option<P>) -> Option<(Daemon, P)> {
    if !require_root(test) {
        return None;
    }
    if ncpus() < 2 {
        skip(test, "needs 2 cores");
        return None;
    }
    let progs = programs(test)?;
    let d = Daemon::start(&[]);
    let mut c = d.client();
    c.create_enclave(spec("sim", 1, 1024, false)).unwrap();
    c.create_enclave(spec("ana", 1, 1024, true)).unwrap();
    Some((d, progs))
}
