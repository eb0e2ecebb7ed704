//! Whole-address-space shares as UCX, Open MPI and MPICH use them
//! (`xpmem_make(NULL, XPMEM_MAXADDR_SIZE, ..)`, then attaches by owner
//! address): compiles `tests/c/xpmem_whole_test.c` against `include/xpmem.h`,
//! links it with the libxpmem.so built beside this test, and runs it against
//! a real leviathan. Each test has its own daemon; the C program waits for
//! every process it starts.

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
        support::cbuild::c_test_program("xpmem", "xpmem-compat", MANIFEST_DIR, "xpmem_whole_test.c")
    })
}

/// Run the C program in `mode` against `daemon`; it must succeed. Returns
/// its `key=value` lines.
fn run(daemon: &Daemon, mode: &str) -> String {
    let (bin, lib) = program();
    let mut cmd = Command::new(bin);
    cmd.arg(mode);
    daemon.configure(&mut cmd);
    // cargo puts target/<profile> on LD_LIBRARY_PATH, which beats the rpath.
    cmd.env("LD_LIBRARY_PATH", lib);
    let out = run_with_timeout(&mut cmd, Duration::from_secs(120));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "xpmem_whole_test {mode}: {}\nstdout:\n{text}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[test]
fn heap_stack_and_static_data_attach_by_address() {
    let Some(daemon) = Daemon::start("heap_stack_and_static_data_attach_by_address") else {
        return;
    };
    let out = run(&daemon, "regions");
    for region in ["stack", "brk_heap", "mmap_heap", "bss", "data"] {
        assert_eq!(
            get(&out, &format!("{region}_verified")),
            "1",
            "{region}:\n{out}"
        );
    }
    assert_eq!(get(&out, "stack_still_works"), "1");
}

#[test]
fn attachments_follow_owner_unmap_and_remap() {
    let Some(daemon) = Daemon::start("attachments_follow_owner_unmap_and_remap") else {
        return;
    };
    let out = run(&daemon, "remap");
    assert_eq!(get(&out, "before"), "1");
    // After munmap + mmap at the same address the attacher reads the new
    // memory, never the old pages, and its writes reach the owner.
    assert_eq!(get(&out, "follows_new_mapping"), "1", "{out}");
    assert_eq!(get(&out, "attacher_write_seen"), "1", "{out}");
    // Unmapped for good: the attacher faults instead of reading anything.
    assert_eq!(get(&out, "unmapped_faults"), "1", "{out}");
    assert_eq!(get(&out, "attacher_status"), "0");
}

#[test]
fn attachments_follow_owner_mremap() {
    let Some(daemon) = Daemon::start("attachments_follow_owner_mremap") else {
        return;
    };
    let out = run(&daemon, "mremap");
    assert_eq!(get(&out, "before"), "1");
    assert_eq!(get(&out, "owner_moved_contents"), "1", "{out}");
    // The new address reads the moved memory, the old one faults.
    assert_eq!(get(&out, "moved_contents"), "1", "{out}");
    assert_eq!(get(&out, "old_address_faults"), "1", "{out}");
    assert_eq!(get(&out, "attacher_write_at_new_address"), "1", "{out}");
    assert_eq!(get(&out, "attacher_status"), "0");
}

#[test]
fn concurrent_owner_writer_loses_no_write_during_conversion() {
    let Some(daemon) = Daemon::start("concurrent_owner_writer_loses_no_write_during_conversion")
    else {
        return;
    };
    for _ in 0..3 {
        let out = run(&daemon, "concurrent");
        assert_eq!(get(&out, "lost_writes"), "0", "{out}");
    }
}

#[test]
fn fork_in_the_owner_gives_the_child_a_copy() {
    let Some(daemon) = Daemon::start("fork_in_the_owner_gives_the_child_a_copy") else {
        return;
    };
    let out = run(&daemon, "fork");
    assert_eq!(get(&out, "child_saw"), "1", "{out}");
    assert_eq!(get(&out, "parent_has"), "2", "{out}");
    // The attacher after the fork reads the parent's current value.
    assert!(out.lines().any(|l| l == "attached_first_int=2"), "{out}");
}

#[test]
fn repeated_attach_of_a_range_hits_the_cache() {
    let Some(daemon) = Daemon::start("repeated_attach_of_a_range_hits_the_cache") else {
        return;
    };
    let out = run(&daemon, "cache");
    assert_eq!(get(&out, "live_reattach_same"), "1");
    assert_eq!(get(&out, "still_mapped"), "1");
    assert_eq!(get(&out, "reattach_after_detach_same"), "1");
    assert_eq!(get(&out, "other_range_differs"), "1");
}

#[test]
fn a_freed_and_reallocated_buffer_reads_new_through_a_cached_attachment() {
    let test = "a_freed_and_reallocated_buffer_reads_new_through_a_cached_attachment";
    let Some(daemon) = Daemon::start(test) else {
        return;
    };
    // UCX's case: the owner frees a 4 MiB buffer and allocates another (the
    // same address), tells the peer through shared memory (a pipe here),
    // and the peer reads through its cached attachment with no request to
    // the owner: malloc keeps the memory mapped, so it is the same pages.
    let out = run(&daemon, "realloc");
    assert_eq!(get(&out, "first"), "1", "{out}");
    assert_eq!(get(&out, "same_address"), "1", "{out}");
    assert_eq!(get(&out, "all_rounds_new"), "1", "{out}");
    assert_eq!(get(&out, "attacher_status"), "0", "{out}");
}

#[test]
fn modes_refuse_other_users() {
    let t = "modes_refuse_other_users";
    if !nix::unistd::geteuid().is_root() {
        support::daemon::skip(t, "needs root (the attacher switches to nobody)");
        return;
    }
    let Some(daemon) = Daemon::start(t) else {
        return;
    };
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(daemon.state_dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = run(&daemon, "perms");
    assert_eq!(
        get(&out, "private_get"),
        format!("-1 errno={}", libc::EACCES)
    );
    assert_eq!(
        get(&out, "readable_rdwr_get"),
        format!("-1 errno={}", libc::EACCES)
    );
    assert_eq!(get(&out, "readable_rdonly_value"), "31337");
}
