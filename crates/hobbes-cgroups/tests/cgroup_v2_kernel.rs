//! The cgroup v2 manager against the kernel's own cgroup2 filesystem, not a
//! fixture: membership, `cgroup.kill`, removal of a populated cgroup and of
//! a failed creation, and finding enclaves left by a killed daemon. Runs
//! under a test cgroup of its own in the unified mount and removes it, also
//! when it fails.
//!
//! Where the node binds cpuset and memory to cgroup v1 (as this one does),
//! those controllers cannot appear in the unified hierarchy; the parts that
//! need them (setup's partition, the enclave's cores and `memory.max`) are
//! then reported with one `SKIP` line and the rest still runs.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use hobbes_cgroups::v2::V2;
use hobbes_cgroups::CgroupManager;

const TEST: &str = "cgroup_v2_kernel";

/// The unified (cgroup2) mount point, from /proc/self/mountinfo.
fn unified_mount() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        Some(PathBuf::from(left.split_whitespace().nth(4)?))
    })
}

/// The test's cgroup and children: killed and removed on drop.
struct Cleanup {
    parent: PathBuf,
    children: Vec<Child>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        remove_tree(&self.parent);
    }
}

fn remove_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&e.path());
            }
        }
    }
    let _ = std::fs::write(dir.join("cgroup.kill"), "1");
    let _ = std::fs::remove_dir(dir);
}

fn sleeper() -> Child {
    Command::new("sleep")
        .arg("600")
        .spawn()
        .expect("spawn sleep")
}

#[test]
fn v2_manager_on_the_kernels_cgroup2() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("SKIP {TEST}: needs root (cgroupfs)");
        return;
    }
    let Some(mount) = unified_mount() else {
        println!("SKIP {TEST}: no cgroup2 filesystem mounted");
        return;
    };
    let parent = mount.join(format!("hobbes-v2-test-{}", std::process::id()));
    std::fs::create_dir(&parent).expect("make the test's cgroup");
    let mut guard = Cleanup {
        parent: parent.clone(),
        children: Vec::new(),
    };
    let controllers = std::fs::read_to_string(mount.join("cgroup.controllers")).unwrap();
    let has = |c: &str| controllers.split_whitespace().any(|x| x == c);
    let mgr = V2::new(parent.clone());
    let shared = mgr.enclave(7, true);

    if has("cpuset") && has("memory") {
        mgr.setup(&[0], &[0], "0", true).expect("setup");
        shared.create(&[0], "0", 64 << 20).expect("create");
        assert_eq!(shared.memory_limit(), Some(64 << 20));
        shared.remove().unwrap();
        mgr.teardown().unwrap();
    } else {
        println!(
            "SKIP {TEST} (cores and memory limits): cpuset and memory are bound to cgroup v1 on this node (unified controllers: {})",
            controllers.trim()
        );
        // Set-up and creation need them: each fails naming the file, and
        // the kernel's cgroups it had made are gone again.
        let e = mgr.setup(&[0, 1], &[0], "0", true).unwrap_err();
        assert!(e.to_string().contains("cpuset"), "{e}");
        assert!(!parent.join("hobbes").exists() && !parent.join("hobbes-shared").exists());
        std::fs::create_dir(parent.join("hobbes-shared")).unwrap();
        let e = shared.create(&[0], "0", 64 << 20).unwrap_err();
        assert!(e.to_string().contains("cpuset"), "{e}");
        assert!(!shared.exists(), "a failed create leaves nothing behind");
    }

    // What create makes, by hand: enclave-7 with control/ and apps/.
    let dir = shared.path().to_path_buf();
    for d in [
        dir.parent().unwrap(),
        &dir,
        &dir.join("control"),
        shared.app_cgroup(),
    ] {
        if !d.exists() {
            std::fs::create_dir(d).unwrap();
        }
    }
    let (control, app) = (sleeper(), sleeper());
    let (control_pid, app_pid) = (control.id(), app.id());
    guard.children.extend([control, app]);
    shared.add_control_pid(control_pid).unwrap();
    shared.add_pid(app_pid).unwrap();
    let mut procs = shared.procs();
    procs.sort_unstable();
    let mut want = vec![control_pid, app_pid];
    want.sort_unstable();
    assert_eq!(procs, want, "the enclave holds its control process and app");
    assert_eq!(
        shared.memory_procs(),
        vec![app_pid],
        "only apps are under the limit"
    );

    // A killed daemon's enclave is found again from the hierarchy.
    let found: Vec<_> = mgr
        .existing_enclaves()
        .into_iter()
        .map(|(id, shared, _)| (id, shared))
        .collect();
    assert_eq!(found, vec![(7, true)]);

    // The kernel refuses to remove a populated cgroup: nothing is lost.
    assert!(shared.remove().is_err());
    assert!(shared.exists());

    // cgroup.kill takes the whole subtree.
    shared.kill_all(Duration::from_secs(10)).unwrap();
    for c in &mut guard.children {
        let status = c.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL)
        );
    }
    guard.children.clear();
    assert!(shared.procs().is_empty());
    shared.remove().unwrap();
    assert!(!shared.exists());
    mgr.teardown().unwrap();
    assert!(!parent.join("hobbes-shared").exists());
    drop(guard);
    assert!(!parent.exists(), "the test's cgroup is gone");
}
