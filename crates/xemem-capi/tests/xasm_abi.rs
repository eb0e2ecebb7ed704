//! XASM as C sees it: compiles `tests/c/xasm_test.c` against
//! `include/xasm.h` and `include/xemem.h`, links it with the libxemem.so
//! built beside this test, and runs the plain API and the paper's Figures 3
//! and 4 against a real leviathan.

#[path = "../../hobbes-xemem/tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::cbuild::get;
use support::daemon::{run_with_timeout, Daemon};

const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");

fn run(daemon: &Daemon, bin: &Path, lib: &Path, args: &[&str]) -> String {
    let mut cmd = Command::new(bin);
    cmd.args(args);
    daemon.configure(&mut cmd);
    cmd.env_remove("HOBBES_XASM_MECHANISM");
    // cargo's LD_LIBRARY_PATH beats the rpath; load the library built here.
    cmd.env("LD_LIBRARY_PATH", lib);
    let out = run_with_timeout(&mut cmd, Duration::from_secs(60));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "xasm_test {args:?}: {}\nstdout:\n{text}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[test]
fn xasm_from_c() {
    let Some(daemon) = Daemon::start("xasm_from_c") else {
        return;
    };
    let (bin, lib) =
        support::cbuild::c_test_program("xemem", "xemem-capi", MANIFEST_DIR, "xasm_test.c");
    let (einval, enoent, eexist) = (libc::EINVAL, libc::ENOENT, libc::EEXIST);

    let text = run(&daemon, &bin, &lib, &["plain", "c-plain"]);
    assert_eq!(get(&text, "null_name"), format!("-1 errno={einval}"));
    assert_eq!(get(&text, "bad_len"), format!("-1 errno={einval}"));
    assert_eq!(get(&text, "first_version"), "1");
    assert_eq!(get(&text, "latest"), "1");
    assert_eq!(get(&text, "contents"), "1");
    assert_eq!(
        get(&text, "timeout"),
        format!("-1 errno={}", libc::ETIMEDOUT)
    );
    assert_eq!(get(&text, "double_release"), format!("-1 errno={einval}"));
    // Concurrent snapshots of one region: each succeeded or was EBUSY, and
    // the successes are exactly the versions published.
    let concurrent = get(&text, "concurrent ok");
    assert!(concurrent.contains("other=0 latest_ok=1"), "{concurrent}");
    assert!(get(&text, "reclaim").parse::<i32>().unwrap() >= 0);
    assert_eq!(get(&text, "bad_handle"), format!("-1 errno={einval}"));
    assert_eq!(get(&text, "message"), "1");
    assert_eq!(get(&text, "gone"), format!("-1 errno={}", libc::EPIPE));
    assert_eq!(get(&text, "attach_gone"), format!("-1 errno={enoent}"));
    assert_eq!(get(&text, "registered"), "1");

    let text = run(&daemon, &bin, &lib, &["kitten", "c-kitten", "c-share"]);
    assert_eq!(get(&text, "huge_pages"), format!("-1 errno={einval}"));
    assert_eq!(get(&text, "make_before_copy"), format!("-1 errno={einval}"));
    assert_eq!(get(&text, "copy"), "1");
    assert_eq!(get(&text, "make_inside"), format!("-1 errno={einval}"));
    assert_eq!(get(&text, "copy_unknown"), format!("-1 errno={enoent}"));
    assert_eq!(get(&text, "fixed"), "0");
    assert_eq!(get(&text, "fixed_again"), format!("-1 errno={eexist}"));
    assert_eq!(get(&text, "rw_get"), format!("-1 errno={}", libc::EACCES));
    assert_eq!(get(&text, "figure4_ok"), "1");
    assert_eq!(get(&text, "consumer_exit"), "0");
    assert_eq!(get(&text, "pinned"), "1");
    assert_eq!(get(&text, "last_copy"), "6 released=1");
}
