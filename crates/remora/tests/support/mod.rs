//! What the Remora test files share: running `remora` against a test
//! daemon with a deadline, and reading the ranks' output lines.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::common::Daemon;

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
