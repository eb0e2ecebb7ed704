//! `hobbes-bench ucx`: UCX's shared-memory transports between two enclaves,
//! with UCX rebuilt over our libxpmem (`scripts/ucx-xpmem.sh`; docs/xemem.md,
//! "UCX and MPI over XEMEM (rebuilt UCX)"), same run, alternating:
//!
//! 1. `ucx_perftest` (a server and a client launched through leviathan):
//!    `tag_bw` and `ucp_put_bw` at 4 MiB and `tag_lat` at 8 B, with
//!    `UCX_TLS=xpmem,self`, `posix,cma,self` (cma moves the rendezvous data;
//!    it has no active messages, so UCX needs posix beside it) and
//!    `posix,self`;
//! 2. the MPI ping-pong of `bench/c/pingpong.c` as Remora jobs, over MPICH
//!    (ch4:ucx) and Open MPI (`pml ucx`), both loading the rebuilt UCX through
//!    `LD_LIBRARY_PATH`.
//!
//! Where the ranks sit: xpmem and posix run between two enclaves (`ucx-a` on
//! core 0, `ucx-b` on core 1, both in the host's IPC namespace, which UCX's
//! shared-memory transports require). CMA cannot: `process_vm_readv` takes
//! a pid, and UCX 1.13 declares cma unreachable between PID namespaces
//! (`uct_cma_iface_is_reachable`), so the cma floor runs its two processes in
//! one enclave of both cores (`ucx-ab`): the best CMA gets on this node.
//! Not part of `all`; prints SKIP when the rebuilt UCX or our libxpmem is
//! missing.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hobbes_client::proto::model::{AppState, ExitStatus};
use hobbes_client::proto::msg::{EnclaveRef, JobApp, JobSpec, LaunchSpec, MpiFlavor, PmiMode};
use hobbes_client::Client;

use super::{header, median, row, BenchDaemon};

/// The daemon's host cores: the shared enclaves `ucx-a` and `ucx-b` get one
/// each, `ucx-ab` both.
pub const HOST_CORES: &str = "0-1";

const SIZE: usize = 4 << 20;
/// ucx_perftest iterations at 4 MiB and at 8 B.
const BW_ITERS: usize = 200;
const LAT_ITERS: usize = 20000;
/// A run that takes longer is killed and the bench fails.
const RUN_LIMIT: Duration = Duration::from_secs(120);

/// `hobbes-bench ucx [--reps N]`.
pub struct Opts {
    reps: usize,
}

impl Opts {
    pub fn parse(args: &[String]) -> Result<Opts> {
        let mut o = Opts { reps: 5 };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            match a.as_str() {
                "--reps" => o.reps = it.next().context("--reps N")?.parse()?,
                other => bail!("ucx: unknown argument {other:?} (--reps N)"),
            }
        }
        if o.reps == 0 {
            bail!("ucx: --reps must be at least 1");
        }
        Ok(o)
    }
}

use crate::ucx_prefix::rebuilt_prefix;

/// The rebuilt UCX and the libxpmem it loads.
struct Ucx {
    prefix: PathBuf,
    /// `<prefix>/lib:<dir of libxpmem.so>`.
    lib_path: String,
}

impl Ucx {
    /// The rebuilt UCX, with the libxpmem.so next to this executable; or why not.
    fn find() -> std::result::Result<Ucx, String> {
        let prefix = rebuilt_prefix();
        if !prefix.join("bin/ucx_perftest").exists() || !prefix.join("lib/ucx").is_dir() {
            return Err(format!(
                "rebuilt UCX not found in {} (scripts/ucx-xpmem.sh)",
                prefix.display()
            ));
        }
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
        if !dir.join("libxpmem.so").exists() {
            return Err(format!(
                "no libxpmem.so beside {} (cargo build --release -p xpmem-compat)",
                exe.display()
            ));
        }
        let lib_path = format!("{}:{}", prefix.join("lib").display(), dir.display());
        Ok(Ucx { prefix, lib_path })
    }

    fn bin(&self, name: &str) -> String {
        self.prefix.join("bin").join(name).display().to_string()
    }

    /// The environment of a UCX process using the transports `tls`.
    /// `UCX_LOG_LEVEL=info` makes UCX name the transports each endpoint
    /// uses (`ep_cfg[0]: tag(xpmem/memory)`), which the rows check.
    fn env(&self, tls: &str) -> Vec<(String, String)> {
        vec![
            ("LD_LIBRARY_PATH".into(), self.lib_path.clone()),
            ("UCX_TLS".into(), tls.into()),
            ("UCX_LOG_LEVEL".into(), "info".into()),
        ]
    }
}

/// The transports of a case: UCX_TLS, and the transport that must carry
/// the data (named in UCX's `ep_cfg` line).
#[derive(Clone, Copy)]
struct Tls {
    name: &'static str,
    ucx_tls: &'static str,
    carrier: &'static str,
}

const XPMEM: Tls = Tls {
    name: "xpmem",
    ucx_tls: "xpmem,self",
    carrier: "xpmem/memory",
};
const CMA: Tls = Tls {
    name: "cma",
    ucx_tls: "posix,cma,self",
    carrier: "cma/memory",
};
const POSIX: Tls = Tls {
    name: "posix",
    ucx_tls: "posix,self",
    carrier: "posix/memory",
};
const SYSV: Tls = Tls {
    name: "sysv",
    ucx_tls: "sysv,self",
    carrier: "sysv/memory",
};

/// Two enclaves (one process in each), or one enclave with both processes.
#[derive(Clone, Copy)]
enum Place {
    TwoEnclaves,
    OneEnclave,
}

impl Place {
    fn enclaves(self) -> (&'static str, &'static str) {
        match self {
            Place::TwoEnclaves => ("ucx-a", "ucx-b"),
            Place::OneEnclave => ("ucx-ab", "ucx-ab"),
        }
    }
    fn text(self) -> &'static str {
        match self {
            Place::TwoEnclaves => "2 enclaves",
            Place::OneEnclave => "1 enclave",
        }
    }
}

/// Kills the apps of the bench's enclaves if a run outlives [`RUN_LIMIT`]
/// (a hung peer must not hang the bench); disarmed on drop.
struct Watchdog {
    done: Option<mpsc::Sender<()>>,
    fired: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    fn arm(d: &BenchDaemon) -> Result<Watchdog> {
        let mut c = d.client()?;
        let (tx, rx) = mpsc::channel::<()>();
        let fired = Arc::new(AtomicU64::new(0));
        let flag = fired.clone();
        let thread = std::thread::spawn(move || {
            if rx.recv_timeout(RUN_LIMIT) != Err(mpsc::RecvTimeoutError::Timeout) {
                return;
            }
            flag.store(1, Ordering::SeqCst);
            for e in ["ucx-a", "ucx-b", "ucx-ab"] {
                let apps = c
                    .list_apps(Some(EnclaveRef::Name(e.into())))
                    .unwrap_or_default();
                for a in apps {
                    if matches!(a.state, AppState::Running | AppState::Starting) {
                        let _ = c.kill_app(a.id, libc::SIGKILL);
                    }
                }
            }
        });
        Ok(Watchdog {
            done: Some(tx),
            fired,
            thread: Some(thread),
        })
    }

    fn fired(&self) -> bool {
        self.fired.load(Ordering::SeqCst) != 0
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.done.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A port nobody listens on now (the kernel's pick).
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Whether something listens on TCP `port` (enclaves share the host's
/// network namespace, so /proc/net/tcp shows their sockets).
fn listening(port: u16) -> bool {
    let want = format!(":{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|f| {
        std::fs::File::open(f).is_ok_and(|file| {
            std::io::BufReader::new(file).lines().skip(1).any(|l| {
                let l = l.unwrap_or_default();
                let mut cols = l.split_whitespace();
                let local = cols.nth(1).unwrap_or("");
                let state = cols.nth(1).unwrap_or("");
                local.ends_with(&want) && state == "0A"
            })
        })
    })
}

/// One ucx_perftest result: the median latency (µs, from `tag_lat`) or the
/// overall bandwidth (MB/s, from the `_bw` tests), and the transports UCX
/// chose.
struct PerfResult {
    value: f64,
    ep_cfg: String,
}

fn app_output(rec: &hobbes_client::proto::model::AppRecord) -> String {
    let out = std::fs::read_to_string(&rec.stdout_log).unwrap_or_default();
    let err = std::fs::read_to_string(&rec.stderr_log).unwrap_or_default();
    format!("{out}{err}")
}

/// The `ep_cfg[..]: ...` lines UCX logs at info level, joined.
fn ep_cfg(text: &str) -> String {
    let mut v: Vec<&str> = text
        .lines()
        .filter_map(|l| l.find("ep_cfg[").map(|i| l[i..].trim()))
        .collect();
    v.dedup();
    v.join("; ")
}

/// Run ucx_perftest: the server in `place`'s first enclave, the client in
/// its second; the client's result.
fn perftest(
    d: &BenchDaemon,
    ucx: &Ucx,
    place: Place,
    tls: Tls,
    test: &str,
    size: usize,
    iters: usize,
) -> Result<PerfResult> {
    let mut c = d.client()?;
    let (srv_enclave, cli_enclave) = place.enclaves();
    let port = free_port()?.to_string();
    let mut env = ucx.env(tls.ucx_tls);
    // Buffers from the heap, as an application's: by default ucx_perftest
    // allocates them from UCX's own shared memory (sysv, posix), which
    // every shared-memory transport can then map directly.
    env.push(("UCX_ALLOC_PRIO".into(), "heap".into()));
    let dog = Watchdog::arm(d)?;
    let server = c.launch(LaunchSpec {
        enclave: EnclaveRef::Name(srv_enclave.into()),
        name: Some("perftest-server".into()),
        argv: vec![ucx.bin("ucx_perftest"), "-p".into(), port.clone()],
        env: env.clone(),
        cwd: None,
        stream: false,
    })?;
    let start = Instant::now();
    while !listening(port.parse()?) {
        let rec = c.app(server.id)?;
        if !matches!(rec.state, AppState::Running | AppState::Starting) {
            bail!(
                "ucx_perftest server ({}) ended before listening:\n{}",
                tls.name,
                app_output(&rec)
            );
        }
        if start.elapsed() > Duration::from_secs(20) {
            let _ = c.kill_app(server.id, libc::SIGKILL);
            bail!(
                "ucx_perftest server ({}) not listening after 20 s",
                tls.name
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut out = Vec::new();
    let client = c.launch_streaming(
        LaunchSpec {
            enclave: EnclaveRef::Name(cli_enclave.into()),
            name: Some("perftest-client".into()),
            argv: vec![
                ucx.bin("ucx_perftest"),
                "-p".into(),
                port,
                "127.0.0.1".into(),
                "-t".into(),
                test.into(),
                "-s".into(),
                size.to_string(),
                "-n".into(),
                iters.to_string(),
            ],
            env,
            cwd: None,
            stream: true,
        },
        |_| {},
        |_, data| out.extend_from_slice(data),
    )?;
    let server = c.wait_app(server.id)?;
    let fired = dog.fired();
    drop(dog);
    let text = String::from_utf8_lossy(&out).into_owned();
    if fired {
        bail!(
            "ucx_perftest {test} ({}, {}) ran past {RUN_LIMIT:?} and was killed:\n{text}",
            tls.name,
            place.text()
        );
    }
    if client.exit != Some(ExitStatus::Code(0)) || server.exit != Some(ExitStatus::Code(0)) {
        bail!(
            "ucx_perftest {test} with UCX_TLS={} ({}) failed (client {:?}, server {:?}):\n{text}\nserver:\n{}",
            tls.ucx_tls,
            place.text(),
            client.exit,
            server.exit,
            app_output(&server)
        );
    }
    let fields: Vec<f64> = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Final:"))
        .context("ucx_perftest printed no Final: line")?
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(f64::NAN))
        .collect();
    // Final: iterations, latency or overhead (50th percentile, average,
    // overall), bandwidth MB/s (average, overall), messages/s (average, overall).
    if fields.len() < 8 {
        bail!(
            "ucx_perftest's Final: line has {} fields:\n{text}",
            fields.len()
        );
    }
    let value = if test.ends_with("_lat") {
        fields[1]
    } else {
        fields[5]
    };
    let ep_cfg = ep_cfg(&text);
    if !ep_cfg.contains(tls.carrier) {
        bail!(
            "ucx_perftest with UCX_TLS={} did not use {} (UCX chose: {ep_cfg})",
            tls.ucx_tls,
            tls.carrier
        );
    }
    Ok(PerfResult { value, ep_cfg })
}

fn create_enclaves(c: &mut Client) -> Result<()> {
    for (name, cores) in [
        ("ucx-a", vec![0]),
        ("ucx-b", vec![1]),
        ("ucx-ab", vec![0, 1]),
    ] {
        let mut spec = super::spec(name, true);
        spec.cpus.count = 0;
        spec.cpus.ids = cores;
        spec.memory.size_mib = 1024;
        // UCX's shared-memory transports need one IPC namespace (uct_sm_iface_is_reachable).
        spec.host_ipc = true;
        let e = c.create_enclave(spec)?;
        println!("enclave {name}: cores {:?}", e.cores);
    }
    Ok(())
}

fn destroy_enclaves(c: &mut Client) {
    for name in ["ucx-a", "ucx-b", "ucx-ab"] {
        let _ = c.destroy_enclave(EnclaveRef::Name(name.into()));
    }
}

pub fn bench(d: &BenchDaemon, o: &Opts) -> Result<()> {
    let ucx = match Ucx::find() {
        Ok(u) => u,
        Err(why) => {
            println!("\n== ucx: SKIP ({why})");
            return Ok(());
        }
    };
    if !d.privileged() {
        println!("\n== ucx: SKIP (needs root: enclaves)");
        return Ok(());
    }
    let info = Command::new(ucx.bin("ucx_info"))
        .arg("-d")
        .env("LD_LIBRARY_PATH", &ucx.lib_path)
        .output()
        .context("ucx_info -d")?;
    let listed = String::from_utf8_lossy(&info.stdout).contains("Transport: xpmem");
    println!(
        "rebuilt UCX: {} (ucx_info -d lists xpmem: {})",
        ucx.prefix.display(),
        if listed { "yes" } else { "NO" }
    );
    let mut c = d.client()?;
    destroy_enclaves(&mut c);
    create_enclaves(&mut c)?;
    let result = run_all(d, &ucx, o);
    destroy_enclaves(&mut c);
    result
}

fn run_all(d: &BenchDaemon, ucx: &Ucx, o: &Opts) -> Result<()> {
    copy_ceiling_row(o.reps)?;
    perftest_rows(d, ucx, o)?;
    let dir = tempfile::Builder::new().prefix("ucx-bench-").tempdir()?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
    for mpi in [MpiFlavor::Mpich, MpiFlavor::OpenMpi] {
        match compile_pingpong(dir.path(), mpi) {
            Ok(exe) => mpi_rows(d, ucx, o, mpi, &exe)?,
            Err(e) => println!("\n== ucx: {}: SKIP ({e:#})", mpi_name(mpi)),
        }
    }
    Ok(())
}

/// The cases of one perftest, each run `reps` times, alternating; medians.
fn perf_medians(
    d: &BenchDaemon,
    ucx: &Ucx,
    reps: usize,
    test: &str,
    size: usize,
    iters: usize,
    cases: &[(Place, Tls)],
) -> Result<Vec<f64>> {
    let mut all = vec![Vec::new(); cases.len()];
    for _ in 0..reps {
        for (i, &(place, tls)) in cases.iter().enumerate() {
            let r = perftest(d, ucx, place, tls, test, size, iters)?;
            if all[i].is_empty() {
                println!("  {test} {} ({}): {}", tls.name, place.text(), r.ep_cfg);
            }
            all[i].push(r.value);
        }
    }
    Ok(all.into_iter().map(median).collect())
}

fn perftest_rows(d: &BenchDaemon, ucx: &Ucx, o: &Opts) -> Result<()> {
    use Place::*;
    header(&format!(
        "ucx: ucx_perftest between two processes, 4 MiB bandwidth (MB/s, median of {}, alternating)",
        o.reps
    ));
    let cases = [
        (TwoEnclaves, XPMEM),
        (OneEnclave, CMA),
        (OneEnclave, XPMEM),
        (TwoEnclaves, SYSV),
    ];
    let m = perf_medians(d, ucx, o.reps, "tag_bw", SIZE, BW_ITERS, &cases)?;
    row(
        "tag_bw 4 MiB: xpmem (2 enclaves) vs cma (1 enclave)",
        m[0],
        m[1],
        "MB/s",
        "target >= 1.5x",
    );
    row(
        "tag_bw 4 MiB: xpmem vs cma, both in 1 enclave",
        m[2],
        m[1],
        "MB/s",
        "(same PID namespace)",
    );
    row(
        "tag_bw 4 MiB: xpmem vs sysv (2 enclaves)",
        m[0],
        m[3],
        "MB/s",
        "(sysv: copy through a FIFO)",
    );
    // UCX 1.13 puts through active messages even with cma enabled
    // (ep_cfg: rma(posix/memory)): the floor of a put is a copy transport.
    let cases = [(TwoEnclaves, XPMEM), (TwoEnclaves, SYSV)];
    let m = perf_medians(d, ucx, o.reps, "ucp_put_bw", SIZE, BW_ITERS, &cases)?;
    row(
        "ucp_put_bw 4 MiB: xpmem vs sysv (2 enclaves)",
        m[0],
        m[1],
        "MB/s",
        "(cma: never chosen for RMA)",
    );
    header(&format!(
        "ucx: ucx_perftest tag_lat 8 B (us, median latency, median of {}, alternating)",
        o.reps
    ));
    let cases = [
        (TwoEnclaves, XPMEM),
        (OneEnclave, POSIX),
        (OneEnclave, XPMEM),
        (TwoEnclaves, SYSV),
    ];
    let m = perf_medians(d, ucx, o.reps, "tag_lat", 8, LAT_ITERS, &cases)?;
    row(
        "tag_lat 8 B: xpmem (2 enclaves) vs posix (1 enclave)",
        m[0],
        m[1],
        "us",
        "target <= 1.0x",
    );
    row(
        "tag_lat 8 B: xpmem vs posix, both in 1 enclave",
        m[2],
        m[1],
        "us",
        "target <= 1.0x",
    );
    row(
        "tag_lat 8 B: xpmem vs sysv (2 enclaves)",
        m[0],
        m[3],
        "us",
        "",
    );
    Ok(())
}

fn mpi_name(mpi: MpiFlavor) -> &'static str {
    match mpi {
        MpiFlavor::Mpich => "MPICH",
        MpiFlavor::OpenMpi => "Open MPI",
    }
}

/// bench/c/pingpong.c built with `mpi`'s compiler.
fn compile_pingpong(dir: &Path, mpi: MpiFlavor) -> Result<String> {
    let (cc, name) = match mpi {
        MpiFlavor::Mpich => ("mpicc.mpich", "pingpong-mpich"),
        MpiFlavor::OpenMpi => ("mpicc.openmpi", "pingpong-ompi"),
    };
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("c/pingpong.c");
    let out = dir.join(name);
    let st = Command::new(cc)
        .args(["-O2", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .with_context(|| format!("{cc} not installed"))?;
    if !st.success() {
        bail!("{cc} could not build {}", src.display());
    }
    Ok(out.display().to_string())
}

/// The environment of a rank of `mpi` on the rebuilt UCX with `tls`.
fn mpi_env(ucx: &Ucx, mpi: MpiFlavor, tls: Tls) -> Vec<(String, String)> {
    let mut env = ucx.env(tls.ucx_tls);
    if mpi == MpiFlavor::OpenMpi {
        // pml ucx, on any transport (its default list names only InfiniBand
        // and GPU ones, and without one of them it declines to run).
        for (k, v) in [
            ("OMPI_MCA_pml", "ucx"),
            ("OMPI_MCA_pml_ucx_tls", "any"),
            ("OMPI_MCA_pml_ucx_devices", "any"),
        ] {
            env.push((k.into(), v.into()));
        }
    }
    env
}

/// One ping-pong as a Remora job; rank 0's `pingpong` lines and UCX's ep_cfg.
fn pingpong_job(
    d: &BenchDaemon,
    ucx: &Ucx,
    mpi: MpiFlavor,
    exe: &str,
    place: Place,
    tls: Tls,
    args: &[String],
) -> Result<(String, String)> {
    let mut c = d.client()?;
    let env = mpi_env(ucx, mpi, tls);
    let mut argv = vec![exe.to_string()];
    argv.extend(args.iter().cloned());
    let app = |name: &str, enclave: &str, np: u32| JobApp {
        name: name.into(),
        enclave: EnclaveRef::Name(enclave.into()),
        np,
        argv: argv.clone(),
        env: env.clone(),
        cwd: None,
        mpi: Some(mpi),
    };
    let apps = match place {
        Place::TwoEnclaves => vec![app("pp0", "ucx-a", 1), app("pp1", "ucx-b", 1)],
        Place::OneEnclave => vec![app("pp", "ucx-ab", 2)],
    };
    let job = JobSpec {
        name: "ucx-pingpong".into(),
        apps,
        pmi: PmiMode::Tcp,
        // One MPI_COMM_WORLD across both applications.
        rank_spaces: Some(false),
        mpi: Some(mpi),
    };
    let dog = Watchdog::arm(d)?;
    let mut out = Vec::new();
    let rec = c.remora_launch(job, |_| {}, |_, _, _, data| out.extend_from_slice(data))?;
    let fired = dog.fired();
    drop(dog);
    let text = String::from_utf8_lossy(&out).into_owned();
    if fired || rec.exit_code != Some(0) {
        bail!(
            "{} ping-pong with UCX_TLS={} ({}) failed{}: {:?}\n{text}",
            mpi_name(mpi),
            tls.ucx_tls,
            place.text(),
            if fired {
                " (killed after the time limit)"
            } else {
                ""
            },
            rec.failure
        );
    }
    let cfg = ep_cfg(&text);
    if !cfg.contains(tls.carrier) {
        bail!(
            "{} ping-pong with UCX_TLS={} did not use {} (UCX chose: {cfg})",
            mpi_name(mpi),
            tls.ucx_tls,
            tls.carrier
        );
    }
    Ok((text, cfg))
}

/// `key=value` of the `pingpong size=SIZE` line.
fn pingpong_field(text: &str, size: usize, key: &str) -> Option<f64> {
    let want = format!("pingpong size={size} ");
    text.lines()
        .find_map(|l| l.find(&want).map(|i| &l[i..]))?
        .split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))?
        .parse()
        .ok()
}

fn mpi_rows(d: &BenchDaemon, ucx: &Ucx, o: &Opts, mpi: MpiFlavor, exe: &str) -> Result<()> {
    use Place::*;
    let name = mpi_name(mpi);
    let args = [
        format!("8:{}", LAT_ITERS / 4),
        format!("{SIZE}:{}", BW_ITERS / 2),
    ];
    let cases = [(TwoEnclaves, XPMEM), (OneEnclave, CMA), (OneEnclave, POSIX)];
    let (mut bw, mut lat) = (vec![Vec::new(); 3], vec![Vec::new(); 3]);
    for _ in 0..o.reps {
        for (i, &(place, tls)) in cases.iter().enumerate() {
            let (text, cfg) = pingpong_job(d, ucx, mpi, exe, place, tls, &args)?;
            if bw[i].is_empty() {
                println!("  {name} pingpong {} ({}): {cfg}", tls.name, place.text());
            }
            bw[i].push(pingpong_field(&text, SIZE, "bw_mbs").context("no 4 MiB line")?);
            lat[i].push(pingpong_field(&text, 8, "lat_us").context("no 8 B line")?);
        }
    }
    let bw: Vec<f64> = bw.into_iter().map(median).collect();
    let lat: Vec<f64> = lat.into_iter().map(median).collect();
    header(&format!(
        "ucx: {name} ping-pong (bench/c/pingpong.c) under Remora on the rebuilt UCX (median of {})",
        o.reps
    ));
    row(
        &format!("{name} 4 MiB MB/s: xpmem (2 enclaves) vs cma (1 enclave)"),
        bw[0],
        bw[1],
        "MB/s",
        "target >= 1.5x",
    );
    row(
        &format!("{name} 4 MiB MB/s: xpmem (2 enclaves) vs posix (1 enclave)"),
        bw[0],
        bw[2],
        "MB/s",
        "",
    );
    row(
        &format!("{name} 8 B latency: xpmem (2 enclaves) vs posix (1 enclave)"),
        lat[0],
        lat[2],
        "us",
        "target <= 1.0x",
    );
    Ok(())
}

/// The ceiling of the xpmem-vs-cma ratio on this node: xpmem moves a message
/// with one user-space `memcpy` out of the attached pages, cma with one
/// `process_vm_readv` (the kernel's copy); neither can do better than its
/// copy. Measured here between this process and a peer holding a 4 MiB
/// buffer (`hobbes-bench copy-peer`), alternating, medians.
fn copy_ceiling_row(reps: usize) -> Result<()> {
    use std::io::BufReader;
    use std::process::Stdio;
    let mut peer = Command::new(std::env::current_exe()?)
        .args(["copy-peer", &SIZE.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("start the copy peer")?;
    let mut line = String::new();
    BufReader::new(peer.stdout.take().context("peer stdout")?).read_line(&mut line)?;
    let addr = usize::from_str_radix(line.trim().trim_start_matches("0x"), 16)
        .with_context(|| format!("copy peer said {line:?}"))?;
    let pid = nix::unistd::Pid::from_raw(peer.id() as i32);
    let src = vec![1u8; SIZE];
    let mut dst = vec![0u8; SIZE];
    let (mut by_memcpy, mut by_readv) = (Vec::new(), Vec::new());
    for _ in 0..reps.max(1) * 20 {
        let t = Instant::now();
        dst.copy_from_slice(std::hint::black_box(&src));
        by_memcpy.push(SIZE as f64 / t.elapsed().as_secs_f64() / 1e6);
        let remote = [nix::sys::uio::RemoteIoVec {
            base: addr,
            len: SIZE,
        }];
        let t = Instant::now();
        let n = nix::sys::uio::process_vm_readv(
            pid,
            &mut [std::io::IoSliceMut::new(&mut dst)],
            &remote,
        )
        .context("process_vm_readv from the copy peer")?;
        by_readv.push(SIZE as f64 / t.elapsed().as_secs_f64() / 1e6);
        anyhow::ensure!(
            n == SIZE && dst.iter().all(|&b| b == 7),
            "process_vm_readv copied wrong data"
        );
    }
    let stdin = peer.stdin.take();
    crate::close_and_reap(&mut peer, stdin); // the peer exits on EOF
    header("ucx: the ceiling of any xpmem-vs-cma ratio here (4 MiB, in-process)");
    row(
        "one copy: memcpy vs process_vm_readv",
        median(by_memcpy),
        median(by_readv),
        "MB/s",
        "(xpmem's copy vs cma's)",
    );
    Ok(())
}

/// `hobbes-bench copy-peer SIZE`: hold SIZE bytes of 7s, print their address,
/// exit when stdin closes (the peer of [`copy_ceiling_row`]).
pub fn copy_peer_main(args: &[String]) -> Result<()> {
    use std::io::{Read, Write};
    let size: usize = args.first().context("copy-peer SIZE")?.parse()?;
    let buf = vec![7u8; size];
    println!("{:#x}", buf.as_ptr() as usize);
    std::io::stdout().flush()?;
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    drop(std::hint::black_box(buf));
    Ok(())
}
