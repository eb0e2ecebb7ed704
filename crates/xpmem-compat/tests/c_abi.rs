//! libxpmem as XPMEM programs see it: compiles `tests/c/xpmem_test.c`
//! against `include/xpmem.h`, links it with the libxpmem.so built beside
//! this test, and runs it against a real leviathan.

#[path = "../../hobbes-xemem/tests/support/mod.rs"]
mod support;

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use support::cbuild::get;
use support::daemon::{run_with_timeout, Daemon};

const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");

fn program() -> &'static (PathBuf, PathBuf) {
    static PROGRAM: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    PROGRAM.get_or_init(|| {
        support::cbuild::c_test_program("xpmem", "xpmem-compat", MANIFEST_DIR, "xpmem_test.c")
    })
}

/// Run the C program; it must succeed. Returns its `key=value` lines.
fn run(daemon: Option<&Daemon>, args: &[&str]) -> String {
    let (bin, lib) = program();
    let mut cmd = Command::new(bin);
    cmd.args(args);
    for var in support::daemon::HOBBES_VARS {
        cmd.env_remove(var);
    }
    if let Some(d) = daemon {
        d.configure(&mut cmd);
    }
    // cargo puts target/<profile> on LD_LIBRARY_PATH, which beats the rpath:
    // an older libxpmem.so there must not be the one loaded.
    cmd.env("LD_LIBRARY_PATH", lib);
    let out = run_with_timeout(&mut cmd, Duration::from_secs(60));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "xpmem_test {args:?}: {}\nstdout:\n{text}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[test]
fn share_with_one_then_two_attachers() {
    let Some(daemon) = Daemon::start("share_with_one_then_two_attachers") else {
        return;
    };
    let out = run(Some(&daemon), &["share", "1"]);
    assert_eq!(get(&out, "share_verified"), "1");
    // Int 2 (offset 8) was 1002, incremented once.
    assert_eq!(get(&out, "view_at_8"), "1003");
    assert_eq!(
        get(&out, "get_removed"),
        format!("-1 errno={}", libc::ENOENT)
    );
    let out = run(Some(&daemon), &["share", "2"]);
    assert_eq!(get(&out, "share_verified"), "1");
}

#[test]
fn two_shares() {
    let Some(daemon) = Daemon::start("two_shares") else {
        return;
    };
    let out = run(Some(&daemon), &["two_shares"]);
    assert_eq!(get(&out, "first_verified"), "1");
    assert_eq!(get(&out, "second_verified"), "1");
}

#[test]
fn unsupported_and_invalid_calls() {
    // No daemon needed: these fail before any request.
    let out = run(None, &["errors"]);
    assert_eq!(get(&out, "version_positive"), "1");
    // Sharing the whole address space is supported; without a daemon it
    // cannot be registered.
    assert_eq!(
        get(&out, "whole_space"),
        format!("-1 errno={}", libc::ECONNREFUSED)
    );
    assert_eq!(
        get(&out, "misaligned"),
        format!("-1 errno={}", libc::EINVAL)
    );
    assert_eq!(
        get(&out, "unknown_attach"),
        format!("-1 errno={}", libc::ENOENT)
    );
    // Without a daemon, a get cannot reach the name server.
    assert_eq!(
        get(&out, "unknown_get"),
        format!("-1 errno={}", libc::ECONNREFUSED)
    );
}
