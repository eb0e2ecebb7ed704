//! The C ABI as C sees it: compiles `tests/c/hobbes_test.c` against
//! `include/hobbes.h`, links it with the libhobbes built beside this test
//! (shared and static), runs it and checks what it prints.

use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Write};
use std::mem::{offset_of, size_of};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant};

use hobbes::types::{AppInfo, CEnclaveState, EnclaveInfo};
use hobbes_client::Client;
use hobbes_nis::{
    now_ms, AppRecord, AppState, CgroupMode, ControlEndpoint, CoreId, CoreRecord, Counters,
    EnclaveKind, EnclaveRecord, EnclaveState, ExitStatus, IsolationRecord, NisHeader, NisReader,
    NisWriter, Ownership, HOST_ENCLAVE, SCHEMA_VERSION,
};
use hobbes_proto::spec::EnclaveSpec;

const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");
/// How long one run of the C program may take (a hung daemon must not hang the test).
const RUN_TIMEOUT: Duration = Duration::from_secs(60);
const HOBBES_VARS: [&str; 5] = [
    "HOBBES_ENCLAVE_ID",
    "HOBBES_APP_ID",
    "HOBBES_SOCKET",
    "HOBBES_NIS",
    "HOBBES_STATE_DIR",
];

/// `<target>/<profile>`, from this executable's `<target>/<profile>/deps/c_abi-HASH`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(Path::parent)
        .expect("test executable lives in <target>/<profile>/deps")
        .to_path_buf()
}

fn has_libs(dir: &Path) -> bool {
    dir.join("libhobbes.so").exists() && dir.join("libhobbes.a").exists()
}

/// The directory holding libhobbes.{so,a}. Building this test builds the
/// library with all its crate types into `deps/`, beside the test, so those
/// match the sources the test was built from; `<profile>/` has the copies
/// `cargo build` leaves. If neither has them (the test binary was copied or
/// run by hand), build them.
fn lib_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = profile_dir();
        let deps = dir.join("deps");
        if has_libs(&deps) {
            return deps;
        }
        if !has_libs(&dir) {
            let profile = match dir.file_name().and_then(|n| n.to_str()) {
                Some("debug") | None => "dev".to_string(),
                Some(other) => other.to_string(),
            };
            let target = dir.parent().expect("target dir");
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let status = Command::new(cargo)
                .args(["build", "-p", "hobbes-capi", "--lib", "--profile", &profile])
                .env("CARGO_TARGET_DIR", target)
                .current_dir(MANIFEST_DIR)
                .status()
                .expect("run cargo build");
            assert!(status.success(), "cargo build -p hobbes-capi failed");
        }
        dir
    })
}

#[derive(Clone, Copy, Debug)]
enum Link {
    Shared,
    Static,
}

/// Compile the C test program against the header and the chosen library.
fn c_program(link: Link) -> &'static Path {
    static SHARED: OnceLock<PathBuf> = OnceLock::new();
    static STATIC: OnceLock<PathBuf> = OnceLock::new();
    let cell = match link {
        Link::Shared => &SHARED,
        Link::Static => &STATIC,
    };
    cell.get_or_init(|| {
        let lib = lib_dir();
        let manifest = Path::new(MANIFEST_DIR);
        let out = lib.join(format!("hobbes_c_test_{link:?}").to_lowercase());
        let mut cc = Command::new(std::env::var_os("CC").unwrap_or_else(|| "cc".into()));
        cc.args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic", "-I"])
            .arg(manifest.join("include"))
            .arg(manifest.join("tests/c/hobbes_test.c"))
            .arg("-o")
            .arg(&out);
        match link {
            Link::Shared => {
                cc.arg("-L").arg(lib).arg("-lhobbes");
                cc.arg(format!("-Wl,-rpath,{}", lib.display()));
            }
            // The native libraries rustc reports for the staticlib
            // (`--print native-static-libs`); hobbes.pc lists them too.
            Link::Static => {
                cc.arg(lib.join("libhobbes.a"));
                cc.args(["-lgcc_s", "-lutil", "-lrt", "-lpthread", "-lm", "-ldl"]);
            }
        }
        let result = cc.output().expect("run the C compiler (cc)");
        assert!(
            result.status.success(),
            "compiling hobbes_test.c ({link:?}) failed:\n{}",
            String::from_utf8_lossy(&result.stderr)
        );
        out
    })
}

/// What the C program printed: `key=value ...` lines, keyed by `key`.
struct Output {
    text: String,
}

impl Output {
    fn get(&self, key: &str) -> &str {
        let prefix = format!("{key}=");
        self.text
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {key}= line in:\n{}", self.text))
    }

    fn lines_starting(&self, word: &str) -> Vec<&str> {
        let prefix = format!("{word} ");
        self.text
            .lines()
            .filter(|l| l.starts_with(&prefix))
            .collect()
    }
}

/// Run the C program in `mode` with only the given HOBBES_* variables set.
fn run(link: Link, mode: &str, env: &[(&str, OsString)]) -> Output {
    let mut cmd = Command::new(c_program(link));
    cmd.args(mode.split(' '))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for var in HOBBES_VARS {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    // cargo puts target/<profile> on LD_LIBRARY_PATH, which beats the rpath; a
    // libhobbes.so left there by an older `cargo build` must not be the one loaded.
    cmd.env("LD_LIBRARY_PATH", lib_dir());
    let child = cmd.spawn().expect("spawn the C test program");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(RUN_TIMEOUT) {
        Ok(out) => out.expect("wait for the C test program"),
        Err(_) => {
            // SAFETY: kill has no memory-safety preconditions; pid is our
            // unreaped child, so it cannot have been recycled.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            panic!("hobbes_test {mode} ran past {RUN_TIMEOUT:?}");
        }
    };
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "hobbes_test {mode} ({link:?}) failed: {}\nstdout:\n{text}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Output { text }
}

fn errno_line(value: &str, errno: i32) -> String {
    format!("{value} errno={errno}")
}

#[test]
fn struct_layout_matches_rust() {
    let out = run(Link::Shared, "layout", &[]);
    let expect_enclave = format!(
        "size={} id={} parent={} name={} type={} state={} num_cores={} mem_bytes={}",
        size_of::<EnclaveInfo>(),
        offset_of!(EnclaveInfo, id),
        offset_of!(EnclaveInfo, parent),
        offset_of!(EnclaveInfo, name),
        offset_of!(EnclaveInfo, r#type),
        offset_of!(EnclaveInfo, state),
        offset_of!(EnclaveInfo, num_cores),
        offset_of!(EnclaveInfo, mem_bytes),
    );
    let expect_app = format!(
        "size={} id={} enclave_id={} name={} state={} exit_code={}",
        size_of::<AppInfo>(),
        offset_of!(AppInfo, id),
        offset_of!(AppInfo, enclave_id),
        offset_of!(AppInfo, name),
        offset_of!(AppInfo, state),
        offset_of!(AppInfo, exit_code),
    );
    assert_eq!(
        out.lines_starting("enclave_info"),
        [format!("enclave_info {expect_enclave}")]
    );
    assert_eq!(
        out.lines_starting("app_info"),
        [format!("app_info {expect_app}")]
    );
    assert_eq!(
        out.lines_starting("enum"),
        [format!(
            "enum size={} invalid_id=1",
            size_of::<CEnclaveState>()
        )]
    );
}

/// Without a daemon, init fails cleanly (ECONNREFUSED, a message naming
/// leviathan) and everything else fails the same way, except the identity
/// calls, which only read the environment.
#[test]
fn without_daemon_calls_fail_cleanly() {
    let empty = tempfile::tempdir().unwrap();
    for link in [Link::Shared, Link::Static] {
        let out = run(
            link,
            "nodaemon",
            &[
                ("HOBBES_STATE_DIR", empty.path().into()),
                ("HOBBES_ENCLAVE_ID", "7".into()),
            ],
        );
        let refused = libc::ECONNREFUSED;
        let init = out.get("init");
        assert!(
            init.starts_with(&errno_line("-1", refused)),
            "{link:?}: {init}"
        );
        assert!(init.contains("leviathan"), "{link:?}: {init}");
        assert_eq!(out.get("available"), "0");
        assert_eq!(out.get("my_enclave"), "7");
        assert_eq!(
            out.get("my_app"),
            errno_line("invalid", 0),
            "not a failure: errno kept"
        );
        let kill = out.get("kill");
        assert!(kill.starts_with(&errno_line("-1", refused)), "{kill}");
        assert!(kill.contains("leviathan"), "{kill}");
        assert!(out
            .get("enclaves")
            .starts_with(&errno_line("NULL", refused)));
        assert_eq!(out.get("list_null"), errno_line("NULL", libc::EINVAL));
        assert_eq!(out.get("id_of_null"), errno_line("invalid", libc::EINVAL));
        assert_eq!(out.get("launch_null"), errno_line("invalid", libc::EINVAL));
        assert_eq!(out.get("deinit"), "0");
    }

    // Outside any enclave, the host.
    let out = run(
        Link::Shared,
        "nodaemon",
        &[("HOBBES_STATE_DIR", empty.path().into())],
    );
    assert_eq!(out.get("my_enclave"), "0");
}

fn header() -> NisHeader {
    NisHeader {
        schema_version: SCHEMA_VERSION,
        hostname: "testnode".into(),
        daemon_pid: std::process::id(),
        generation: 1,
        started_ms: now_ms(),
        updated_ms: now_ms(),
        cgroup_mode: CgroupMode::None,
        privileged: false,
        socket: "/nonexistent/leviathan.sock".into(),
        heartbeat_interval_ms: 1000,
        heartbeat_timeout_ms: 3000,
        counters: Counters::default(),
        segment_files: Default::default(),
        vm_support: None,
    }
}

fn core(id: CoreId, ownership: Ownership) -> CoreRecord {
    CoreRecord {
        id,
        numa_node: 0,
        package: 0,
        core: id,
        ownership,
        shared_by: vec![],
        rev: 0,
    }
}

/// A NIS as a daemon would leave it: two cores, enclave 1 ("sim") owning
/// core 1, and app 5 in it, which exited with code 3.
fn write_nis(state_dir: &Path) -> NisWriter {
    let nis = NisWriter::open(state_dir.join("nis")).unwrap();
    let mut enclave = EnclaveRecord {
        id: 1,
        name: "sim".into(),
        kind: EnclaveKind::Native,
        state: EnclaveState::Running,
        parent: HOST_ENCLAVE,
        owner_uid: 0,
        owner_gid: 0,
        shared: false,
        host_ipc: false,
        cores: vec![1],
        mem_blocks: vec![],
        mem_bytes: 512 << 20,
        numa_nodes: vec![0],
        isolation: IsolationRecord::default(),
        control_pid: None,
        control_start_time: None,
        control: ControlEndpoint::unix_socket(
            state_dir
                .join("enclaves/1/control.sock")
                .display()
                .to_string(),
        ),
        nis_dir: state_dir.join("enclaves/1/nis").display().to_string(),
        created_ms: now_ms(),
        last_heartbeat_ms: now_ms(),
        crash_reason: None,
        vm: None,
        slurm: None,
        bound_to: None,
        step_cgroups: vec![],
        rev: 0,
    };
    let mut app = AppRecord {
        id: 5,
        name: "hello".into(),
        enclave: 1,
        owner_uid: 0,
        owner_gid: 0,
        argv: vec!["/bin/hello".into()],
        cwd: None,
        state: AppState::Exited,
        procs: vec![],
        exit: Some(ExitStatus::Code(3)),
        detail: None,
        started_ms: now_ms(),
        ended_ms: Some(now_ms()),
        stdout_log: String::new(),
        stderr_log: String::new(),
        joined: None,
        slurm: None,
        rev: 0,
    };
    nis.update(|t| {
        t.put_header(&header())?;
        t.put_core(&mut core(0, Ownership::Host))?;
        t.put_core(&mut core(1, Ownership::Allocated(1)))?;
        t.put_enclave(&mut enclave)?;
        t.put_app(&mut app)
    })
    .unwrap();
    nis
}

#[test]
fn queries_read_the_nis_directly() {
    let state = tempfile::tempdir().unwrap();
    let _nis = write_nis(state.path());
    // Found through the state directory, as on the host; no daemon runs.
    let out = run(
        Link::Shared,
        "nis",
        &[
            ("HOBBES_STATE_DIR", state.path().into()),
            ("HOBBES_ENCLAVE_ID", "1".into()),
        ],
    );
    assert_eq!(out.get("init"), "0");
    assert_eq!(out.get("available"), "1");
    assert_eq!(out.get("enclaves"), "1");
    assert_eq!(
        out.lines_starting("enclave"),
        [format!(
            "enclave id=1 name=sim type=native state=running parent=0 cores=1 mem={}",
            512 << 20
        )]
    );
    assert_eq!(out.get("apps"), "1");
    assert_eq!(
        out.lines_starting("app"),
        ["app id=5 name=hello enclave=1 state=exited exit=3"]
    );
    assert_eq!(out.get("id_of_sim"), "1");
    assert_eq!(out.get("name_of_sim"), "sim");
    assert_eq!(out.get("state_of_sim"), "running");
    assert_eq!(out.get("type_of_sim"), "native");
    assert_eq!(out.get("parent_of_sim"), "0");
    assert_eq!(out.get("my_enclave_name"), "sim");
    assert_eq!(out.get("app_name"), "hello");
    assert_eq!(out.get("app_state"), "exited");
    assert_eq!(out.get("app_enclave"), "1");

    let enoent = libc::ENOENT;
    assert_eq!(out.get("state_of_unknown"), errno_line("-1", enoent));
    assert_eq!(out.get("id_of_unknown"), errno_line("invalid", enoent));
    assert_eq!(out.get("name_of_unknown"), errno_line("NULL", enoent));
    assert_eq!(out.get("app_state_unknown"), errno_line("-1", enoent));
    // No control process listens on the enclave's socket.
    let ping = out.get("ping_sim");
    assert!(
        ping.starts_with(&errno_line("-1", libc::ECONNREFUSED)),
        "{ping}"
    );
    assert!(ping.contains("enclave 1 (sim)"), "{ping}");

    // Inside an enclave: HOBBES_NIS names its replica, whatever the state directory.
    let elsewhere = tempfile::tempdir().unwrap();
    let out = run(
        Link::Shared,
        "nis",
        &[
            ("HOBBES_STATE_DIR", elsewhere.path().into()),
            ("HOBBES_NIS", state.path().join("nis").into()),
        ],
    );
    assert_eq!(out.get("init"), "0");
    assert_eq!(out.get("name_of_sim"), "sim");
    // Outside any enclave this is the host, which this NIS does not record.
    assert_eq!(out.get("my_enclave_name"), errno_line("NULL", libc::ENOENT));
}

/// A `leviathan` started for the test, stopped with SIGTERM when dropped
/// (also when the test fails).
struct Daemon {
    child: Child,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: kill has no memory-safety preconditions; the child is not
        // reaped yet, so its pid still names it.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("leviathan ignored SIGTERM for 10 s; killing it");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tail(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.read_to_string(&mut text);
    }
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Start leviathan in `state`, or say why it cannot run here. A node has one
/// privileged daemon; when another one already runs (a developer's), the
/// test's own runs unprivileged, which is enough to launch on the host.
fn start_leviathan(state: &Path) -> Result<Daemon, String> {
    let exe = std::env::var_os("HOBBES_TEST_LEVIATHAN")
        .map(PathBuf::from)
        .unwrap_or_else(|| profile_dir().join("leviathan"));
    if !exe.exists() {
        return Err(format!("{} not built", exe.display()));
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err("needs root".into());
    }
    start_leviathan_with(&exe, state, &[]).or_else(|first| {
        start_leviathan_with(&exe, state, &["--unprivileged"])
            .map_err(|second| format!("{first}\nand with --unprivileged: {second}"))
    })
}

fn start_leviathan_with(exe: &Path, state: &Path, extra: &[&str]) -> Result<Daemon, String> {
    let log = state.join("leviathan.log");
    let log_file = File::create(&log).map_err(|e| e.to_string())?;
    let child = Command::new(exe)
        .arg("--state-dir")
        .arg(state)
        .args(["--host-cores", "0"])
        .args(extra)
        .env_remove("HOBBES_STATE_DIR")
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().map_err(|e| e.to_string())?)
        .stderr(log_file)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
    let mut daemon = Daemon { child };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let up = state.join("leviathan.sock").exists()
            && NisReader::open(state.join("nis"))
                .and_then(|r| r.header())
                .is_ok();
        if up {
            return Ok(daemon);
        }
        if let Ok(Some(status)) = daemon.child.try_wait() {
            return Err(format!("leviathan exited ({status}):\n{}", tail(&log)));
        }
        if Instant::now() > deadline {
            return Err(format!("leviathan not up after 20 s:\n{}", tail(&log)));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn live_daemon_launch_wait_kill() {
    let state = tempfile::tempdir().unwrap();
    let _daemon = match start_leviathan(state.path()) {
        Ok(d) => d,
        Err(why) => {
            // Straight to stdout, past the harness's output capture.
            let _ = writeln!(
                std::io::stdout(),
                "SKIP live_daemon_launch_wait_kill: {why}"
            );
            return;
        }
    };
    // Apps run in created enclaves, not on the host; the C API cannot create one.
    let spec =
        r#"<native name="capi-test"><cpus><cores>1</cores></cpus><memory size="128"/></native>"#;
    let enclave = Client::connect(state.path().join("leviathan.sock"))
        .and_then(|mut c| c.create_enclave(EnclaveSpec::from_xml(spec).unwrap()))
        .expect("create an enclave");
    let out = run(
        Link::Shared,
        &format!("live {}", enclave.id),
        &[("HOBBES_STATE_DIR", state.path().into())],
    );
    println!("{}", out.text);
    assert_eq!(out.get("init"), "0");
    assert_eq!(out.get("enclave_name"), "capi-test");
    assert!(out.get("launch_sh").parse::<u64>().is_ok(), "{}", out.text);
    assert_eq!(out.get("wait_sh"), "0");
    assert_eq!(out.get("exit_sh"), "3");
    assert_eq!(out.get("name_sh"), "sh");
    assert!(
        out.get("launch_sleep").parse::<u64>().is_ok(),
        "{}",
        out.text
    );
    assert_eq!(out.get("kill_sleep"), "0");
    assert_eq!(out.get("wait_sleep"), "0");
    assert_eq!(out.get("exit_sleep"), (128 + libc::SIGKILL).to_string());
    assert_eq!(out.get("ping"), "0");
    assert_eq!(out.get("rtt_positive"), "1");
}
