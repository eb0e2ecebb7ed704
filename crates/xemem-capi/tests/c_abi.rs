//! libxemem as C sees it: compiles `tests/c/xemem_test.c` against
//! `include/xemem.h`, links it with the libxemem.so built beside this test,
//! and runs it against a real leviathan.

#[path = "../../hobbes-xemem/tests/support/mod.rs"]
mod support;

use std::process::Command;
use std::time::Duration;

use support::cbuild::get;
use support::daemon::{run_with_timeout, Daemon};

const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");

#[test]
fn make_attach_signal_ack() {
    let Some(daemon) = Daemon::start("make_attach_signal_ack") else {
        return;
    };
    let (bin, lib) =
        support::cbuild::c_test_program("xemem", "xemem-capi", MANIFEST_DIR, "xemem_test.c");
    let mut cmd = Command::new(bin);
    cmd.args(["owner", "c-xemem"]);
    daemon.configure(&mut cmd);
    // cargo's LD_LIBRARY_PATH beats the rpath; load the library built here.
    cmd.env("LD_LIBRARY_PATH", &lib);
    let out = run_with_timeout(&mut cmd, Duration::from_secs(60));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "xemem_test: {}\nstdout:\n{text}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(get(&text, "lookup_matches"), "1");
    assert_eq!(get(&text, "listed"), "1 num_segments=1");
    assert_eq!(get(&text, "attacher_exit"), "0");
    assert_eq!(get(&text, "verified"), "1");
    assert_eq!(
        get(&text, "lookup_removed"),
        format!("-1 errno={}", libc::ENOENT)
    );
    assert_eq!(
        get(&text, "bad_flags"),
        format!("-1 errno={}", libc::EINVAL)
    );
}
