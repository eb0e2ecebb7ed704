//! A kind is a plug-in: a fake enclave kind, registered from this test and
//! nowhere else, drives the daemon's whole enclave lifecycle through the
//! registry (node set-up, start, memory, stop, teardown; and `leviathan
//! cleanup` of a recorded enclave and of leftovers), with no line of the
//! daemon or of another kind changed.
//!
//! The daemon runs in this process (`leviathan::daemon::run_with`), so this
//! test has its own `main` (harness = false): the daemon waits for SIGTERM
//! with sigwait, and every thread must have it blocked, the test's own
//! threads included, before the first is spawned.
//!
//! The fake kind's control agent is `leviathan enclave-init` as a plain
//! process (no isolation). It is registered for `EnclaveKind::Native`, the
//! kind clients ask for: the daemon sees only what the registry holds.

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hobbes_client::proto::model::{
    ControlEndpoint, CoreId, EnclaveId, EnclaveKind, EnclaveRecord, IsolationRecord, KindIsolation,
};
use hobbes_client::proto::msg::EnclaveRef;
use hobbes_client::proto::spec::{CpuRequest, EnclaveSpec, MemRequest};
use hobbes_client::Client;
use leviathan::config::{Config, OnCrash};
use leviathan::kinds::{
    DriverResult, EnclaveDriver, KindEnv, KindRegistry, Leftover, NodeSetup, StartContext, Started,
    CONTROL_CREDENTIAL_ENV,
};
use nix::sys::signal::{SigSet, Signal};

type Log = Arc<Mutex<Vec<String>>>;

fn note(log: &Log, line: String) {
    log.lock().unwrap().push(line);
}

/// A kind whose enclaves are plain processes; every call is recorded.
struct FakeKind {
    log: Log,
    exe: PathBuf,
}

struct FakeLeftover {
    log: Log,
    id: EnclaveId,
}

impl Leftover for FakeLeftover {
    fn enclave(&self) -> EnclaveId {
        self.id
    }
    fn noun(&self) -> &str {
        "fake object"
    }
    fn location(&self) -> String {
        format!("fake-{}", self.id)
    }
    fn pids(&self) -> Vec<u32> {
        Vec::new()
    }
    fn remove(&self) -> DriverResult<()> {
        note(&self.log, format!("remove leftover {}", self.id));
        Ok(())
    }
    fn kill_and_remove(&self) -> DriverResult<()> {
        note(&self.log, format!("kill leftover {}", self.id));
        Ok(())
    }
}

fn kill_and_wait(pid: u32) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(5);
    // Gone once it is reaped or a zombie (the daemon's reaper collects it).
    while Instant::now() < deadline {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(s) if !s[s.rfind(')').unwrap() + 2..].starts_with('Z') => {
                std::thread::sleep(Duration::from_millis(5))
            }
            _ => return,
        }
    }
    panic!("control process {pid} survived SIGKILL");
}

impl EnclaveDriver for FakeKind {
    fn kind(&self) -> EnclaveKind {
        EnclaveKind::Native
    }
    fn setup(&self, node: &NodeSetup) -> DriverResult<()> {
        note(
            &self.log,
            format!(
                "setup host={:?} nodes={:?}",
                node.host_cores, node.numa_nodes
            ),
        );
        Ok(())
    }
    fn teardown(&self) -> DriverResult<()> {
        note(&self.log, "teardown".into());
        Ok(())
    }
    fn leftovers(&self) -> Vec<Box<dyn Leftover>> {
        vec![Box::new(FakeLeftover {
            log: self.log.clone(),
            id: 999,
        })]
    }
    fn clean_up(&self, rec: &EnclaveRecord, node_is_ours: bool) -> DriverResult<()> {
        note(&self.log, format!("clean_up {} {node_is_ours}", rec.id));
        Ok(())
    }
    fn start(
        &self,
        rec: &EnclaveRecord,
        ctx: &StartContext,
        record: &dyn Fn(&Started) -> DriverResult<()>,
    ) -> DriverResult<Started> {
        note(
            &self.log,
            format!(
                "start {} cores={:?} blocks={} bytes={} nodes={:?} credential={}",
                rec.id,
                ctx.cores,
                ctx.blocks.len(),
                ctx.mem_bytes,
                ctx.numa_nodes,
                !ctx.control_credential.is_empty()
            ),
        );
        // The kind picks its own endpoint; the daemon records it unread.
        let socket = ctx.enclave_dir.join("fake-control.sock");
        let child = Command::new(&self.exe)
            .args(["enclave-init", "--enclave", &rec.id.to_string()])
            .arg("--daemon-socket")
            .arg(&ctx.daemon_socket)
            .arg("--enclave-socket")
            .arg(&socket)
            .args(["--owner-uid", &rec.owner_uid.to_string()])
            .args(["--owner-gid", &rec.owner_gid.to_string()])
            .env(CONTROL_CREDENTIAL_ENV, &ctx.control_credential)
            .spawn()
            .map_err(|e| format!("cannot start the fake control process: {e}"))?;
        let started = Started {
            control_pid: child.id(),
            control_start_time: None,
            isolation: IsolationRecord {
                summary: "fake: none".into(),
                detail: KindIsolation::None,
            },
            control: ControlEndpoint::unix_socket(socket.display().to_string()),
        };
        if let Err(e) = record(&started) {
            kill_and_wait(child.id());
            return Err(e);
        }
        Ok(started)
    }
    fn set_cpus(&self, rec: &EnclaveRecord, cores: &[CoreId]) -> DriverResult<()> {
        note(&self.log, format!("set_cpus {} {cores:?}", rec.id));
        Ok(())
    }
    fn set_memory(&self, rec: &EnclaveRecord, nodes: &[u32], bytes: u64) -> DriverResult<()> {
        note(
            &self.log,
            format!("set_memory {} {nodes:?} {bytes}", rec.id),
        );
        Ok(())
    }
    fn stop(&self, rec: &EnclaveRecord) -> DriverResult<()> {
        note(&self.log, format!("stop {}", rec.id));
        if let Some(pid) = rec.control_pid {
            kill_and_wait(pid);
        }
        Ok(())
    }
    fn is_alive(&self, _rec: &EnclaveRecord) -> bool {
        false
    }
}

/// The one registration line of this test's "leviathan".
fn fake_kinds(log: Log) -> impl FnOnce(&KindEnv) -> KindRegistry {
    move |_env| {
        let mut kinds = KindRegistry::new();
        kinds.register(Box::new(FakeKind {
            log,
            exe: PathBuf::from(env!("CARGO_BIN_EXE_leviathan")),
        }));
        kinds
    }
}

fn config(state_dir: PathBuf) -> Config {
    Config {
        state_dir,
        cpus: None,
        memory: None,
        host_cores: Some(vec![0]),
        host_memory_mib: None,
        heartbeat_interval_ms: 50,
        heartbeat_timeout_ms: 400,
        on_crash: OnCrash::Reclaim,
        unprivileged: true,
        keep_enclaves_on_exit: false,
        shmem_thp: false,
        slurm_cgroups: false,
        hugepages: 0,
        client_idle_timeout_s: leviathan::config::DEFAULT_CLIENT_IDLE_TIMEOUT_S,
        request_timeout_ms: leviathan::config::DEFAULT_REQUEST_TIMEOUT_MS,
        max_clients_per_uid: leviathan::config::DEFAULT_MAX_CLIENTS_PER_UID,
    }
}

fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn lifecycle_goes_through_the_registered_kind() {
    let dir = tempfile::Builder::new()
        .prefix("hobbes-fake-kind-")
        .tempdir()
        .unwrap();
    let log: Log = Arc::default();
    let daemon = {
        let (cfg, kinds) = (config(dir.path().to_path_buf()), fake_kinds(log.clone()));
        std::thread::spawn(move || leviathan::daemon::run_with(cfg, kinds))
    };
    let socket = dir.path().join("leviathan.sock");
    let mut c = wait_for("the daemon's socket", || Client::connect(&socket).ok());

    // A shared enclave: it needs no free core, whatever this machine has.
    let spec = EnclaveSpec {
        name: "fake".into(),
        kind: EnclaveKind::Native,
        shared: true,
        host_ipc: false,
        cpus: CpuRequest {
            count: 1,
            ..Default::default()
        },
        memory: MemRequest {
            size_mib: 64,
            ..Default::default()
        },
        vm: None,
    };
    let e = c
        .create_enclave(spec)
        .expect("create through the fake kind");
    assert_eq!(
        e.isolation.summary, "fake: none",
        "the kind's isolation is recorded"
    );
    let endpoint = e.control.unix_socket_path().unwrap_or_default();
    assert!(
        endpoint.ends_with(&format!("enclaves/{}/fake-control.sock", e.id)),
        "the kind's control endpoint is recorded: {:?}",
        e.control
    );
    let (answered, _) = hobbes_client::EnclaveConn::to_enclave(&e)
        .and_then(|mut conn| conn.ping())
        .expect("the control agent answers at the kind's endpoint");
    assert_eq!(answered, e.id);
    let grown = c
        .assign_memory(
            EnclaveRef::Name("fake".into()),
            MemRequest {
                size_mib: 64,
                ..Default::default()
            },
        )
        .expect("assign memory through the fake kind");
    c.destroy_enclave(EnclaveRef::Name("fake".into()))
        .expect("destroy through the fake kind");
    drop(c);

    // Shut down as an operator does.
    nix::sys::signal::kill(nix::unistd::Pid::this(), Signal::SIGTERM).unwrap();
    daemon
        .join()
        .unwrap()
        .expect("daemon ran and stopped cleanly");

    let log = log.lock().unwrap().clone();
    let id = e.id;
    let expected = [
        "setup host=[0] nodes=".to_string(),
        format!(
            "start {id} cores={:?} blocks={} bytes={} nodes={:?} credential=true",
            e.cores,
            e.mem_blocks.len(),
            e.mem_bytes,
            e.numa_nodes
        ),
        format!("set_memory {id} {:?} {}", grown.numa_nodes, grown.mem_bytes),
        format!("stop {id}"),
        "teardown".to_string(),
    ];
    assert_eq!(log.len(), expected.len(), "{log:#?}");
    for (got, want) in log.iter().zip(&expected) {
        assert!(
            got.starts_with(want.as_str()),
            "{got:?} is not {want:?}: {log:#?}"
        );
    }
}

fn cleanup_goes_through_the_registered_kind() {
    let dir = tempfile::Builder::new()
        .prefix("hobbes-fake-kind-")
        .tempdir()
        .unwrap();
    let log: Log = Arc::default();
    // An enclave recorded by a daemon that was killed with it running.
    let daemon = {
        let mut cfg = config(dir.path().to_path_buf());
        cfg.keep_enclaves_on_exit = true;
        let kinds = fake_kinds(log.clone());
        std::thread::spawn(move || leviathan::daemon::run_with(cfg, kinds))
    };
    let socket = dir.path().join("leviathan.sock");
    let mut c = wait_for("the daemon's socket", || Client::connect(&socket).ok());
    let e = c
        .create_enclave(EnclaveSpec {
            name: "left".into(),
            kind: EnclaveKind::Native,
            shared: true,
            host_ipc: false,
            cpus: CpuRequest {
                count: 1,
                ..Default::default()
            },
            memory: MemRequest {
                size_mib: 64,
                ..Default::default()
            },
            vm: None,
        })
        .unwrap();
    drop(c);
    nix::sys::signal::kill(nix::unistd::Pid::this(), Signal::SIGTERM).unwrap();
    daemon.join().unwrap().unwrap();
    log.lock().unwrap().clear();

    // As root (or with the node lock free) cleanup also takes the kind's
    // leftovers apart and undoes its node set-up.
    let r = leviathan::daemon::cleanup_with(dir.path(), true, true, fake_kinds(log.clone()));
    if let Err(err) = &r {
        if err.to_string().contains("a leviathan runs on this node") {
            println!("SKIP cleanup_goes_through_the_registered_kind: a privileged leviathan runs on this node");
            if let Some(pid) = e.control_pid {
                kill_and_wait(pid);
            }
            return;
        }
    }
    r.expect("cleanup");
    let log = log.lock().unwrap().clone();
    assert!(
        log[0].starts_with(&format!("clean_up {} ", e.id)),
        "{log:?}"
    );
    assert!(
        log[1..].is_empty() || log[1..] == ["kill leftover 999", "teardown"],
        "{log:?}"
    );
    // The fake's clean_up left its control process to us.
    if let Some(pid) = e.control_pid {
        kill_and_wait(pid);
    }
}

fn main() {
    // Before any thread exists: every thread inherits the mask.
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.add(Signal::SIGHUP);
    set.thread_block().unwrap();

    lifecycle_goes_through_the_registered_kind();
    println!("test lifecycle_goes_through_the_registered_kind ... ok");
    cleanup_goes_through_the_registered_kind();
    println!("test cleanup_goes_through_the_registered_kind ... ok");
    println!("\ntest result: ok. 2 passed; 0 failed");
}
