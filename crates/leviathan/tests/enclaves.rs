//! Native enclaves against a real daemon, as root: isolation, lifecycle,
//! health, restart, bad input, permissions. See tests/common for the harness.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::*;
use hobbes_client::proto::model::{
    AppState, EnclaveState, ExitStatus, NativeIsolation, Ownership, SCHEMA_VERSION,
};
use hobbes_client::proto::msg::{EnclaveRef, ErrorCode, Request, Response};
use hobbes_client::proto::spec::{CpuRequest, MemRequest};
use hobbes_client::{ClientError, EnclaveConn, NisReader};

const AFFINITY_AND_PIDNS: &str = "grep Cpus_allowed_list /proc/self/status; echo pid=$$; \
     p=$(grep ':memory:' /proc/self/cgroup | cut -d: -f3); cat /sys/fs/cgroup/memory$p/memory.limit_in_bytes";

fn need_two_cores(test: &str) -> bool {
    if ncpus() < 2 {
        println!(
            "SKIP {test}: needs at least 2 cores (one for the host, one for an exclusive enclave)"
        );
        return false;
    }
    true
}

#[test]
fn two_enclaves_see_their_cores_pid_namespace_and_memory_limit() {
    let t = "two_enclaves_see_their_cores_pid_namespace_and_memory_limit";
    if !require_root(t) || !need_two_cores(t) {
        return;
    }
    let d = Daemon::start(&[]);
    let mut c = d.client();
    let sim = c.create_enclave(spec("sim", 1, 256, false)).unwrap();
    let ana = c.create_enclave(spec("ana", 1, 128, true)).unwrap();
    assert_eq!(sim.cores, vec![1], "exclusive enclave takes the free core");
    assert_eq!(
        ana.cores,
        vec![0],
        "shared enclave is pinned to the host core"
    );
    let native = sim
        .isolation
        .native()
        .expect("the native kind describes its isolation");
    assert!(native.exclusive_cores && native.namespaces && native.cpuset && native.memory_limit);
    assert_eq!(native.version, NativeIsolation::VERSION);
    assert!(
        !ana.isolation.exclusive_cores() && ana.isolation.native().is_some(),
        "shared enclave is marked not isolated"
    );
    let socket = sim
        .control
        .unix_socket_path()
        .expect("a Unix socket endpoint");
    assert!(
        socket.ends_with(&format!("enclaves/{}/control.sock", sim.id)),
        "{socket}"
    );

    for (rec, cores, limit) in [(&sim, "1", 256u64 << 20), (&ana, "0", 128 << 20)] {
        let (app, out, err) = run_in(&mut c, &rec.name, &["sh", "-c", AFFINITY_AND_PIDNS]);
        assert_eq!(app.exit, Some(ExitStatus::Code(0)), "stderr: {err}");
        assert_eq!(
            status_field(&out, "Cpus_allowed_list:"),
            cores,
            "sched affinity in {}: {out}",
            rec.name
        );
        let pid: u32 = status_field(&out, "pid=").parse().unwrap();
        assert!(
            pid < 100,
            "pid {pid} is from the enclave's own PID namespace"
        );
        let proc = app.procs[0];
        assert_eq!(proc.local, pid);
        assert_ne!(
            proc.global, proc.local,
            "global (host) pid differs from the local one"
        );
        assert_eq!(
            out.lines().last().unwrap().trim().parse::<u64>().unwrap(),
            limit,
            "memory limit of {}",
            rec.name
        );
    }
    c.destroy_enclave(EnclaveRef::Name("sim".into())).unwrap();
    c.destroy_enclave(EnclaveRef::Name("ana".into())).unwrap();
}

#[test]
fn memory_limit_is_enforced() {
    let t = "memory_limit_is_enforced";
    if !require_root(t) || !need_two_cores(t) {
        return;
    }
    // The control process is outside the enclave's memory cgroup: the hog's
    // reclaim and OOM do not stall its heartbeats (the harness's 400 ms timeout).
    let d = Daemon::start(&[]);
    let mut c = d.client();
    c.create_enclave(spec("small", 1, 128, false)).unwrap();
    // The shell holds a 300 MiB string in memory: far over the 128 MiB limit.
    let hog = |mib: u32| format!("x=$(head -c {mib}M /dev/zero | tr '\\0' a); echo ${{#x}}");
    let (app, out, _) = run_in(&mut c, "small", &["sh", "-c", &hog(300)]);
    // The OOM killer picks the biggest task: the shell (SIGKILL), or a pipe
    // stage, which leaves the shell with a truncated string.
    let truncated = out.trim().parse::<u64>().is_ok_and(|n| n < 300 << 20);
    assert!(
        app.exit == Some(ExitStatus::Signal(libc::SIGKILL)) || truncated,
        "the 128 MiB limit stopped the 300 MiB string: {app:?}, printed {out:?}"
    );
    // The control process is exempt from the OOM killer: the enclave survives.
    let e = c.enclave(EnclaveRef::Name("small".into())).unwrap();
    assert_eq!(e.state, EnclaveState::Running);
    let adj = |pid: &str| std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj")).unwrap();
    // Lowering the score needs CAP_SYS_RESOURCE, which some sandboxes drop.
    let caps = std::fs::read_to_string("/proc/self/status").unwrap();
    let cap_eff = u64::from_str_radix(&status_field(&caps, "CapEff:"), 16).unwrap_or(0);
    const CAP_SYS_RESOURCE: u32 = 24;
    if cap_eff & (1 << CAP_SYS_RESOURCE) != 0 {
        assert_eq!(adj(&e.control_pid.unwrap().to_string()).trim(), "-1000");
    }
    let (_, out, _) = run_in(&mut c, "small", &["cat", "/proc/self/oom_score_adj"]);
    assert_eq!(out.trim(), "0", "apps do not inherit the exemption");
    let (app, out, _) = run_in(&mut c, "small", &["sh", "-c", &hog(32)]);
    assert_eq!(app.exit, Some(ExitStatus::Code(0)), "32 MiB fits");
    assert_eq!(out.trim(), (32u32 << 20).to_string());
}

#[test]
fn host_tasks_are_kept_off_enclave_cores_and_get_them_back() {
    let t = "host_tasks_are_kept_off_enclave_cores_and_get_them_back";
    if !require_root(t) || !need_two_cores(t) {
        return;
    }
    let all = host_affinity_of(std::process::id());
    let mut d = Daemon::start(&[]);
    let mut c = d.client();
    c.create_enclave(spec("iso", 1, 128, false)).unwrap();
    let mut host_task = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    assert_eq!(
        host_affinity_of(host_task.id()),
        "0",
        "a new host task runs on the host core only"
    );
    assert_eq!(
        host_affinity_of(1),
        "0",
        "init is confined to the host core"
    );
    assert_eq!(
        host_affinity_of(d.pid()),
        "0",
        "the daemon itself runs on the host core"
    );
    let _ = host_task.kill();
    let _ = host_task.wait();
    assert_eq!(d.stop(), Some(0));
    assert_eq!(
        host_affinity_of(1),
        all,
        "init gets every core back after a clean stop"
    );
    assert_eq!(host_affinity_of(std::process::id()), all);
    assert!(
        !std::path::Path::new("/sys/fs/cgroup/cpuset/hobbes").exists(),
        "our cpusets are gone"
    );
}

#[test]
fn destroy_returns_every_core_and_block_and_kills_everything() {
    let t = "destroy_returns_every_core_and_block_and_kills_everything";
    if !require_root(t) || !need_two_cores(t) {
        return;
    }
    let d = Daemon::start(&[]);
    let mut c = d.client();
    let before = c.status().unwrap();
    let e = c.create_enclave(spec("doomed", 1, 512, false)).unwrap();
    let during = c.status().unwrap();
    assert_eq!(during.cores_free, before.cores_free - 1);
    assert_eq!(during.mem_free, before.mem_free - (512 << 20));
    let app = c
        .launch({
            let mut l = launch("doomed", &["sleep", "60"]);
            l.stream = false;
            l
        })
        .unwrap();
    let global = app.procs[0].global;
    assert!(std::path::Path::new(&format!("/proc/{global}")).exists());
    c.destroy_enclave(EnclaveRef::Id(e.id)).unwrap();
    let after = c.status().unwrap();
    assert_eq!(
        (after.cores_free, after.mem_free),
        (before.cores_free, before.mem_free),
        "everything returned"
    );
    assert!(c
        .list_cores()
        .unwrap()
        .iter()
        .all(|c| c.ownership != Ownership::Allocated(e.id)));
    assert!(
        !std::path::Path::new(&format!("/proc/{global}")).exists() || !hobbes_alive(global),
        "app killed"
    );
    assert!(
        !std::path::Path::new(&format!("/sys/fs/cgroup/cpuset/hobbes/enclave-{}", e.id)).exists(),
        "cgroup removed"
    );
    let rec = c.app(app.id).unwrap();
    assert_eq!(rec.state, AppState::Crashed);
    assert!(rec.detail.unwrap_or_default().contains("enclave destroyed"));
    assert_eq!(
        c.enclave(EnclaveRef::Id(e.id)).unwrap_err().code(),
        Some(ErrorCode::NotFound)
    );
}

fn hobbes_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z"))
        .unwrap_or(false)
}

#[test]
fn heartbeat_loss_and_control_death_are_detected() {
    let t = "heartbeat_loss_and_control_death_are_detected";
    if !require_root(t) || !need_two_cores(t) {
        return;
    }
    let d = Daemon::start(&[]);
    let mut c = d.client();
    let nis = NisReader::open(d.nis_dir()).unwrap();
    let timeout = Duration::from_millis(400);

    // 1. A control process that stops (SIGSTOP): heartbeats stop.
    let e = c.create_enclave(spec("frozen", 1, 128, true)).unwrap();
    let pid = e.control_pid.unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .unwrap();
    let stopped_at = std::time::Instant::now();
    let rec = wait_for("enclave marked crashed", timeout * 4, || {
        nis.enclave(e.id)
            .unwrap()
            .filter(|r| r.state == EnclaveState::Crashed)
    });
    let took = stopped_at.elapsed();
    assert!(
        took < timeout * 3,
        "detected in {took:?} (timeout {timeout:?})"
    );
    assert!(
        rec.crash_reason
            .as_deref()
            .unwrap_or("")
            .contains("no heartbeat"),
        "{:?}",
        rec.crash_reason
    );
    // Reclaimed by default (just after it is marked crashed).
    wait_for("resources reclaimed", Duration::from_secs(5), || {
        nis.enclave(e.id).unwrap().filter(|r| r.cores.is_empty())
    });
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}/stat")).exists() || !hobbes_alive(pid),
        "reclaim killed it"
    );

    // 2. A control process killed outright: detected at once through its link.
    let e = c.create_enclave(spec("killed", 1, 128, false)).unwrap();
    let killed_at = std::time::Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(e.control_pid.unwrap() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let rec = wait_for("enclave marked crashed", timeout * 4, || {
        nis.enclave(e.id)
            .unwrap()
            .filter(|r| r.state == EnclaveState::Crashed)
    });
    assert!(
        killed_at.elapsed() < timeout,
        "link loss is immediate: {:?}",
        killed_at.elapsed()
    );
    assert!(rec.crash_reason.unwrap().contains("connection lost"));
    wait_for("cores reclaimed", Duration::from_secs(5), || {
        c.list_cores()
            .unwrap()
            .iter()
            .all(|c| c.ownership != Ownership::Allocated(e.id))
            .then_some(())
    });
    // A crashed enclave refuses launches until destroyed.
    let err = c.launch(launch("killed", &["true"])).unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Conflict), "{err}");
    c.destroy_enclave(EnclaveRef::Name("killed".into()))
        .unwrap();
    c.destroy_enclave(EnclaveRef::Name("frozen".into()))
        .unwrap();
}

#[test]
fn held_crash_keeps_resources_until_destroy() {
    let t = "held_crash_keeps_resources_until_destroy";
    if !require_root(t) || !need_two_cores(t) {
        return;
    }
    let d = Daemon::start(&["--on-crash", "hold"]);
    let mut c = d.client();
    let nis = NisReader::open(d.nis_dir()).unwrap();
    let e = c.create_enclave(spec("held", 1, 128, false)).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(e.control_pid.unwrap() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let rec = wait_for("crash", Duration::from_secs(2), || {
        nis.enclave(e.id)
            .unwrap()
            .filter(|r| r.state == EnclaveState::Crashed)
    });
    assert_eq!(rec.cores, e.cores, "held for inspection");
    assert!(c
        .list_cores()
        .unwrap()
        .iter()
        .any(|c| c.ownership == Ownership::Allocated(e.id)));
    c.destroy_enclave(EnclaveRef::Id(e.id)).unwrap();
    assert!(c
        .list_cores()
        .unwrap()
        .iter()
        .all(|c| c.ownership != Ownership::Allocated(e.id)));
}

#[test]
fn daemon_kill9_and_restart_loses_nothing() {
    let t = "daemon_kill9_and_restart_loses_nothing";
    if !require_root(t) || !need_two_cores(t) {
        return;
    }
    let mut d = Daemon::start(&[]);
    let mut c = d.client();
    let e = c.create_enclave(spec("survivor", 1, 256, false)).unwrap();
    let mut l = launch("survivor", &["sleep", "60"]);
    l.stream = false;
    let long = c.launch(l).unwrap();
    let mut l = launch(
        "survivor",
        &["sh", "-c", "read x < /dev/null; sleep 0.5; exit 7"],
    );
    l.stream = false;
    let short = c.launch(l).unwrap();
    let before = NisReader::open(d.nis_dir()).unwrap().snapshot().unwrap();

    d.kill9();
    // The short app ends while no daemon listens.
    wait_for("short app to end", Duration::from_secs(5), || {
        (!hobbes_alive(short.procs[0].global)).then_some(())
    });
    d.spawn();
    let mut c = d.client();
    let nis = NisReader::open(d.nis_dir()).unwrap();
    let rec = wait_for("reattach", Duration::from_secs(5), || {
        nis.enclave(e.id)
            .unwrap()
            .filter(|r| r.state == EnclaveState::Running && r.rev > before.enclaves[0].rev)
    });
    assert_eq!(rec.cores, e.cores);
    assert_eq!(
        rec.control_pid, e.control_pid,
        "the same control process, reattached"
    );
    let short_rec = c.wait_app(short.id).unwrap();
    assert_eq!(
        short_rec.exit,
        Some(ExitStatus::Code(7)),
        "exit during downtime recorded after reattach"
    );
    let long_rec = c.app(long.id).unwrap();
    assert_eq!(
        long_rec.state,
        AppState::Running,
        "long app still running and tracked"
    );
    assert!(hobbes_alive(long.procs[0].global));
    let after = nis.snapshot().unwrap();
    assert_eq!(after.header.generation, before.header.generation + 1);
    assert_eq!(after.enclaves.len(), before.enclaves.len());
    assert_eq!(after.apps.len(), before.apps.len());
    // Still fully usable.
    let (app, out, _) = run_in(&mut c, "survivor", &["echo", "still here"]);
    assert_eq!(
        (app.exit, out.trim()),
        (Some(ExitStatus::Code(0)), "still here")
    );
    c.kill_app(long.id, libc::SIGTERM).unwrap();
    assert_eq!(
        c.wait_app(long.id).unwrap().exit,
        Some(ExitStatus::Signal(libc::SIGTERM))
    );
}

/// Rewrite enclave `id`'s record and the header in `nis` (no daemon running,
/// not opened by this process) the way a schema-version-1 leviathan wrote
/// them: a flat `isolation`, a `control_socket` path. Returns the record's rev.
fn rewrite_as_schema_1(nis: &std::path::Path, id: u64) -> u64 {
    use heed::byteorder::BE;
    use heed::types::{Str, U64};
    let mut opts = heed::EnvOpenOptions::new().read_txn_without_tls();
    opts.map_size(256 << 20).max_readers(1024).max_dbs(16);
    // SAFETY: the daemon is dead and this process has not opened the NIS.
    let env = unsafe { opts.open(nis) }.unwrap();
    let mut w = env.write_txn().unwrap();
    let header: heed::Database<Str, Str> = env.open_database(&w, Some("header")).unwrap().unwrap();
    let enclaves: heed::Database<U64<BE>, Str> =
        env.open_database(&w, Some("enclaves")).unwrap().unwrap();
    let mut h: serde_json::Value =
        serde_json::from_str(header.get(&w, "header").unwrap().unwrap()).unwrap();
    h["schema_version"] = 1.into();
    header.put(&mut w, "header", &h.to_string()).unwrap();
    let mut r: serde_json::Value =
        serde_json::from_str(enclaves.get(&w, &id).unwrap().unwrap()).unwrap();
    let o = r.as_object_mut().unwrap();
    let control = o.remove("control").unwrap();
    o.insert("control_socket".into(), control["path"].clone());
    let iso = o["isolation"].clone();
    let mut flat = iso["detail"].clone();
    let flat_o = flat.as_object_mut().unwrap();
    flat_o.remove("kind");
    flat_o.remove("version");
    flat_o.insert("summary".into(), iso["summary"].clone());
    o.insert("isolation".into(), flat);
    let rev = o["rev"].as_u64().unwrap();
    enclaves.put(&mut w, &id, &r.to_string()).unwrap();
    w.commit().unwrap();
    env.prepare_for_closing().wait();
    rev
}

/// An upgrade: a daemon restarted on a state directory whose NIS a
/// schema-version-1 daemon wrote, with an enclave still running, adopts the
/// enclave and rewrites its record in the current shape.
#[test]
fn restart_on_a_schema_1_nis_adopts_its_enclaves() {
    let t = "restart_on_a_schema_1_nis_adopts_its_enclaves";
    if !require_root(t) || !need_two_cores(t) {
        return;
    }
    let mut d = Daemon::start(&[]);
    let e = d
        .client()
        .create_enclave(spec("old", 1, 256, false))
        .unwrap();
    d.kill9();
    let rev = rewrite_as_schema_1(&d.nis_dir(), e.id);
    d.spawn();
    let mut c = d.client();
    let rec = wait_for("reattach", Duration::from_secs(5), || {
        c.enclave(EnclaveRef::Id(e.id))
            .ok()
            .filter(|r| r.state == EnclaveState::Running && r.rev > rev)
    });
    assert_eq!(rec.control_pid, e.control_pid, "the same control process");
    assert_eq!(rec.isolation, e.isolation, "the flat isolation decoded");
    assert_eq!(rec.control, e.control, "control_socket decoded");
    assert_eq!(c.status().unwrap().header.schema_version, SCHEMA_VERSION);
    let nis = NisReader::open(d.nis_dir()).unwrap();
    let stored = nis.enclave(e.id).unwrap().unwrap();
    assert_eq!(
        (stored.isolation, stored.control),
        (e.isolation, e.control.clone())
    );
    let (answered, _) = EnclaveConn::to_enclave(&rec)
        .and_then(|mut conn| conn.ping())
        .expect("the control process answers at its recorded endpoint");
    assert_eq!(answered, e.id);
    c.destroy_enclave(EnclaveRef::Id(e.id)).unwrap();
}

#[test]
fn control_process_gone_during_downtime_is_marked_crashed() {
    let t = "control_process_gone_during_downtime_is_marked_crashed";
    if !require_root(t) || !need_two_cores(t) {
        return;
    }
    let mut d = Daemon::start(&[]);
    let mut c = d.client();
    let e = c.create_enclave(spec("gone", 1, 128, false)).unwrap();
    d.kill9();
    let pid = e.control_pid.unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_for("control process to die", Duration::from_secs(5), || {
        (!hobbes_alive(pid)).then_some(())
    });
    d.spawn();
    let rec = d.client().enclave(EnclaveRef::Id(e.id)).unwrap();
    assert_eq!(rec.state, EnclaveState::Crashed);
    assert!(rec
        .crash_reason
        .unwrap()
        .contains("while leviathan was down"));
}

#[test]
fn bad_requests_are_refused_and_change_nothing() {
    let t = "bad_requests_are_refused_and_change_nothing";
    if !require_root(t) || !need_two_cores(t) {
        return;
    }
    let d = Daemon::start(&[]);
    let mut c = d.client();
    c.create_enclave(spec("only", 1, 128, false)).unwrap();
    let nis = NisReader::open(d.nis_dir()).unwrap();
    let before = nis.snapshot().unwrap();

    fn code<T: std::fmt::Debug>(r: Result<T, ClientError>) -> Option<ErrorCode> {
        r.unwrap_err().code()
    }
    assert_eq!(
        code(c.create_enclave(spec("more", 1, 128, false))),
        Some(ErrorCode::Overcommit),
        "no free core left"
    );
    assert_eq!(
        code(c.create_enclave(spec("huge", 1, 1 << 30, true))),
        Some(ErrorCode::Overcommit),
        "memory over-commit"
    );
    assert_eq!(
        code(c.create_enclave(spec("only", 1, 128, true))),
        Some(ErrorCode::Conflict),
        "duplicate name"
    );
    assert_eq!(
        code(c.create_enclave(spec("bad name", 1, 128, true))),
        Some(ErrorCode::InvalidSpec)
    );
    let mut s = spec("ids", 0, 128, true);
    s.cpus.ids = vec![99];
    assert_eq!(
        code(c.create_enclave(s)),
        Some(ErrorCode::InvalidSpec),
        "unknown core id"
    );
    assert_eq!(
        code(c.destroy_enclave(EnclaveRef::Id(99))),
        Some(ErrorCode::NotFound)
    );
    assert_eq!(
        code(c.destroy_enclave(EnclaveRef::Name("nope".into()))),
        Some(ErrorCode::NotFound)
    );
    assert_eq!(code(c.kill_app(12345, 15)), Some(ErrorCode::NotFound));
    assert_eq!(code(c.kill_app(1, 999)), Some(ErrorCode::InvalidSpec));
    assert_eq!(
        code(c.launch(launch("only", &[]))),
        Some(ErrorCode::InvalidSpec),
        "empty argv"
    );
    assert_eq!(
        code(c.launch(launch("only", &["/no/such/program"]))),
        Some(ErrorCode::InvalidSpec),
        "missing program"
    );
    assert_eq!(
        code(c.assign_cpus(
            EnclaveRef::Name("only".into()),
            CpuRequest {
                count: 1,
                ..Default::default()
            }
        )),
        Some(ErrorCode::Overcommit)
    );
    assert_eq!(
        code(c.revoke_cpus(EnclaveRef::Name("only".into()), vec![1])),
        Some(ErrorCode::InvalidSpec),
        "last core"
    );
    assert_eq!(
        code(c.assign_memory(
            EnclaveRef::Name("only".into()),
            MemRequest {
                blocks: vec![0],
                ..Default::default()
            }
        )),
        Some(ErrorCode::Overcommit),
        "host block"
    );

    // Garbage and oversized frames: a clear error, then the connection closes.
    let mut raw = UnixStream::connect(d.socket()).unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let reply: Response = hobbes_client::proto::frame::read_frame(&mut raw).unwrap();
    assert!(
        matches!(&reply, Response::Error(e) if e.code == ErrorCode::BadRequest && e.message.contains("magic")),
        "{reply:?}"
    );
    let mut raw = UnixStream::connect(d.socket()).unwrap();
    raw.write_all(b"HBS\x01\xff\xff\xff\x7f").unwrap();
    let reply: Response = hobbes_client::proto::frame::read_frame(&mut raw).unwrap();
    assert!(
        matches!(&reply, Response::Error(e) if e.code == ErrorCode::TooLarge),
        "{reply:?}"
    );
    let mut rest = Vec::new();
    assert_eq!(
        raw.read_to_end(&mut rest).unwrap(),
        0,
        "connection closed after a fatal frame error"
    );
    // Valid frame, undecodable request: error, connection stays usable.
    let mut raw = UnixStream::connect(d.socket()).unwrap();
    let body = br#"{"op":"destroy_enclave","enclave":{"id":"x"}}"#;
    raw.write_all(b"HBS\x01").unwrap();
    raw.write_all(&(body.len() as u32).to_le_bytes()).unwrap();
    raw.write_all(body).unwrap();
    let reply: Response = hobbes_client::proto::frame::read_frame(&mut raw).unwrap();
    assert!(
        matches!(&reply, Response::Error(e) if e.code == ErrorCode::BadRequest),
        "{reply:?}"
    );
    hobbes_client::proto::frame::write_frame(&mut raw, &Request::ListEnclaves).unwrap();
    let reply: Response = hobbes_client::proto::frame::read_frame(&mut raw).unwrap();
    assert!(matches!(reply, Response::Enclaves { .. }));

    let after = nis.snapshot().unwrap();
    assert_eq!(after.cores, before.cores, "no core changed");
    assert_eq!(after.memory, before.memory, "no block changed");
    assert_eq!(after.enclaves, before.enclaves, "no enclave changed");
    assert!(d.client().status().is_ok(), "daemon alive");
}

/// Re-executed as `nobody` by the permission test: tries to destroy an enclave.
#[test]
fn helper_destroy_as_other_user() {
    let Ok(target) = std::env::var("HOBBES_TEST_DESTROY") else {
        return;
    };
    let sock = std::env::var("HOBBES_SOCKET").unwrap();
    let mut c = hobbes_client::Client::connect(sock).unwrap();
    let err = c
        .destroy_enclave(EnclaveRef::Name(target.clone()))
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::PermissionDenied), "{err}");
    assert!(err.to_string().contains("permission denied"));
    // Reading is allowed to everyone, directly from the NIS too.
    assert!(c.list_enclaves().unwrap().iter().any(|e| e.name == target));
    let nis = NisReader::open(std::env::var("HOBBES_NIS").unwrap()).unwrap();
    assert!(nis.enclave_by_name(&target).unwrap().is_some());
    // A user may make an enclave of its own; its apps run as that user.
    let mine = c.create_enclave(spec("nobodys", 1, 128, true)).unwrap();
    assert_eq!(mine.owner_uid, 65534);
    let (app, out, err) = run_in(&mut c, "nobodys", &["id", "-u"]);
    assert_eq!(app.exit, Some(ExitStatus::Code(0)), "{err}");
    assert_eq!(out.trim(), "65534", "the app runs as its launcher");
    let mut conn = EnclaveConn::to_enclave(&mine).unwrap();
    let err = conn.read_file("/etc/shadow", 100).unwrap_err();
    assert!(
        err.to_string().contains("Permission denied"),
        "file access is checked as the client: {err}"
    );
    c.destroy_enclave(EnclaveRef::Name("nobodys".into()))
        .unwrap();
    println!("HELPER-OK");
}

#[test]
fn non_root_cannot_destroy_roots_enclave() {
    let t = "non_root_cannot_destroy_roots_enclave";
    if !require_root(t) || !need_two_cores(t) {
        return;
    }
    let d = Daemon::start(&[]);
    let mut c = d.client();
    c.create_enclave(spec("rootowned", 1, 128, false)).unwrap();
    // The state directory is a private tempdir: let `nobody` traverse it.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(d.state_dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "helper_destroy_as_other_user",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("HOBBES_TEST_DESTROY", "rootowned")
        .env("HOBBES_SOCKET", d.socket())
        .env("HOBBES_NIS", d.nis_dir())
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    use std::os::unix::process::CommandExt as _;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("HELPER-OK"),
        "helper failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        c.enclave(EnclaveRef::Name("rootowned".into()))
            .unwrap()
            .state,
        EnclaveState::Running,
        "still there"
    );
}

#[test]
fn ping_and_files_in_the_enclave_view() {
    let t = "ping_and_files_in_the_enclave_view";
    if !require_root(t) || !need_two_cores(t) {
        return;
    }
    let d = Daemon::start(&[]);
    let mut c = d.client();
    let e = c.create_enclave(spec("view", 1, 128, false)).unwrap();
    let mut conn = EnclaveConn::to_enclave(&e).unwrap();
    let (id, rtt) = conn.ping().unwrap();
    assert_eq!(id, e.id);
    assert!(rtt < Duration::from_secs(1));
    assert!(c.ping_via_daemon(EnclaveRef::Id(e.id)).is_ok());
    // /proc inside is the enclave's: pid 1 is its control process.
    let cmdline = conn.read_file("/proc/1/cmdline", 4096).unwrap();
    assert!(
        String::from_utf8_lossy(&cmdline).contains("enclave-init"),
        "{:?}",
        String::from_utf8_lossy(&cmdline)
    );
    let path = d.state_dir().join("written-in-enclave");
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    conn.write_file(path.to_str().unwrap(), &data, 0o600)
        .unwrap();
    assert_eq!(
        conn.read_file(path.to_str().unwrap(), 10 << 20).unwrap(),
        data,
        "chunked write and read agree"
    );
    let err = conn.read_file("/no/such/file", 10).unwrap_err();
    assert!(err.to_string().contains("/no/such/file"), "{err}");
}

#[test]
fn assign_and_revoke_memory_and_cores_of_a_running_enclave() {
    let t = "assign_and_revoke_memory_and_cores_of_a_running_enclave";
    if !require_root(t) || !need_two_cores(t) {
        return;
    }
    let d = Daemon::start(&[]);
    let mut c = d.client();
    let e = c.create_enclave(spec("grow", 1, 128, false)).unwrap();
    // Apps' memory cgroup: enclave-N in the memory parent that holds the
    // control process (which is outside the limit).
    let limit_file = cgroup_dir_of(e.control_pid.unwrap(), "memory")
        .join(format!("enclave-{}", e.id))
        .display()
        .to_string();
    let limit = || {
        std::fs::read_to_string(format!("{limit_file}/memory.limit_in_bytes"))
            .unwrap()
            .trim()
            .parse::<u64>()
            .unwrap()
    };
    assert_eq!(limit(), 128 << 20);
    let grown = c
        .assign_memory(
            EnclaveRef::Id(e.id),
            MemRequest {
                size_mib: 256,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(grown.mem_bytes, 384 << 20);
    assert_eq!(limit(), 384 << 20, "cgroup limit follows");
    let extra = grown
        .mem_blocks
        .iter()
        .copied()
        .find(|b| !e.mem_blocks.contains(b))
        .unwrap();
    let shrunk = c.revoke_memory(EnclaveRef::Id(e.id), vec![extra]).unwrap();
    assert_eq!(shrunk.mem_bytes, 256 << 20);
    assert_eq!(limit(), 256 << 20);
    let blocks = c.list_memory().unwrap();
    assert_eq!(
        blocks.iter().find(|b| b.id == extra).unwrap().ownership,
        Ownership::Free
    );

    // Cores: a shared enclave may be re-pinned among host cores only.
    let s = c.create_enclave(spec("sh", 1, 128, true)).unwrap();
    let err = c
        .assign_cpus(
            EnclaveRef::Id(s.id),
            CpuRequest {
                ids: vec![1],
                ..Default::default()
            },
        )
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Overcommit), "{err}");
}

#[test]
fn assign_and_revoke_cores_of_a_running_enclave() {
    let t = "assign_and_revoke_cores_of_a_running_enclave";
    if !require_root(t) || !need_two_cores(t) {
        return;
    }
    // The host keeps both cores, so a shared enclave can grow to two.
    let d = Daemon::start(&["--host-cores", "0-1"]);
    let mut c = d.client();
    let e = c.create_enclave(spec("flex", 1, 128, true)).unwrap();
    let other = if e.cores == vec![0] { 1 } else { 0 };
    let cpuset = format!("/sys/fs/cgroup/cpuset/hobbes/enclave-{}/cpuset.cpus", e.id);
    let ids = |ids: Vec<u32>| CpuRequest {
        ids,
        ..Default::default()
    };
    let grown = c
        .assign_cpus(EnclaveRef::Id(e.id), ids(vec![other]))
        .unwrap();
    assert_eq!(grown.cores, vec![0, 1]);
    assert_eq!(std::fs::read_to_string(&cpuset).unwrap().trim(), "0-1");
    let (_, out, _) = run_in(
        &mut c,
        "flex",
        &["grep", "Cpus_allowed_list", "/proc/self/status"],
    );
    assert_eq!(
        status_field(&out, "Cpus_allowed_list:"),
        "0-1",
        "apps see the new core"
    );
    let shrunk = c.revoke_cpus(EnclaveRef::Id(e.id), vec![0]).unwrap();
    assert_eq!(shrunk.cores, vec![1]);
    assert_eq!(std::fs::read_to_string(&cpuset).unwrap().trim(), "1");
    let cores = c.list_cores().unwrap();
    assert!(cores
        .iter()
        .find(|c| c.id == 0)
        .unwrap()
        .shared_by
        .is_empty());
    assert_eq!(
        cores.iter().find(|c| c.id == 1).unwrap().shared_by,
        vec![e.id]
    );
}

/// The cgroup directory of `pid` for `controller`: its v1 hierarchy's, or
/// the unified one's.
fn cgroup_dir_of(pid: u32, controller: &str) -> std::path::PathBuf {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let line = |ctrl: &str| {
        text.lines()
            .find(|l| {
                l.split(':')
                    .nth(1)
                    .is_some_and(|c| c.split(',').any(|c| c == ctrl))
            })
            .map(|l| l.splitn(3, ':').nth(2).unwrap().to_string())
    };
    match line(controller) {
        Some(path) => std::path::Path::new("/sys/fs/cgroup")
            .join(controller)
            .join(path.trim_start_matches('/')),
        None => {
            let path = line("").expect("a v2 line");
            let root = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
                .into_iter()
                .find(|r| std::path::Path::new(r).join("cgroup.controllers").exists())
                .unwrap();
            std::path::Path::new(root).join(path.trim_start_matches('/'))
        }
    }
}

/// The memory limit of a cgroup directory (none: no limit).
fn memory_limit_of(dir: &std::path::Path) -> Option<u64> {
    ["memory.limit_in_bytes", "memory.max"]
        .iter()
        .find_map(|f| std::fs::read_to_string(dir.join(f)).ok())
        .and_then(|v| v.trim().parse().ok())
        .filter(|&v: &u64| v < 1 << 60)
}

/// The control process is on the enclave's cores but outside its memory
/// limit, and every app is under it: an app sitting at the limit (its
/// cgroup reclaiming and writing back all the time) does not starve the
/// enclave's heartbeats, as Slurm keeps slurmstepd out of the job's limit.
#[test]
fn control_process_keeps_its_heartbeats_while_an_app_sits_at_the_memory_limit() {
    let t = "control_process_keeps_its_heartbeats_while_an_app_sits_at_the_memory_limit";
    if !require_root(t) || !need_two_cores(t) {
        return;
    }
    let d = Daemon::start(&[
        "--heartbeat-timeout-ms",
        "300",
        "--heartbeat-interval-ms",
        "50",
    ]);
    let mut c = d.client();
    let e = c.create_enclave(spec("tight", 1, 64, false)).unwrap();
    let control = e.control_pid.unwrap();
    // The limit is whole memory blocks (64 MiB rounds up to one).
    let limit = c.enclave(EnclaveRef::Id(e.id)).unwrap().mem_bytes;
    assert!(limit >= 64 << 20, "{limit}");
    // All but 32 MiB of it held and touched, then a file written over and
    // over: its dirty page cache fills the cgroup to the limit, where the
    // kernel reclaims and writes back for as long as the app runs.
    let scratch = d.state_dir().join("tight-scratch");
    let script = format!(
        "b = bytearray({})\n\
         for i in range(0, len(b), 4096): b[i] = 1\n\
         chunk = b'y' * (1 << 20)\n\
         print('holding', flush=True)\n\
         while True:\n\
         \x20   with open('{}', 'wb') as f:\n\
         \x20       for _ in range(128): f.write(chunk)\n",
        limit - (32 << 20),
        scratch.display()
    );
    let app = c
        .launch(launch("tight", &["/usr/bin/python3", "-c", &script]))
        .unwrap();
    let app_pid = app.procs[0].global;

    let app_memory = cgroup_dir_of(app_pid, "memory");
    let control_memory = cgroup_dir_of(control, "memory");

    // At the limit for several seconds: the enclave stays up, the app runs.
    let usage = |file: &str| -> u64 {
        std::fs::read_to_string(app_memory.join(file))
            .map(|v| v.trim().parse().unwrap_or(0))
            .unwrap_or(0)
    };
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(6) {
        let now = c.enclave(EnclaveRef::Id(e.id)).unwrap();
        assert_eq!(
            now.state,
            EnclaveState::Running,
            "after {:?} at the limit: {now:?}",
            start.elapsed()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let peak = usage("memory.max_usage_in_bytes").max(usage("memory.peak"));
    assert!(
        peak >= limit - (4 << 20),
        "the app reached its {limit}-byte limit (peak {peak} bytes)"
    );
    // The app is in the enclave's cpuset and under its limit; the control
    // process in the same cpuset but not under the limit.
    assert_eq!(memory_limit_of(&app_memory), Some(limit), "{app_memory:?}");
    assert_ne!(
        memory_limit_of(&control_memory),
        Some(limit),
        "{control_memory:?}"
    );
    assert!(
        !control_memory.starts_with(&app_memory),
        "control process {control_memory:?} outside the apps' {app_memory:?}"
    );
    let procs = std::fs::read_to_string(app_memory.join("cgroup.procs")).unwrap();
    assert!(procs.lines().any(|l| l == app_pid.to_string()), "{procs}");
    match std::fs::read_to_string(app_memory.join("tasks")) {
        // v1: of the control process, only its launcher thread (which forks
        // the apps there) is under the limit; its first thread (whose cgroup
        // its memory is charged to) and its heartbeat thread are not.
        Ok(tasks) => {
            for entry in std::fs::read_dir(format!("/proc/{control}/task")).unwrap() {
                let tid = entry.unwrap().file_name().to_string_lossy().to_string();
                let comm = std::fs::read_to_string(format!("/proc/{control}/task/{tid}/comm"))
                    .unwrap_or_default();
                let under_limit = tasks.lines().any(|l| l == tid);
                assert_eq!(
                    under_limit,
                    comm.trim() == "launcher",
                    "control thread {tid} ({}) under the limit: {under_limit}",
                    comm.trim()
                );
            }
        }
        Err(_) => assert!(!procs.lines().any(|l| l == control.to_string()), "{procs}"),
    }
    assert_eq!(
        host_affinity_of(control),
        e.cores
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
    assert_eq!(host_affinity_of(control), host_affinity_of(app_pid));
    let enclave_dir = format!("enclave-{}", e.id);
    for pid in [control, app_pid] {
        let cpuset = cgroup_dir_of(pid, "cpuset");
        assert!(
            cpuset.iter().any(|p| p == enclave_dir.as_str()),
            "pid {pid} in the enclave's cpuset: {cpuset:?}"
        );
    }

    let now = c.app(app.id).unwrap();
    assert_eq!(now.state, AppState::Running, "{now:?}");
    c.destroy_enclave(EnclaveRef::Id(e.id)).unwrap();
    let _ = std::fs::remove_file(&scratch);
}

#[test]
fn nis_is_read_directly_inside_enclave_pid_namespaces() {
    let t = "nis_is_read_directly_inside_enclave_pid_namespaces";
    if !require_root(t) || !need_two_cores(t) {
        return;
    }
    let d = Daemon::start(&[]);
    let mut c = d.client();
    let r1 = c.create_enclave(spec("r1", 1, 128, false)).unwrap();
    c.create_enclave(spec("r2", 1, 128, true)).unwrap();
    // Inside, the NIS path shows the enclave's own replica (bind-mounted over it).
    use std::os::unix::fs::MetadataExt;
    let primary = d.nis_dir().join("data.mdb");
    let replica = d
        .state_dir()
        .join("enclaves")
        .join(r1.id.to_string())
        .join("nis/data.mdb");
    let (_, inode, _) = run_in(
        &mut c,
        "r1",
        &["stat", "-c", "%i", primary.to_str().unwrap()],
    );
    assert_eq!(
        inode.trim(),
        std::fs::metadata(&replica).unwrap().ino().to_string(),
        "replica mounted over the primary"
    );
    assert_ne!(
        inode.trim(),
        std::fs::metadata(&primary).unwrap().ino().to_string()
    );
    // Readers in both enclaves at once: their pids collide across namespaces.
    let mut holder = launch("r1", &[leviathan(), "nis-dump", "--hold-ms", "20000"]);
    holder.stream = false;
    let holder = c.launch(holder).unwrap();
    for enclave in ["r1", "r2", "r1"] {
        let (app, out, err) = run_in(&mut c, enclave, &[leviathan(), "nis-dump"]);
        assert_eq!(
            app.exit,
            Some(ExitStatus::Code(0)),
            "direct read in {enclave} failed: {err}"
        );
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(
            v["enclaves"].as_array().unwrap().len(),
            2,
            "{enclave} sees both enclaves"
        );
        assert!(
            v["reader_pid"].as_u64().unwrap() < 100,
            "read from inside a PID namespace"
        );
    }
    // A reader killed in the middle of its transaction leaves a stale slot;
    // writes go on, and new readers still work.
    c.kill_app(holder.id, libc::SIGKILL).unwrap();
    c.wait_app(holder.id).unwrap();
    for i in 0..20 {
        let mut l = launch("r2", &["true"]);
        l.name = Some(format!("churn{i}"));
        run_in(&mut c, "r2", &["true"]);
    }
    let (app, out, _) = run_in(&mut c, "r1", &[leviathan(), "nis-dump"]);
    assert_eq!(app.exit, Some(ExitStatus::Code(0)));
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert!(
        v["apps"].as_array().unwrap().len() >= 24,
        "the replica is current"
    );
}

#[test]
fn unprivileged_mode_degrades_to_affinity_and_says_so() {
    let t = "unprivileged_mode_degrades_to_affinity_and_says_so";
    if ncpus() < 2 {
        skip(t, "needs 2 cores");
        return;
    }
    let d = Daemon::start(&["--unprivileged"]);
    let mut c = d.client();
    let st = c.status().unwrap();
    assert!(!st.header.privileged);
    let e = c.create_enclave(spec("soft", 1, 128, false)).unwrap();
    let native = e
        .isolation
        .native()
        .expect("the native kind describes its isolation");
    assert!(!native.namespaces && !native.cpuset && !native.memory_limit);
    assert!(e.control.unix_socket_path().is_some(), "{:?}", e.control);
    assert!(
        e.isolation.summary.contains("degraded"),
        "{}",
        e.isolation.summary
    );
    let (app, out, _) = run_in(
        &mut c,
        "soft",
        &[
            "sh",
            "-c",
            "grep Cpus_allowed_list /proc/self/status; echo pid=$$",
        ],
    );
    assert_eq!(app.exit, Some(ExitStatus::Code(0)));
    assert_eq!(
        status_field(&out, "Cpus_allowed_list:"),
        "1",
        "pinned by affinity"
    );
    assert_eq!(app.procs[0].local, app.procs[0].global, "no PID namespace");
    let mut l = launch("soft", &["sleep", "60"]);
    l.stream = false;
    let sleeper = c.launch(l).unwrap();
    c.destroy_enclave(EnclaveRef::Id(e.id)).unwrap();
    assert!(
        !hobbes_alive(sleeper.procs[0].global),
        "destroy kills apps in degraded mode too"
    );
    assert!(!hobbes_alive(e.control_pid.unwrap()));
}

#[test]
fn second_daemon_on_the_same_state_dir_is_refused() {
    let t = "second_daemon_on_the_same_state_dir_is_refused";
    let d = Daemon::start(&["--unprivileged"]);
    let out = std::process::Command::new(leviathan())
        .arg("--state-dir")
        .arg(d.state_dir())
        .arg("--unprivileged")
        .output()
        .unwrap();
    assert!(!out.status.success(), "{t}: second daemon must fail");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already uses the state directory"), "{err}");
}

#[test]
fn shmem_thp_is_advised_while_running_and_restored() {
    let t = "shmem_thp_is_advised_while_running_and_restored";
    if !require_root(t) {
        return;
    }
    let path = "/sys/kernel/mm/transparent_hugepage/shmem_enabled";
    let Ok(before) = std::fs::read_to_string(path) else {
        skip(t, "no shmem THP control in sysfs");
        return;
    };
    let mut d = Daemon::start(&["--shmem-thp"]);
    let during = std::fs::read_to_string(path).unwrap();
    assert!(during.contains("[advise]"), "{during}");
    assert_eq!(d.stop(), Some(0));
    assert_eq!(
        std::fs::read_to_string(path).unwrap(),
        before,
        "restored at a clean exit"
    );
}

/// A control link is admitted by the credential the daemon gave the enclave's
/// agent, over any stream and from any pid; a wrong one is refused; apps never
/// see the credential.
#[test]
fn control_link_is_admitted_by_credential_not_pid() {
    use hobbes_client::proto::control::{ControlDown, ControlUp, Credential};
    use hobbes_client::proto::frame::{read_frame, write_frame};
    if !require_root("control_link_is_admitted_by_credential_not_pid") {
        return;
    }
    if ncpus() < 2 {
        skip(
            "control_link_is_admitted_by_credential_not_pid",
            "needs 2 cores",
        );
        return;
    }
    let d = Daemon::start(&[]);
    let mut c = d.client();
    let rec = c.create_enclave(spec("cred", 1, 64, false)).unwrap();
    let file = d
        .state_dir()
        .join("enclaves")
        .join(rec.id.to_string())
        .join("control.credential");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let secret = std::fs::read_to_string(&file).unwrap();
    assert_eq!(secret.trim().len(), 64);
    let attach = |credential: &str| {
        let mut s = UnixStream::connect(d.state_dir().join("control.sock")).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write_frame(
            &mut s,
            &ControlUp::Attach {
                enclave: rec.id,
                apps: vec![],
                credential: Credential(credential.to_string()),
            },
        )
        .unwrap();
        let answer = read_frame::<_, ControlDown>(&mut s);
        (s, answer)
    };
    // Wrong or missing credential: hung up on, and the enclave is untouched.
    for wrong in ["", "0000", &"f".repeat(64)] {
        let (_s, answer) = attach(wrong);
        assert!(answer.is_err(), "{wrong:?} admitted: {answer:?}");
    }
    assert!(d.log().contains("attach refused: wrong credential"));
    assert!(c.ping_via_daemon(EnclaveRef::Id(rec.id)).is_ok());
    // The right one, from this test's pid: welcomed.
    let (mut s, answer) = attach(secret.trim());
    assert!(
        matches!(answer, Ok(ControlDown::Welcome { .. })),
        "{answer:?}"
    );
    // The real control process notices it was replaced and attaches again,
    // which closes ours (EOF); the enclave runs on.
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    wait_for(
        "the control process to reattach",
        Duration::from_secs(10),
        || c.ping_via_daemon(EnclaveRef::Id(rec.id)).ok(),
    );
    assert_eq!(
        c.enclave(EnclaveRef::Id(rec.id)).unwrap().state,
        EnclaveState::Running
    );
    // Apps do not inherit it.
    let (_, out, _) = run_in(&mut c, "cred", &["/usr/bin/env"]);
    assert!(!out.contains("HOBBES_CONTROL_CREDENTIAL"), "{out}");
    assert!(!out.contains(secret.trim()), "{out}");
}
