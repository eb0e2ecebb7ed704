//! `hobbes-bench`: Hobbes against its floors, same run, medians and ratios.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hobbes_client::proto::model::EnclaveKind;
use hobbes_client::proto::msg::{EnclaveRef, LaunchSpec};
use hobbes_client::proto::spec::{CpuRequest, EnclaveSpec, MemRequest};
use hobbes_client::{Client, EnclaveConn, NisReader};

mod insitu;
mod lwk;
mod plot;
mod remora;
mod slurm;
mod ucx;
mod ucx_prefix;
mod vm;
mod xasm;
mod xemem;
mod xpmem;

const USAGE: &str = "\
usage: hobbes-bench [all | nis | ping | create | xemem [--out DIR] | xpmem | remora | xasm
                    | lwk [--reps N] [--detour-secs S] [--memory MIB] [--trap-nr NR] [--programs DIR] [--native-only] [--json]
                    | vm [--reps N] [--pings N] [--memory MIB]
                    | insitu [--out DIR] [--reps N] [--sizes A,B,..] | slurm [--reps N]
                    | ucx [--reps N]]

Each bench runs Hobbes and its floor (the peer named in the issue) in the same run and
prints medians and the ratio. All but insitu need root (they start a privileged
leviathan in a temporary state directory); slurm starts its own local cluster
(scripts/slurm-cluster.sh) and is not part of `all`; ucx needs UCX rebuilt over our
libxpmem (scripts/ucx-xpmem.sh) and is not part of `all`. bench/README.md explains every row.";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("echo-server") => echo_server(Path::new(args.get(2).context("echo-server SOCKET")?)),
        Some("nis") => with_daemon(bench_nis),
        Some("ping") => with_daemon(bench_ping),
        Some("create") => with_daemon(bench_create),
        Some("xemem") => {
            let out = xemem::out_dir(&args[2..])?;
            with_daemon(|d| xemem::bench(d, &out))
        }
        Some("xpmem") => with_daemon(xpmem::bench),
        Some("xpmem-owner") => xpmem::owner_main(),
        Some("copy-peer") => ucx::copy_peer_main(&args[2..]),
        Some("remora") => with_daemon(remora::bench),
        Some("xasm") => with_daemon(xasm::bench),
        Some("lwk") => {
            let o = lwk::Opts::parse(&args[2..])?;
            with_daemon(|d| lwk::bench(d, &o))
        }
        Some("vm") => {
            let o = vm::Opts::parse(&args[2..])?;
            with_daemon(|d| vm::bench(d, &o))
        }
        Some("insitu") => insitu::main(&args[2..]),
        Some("slurm") => slurm::bench(&slurm::Opts::parse(&args[2..])?),
        Some("ucx") => {
            let o = ucx::Opts::parse(&args[2..])?;
            with_daemon_on(ucx::HOST_CORES, |d| ucx::bench(d, &o))
        }
        Some("xemem-owner") => xemem::owner_main(&args[2..]),
        Some("xemem-echo") => xemem::echo_main(&args[2..]),
        Some("all") | None => {
            with_daemon(|d| {
                bench_nis(d)?;
                bench_ping(d)?;
                bench_create(d)?;
                xemem::bench(d, &xemem::out_dir(&[])?)?;
                xpmem::bench(d)?;
                xasm::bench(d)?;
                remora::bench(d)?;
                lwk::bench(d, &lwk::Opts::default())?;
                vm::bench(d, &vm::Opts::default())
            })?;
            // Starts its own (unprivileged) daemon once the one above is gone.
            insitu::main(&[])
        }
        Some("-h") | Some("--help") | Some("help") => {
            println!("{USAGE}");
            Ok(())
        }
        Some(other) => {
            bail!("unknown bench {other:?}: use nis, ping, create, xemem, xpmem, remora, xasm, lwk, vm, insitu, slurm, ucx or all (--help says more)")
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn row(name: &str, ours: f64, floor: f64, unit: &str, target: &str) {
    println!(
        "{name:<54} {ours:>10.2} {unit:<3} {floor:>10.2} {unit:<3} {:>8.2}x  {target}",
        ours / floor
    );
}

fn header(title: &str) {
    println!("\n== {title}");
    println!(
        "{:<54} {:>14} {:>14} {:>9}  target",
        "", "hobbes", "floor", "ratio"
    );
}

/// A leviathan in a temporary state directory, stopped (SIGTERM) on drop.
struct BenchDaemon {
    dir: tempfile::TempDir,
    child: Child,
    exe: PathBuf,
}

impl BenchDaemon {
    fn socket(&self) -> PathBuf {
        self.dir.path().join("leviathan.sock")
    }
    fn client(&self) -> Result<Client> {
        Ok(Client::connect(self.socket())?)
    }
    fn privileged(&self) -> bool {
        nix_euid() == 0
    }
}

impl Drop for BenchDaemon {
    fn drop(&mut self) {
        // SAFETY: kill takes plain integers.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new(&self.exe)
            .args(["cleanup", "--state-dir"])
            .arg(self.dir.path())
            .status();
    }
}

/// Cores online on the node (our own affinity is confined to the host's cores).
fn online_cores() -> usize {
    // SAFETY: sysconf takes an integer name and cannot fail for this one.
    unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as usize
}

fn nix_euid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

/// A helper process of this bench (`hobbes-bench <mode> ARGS`) spoken to
/// in lines over its stdin and stdout. Dropping it closes its stdin (it
/// then cleans up and exits) and reaps it.
struct Helper {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    stdout: std::io::BufReader<std::process::ChildStdout>,
    mode: String,
}

impl Helper {
    fn spawn(mode: &str, args: &[&str]) -> Result<Helper> {
        use std::process::{Command, Stdio};
        let mut child = Command::new(std::env::current_exe()?)
            .arg(mode)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawn {mode}"))?;
        let stdin = child.stdin.take();
        let stdout = std::io::BufReader::new(child.stdout.take().context("helper stdout")?);
        Ok(Helper {
            child,
            stdin,
            stdout,
            mode: mode.to_string(),
        })
    }

    /// Its next line, trimmed.
    fn read_line(&mut self) -> Result<String> {
        use std::io::BufRead;
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            bail!(
                "{} closed its output (it died or failed; see its stderr above)",
                self.mode
            );
        }
        Ok(line.trim().to_string())
    }

    /// Send it `what` and read its answer.
    fn ask(&mut self, what: &str) -> Result<String> {
        use std::io::Write;
        let stdin = self.stdin.as_mut().context("helper stdin closed")?;
        writeln!(stdin, "{what}")?;
        stdin.flush()?;
        self.read_line()
    }

    fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.id() as i32)
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        close_and_reap(&mut self.child, self.stdin.take());
    }
}

/// End a helper process that exits when its stdin closes: close it, give
/// the process 10 s to exit, then kill it; reaped either way.
fn close_and_reap(child: &mut std::process::Child, stdin: Option<std::process::ChildStdin>) {
    drop(stdin);
    let start = std::time::Instant::now();
    while start.elapsed() < std::time::Duration::from_secs(10) {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn with_daemon(f: impl FnOnce(&BenchDaemon) -> Result<()>) -> Result<()> {
    with_daemon_on("0", f)
}

/// A daemon whose host (and shared enclaves) run on `host_cores` (leviathan's
/// `--host-cores`).
fn with_daemon_on(host_cores: &str, f: impl FnOnce(&BenchDaemon) -> Result<()>) -> Result<()> {
    let exe = std::env::current_exe()?.with_file_name("leviathan");
    if !exe.exists() {
        bail!(
            "{} not found: build it with `cargo build --release -p leviathan -p hobbes-bench`",
            exe.display()
        );
    }
    let dir = tempfile::Builder::new().prefix("hobbes-bench-").tempdir()?;
    let mut cmd = Command::new(&exe);
    cmd.arg("--state-dir").arg(dir.path()).args([
        "--host-cores",
        host_cores,
        "--host-memory",
        "2048",
    ]);
    if nix_euid() != 0 {
        cmd.arg("--unprivileged");
    }
    let log = std::fs::File::create(dir.path().join("leviathan.log"))?;
    let child = cmd.stdout(Stdio::null()).stderr(log).spawn()?;
    let d = BenchDaemon { dir, child, exe };
    let start = Instant::now();
    while Client::connect(d.socket())
        .and_then(|mut c| c.status())
        .is_err()
    {
        if start.elapsed() > Duration::from_secs(15) {
            bail!("leviathan did not start; see its log");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    println!(
        "leviathan running in {} ({})",
        d.dir.path().display(),
        if d.privileged() {
            "privileged"
        } else {
            "unprivileged"
        }
    );
    f(&d)
}

fn spec(name: &str, shared: bool) -> EnclaveSpec {
    EnclaveSpec {
        name: name.into(),
        kind: EnclaveKind::Native,
        shared,
        host_ipc: false,
        cpus: CpuRequest {
            count: 1,
            ..Default::default()
        },
        memory: MemRequest {
            size_mib: 128,
            ..Default::default()
        },
        vm: None,
    }
}

/// NIS direct read against the same query through the daemon.
fn bench_nis(d: &BenchDaemon) -> Result<()> {
    let mut c = d.client()?;
    let shared = online_cores() < 2;
    c.create_enclave(spec("nisbench", shared))?;
    let nis = NisReader::open(d.dir.path().join("nis"))?;
    const N: usize = 2000;
    let (mut direct, mut rpc) = (Vec::new(), Vec::new());
    for _round in 0..9 {
        let t = Instant::now();
        for _ in 0..N {
            let e = nis.enclave_by_name("nisbench")?.context("missing")?;
            std::hint::black_box(e);
        }
        direct.push(t.elapsed().as_secs_f64() * 1e6 / N as f64);
        let t = Instant::now();
        for _ in 0..N {
            let e = c.enclave(EnclaveRef::Name("nisbench".into()))?;
            std::hint::black_box(e);
        }
        rpc.push(t.elapsed().as_secs_f64() * 1e6 / N as f64);
    }
    c.destroy_enclave(EnclaveRef::Name("nisbench".into()))?;
    header("NIS: enclave lookup by name (median of 9 rounds x 2000)");
    let (ours, floor) = (median(direct), median(rpc));
    row(
        "direct NIS read vs daemon round trip",
        ours,
        floor,
        "us",
        "target <= 0.10x (10x faster)",
    );
    println!(
        "  direct read is {:.1}x faster than the round trip",
        floor / ours
    );
    Ok(())
}

/// Bare echo server: reads 8 bytes, writes them back, until EOF.
fn echo_server(path: &Path) -> Result<()> {
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path)?;
    std::fs::write(path.with_extension("ready"), b"")?;
    let (mut s, _) = l.accept()?;
    let mut buf = [0u8; 64];
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        s.write_all(&buf[..n])?;
    }
}

fn echo_round_trips(s: &mut UnixStream, n: usize) -> Result<Vec<f64>> {
    let mut out = Vec::with_capacity(n);
    let mut buf = [0u8; 64];
    // Same payload size as a ping frame, so only the protocol differs.
    let msg = [7u8; 34];
    for _ in 0..n {
        let t = Instant::now();
        s.write_all(&msg)?;
        let mut got = 0;
        while got < msg.len() {
            got += s.read(&mut buf[got..])?;
        }
        out.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok(out)
}

fn wait_file(p: &Path) -> Result<()> {
    let start = Instant::now();
    while !p.exists() {
        if start.elapsed() > Duration::from_secs(10) {
            bail!("{} did not appear", p.display());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// Ping the control process against a bare echo server in the same enclave
/// (so both cross the same cores).
fn bench_ping(d: &BenchDaemon) -> Result<()> {
    let mut c = d.client()?;
    let two_cores = online_cores() >= 2;
    header("ping: control process round trip vs bare Unix-socket echo (median of 5 x 2000)");
    for (name, shared) in [("pingx", false), ("pings", true)] {
        if !shared && !two_cores {
            continue;
        }
        let e = c.create_enclave(spec(name, shared))?;
        let sock = d.dir.path().join(format!("{name}-echo.sock"));
        let me = std::env::current_exe()?;
        c.launch(LaunchSpec {
            enclave: EnclaveRef::Name(name.into()),
            name: Some("echo".into()),
            argv: vec![
                me.display().to_string(),
                "echo-server".into(),
                sock.display().to_string(),
            ],
            env: vec![],
            cwd: None,
            stream: false,
        })?;
        wait_file(&sock.with_extension("ready"))?;
        let mut conn = EnclaveConn::to_enclave(&e)?;
        let mut echo = UnixStream::connect(&sock)?;
        let (mut ping_rtts, mut echo_rtts) = (Vec::new(), Vec::new());
        for _ in 0..5 {
            let mut p = Vec::with_capacity(2000);
            for _ in 0..2000 {
                p.push(conn.ping()?.1.as_secs_f64() * 1e6);
            }
            ping_rtts.push(median(p));
            echo_rtts.push(median(echo_round_trips(&mut echo, 2000)?));
        }
        let where_ = if shared {
            "same core (shared enclave)"
        } else {
            "enclave core (exclusive)"
        };
        row(
            &format!("ping, control process on {where_}"),
            median(ping_rtts),
            median(echo_rtts),
            "us",
            "target <= 1.5x",
        );
        c.destroy_enclave(EnclaveRef::Name(name.into()))?;
    }
    Ok(())
}

/// Create enclave -> first app ran, against a shell script of the raw steps.
fn bench_create(d: &BenchDaemon) -> Result<()> {
    if !d.privileged() {
        println!("\n== create: SKIP (needs root: cgroups and namespaces)");
        return Ok(());
    }
    let two_cores = online_cores() >= 2;
    let mut c = d.client()?;
    let script = d.dir.path().join("raw-steps.sh");
    // The floor: what an admin would type, minus our bookkeeping. The cgroups
    // are siblings of ours; the same core and memory node.
    std::fs::write(
        &script,
        r#"set -e
cs=/sys/fs/cgroup/cpuset/hobbes/raw$1; mem=/sys/fs/cgroup/memory/raw$1
mkdir $cs $mem
echo $2 > $cs/cpuset.cpus; echo 0 > $cs/cpuset.mems; echo 134217728 > $mem/memory.limit_in_bytes
echo $$ > $cs/cgroup.procs; echo $$ > $mem/cgroup.procs
unshare --pid --fork --mount --ipc --uts --mount-proc true
"#,
    )?;
    let core = if two_cores { "1" } else { "0" };
    let (mut ours, mut raw) = (Vec::new(), Vec::new());
    for i in 0..15 {
        let t = Instant::now();
        c.create_enclave(spec("createbench", !two_cores))?;
        let mut l = LaunchSpec {
            enclave: EnclaveRef::Name("createbench".into()),
            name: None,
            argv: vec!["true".into()],
            env: vec![],
            cwd: None,
            stream: true,
        };
        l.stream = true;
        c.launch_streaming(l, |_| {}, |_, _| {})?;
        ours.push(t.elapsed().as_secs_f64() * 1e3);
        c.destroy_enclave(EnclaveRef::Name("createbench".into()))?;

        let t = Instant::now();
        let st = Command::new("sh")
            .arg(&script)
            .arg(i.to_string())
            .arg(core)
            .status()?;
        raw.push(t.elapsed().as_secs_f64() * 1e3);
        // Clean up the floor's cgroups (not timed).
        let _ = std::fs::remove_dir(format!("/sys/fs/cgroup/cpuset/hobbes/raw{i}"));
        let _ = std::fs::remove_dir(format!("/sys/fs/cgroup/memory/raw{i}"));
        if !st.success() {
            bail!("raw-steps script failed");
        }
    }
    header("create: enclave create -> first app ran (median of 15, alternating)");
    row(
        "create + launch `true` vs raw shell steps",
        median(ours),
        median(raw),
        "ms",
        "target <= 1.5x",
    );
    Ok(())
}
