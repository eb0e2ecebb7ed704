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

/// hobbes alone in a directory (a hard link, else a copy).
fn lone_hobbes(dir: &Path) -> std::path::PathBuf {
    let exe = dir.join("hobbes");
    if std::fs::hard_link(env!("CARGO_BIN_EXE_hobbes"), &exe).is_err() {
        std::fs::copy(env!("CARGO_BIN_EXE_hobbes"), &exe).unwrap();
    }
    exe
}

/// Run it; again if an executable just written was busy (another test
/// thread forked while its file was open for writing).
fn output_of(cmd: &mut Command) -> Output {
    for _ in 0..50 {
        match cmd.output() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {}
            Ok(out) if !stderr(&out).contains("Text file busy") => return out,
            Ok(_) => {}
            Err(e) => panic!("{cmd:?}: {e}"),
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("{cmd:?}: text file busy")
}

#[test]
fn demo_insitu_runs_hobbes_insitu_beside_hobbes_with_the_flags_unchanged() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let exe = lone_hobbes(dir.path());
    // A stand-in for hobbes-insitu: shows what it got, exits 7.
    let fake = dir.path().join("hobbes-insitu");
    std::fs::write(
        &fake,
        "#!/bin/sh\nprintf '%s\\n' \"$@\"\necho \"as: $HOBBES_INSITU_DEMO_AS\"\nexit 7\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = output_of(
        Command::new(&exe)
            .args(["--socket", "/s.sock", "--json", "demo", "insitu"])
            .args(["--sizes", "8", "--modes", "xasm", "--help"])
            .env("PATH", "/usr/bin:/bin"),
    );
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "demo\n--socket\n/s.sock\n--json\n--sizes\n8\n--modes\nxasm\n--help\nas: hobbes demo insitu\n"
    );
}

#[test]
fn demo_insitu_without_hobbes_insitu_says_how_to_build_it() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let exe = lone_hobbes(dir.path());
    let out = output_of(
        Command::new(&exe)
            .args(["demo", "insitu", "--sizes", "8"])
            .env("PATH", dir.path().join("nowhere")),
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains("hobbes-insitu"), "{err}");
    assert!(err.contains("cargo build -p hobbes-workloads"), "{err}");
}
