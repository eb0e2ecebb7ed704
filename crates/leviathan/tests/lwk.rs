//! LWK enclaves against a real daemon, as root, on /dev/kvm: lifecycle and
//! isolation, spec refusals, static C programs (output, exit codes, bad
//! binaries, signals, faults, forwarded file I/O in the enclave's view),
//! `kill -9` of the monitor and of the daemon. See tests/common for the
//! harness. Without /dev/kvm each test prints `SKIP <test>: no /dev/kvm`.
//!
//! The C programs are compiled here with `cc -static` into a temporary
//! directory; without a static C library the tests that need one print a
//! SKIP line naming it.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use hobbes_client::proto::model::{
    AppRecord, AppState, EnclaveKind, EnclaveRecord, EnclaveState, ExitStatus, Ownership,
};
use hobbes_client::proto::msg::{EnclaveRef, ErrorCode, Stream};
use hobbes_client::proto::spec::{CpuRequest, EnclaveSpec, MemRequest};
use hobbes_client::{Client, EnclaveConn, NisReader};

/// How long one guest program may take here before a test gives up on it
/// (a hang must fail the test, not the whole run).
const APP_TIMEOUT: Duration = Duration::from_secs(60);

/// Root, two cores (one for the host, one for the enclave) and /dev/kvm;
/// else one SKIP line.
fn can_run(test: &str) -> bool {
    if !require_root(test) {
        return false;
    }
    if ncpus() < 2 {
        skip(
            test,
            "needs at least 2 cores (one for the host, one for the enclave)",
        );
        return false;
    }
    if !Path::new("/dev/kvm").exists() {
        skip(test, "no /dev/kvm");
        return false;
    }
    true
}

fn lwk_spec(name: &str, cores: u32, mib: u64) -> EnclaveSpec {
    EnclaveSpec {
        name: name.into(),
        kind: EnclaveKind::Lwk,
        shared: false,
        host_ipc: false,
        cpus: CpuRequest {
            count: cores,
            ..Default::default()
        },
        memory: MemRequest {
            size_mib: mib,
            ..Default::default()
        },
        vm: None,
    }
}

/// C programs compiled for a test, in a directory every user may read.
struct Programs {
    dir: tempfile::TempDir,
}

impl Programs {
    fn new() -> Programs {
        let dir = tempfile::Builder::new()
            .prefix("hobbes-lwk-test-")
            .tempdir()
            .expect("tempdir");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        Programs { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Compile `src` as `name` (`flags` such as `-static`); `None` after a
    /// SKIP line when the compiler cannot.
    fn cc(&self, test: &str, name: &str, src: &str, flags: &[&str]) -> Option<String> {
        let c = self.path(&format!("{name}.c"));
        std::fs::write(&c, src).unwrap();
        let out = Command::new("cc")
            .args(flags)
            .arg("-O1")
            .arg("-o")
            .arg(self.path(name))
            .arg(&c)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(self.path(name).display().to_string()),
            Ok(o) => {
                skip(
                    test,
                    &format!(
                        "cc {} cannot build a C program here: {}",
                        flags.join(" "),
                        String::from_utf8_lossy(&o.stderr).trim()
                    ),
                );
                None
            }
            Err(e) => {
                skip(test, &format!("no C compiler (cc): {e}"));
                None
            }
        }
    }

    /// A static C program.
    fn static_c(&self, test: &str, name: &str, src: &str) -> Option<String> {
        self.cc(test, name, src, &["-static"])
    }
}

const HELLO: &str = r#"
#include <stdio.h>
#include <unistd.h>
int main(int argc, char **argv) {
    printf("hello from the LWK, argv[1]=%s\n", argc > 1 ? argv[1] : "-");
    fflush(stdout);
    fprintf(stderr, "and to stderr\n");
    return 3;
}
"#;

/// Runs until a signal ends it: a pure compute loop (no system call ever
/// leaves the guest), after one line of output.
const SPIN: &str = r#"
#include <stdio.h>
int main(void) {
    volatile unsigned long n = 0;
    printf("spinning\n");
    fflush(stdout);
    for (;;) n++;
}
"#;

/// Blocks in a forwarded call until a signal ends it.
const SLEEPER: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
int main(int argc, char **argv) {
    int secs = argc > 1 ? atoi(argv[1]) : 60;
    int code = argc > 2 ? atoi(argv[2]) : 0;
    printf("sleeping %d\n", secs);
    fflush(stdout);
    sleep(secs);
    return code;
}
"#;

const CRASH: &str = r#"
#include <stdio.h>
int main(void) {
    volatile int *p = 0;
    printf("about to crash\n");
    fflush(stdout);
    return *p;
}
"#;

/// Copies its input to its output through forwarded file calls, and prints
/// the inode its NIS path has in its view.
const FILES: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
int main(int argc, char **argv) {
    char buf[256] = {0};
    FILE *in = fopen(argv[1], "r");
    if (!in) { perror(argv[1]); return 1; }
    size_t n = fread(buf, 1, sizeof buf - 1, in);
    fclose(in);
    FILE *out = fopen(argv[2], "w");
    if (!out) { perror(argv[2]); return 2; }
    fprintf(out, "copied: %.*s", (int)n, buf);
    fclose(out);
    struct stat st;
    char path[4096];
    snprintf(path, sizeof path, "%s/data.mdb", getenv("HOBBES_NIS"));
    if (stat(path, &st) != 0) { perror(path); return 3; }
    printf("nis inode %lu\n", (unsigned long)st.st_ino);
    return 0;
}
"#;

/// Launch `argv` in `enclave` with its output streamed, on a thread of its
/// own so a guest that never ends fails the test after `APP_TIMEOUT`
/// instead of hanging it: (final record, stdout, stderr).
fn run_lwk(d: &Daemon, enclave: &str, argv: &[&str]) -> (AppRecord, String, String) {
    run_bounded(d, enclave, argv, APP_TIMEOUT)
}

/// Launch `argv` without streaming; returns the running record.
fn start_lwk(c: &mut Client, enclave: &str, argv: &[&str]) -> AppRecord {
    let mut l = launch(enclave, argv);
    l.stream = false;
    c.launch(l).expect("launch")
}

/// Poll app `id` until it has ended (at most `APP_TIMEOUT`).
fn ended(c: &mut Client, id: u64) -> AppRecord {
    wait_for(&format!("app {id} to end"), APP_TIMEOUT, || {
        c.app(id).ok().filter(|a| a.state.is_final())
    })
}

/// Poll until app `id`'s stdout log has `text` (it runs and got that far).
fn wait_output(c: &mut Client, id: u64, text: &str) {
    let rec = c.app(id).unwrap();
    wait_for(&format!("app {id} to print {text:?}"), APP_TIMEOUT, || {
        std::fs::read_to_string(&rec.stdout_log)
            .ok()
            .filter(|s| s.contains(text))
    });
}

/// An LWK enclave's cgroups on a cgroup v1 node: (cpuset, memory), from the
/// daemon's own (its cpuset is `<base>/hobbes/host`, its memory cgroup the base).
fn v1_cgroups(d: &Daemon, id: u64) -> Option<(PathBuf, PathBuf)> {
    let own = std::fs::read_to_string(format!("/proc/{}/cgroup", d.pid())).ok()?;
    let path_of = |ctrl: &str| {
        own.lines().find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
            ctrls
                .split(',')
                .any(|c| c == ctrl)
                .then(|| path.to_string())
        })
    };
    let cpuset = path_of("cpuset")?;
    let cpuset_base = cpuset
        .trim_end_matches("/hobbes/host")
        .trim_end_matches('/');
    let memory = path_of("memory")?;
    let memory = memory.trim_end_matches('/');
    Some((
        PathBuf::from(format!(
            "/sys/fs/cgroup/cpuset{cpuset_base}/hobbes/lwk-{id}"
        )),
        PathBuf::from(format!("/sys/fs/cgroup/memory{memory}/hobbes/lwk-{id}")),
    ))
}

fn read_trim(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z"))
        .unwrap_or(false)
}

/// The cores a thread may run on.
fn cpus_of(pid: u32, tid: u32) -> String {
    status_field(
        &std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).unwrap_or_default(),
        "Cpus_allowed_list:",
    )
}

/// The threads of `pid`: (tid, name).
fn threads_of(pid: u32) -> Vec<(u32, String)> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.flatten()
                .filter_map(|t| {
                    let tid: u32 = t.file_name().to_str()?.parse().ok()?;
                    let comm = std::fs::read_to_string(t.path().join("comm")).ok()?;
                    Some((tid, comm.trim().to_string()))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// While an app computes: its vCPU thread is on the enclave's core and in
/// the LWK's cpuset; the proxy and every other monitor thread on the host's.
fn assert_vcpu_threads_alone_on_the_enclave_cores(d: &Daemon, e: &EnclaveRecord) {
    let monitor = e.control_pid.unwrap();
    let core = e.cores[0].to_string();
    let threads = threads_of(monitor);
    // vCPU threads are workers named by their vCPU, reused across apps
    // (idle ones wait on the enclave's core too); one runs the app.
    let vcpu_prefix = "lwk-vcpu-";
    let vcpus: Vec<u32> = threads
        .iter()
        .filter(|(_, n)| n.starts_with(vcpu_prefix))
        .map(|(t, _)| *t)
        .collect();
    assert!(!vcpus.is_empty(), "no vCPU thread among {threads:?}");
    for (tid, name) in &threads {
        let cpus = cpus_of(monitor, *tid);
        // KVM's own worker for the VM (NX huge page recovery, made by the
        // first KVM_RUN, so born in the vCPU's cpuset) wakes rarely; it
        // counts as a vCPU thread here.
        if vcpus.contains(tid) || name == "vcpu-launcher" || name.starts_with("kvm-") {
            assert_eq!(cpus, core, "{name} ({tid}) on the enclave's core");
        } else {
            assert_ne!(cpus, core, "{name} ({tid}) is kept off the enclave's core");
        }
    }
    if let Some(proxy) = threads.iter().find(|(_, n)| n == "lwk-proxy") {
        assert_eq!(
            cpus_of(monitor, proxy.0),
            "0",
            "the proxy polls on the host's core"
        );
    }
    if let Some((cpuset, _)) = v1_cgroups(d, e.id) {
        let tasks = read_trim(&cpuset.join("tasks"));
        for tid in &vcpus {
            assert!(
                tasks.lines().any(|l| l == tid.to_string()),
                "vCPU thread {tid} in {}",
                cpuset.display()
            );
        }
    }
}

/// Every enclave of kind lwk is gone from the node: no `lwk-*` cgroup left.
fn no_lwk_cgroups_left(d: &Daemon, id: u64) {
    if let Some((cpuset, memory)) = v1_cgroups(d, id) {
        assert!(!cpuset.exists(), "{} left behind", cpuset.display());
        assert!(!memory.exists(), "{} left behind", memory.display());
    }
}

#[test]
fn lwk_enclave_is_created_isolated_listed_and_destroyed() {
    let t = "lwk_enclave_is_created_isolated_listed_and_destroyed";
    if !can_run(t) {
        return;
    }
    let d = Daemon::start(&[]);
    let mut c = d.client();
    let before = c.status().unwrap();
    let e: EnclaveRecord = c.create_enclave(lwk_spec("sim", 1, 1024)).unwrap();
    assert_eq!((e.kind, e.state), (EnclaveKind::Lwk, EnclaveState::Running));
    assert_eq!(e.cores.len(), 1);
    assert_eq!(e.mem_bytes, 1024 << 20);
    let lwk = e.isolation.lwk().expect("an lwk isolation record");
    assert!(
        lwk.exclusive_cores && lwk.cpuset && lwk.memory_limit && lwk.mount_namespace,
        "{lwk:?}"
    );
    assert!(e.isolation.exclusive_cores() && e.isolation.confined());
    let during = c.status().unwrap();
    assert_eq!(during.cores_free, before.cores_free - 1);
    assert!(c
        .list_enclaves()
        .unwrap()
        .iter()
        .any(|r| r.id == e.id && r.kind == EnclaveKind::Lwk));
    let monitor = e.control_pid.expect("monitor pid");
    assert!(alive(monitor));

    // Its own mount namespace; its endpoint answers pings and file access.
    let ns = |pid: u32| std::fs::read_link(format!("/proc/{pid}/ns/mnt")).unwrap();
    assert_ne!(ns(monitor), ns(std::process::id()));
    c.ping_via_daemon(EnclaveRef::Id(e.id)).unwrap();
    let mut conn = EnclaveConn::to_enclave(&e).unwrap();
    assert_eq!(conn.ping().unwrap().0, e.id);
    let probe = format!("{}/lwk-probe", d.state_dir().display());
    conn.write_file(&probe, b"through the monitor", 0o644)
        .unwrap();
    assert_eq!(
        conn.read_file(&probe, 1 << 20).unwrap(),
        b"through the monitor"
    );

    // cgroup v1: only the vCPU launcher thread is on the enclave's core;
    // the monitor's other threads stay on the host's.
    let core = e.cores[0].to_string();
    if let Some((cpuset, memory)) = v1_cgroups(&d, e.id) {
        assert_eq!(read_trim(&cpuset.join("cpuset.cpus")), core);
        assert_eq!(read_trim(&cpuset.join("cpuset.cpu_exclusive")), "1");
        let tasks: Vec<u32> = read_trim(&cpuset.join("tasks"))
            .lines()
            .filter_map(|l| l.parse().ok())
            .collect();
        assert!(
            !tasks.is_empty(),
            "a launcher thread sits in {}",
            cpuset.display()
        );
        for tid in &tasks {
            assert!(
                Path::new(&format!("/proc/{monitor}/task/{tid}")).exists(),
                "task {tid} in the LWK's cpuset is a monitor thread"
            );
            assert_eq!(cpus_of(monitor, *tid), core);
        }
        assert_eq!(
            cpus_of(monitor, monitor),
            "0",
            "the monitor's main thread on the host's core"
        );
        // Guest RAM (the enclave's memory less 32 MiB) is charged to the
        // enclave's limit, though the monitor itself left it.
        assert_eq!(
            read_trim(&memory.join("memory.limit_in_bytes")),
            (1024u64 << 20).to_string()
        );
        let usage: u64 = read_trim(&memory.join("memory.usage_in_bytes"))
            .parse()
            .unwrap();
        assert!(
            usage >= 900 << 20,
            "guest RAM charged to the enclave: {usage}"
        );
        assert!(read_trim(&memory.join("cgroup.procs")).is_empty());
    }

    // Its cores and memory are fixed while it runs: refused, nothing changes
    // (cores only where a free one is left to ask for).
    if c.status().unwrap().cores_free > 0 {
        let err = c
            .assign_cpus(
                EnclaveRef::Id(e.id),
                CpuRequest {
                    count: 1,
                    ..Default::default()
                },
            )
            .unwrap_err();
        assert!(
            err.to_string().contains("cores are fixed while it runs"),
            "{err}"
        );
    }
    let err = c
        .assign_memory(
            EnclaveRef::Id(e.id),
            MemRequest {
                size_mib: 128,
                ..Default::default()
            },
        )
        .unwrap_err();
    assert!(
        err.to_string().contains("memory is fixed while it runs"),
        "{err}"
    );
    let same = c.enclave(EnclaveRef::Id(e.id)).unwrap();
    assert_eq!((same.cores, same.mem_bytes), (e.cores.clone(), e.mem_bytes));

    c.destroy_enclave(EnclaveRef::Name("sim".into())).unwrap();
    let after = c.status().unwrap();
    assert_eq!(
        (after.cores_free, after.mem_free),
        (before.cores_free, before.mem_free)
    );
    assert!(!alive(monitor), "the monitor is gone with its enclave");
    no_lwk_cgroups_left(&d, e.id);
    assert_eq!(
        c.enclave(EnclaveRef::Id(e.id)).unwrap_err().code(),
        Some(ErrorCode::NotFound)
    );
}

#[test]
fn lwk_specs_that_make_no_sense_are_refused() {
    let t = "lwk_specs_that_make_no_sense_are_refused";
    // The refusals need no KVM: only a daemon.
    if !require_root(t) {
        return;
    }
    for xml in [
        r#"<lwk name="s" shared="true"><cpus><cores>1</cores></cpus><memory size="512"/></lwk>"#,
        r#"<lwk name="s" ipc="host"><cpus><cores>1</cores></cpus><memory size="512"/></lwk>"#,
    ] {
        let err = EnclaveSpec::from_xml(xml).unwrap_err();
        assert!(err.message.contains("lwk enclave"), "{err}");
    }
    let d = Daemon::start(&[]);
    let mut c = d.client();
    let before = c.status().unwrap();
    let mut shared = lwk_spec("shared-lwk", 1, 512);
    shared.shared = true;
    let err = c.create_enclave(shared).unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidSpec), "{err}");
    assert!(
        err.to_string().contains("an lwk enclave cannot be shared"),
        "{err}"
    );
    let mut ipc = lwk_spec("ipc-lwk", 1, 512);
    ipc.host_ipc = true;
    let err = c.create_enclave(ipc).unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidSpec), "{err}");
    let after = c.status().unwrap();
    assert_eq!(
        (after.cores_free, after.mem_free, after.enclaves.len()),
        (before.cores_free, before.mem_free, before.enclaves.len()),
        "a refused spec changes nothing"
    );
}

#[test]
fn static_hello_streams_its_output_and_exit_code() {
    let t = "static_hello_streams_its_output_and_exit_code";
    if !can_run(t) {
        return;
    }
    let progs = Programs::new();
    let Some(hello) = progs.static_c(t, "hello", HELLO) else {
        return;
    };
    let d = Daemon::start(&[]);
    let mut c = d.client();
    c.create_enclave(lwk_spec("sim", 1, 512)).unwrap();
    let (rec, out, err) = run_lwk(&d, "sim", &[&hello, "first"]);
    assert_eq!(out, "hello from the LWK, argv[1]=first\n");
    assert_eq!(err, "and to stderr\n");
    assert_eq!(rec.exit, Some(ExitStatus::Code(3)), "{rec:?}");
    assert_eq!(rec.state, AppState::Exited);
    // The record sums up the program's system calls.
    let detail = rec.detail.clone().unwrap_or_default();
    assert!(
        detail.contains("forwarded: ") && detail.contains("write"),
        "{detail}"
    );
    // The logs have everything too, and list-apps shows the record.
    assert_eq!(
        std::fs::read_to_string(&rec.stdout_log).unwrap(),
        "hello from the LWK, argv[1]=first\n"
    );
    assert_eq!(
        std::fs::read_to_string(&rec.stderr_log).unwrap(),
        "and to stderr\n"
    );
    let listed = c.list_apps(Some(EnclaveRef::Name("sim".into()))).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].detail, rec.detail);
    // Found through PATH, as a native launch is.
    let mut l = launch("sim", &["hello", "second"]);
    l.env = vec![("PATH".into(), progs.dir.path().display().to_string())];
    let mut out = Vec::new();
    let rec = c
        .launch_streaming(
            l,
            |_| {},
            |s, data| {
                if s == Stream::Stdout {
                    out.extend_from_slice(data)
                }
            },
        )
        .unwrap();
    assert_eq!(rec.exit, Some(ExitStatus::Code(3)));
    assert_eq!(
        String::from_utf8_lossy(&out),
        "hello from the LWK, argv[1]=second\n"
    );
}

#[test]
fn bad_binaries_are_refused_with_their_reason() {
    let t = "bad_binaries_are_refused_with_their_reason";
    if !can_run(t) {
        return;
    }
    let progs = Programs::new();
    let Some(hello) = progs.static_c(t, "hello", HELLO) else {
        return;
    };
    let Some(dynamic) = progs.cc(t, "dynamic", HELLO, &[]) else {
        return;
    };
    let text = progs.path("notes.txt");
    std::fs::write(&text, "not a program\n").unwrap();
    let script = progs.path("script.sh");
    std::fs::write(&script, "#!/bin/sh\necho hi\n").unwrap();
    let truncated = progs.path("truncated");
    let bytes = std::fs::read(&hello).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len().min(200)]).unwrap();
    use std::os::unix::fs::PermissionsExt;
    for p in [&text, &script, &truncated] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let d = Daemon::start(&[]);
    let mut c = d.client();
    c.create_enclave(lwk_spec("sim", 1, 512)).unwrap();
    let cases: [(&str, &str); 5] = [
        (&dynamic, "dynamic"),
        (text.to_str().unwrap(), "elf"),
        (script.to_str().unwrap(), "elf"),
        (truncated.to_str().unwrap(), "truncated"),
        ("/nonexistent/solver", "no such file"),
    ];
    for (program, reason) in cases {
        let err = c
            .launch({
                let mut l = launch("sim", &[program]);
                l.stream = false;
                l
            })
            .unwrap_err();
        let msg = err.to_string();
        assert_eq!(err.code(), Some(ErrorCode::InvalidSpec), "{program}: {msg}");
        assert!(
            msg.contains(program),
            "the refusal names the program: {msg}"
        );
        assert!(
            msg.to_lowercase().contains(reason),
            "the refusal of {program} says {reason:?}: {msg}"
        );
    }
    // Each is recorded as failed, with the reason.
    let apps = c.list_apps(None).unwrap();
    assert_eq!(apps.len(), cases.len());
    assert!(apps
        .iter()
        .all(|a| a.state == AppState::Failed && a.detail.is_some()));
    // The enclave is unharmed.
    let (rec, out, _) = run_lwk(&d, "sim", &[&hello]);
    assert_eq!(
        (rec.exit, out.lines().count()),
        (Some(ExitStatus::Code(3)), 1)
    );
}

#[test]
fn kill_app_ends_a_computing_and_a_blocked_lwk_app() {
    let t = "kill_app_ends_a_computing_and_a_blocked_lwk_app";
    if !can_run(t) {
        return;
    }
    let progs = Programs::new();
    let (Some(spin), Some(sleeper)) = (
        progs.static_c(t, "spin", SPIN),
        progs.static_c(t, "sleeper", SLEEPER),
    ) else {
        return;
    };
    let d = Daemon::start(&[]);
    let mut c = d.client();
    let e = c.create_enclave(lwk_spec("sim", 1, 512)).unwrap();
    // Computing: the signal must stop its vCPU.
    let app = start_lwk(&mut c, "sim", &[&spin]);
    assert_eq!(app.state, AppState::Running);
    wait_output(&mut c, app.id, "spinning");
    assert_vcpu_threads_alone_on_the_enclave_cores(&d, &e);
    c.kill_app(app.id, libc::SIGTERM).unwrap();
    let rec = ended(&mut c, app.id);
    assert_eq!(rec.exit, Some(ExitStatus::Signal(libc::SIGTERM)), "{rec:?}");
    assert_eq!(rec.state, AppState::Crashed);
    // Blocked in a forwarded sleep: the signal must end the call.
    let app = start_lwk(&mut c, "sim", &[&sleeper, "60"]);
    wait_output(&mut c, app.id, "sleeping");
    let at = Instant::now();
    c.kill_app(app.id, libc::SIGKILL).unwrap();
    let rec = ended(&mut c, app.id);
    assert_eq!(rec.exit, Some(ExitStatus::Signal(libc::SIGKILL)), "{rec:?}");
    assert!(at.elapsed() < Duration::from_secs(10), "{:?}", at.elapsed());
    // An ended app cannot be signalled.
    let err = c.kill_app(app.id, libc::SIGTERM).unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Conflict), "{err}");
}

#[test]
fn a_crashing_program_exits_139_and_its_record_names_the_fault() {
    let t = "a_crashing_program_exits_139_and_its_record_names_the_fault";
    if !can_run(t) {
        return;
    }
    let progs = Programs::new();
    let Some(crash) = progs.static_c(t, "crash", CRASH) else {
        return;
    };
    let d = Daemon::start(&[]);
    let mut c = d.client();
    c.create_enclave(lwk_spec("sim", 1, 512)).unwrap();
    let (rec, out, _) = run_lwk(&d, "sim", &[&crash]);
    assert_eq!(out, "about to crash\n", "output before the crash arrives");
    assert_eq!(rec.exit, Some(ExitStatus::Signal(libc::SIGSEGV)), "{rec:?}");
    assert_eq!(rec.exit.unwrap().shell_code(), 139);
    assert_eq!(rec.state, AppState::Crashed);
    let detail = rec.detail.unwrap_or_default();
    assert!(
        detail.contains("page fault (vector 14)") && detail.contains("accessing 0x0"),
        "{detail}"
    );
    // The enclave survives its app's crash.
    assert_eq!(
        c.enclave(EnclaveRef::Name("sim".into())).unwrap().state,
        EnclaveState::Running
    );
}

#[test]
fn forwarded_file_calls_see_the_enclaves_view() {
    let t = "forwarded_file_calls_see_the_enclaves_view";
    if !can_run(t) {
        return;
    }
    let progs = Programs::new();
    let Some(files) = progs.static_c(t, "files", FILES) else {
        return;
    };
    let input = progs.path("input.txt");
    let output = progs.path("output.txt");
    std::fs::write(&input, "the input").unwrap();
    let d = Daemon::start(&[]);
    let mut c = d.client();
    let e = c.create_enclave(lwk_spec("sim", 1, 512)).unwrap();
    let (rec, out, err) = run_lwk(
        &d,
        "sim",
        &[&files, input.to_str().unwrap(), output.to_str().unwrap()],
    );
    assert_eq!(rec.exit, Some(ExitStatus::Code(0)), "{out}{err}");
    assert_eq!(
        std::fs::read_to_string(&output).unwrap(),
        "copied: the input"
    );
    // The primary's NIS path shows the enclave's replica in its view.
    use std::os::unix::fs::MetadataExt;
    let replica = std::fs::metadata(
        d.state_dir()
            .join(format!("enclaves/{}/nis/data.mdb", e.id)),
    )
    .unwrap()
    .ino();
    let primary = std::fs::metadata(d.nis_dir().join("data.mdb"))
        .unwrap()
        .ino();
    assert_ne!(replica, primary);
    assert_eq!(out.trim(), format!("nis inode {replica}"));
}

#[test]
fn monitor_kill9_marks_the_enclave_crashed_and_reclaims_it() {
    let t = "monitor_kill9_marks_the_enclave_crashed_and_reclaims_it";
    if !can_run(t) {
        return;
    }
    let progs = Programs::new();
    let Some(spin) = progs.static_c(t, "spin", SPIN) else {
        return;
    };
    let d = Daemon::start(&[]);
    let mut c = d.client();
    let nis = NisReader::open(d.nis_dir()).unwrap();
    let e = c.create_enclave(lwk_spec("victim", 1, 512)).unwrap();
    let app = start_lwk(&mut c, "victim", &[&spin]);
    wait_output(&mut c, app.id, "spinning");
    let monitor = e.control_pid.unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(monitor as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let rec = wait_for("enclave marked crashed", Duration::from_secs(5), || {
        nis.enclave(e.id)
            .unwrap()
            .filter(|r| r.state == EnclaveState::Crashed)
    });
    assert!(
        rec.crash_reason
            .as_deref()
            .unwrap_or("")
            .contains("connection lost"),
        "{:?}",
        rec.crash_reason
    );
    wait_for("resources reclaimed", Duration::from_secs(5), || {
        c.list_cores()
            .unwrap()
            .iter()
            .all(|c| c.ownership != Ownership::Allocated(e.id))
            .then_some(())
    });
    if let Some((cpuset, memory)) = v1_cgroups(&d, e.id) {
        wait_for("cgroups removed", Duration::from_secs(5), || {
            (!cpuset.exists() && !memory.exists()).then_some(())
        });
    }
    let lost = c.app(app.id).unwrap();
    assert_eq!(lost.state, AppState::Lost, "{lost:?}");
    assert!(!alive(monitor));
    c.destroy_enclave(EnclaveRef::Id(e.id)).unwrap();
}

#[test]
fn daemon_kill9_and_restart_keeps_a_live_lwk_enclave() {
    let t = "daemon_kill9_and_restart_keeps_a_live_lwk_enclave";
    if !can_run(t) {
        return;
    }
    let progs = Programs::new();
    let (Some(spin), Some(sleeper), Some(hello)) = (
        progs.static_c(t, "spin", SPIN),
        progs.static_c(t, "sleeper", SLEEPER),
        progs.static_c(t, "hello", HELLO),
    ) else {
        return;
    };
    let mut d = Daemon::start(&[]);
    let mut c = d.client();
    let e = c.create_enclave(lwk_spec("survivor", 1, 512)).unwrap();
    let long = start_lwk(&mut c, "survivor", &[&spin]);
    let short = start_lwk(&mut c, "survivor", &[&sleeper, "1", "7"]);
    wait_output(&mut c, long.id, "spinning");
    wait_output(&mut c, short.id, "sleeping");
    let before = NisReader::open(d.nis_dir()).unwrap().snapshot().unwrap();

    d.kill9();
    // The short app ends while no daemon listens.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        alive(e.control_pid.unwrap()),
        "the monitor outlives the daemon"
    );
    d.spawn();
    let mut c = d.client();
    let nis = NisReader::open(d.nis_dir()).unwrap();
    let rec = wait_for("reattach", Duration::from_secs(10), || {
        nis.enclave(e.id)
            .unwrap()
            .filter(|r| r.state == EnclaveState::Running && r.rev > before.enclaves[0].rev)
    });
    assert_eq!(rec.cores, e.cores);
    assert_eq!(
        rec.control_pid, e.control_pid,
        "the same monitor, reattached"
    );
    let short_rec = ended(&mut c, short.id);
    assert_eq!(
        short_rec.exit,
        Some(ExitStatus::Code(7)),
        "an exit during the downtime is recorded after the reattach"
    );
    assert!(
        short_rec
            .detail
            .as_deref()
            .unwrap_or("")
            .contains("forwarded: "),
        "with its call summary: {short_rec:?}"
    );
    assert_eq!(c.app(long.id).unwrap().state, AppState::Running);
    // Still fully usable.
    let (app, out, _) = run_lwk(&d, "survivor", &[&hello, "again"]);
    assert_eq!(
        (app.exit, out.as_str()),
        (
            Some(ExitStatus::Code(3)),
            "hello from the LWK, argv[1]=again\n"
        )
    );
    c.kill_app(long.id, libc::SIGTERM).unwrap();
    assert_eq!(
        ended(&mut c, long.id).exit,
        Some(ExitStatus::Signal(libc::SIGTERM))
    );
    c.destroy_enclave(EnclaveRef::Id(e.id)).unwrap();
    no_lwk_cgroups_left(&d, e.id);
}

#[test]
fn the_shell_creates_lwk_enclaves_and_shows_app_details() {
    let t = "the_shell_creates_lwk_enclaves_and_shows_app_details";
    if !can_run(t) {
        return;
    }
    let progs = Programs::new();
    let Some(crash) = progs.static_c(t, "crash", CRASH) else {
        return;
    };
    let Some(hobbes) = workspace_bin(t, "hobbes-cli", "hobbes") else {
        return;
    };
    let d = Daemon::start(&[]);
    let sh = |args: &[&str]| {
        let out = Command::new(&hobbes)
            .arg("--socket")
            .arg(d.socket())
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = sh(&[
        "create-enclave",
        "--kind",
        "lwk",
        "--name",
        "sim",
        "--cores",
        "1",
        "--memory",
        "512",
    ]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("(lwk, exclusive)"), "{out}");
    let (code, out, err) = sh(&["launch-app", "--wait", "sim", &crash]);
    assert_eq!(code, Some(139), "{out}{err}");
    assert!(err.contains("killed by SIGSEGV: page fault"), "{err}");
    let (_, table, _) = sh(&["list-apps"]);
    assert!(
        table.lines().next().unwrap_or("").ends_with("DETAIL"),
        "{table}"
    );
    assert!(table.contains("page fault (vector 14)"), "{table}");
    let (_, json, _) = sh(&["--json", "list-apps"]);
    let apps: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(
        apps[0]["detail"]
            .as_str()
            .unwrap_or("")
            .contains("page fault (vector 14)"),
        "{json}"
    );
    let (code, _, err) = sh(&[
        "create-enclave",
        "--kind",
        "lwk",
        "--name",
        "x",
        "--cores",
        "1",
        "--memory",
        "512",
        "--shared",
    ]);
    assert_ne!(code, Some(0));
    assert!(err.contains("cannot be shared"), "{err}");
}
