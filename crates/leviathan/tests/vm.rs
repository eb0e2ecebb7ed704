//! VM enclaves against a real daemon, as root: a Linux guest under QEMU
//! (TCG here, KVM where the CPU virtualizes) booted from the node's image
//! (`scripts/vm-image.sh`), its guest agent running host programs; shares,
//! files, the console; a panicking guest kernel, a killed QEMU and a daemon
//! restart; specs that cannot work. Each test boots one or two guests (a few
//! seconds each under TCG), so each checks many things per boot.
//!
//! Without root, two cores, QEMU or the image, each test prints one
//! `SKIP <test>: <reason>` line.

mod common;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use common::*;
use hobbes_client::proto::model::{
    AppRecord, AppState, EnclaveKind, EnclaveRecord, EnclaveState, ExitStatus, Ownership,
};
use hobbes_client::proto::msg::EnclaveRef;
use hobbes_client::proto::spec::{CpuRequest, EnclaveSpec, MemRequest, VmAccel, VmShare, VmSpec};
use hobbes_client::{Client, EnclaveConn, NisReader};

/// How long one guest program may take before a test gives up on it.
const APP_TIMEOUT: Duration = Duration::from_secs(60);

/// The node's image, where the daemon looks for it.
fn image_dir() -> PathBuf {
    std::env::var_os("HOBBES_VM_IMAGE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/hobbes/vm-image"))
}

/// Root, two cores, QEMU and the image; else one SKIP line.
fn can_run(test: &str) -> bool {
    if !require_root(test) {
        return false;
    }
    if ncpus() < 2 {
        skip(
            test,
            "needs at least 2 cores (one for the host, one for the VM)",
        );
        return false;
    }
    if std::process::Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .map(|o| !o.status.success())
        .unwrap_or(true)
    {
        skip(test, "no qemu-system-x86_64 (scripts/deps.sh installs it)");
        return false;
    }
    if !image_dir().join("image.json").exists() {
        skip(
            test,
            &format!(
                "no VM image in {} (scripts/vm-image.sh)",
                image_dir().display()
            ),
        );
        return false;
    }
    true
}

fn vm_spec(name: &str, mib: u64, vm: Option<VmSpec>) -> EnclaveSpec {
    EnclaveSpec {
        name: name.into(),
        kind: EnclaveKind::Vm,
        shared: false,
        host_ipc: false,
        cpus: CpuRequest {
            count: 1,
            ..Default::default()
        },
        memory: MemRequest {
            size_mib: mib,
            ..Default::default()
        },
        vm,
    }
}

/// Run `argv` in `enclave` with streamed output, on a thread of its own so a
/// guest that never answers fails the test instead of hanging it.
fn run_vm(d: &Daemon, enclave: &str, argv: &[&str]) -> (AppRecord, String, String) {
    run_bounded(d, enclave, argv, APP_TIMEOUT)
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z"))
        .unwrap_or(false)
}

/// The QEMU (and virtiofsd) children of the enclave's monitor.
fn children_of(pid: u32) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // pid (comm) state ppid ...
        let Some(after) = stat.rsplit_once(") ").map(|(_, a)| a) else {
            continue;
        };
        let ppid: u32 = after
            .split(' ')
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        if ppid == pid {
            let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            out.push((child, comm.trim().to_string()));
        }
    }
    out
}

fn qemu_of(e: &EnclaveRecord) -> u32 {
    children_of(e.control_pid.unwrap())
        .into_iter()
        .find(|(_, comm)| comm.starts_with("qemu-system"))
        .map(|(pid, _)| pid)
        .expect("the monitor's QEMU")
}

/// Every core the enclave held is free again and its processes are gone.
fn reclaimed(c: &mut Client, e: &EnclaveRecord, processes: &[u32]) {
    wait_for("resources reclaimed", Duration::from_secs(10), || {
        c.list_cores()
            .unwrap()
            .iter()
            .all(|c| c.ownership != Ownership::Allocated(e.id))
            .then_some(())
    });
    for pid in processes {
        wait_for(
            &format!("process {pid} gone"),
            Duration::from_secs(10),
            || (!alive(*pid)).then_some(()),
        );
    }
}

/// The cores a process may run on.
fn cpus_of(pid: u32) -> String {
    status_field(
        &std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default(),
        "Cpus_allowed_list:",
    )
}

/// A directory every user may read, for shares.
fn share_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("hobbes-vm-share-")
        .tempdir()
        .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

#[test]
fn a_vm_enclave_runs_host_programs_shares_files_and_has_a_console() {
    let t = "a_vm_enclave_runs_host_programs_shares_files_and_has_a_console";
    if !can_run(t) {
        return;
    }
    let rw = share_dir();
    let ro = share_dir();
    std::fs::write(rw.path().join("from-host.txt"), "written on the host\n").unwrap();
    std::fs::write(ro.path().join("input.txt"), "read-only input\n").unwrap();
    let d = Daemon::start(&[]);
    let mut c = d.client();
    let e = c
        .create_enclave(vm_spec(
            "ana",
            512,
            Some(VmSpec {
                shares: vec![
                    VmShare {
                        path: rw.path().display().to_string(),
                        writable: true,
                    },
                    VmShare {
                        path: ro.path().display().to_string(),
                        writable: false,
                    },
                ],
                ..Default::default()
            }),
        ))
        .unwrap();
    assert_eq!(e.kind, EnclaveKind::Vm);
    assert_eq!(e.state, EnclaveState::Running);
    let vm = e.isolation.vm().expect("a VM's isolation record");
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap();
    let hardware = cpuinfo.contains(" vmx") || cpuinfo.contains(" svm");
    assert_eq!(vm.accelerator, if hardware { "kvm" } else { "tcg" });
    assert!(
        vm.exclusive_cores && vm.memory_limit && vm.host_files,
        "{vm:?}"
    );
    assert!(
        e.isolation
            .summary
            .contains(if hardware { "KVM" } else { "TCG" }),
        "{}",
        e.isolation.summary
    );

    // QEMU runs on the enclave's core only, and so does its vCPU thread.
    let qemu = qemu_of(&e);
    let core = e.cores[0].to_string();
    assert_eq!(cpus_of(qemu), core, "QEMU confined to the enclave's core");
    let monitor = e.control_pid.unwrap();
    assert_ne!(
        cpus_of(monitor),
        core,
        "the monitor stays on the host's cores"
    );

    // A dynamically linked host program runs in the guest (the host's /usr is
    // shared read-only) and sees the guest's kernel, not the host's.
    let (app, out, _) = run_vm(&d, "ana", &["/usr/bin/uname", "-r"]);
    assert_eq!(app.exit, Some(ExitStatus::Code(0)), "{app:?}");
    let image: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(image_dir().join("image.json")).unwrap())
            .unwrap();
    assert_eq!(out.trim(), image["kernel_release"].as_str().unwrap());
    assert_ne!(
        out.trim(),
        nix::sys::utsname::uname()
            .unwrap()
            .release()
            .to_str()
            .unwrap()
    );

    // Output on both streams, and the exit code.
    let (app, out, err) = run_vm(&d, "ana", &["sh", "-c", "echo out; echo err >&2; exit 7"]);
    assert_eq!(
        (app.exit, out.as_str(), err.as_str()),
        (Some(ExitStatus::Code(7)), "out\n", "err\n")
    );
    assert_eq!(app.state, AppState::Exited);

    // A crashing program.
    let (app, _, _) = run_vm(&d, "ana", &["sh", "-c", "kill -SEGV $$"]);
    assert_eq!(app.exit, Some(ExitStatus::Signal(libc::SIGSEGV)), "{app:?}");
    assert_eq!(app.state, AppState::Crashed);

    // A missing program fails with its reason.
    let err = c.launch(launch("ana", &["/no/such/program"])).unwrap_err();
    assert!(err.to_string().contains("/no/such/program"), "{err}");

    // Shares: at their host paths; the writable one both ways, the other read-only.
    let rw_path = rw.path().display().to_string();
    let ro_path = ro.path().display().to_string();
    let (app, out, _) = run_vm(
        &d,
        "ana",
        &[
            "sh",
            "-c",
            &format!(
                "cat {rw_path}/from-host.txt {ro_path}/input.txt && echo from-guest > {rw_path}/from-guest.txt && ! touch {ro_path}/nope 2>/dev/null"
            ),
        ],
    );
    assert_eq!(app.exit, Some(ExitStatus::Code(0)), "{app:?}");
    assert_eq!(out, "written on the host\nread-only input\n");
    assert_eq!(
        std::fs::read_to_string(rw.path().join("from-guest.txt")).unwrap(),
        "from-guest\n"
    );
    assert!(!ro.path().join("nope").exists());

    // kill-app reaches the guest program.
    let mut l = launch("ana", &["sleep", "600"]);
    l.stream = false;
    let sleeper = c.launch(l).unwrap();
    c.kill_app(sleeper.id, libc::SIGTERM).unwrap();
    let ended = wait_for("the sleeper to end", APP_TIMEOUT, || {
        c.app(sleeper.id).ok().filter(|a| a.state.is_final())
    });
    assert_eq!(ended.exit, Some(ExitStatus::Signal(libc::SIGTERM)));

    // Files in the guest's view, and a ping that reaches the guest agent.
    let mut conn = EnclaveConn::to_enclave(&e).unwrap();
    conn.ping().unwrap();
    conn.write_file("/tmp/note", b"in the guest", 0o644)
        .unwrap();
    assert_eq!(
        conn.read_file("/tmp/note", 1 << 20).unwrap(),
        b"in the guest"
    );
    let version = String::from_utf8(conn.read_file("/proc/version", 1 << 20).unwrap()).unwrap();
    assert!(
        version.contains(image["kernel_release"].as_str().unwrap()),
        "{version}"
    );
    assert!(conn.read_file("/no/such/file", 100).is_err());

    // The console: a shell in the guest, one client at a time.
    let mut console = EnclaveConn::to_enclave(&e).unwrap().console().unwrap();
    let busy = EnclaveConn::to_enclave(&e).unwrap().console();
    assert!(busy.is_err(), "a second console client is refused");
    console.write_all(b"\necho console-$((6*7))\n").unwrap();
    console
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&seen).contains("console-42") {
        let n = console.read(&mut buf).expect("console output");
        assert!(n > 0, "the console closed");
        seen.extend_from_slice(&buf[..n]);
    }
    drop(console);

    // Cores and memory are fixed while it runs.
    let e2 = c.revoke_cpus(EnclaveRef::Id(e.id), e.cores.clone());
    assert!(e2.is_err());

    let children: Vec<u32> = children_of(monitor).into_iter().map(|(p, _)| p).collect();
    c.destroy_enclave(EnclaveRef::Id(e.id)).unwrap();
    reclaimed(&mut c, &e, &children);
    assert!(!alive(monitor));
}

#[test]
fn a_panicking_guest_or_a_killed_qemu_crashes_the_enclave_and_frees_it() {
    let t = "a_panicking_guest_or_a_killed_qemu_crashes_the_enclave_and_frees_it";
    if !can_run(t) {
        return;
    }
    let d = Daemon::start(&[]);
    let mut c = d.client();
    let nis = NisReader::open(d.nis_dir()).unwrap();

    // The guest kernel panics (sysrq, as root in the guest).
    let e = c.create_enclave(vm_spec("doomed", 512, None)).unwrap();
    let monitor = e.control_pid.unwrap();
    let children: Vec<u32> = children_of(monitor).into_iter().map(|(p, _)| p).collect();
    let mut l = launch("doomed", &["sh", "-c", "echo c > /proc/sysrq-trigger"]);
    l.stream = false;
    let app = c.launch(l).unwrap();
    let rec = wait_for("enclave marked crashed", APP_TIMEOUT, || {
        nis.enclave(e.id)
            .unwrap()
            .filter(|r| r.state == EnclaveState::Crashed)
    });
    let reason = rec.crash_reason.unwrap_or_default();
    assert!(reason.contains("the guest kernel panicked"), "{reason}");
    reclaimed(&mut c, &e, &children);
    assert!(!alive(monitor));
    assert_eq!(c.app(app.id).unwrap().state, AppState::Lost);
    c.destroy_enclave(EnclaveRef::Id(e.id)).unwrap();

    // QEMU killed from outside.
    let e = c.create_enclave(vm_spec("shot", 512, None)).unwrap();
    let monitor = e.control_pid.unwrap();
    let qemu = qemu_of(&e);
    let children: Vec<u32> = children_of(monitor).into_iter().map(|(p, _)| p).collect();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(qemu as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let rec = wait_for("enclave marked crashed", APP_TIMEOUT, || {
        nis.enclave(e.id)
            .unwrap()
            .filter(|r| r.state == EnclaveState::Crashed)
    });
    let reason = rec.crash_reason.unwrap_or_default();
    assert!(reason.contains("QEMU was killed by SIGKILL"), "{reason}");
    reclaimed(&mut c, &e, &children);
    c.destroy_enclave(EnclaveRef::Id(e.id)).unwrap();
}

#[test]
fn a_daemon_restart_keeps_a_live_vm() {
    let t = "a_daemon_restart_keeps_a_live_vm";
    if !can_run(t) {
        return;
    }
    let mut d = Daemon::start(&[]);
    let mut c = d.client();
    let e = c.create_enclave(vm_spec("survivor", 512, None)).unwrap();
    let mut l = launch("survivor", &["sh", "-c", "sleep 2; echo late; exit 4"]);
    l.stream = false;
    let short = c.launch(l).unwrap();
    let qemu = qemu_of(&e);
    d.kill9();
    assert!(
        alive(e.control_pid.unwrap()) && alive(qemu),
        "the VM outlives the daemon"
    );
    d.spawn();
    let mut c = d.client();
    let nis = NisReader::open(d.nis_dir()).unwrap();
    wait_for("reattach", Duration::from_secs(20), || {
        nis.enclave(e.id)
            .unwrap()
            .filter(|r| r.state == EnclaveState::Running && r.control_pid == e.control_pid)
    });
    let short_rec = wait_for("the short app's end", APP_TIMEOUT, || {
        c.app(short.id).ok().filter(|a| a.state.is_final())
    });
    assert_eq!(short_rec.exit, Some(ExitStatus::Code(4)));
    let (app, out, _) = run_vm(&d, "survivor", &["echo", "still here"]);
    assert_eq!(
        (app.exit, out.as_str()),
        (Some(ExitStatus::Code(0)), "still here\n")
    );
    let children: Vec<u32> = children_of(e.control_pid.unwrap())
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    c.destroy_enclave(EnclaveRef::Id(e.id)).unwrap();
    reclaimed(&mut c, &e, &children);
}

#[test]
fn vm_specs_that_cannot_work_are_refused_and_change_nothing() {
    let t = "vm_specs_that_cannot_work_are_refused_and_change_nothing";
    if !can_run(t) {
        return;
    }
    let d = Daemon::start(&[]);
    let mut c = d.client();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap();
    let hardware = cpuinfo.contains(" vmx") || cpuinfo.contains(" svm");
    let mut cases: Vec<(EnclaveSpec, &str)> = vec![
        (
            vm_spec("small", 256, None),
            "a vm enclave needs at least 320 MiB",
        ),
        (
            vm_spec(
                "nokernel",
                512,
                Some(VmSpec {
                    kernel: Some("/nonexistent/vmlinuz".into()),
                    ..Default::default()
                }),
            ),
            "cannot use /nonexistent/vmlinuz as the guest's kernel",
        ),
        (
            vm_spec(
                "noshare",
                512,
                Some(VmSpec {
                    shares: vec![VmShare {
                        path: "/nonexistent/dir".into(),
                        writable: false,
                    }],
                    ..Default::default()
                }),
            ),
            "cannot share /nonexistent/dir",
        ),
    ];
    if !hardware {
        cases.push((
            vm_spec(
                "kvm",
                512,
                Some(VmSpec {
                    accel: VmAccel::Kvm,
                    ..Default::default()
                }),
            ),
            "this node cannot run VMs on KVM",
        ));
    }
    let owners = |c: &mut Client| -> Vec<Ownership> {
        c.list_cores()
            .unwrap()
            .into_iter()
            .map(|r| r.ownership)
            .collect()
    };
    let before = owners(&mut c);
    for (spec, want) in cases {
        let err = c.create_enclave(spec.clone()).unwrap_err().to_string();
        assert!(err.contains(want), "{}: {err}", spec.name);
        assert!(c
            .list_enclaves()
            .unwrap()
            .iter()
            .all(|e| e.name != spec.name));
        assert_eq!(owners(&mut c), before, "{} changed nothing", spec.name);
    }
    // `hobbes status` says how this node runs VMs.
    let header = NisReader::open(d.nis_dir()).unwrap().header().unwrap();
    let support = header.vm_support.unwrap_or_default();
    let want = if hardware {
        "on KVM"
    } else {
        "on TCG emulation"
    };
    assert!(
        support.starts_with(want) && support.contains("image "),
        "{support}"
    );
    // An unknown accelerator is refused before any daemon sees it.
    let xml =
        "<vm name=\"x\"><cpus><cores>1</cores></cpus><memory size=\"512\"/><accel>xen</accel></vm>";
    let err = EnclaveSpec::from_xml(xml).unwrap_err().to_string();
    assert!(err.contains("unknown accelerator \"xen\""), "{err}");
}
