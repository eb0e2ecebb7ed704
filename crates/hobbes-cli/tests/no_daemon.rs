//! The binary's behaviour when no daemon is needed or none runs: errors are
//! one `error: ...` line on stderr and exit status 1.

use std::path::Path;
use std::process::{Command, Output};

fn hobbes(socket: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hobbes"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .env_remove("HOBBES_SOCKET")
        .output()
        .expect("run hobbes")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn status_without_daemon_exits_1_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let out = hobbes(&dir.path().join("leviathan.sock"), &["status"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.starts_with("error: cannot connect to leviathan"),
        "{err}"
    );
    assert!(err.contains("is leviathan running?"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn malformed_xml_names_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.xml");
    std::fs::write(
        &file,
        "<native name=\"a\">\n  <cpus>\n    <cores>x</cores>\n  </cpus>\n</native>\n",
    )
    .unwrap();
    // Checked before connecting: no daemon needed to find the mistake.
    let out = hobbes(
        &dir.path().join("leviathan.sock"),
        &["create-enclave", file.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.starts_with(&format!("error: {}: line 3: ", file.display())),
        "{err}"
    );

    std::fs::write(&file, "<native name=\"a\">\n<cpus>\n</native>\n").unwrap();
    let out = hobbes(
        &dir.path().join("leviathan.sock"),
        &["create_enclave", file.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(": line 3: malformed XML"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn incomplete_flags_are_refused_before_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("leviathan.sock");
    let out = hobbes(&sock, &["create-enclave", "--name", "a", "--cores", "1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("give --memory"), "{}", stderr(&out));
    let out = hobbes(&sock, &["create-enclave", "--cores", "1"]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn usage_errors_exit_1_and_help_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("leviathan.sock");
    let out = hobbes(&sock, &["no-such-command"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).starts_with("error:"), "{}", stderr(&out));
    let out = hobbes(&sock, &["--help"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("create-enclave"));
}
