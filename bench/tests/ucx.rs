//! The real XPMEM clients on our libxpmem: UCX rebuilt from Debian's source
//! with `--with-xpmem` (scripts/ucx-xpmem.sh), its tools, and both Debian
//! MPIs loading it (docs/xemem.md, "UCX and MPI over XEMEM (rebuilt UCX)").
//!
//! Each test prints `SKIP <test>: rebuilt UCX not found (scripts/ucx-xpmem.sh)`
//! and returns when that build is absent, so the default suite never builds
//! UCX. The processes are host processes beside an unprivileged leviathan
//! (the name server our libxpmem talks to); `hobbes-bench ucx` runs them in
//! enclaves.

#[path = "../../crates/hobbes-xemem/tests/support/mod.rs"]
mod support;
#[path = "../src/ucx_prefix.rs"]
mod ucx_prefix;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::daemon::{run_with_timeout, skip, Daemon};
use ucx_prefix::rebuilt_prefix;

const LIMIT: Duration = Duration::from_secs(120);

/// The rebuilt UCX and our libxpmem, ready to run.
struct Ucx {
    prefix: PathBuf,
    libxpmem_dir: PathBuf,
}

impl Ucx {
    /// Or print the SKIP line and return None.
    fn find(test: &str) -> Option<Ucx> {
        let prefix = rebuilt_prefix();
        if !prefix.join("bin/ucx_perftest").exists() || !prefix.join("lib/ucx").is_dir() {
            skip(test, "rebuilt UCX not found (scripts/ucx-xpmem.sh)");
            return None;
        }
        let libxpmem_dir =
            support::cbuild::lib_dir("xpmem", "xpmem-compat", env!("CARGO_MANIFEST_DIR"));
        Some(Ucx {
            prefix,
            libxpmem_dir,
        })
    }

    fn bin(&self, name: &str) -> PathBuf {
        self.prefix.join("bin").join(name)
    }

    fn lib_path(&self) -> String {
        format!(
            "{}:{}",
            self.prefix.join("lib").display(),
            self.libxpmem_dir.display()
        )
    }

    /// A command on the rebuilt UCX with transports `tls`, pointed at `daemon`.
    fn command(&self, program: &Path, tls: &str, daemon: &Daemon) -> Command {
        let mut cmd = Command::new(program);
        daemon.configure(&mut cmd);
        cmd.env("LD_LIBRARY_PATH", self.lib_path())
            .env("UCX_TLS", tls)
            .env("UCX_LOG_LEVEL", "info")
            // ucx_perftest's buffers from the heap, as an application's
            // (by default it takes UCX's own shared memory).
            .env("UCX_ALLOC_PRIO", "heap")
            .stdin(Stdio::null());
        cmd
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The transports UCX says an endpoint uses (`ep_cfg[0]: tag(xpmem/memory)`).
fn ep_cfg(text: &str) -> Vec<&str> {
    text.lines()
        .filter_map(|l| l.find("ep_cfg[").map(|i| l[i..].trim()))
        .collect()
}

/// Every UCX process must have loaded the rebuilt libucp, not the system's.
fn assert_rebuilt_ucx_loaded(ucx: &Ucx, text: &str) {
    let want = format!("loaded from {}", ucx.prefix.join("lib").display());
    let versions: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("UCX  INFO  Version"))
        .collect();
    assert!(!versions.is_empty(), "UCX printed no version line:\n{text}");
    for v in &versions {
        assert!(v.contains(&want), "a process loaded another UCX: {v}");
    }
}

#[test]
fn ucx_info_lists_the_xpmem_transport_of_our_libxpmem() {
    let test = "ucx_info_lists_the_xpmem_transport_of_our_libxpmem";
    let Some(ucx) = Ucx::find(test) else { return };
    let out = run_with_timeout(
        Command::new(ucx.bin("ucx_info"))
            .arg("-d")
            .env("LD_LIBRARY_PATH", ucx.lib_path()),
        LIMIT,
    );
    let with = text(&out);
    assert!(out.status.success(), "ucx_info -d: {}\n{with}", out.status);
    for tl in ["xpmem", "cma", "posix", "sysv"] {
        assert!(
            with.contains(&format!("Transport: {tl}\n")),
            "ucx_info -d lists no {tl}:\n{with}"
        );
    }
    // Without our library on the path the module cannot load: the
    // transport is ours, not a leftover.
    let out = run_with_timeout(
        Command::new(ucx.bin("ucx_info"))
            .arg("-d")
            .env("LD_LIBRARY_PATH", ucx.prefix.join("lib")),
        LIMIT,
    );
    assert!(
        !text(&out).contains("Transport: xpmem"),
        "xpmem listed without our libxpmem on LD_LIBRARY_PATH"
    );
}

/// A ucx_perftest server, killed and reaped on drop.
struct Server(Option<Child>);

impl Server {
    fn wait(mut self) -> Output {
        self.0
            .take()
            .expect("server")
            .wait_with_output()
            .expect("wait server")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn listening(port: u16) -> bool {
    let want = format!(":{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|f| {
        std::fs::read_to_string(f).is_ok_and(|t| {
            t.lines().skip(1).any(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                cols.len() > 3 && cols[1].ends_with(&want) && cols[3] == "0A"
            })
        })
    })
}

/// ucx_perftest between two processes; the client's output and the Final
/// line's fields.
fn perftest(
    ucx: &Ucx,
    daemon: &Daemon,
    tls: &str,
    test: &str,
    size: &str,
    iters: &str,
) -> (String, Vec<f64>) {
    let port = free_port().to_string();
    let mut server_cmd = ucx.command(&ucx.bin("ucx_perftest"), tls, daemon);
    server_cmd
        .args(["-p", &port])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut server = Server(Some(server_cmd.spawn().expect("spawn ucx_perftest server")));
    let start = Instant::now();
    while !listening(port.parse().expect("port")) {
        if let Ok(Some(st)) = server.0.as_mut().expect("server").try_wait() {
            panic!(
                "ucx_perftest server exited before listening: {st}\n{}",
                text(&server.wait())
            );
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "server not listening after 30 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut client = ucx.command(&ucx.bin("ucx_perftest"), tls, daemon);
    client.args([
        "-p",
        &port,
        "127.0.0.1",
        "-t",
        test,
        "-s",
        size,
        "-n",
        iters,
    ]);
    let out = run_with_timeout(&mut client, LIMIT);
    let client_text = text(&out);
    let server_out = server.wait();
    assert!(
        out.status.success() && server_out.status.success(),
        "ucx_perftest {test} with UCX_TLS={tls}: client {}, server {}\nclient:\n{client_text}\nserver:\n{}",
        out.status,
        server_out.status,
        text(&server_out)
    );
    let fields: Vec<f64> = client_text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Final:"))
        .unwrap_or_else(|| panic!("no Final: line:\n{client_text}"))
        .split_whitespace()
        .map(|f| f.parse().expect("a number in Final:"))
        .collect();
    assert_eq!(fields.len(), 8, "Final: {fields:?}");
    assert_eq!(
        fields[0],
        iters.parse::<f64>().expect("iters"),
        "iterations completed"
    );
    assert_rebuilt_ucx_loaded(ucx, &client_text);
    assert_rebuilt_ucx_loaded(ucx, &text(&server_out));
    (client_text, fields)
}

#[test]
fn ucx_perftest_tag_bw_4mib_over_xpmem() {
    let test = "ucx_perftest_tag_bw_4mib_over_xpmem";
    let Some(ucx) = Ucx::find(test) else { return };
    let Some(daemon) = Daemon::start(test) else {
        return;
    };
    let (out, fields) = perftest(&ucx, &daemon, "xpmem,self", "tag_bw", "4194304", "50");
    assert_eq!(ep_cfg(&out), ["ep_cfg[0]: tag(xpmem/memory)"], "{out}");
    assert!(fields[5] > 100.0, "bandwidth {} MB/s", fields[5]);
}

#[test]
fn ucx_perftest_put_bw_and_tag_lat_over_xpmem() {
    let test = "ucx_perftest_put_bw_and_tag_lat_over_xpmem";
    let Some(ucx) = Ucx::find(test) else { return };
    let Some(daemon) = Daemon::start(test) else {
        return;
    };
    let (out, _) = perftest(&ucx, &daemon, "xpmem,self", "ucp_put_bw", "4194304", "50");
    assert_eq!(ep_cfg(&out), ["ep_cfg[0]: rma(xpmem/memory)"], "{out}");
    let (out, fields) = perftest(&ucx, &daemon, "xpmem,self", "tag_lat", "8", "2000");
    assert_eq!(ep_cfg(&out), ["ep_cfg[0]: tag(xpmem/memory)"], "{out}");
    assert!(fields[1] > 0.0, "latency {} us", fields[1]);
}

#[test]
fn ucx_perftest_tag_bw_4mib_over_cma_and_posix() {
    let test = "ucx_perftest_tag_bw_4mib_over_cma_and_posix";
    let Some(ucx) = Ucx::find(test) else { return };
    let Some(daemon) = Daemon::start(test) else {
        return;
    };
    let (out, _) = perftest(&ucx, &daemon, "posix,cma,self", "tag_bw", "4194304", "50");
    assert_eq!(
        ep_cfg(&out),
        ["ep_cfg[0]: tag(posix/memory cma/memory)"],
        "{out}"
    );
    let (out, _) = perftest(&ucx, &daemon, "posix,self", "tag_bw", "4194304", "20");
    assert_eq!(ep_cfg(&out), ["ep_cfg[0]: tag(posix/memory)"], "{out}");
}

/// bench/c/pingpong.c built with `cc` into a temporary directory.
fn pingpong(cc: &str, dir: &Path) -> Option<PathBuf> {
    let exe = dir.join("pingpong");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("c/pingpong.c");
    let st = Command::new(cc)
        .args(["-O2", "-o"])
        .arg(&exe)
        .arg(&src)
        .status()
        .ok()?;
    assert!(st.success(), "{cc} failed on {}", src.display());
    Some(exe)
}

const PINGPONG_ARGS: [&str; 3] = ["8:200", "65536:50", "4194304:10"];

/// The ping-pong's lines: one per size, each checked.
fn assert_pingpong_checked(out: &str) {
    for arg in PINGPONG_ARGS {
        let size = arg.split(':').next().expect("size");
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("pingpong size={size} ")))
            .unwrap_or_else(|| panic!("no line for size {size}:\n{out}"));
        assert!(line.ends_with("checked=ok"), "{line}");
    }
}

fn mpich_pingpong(test: &str, tls: &str, carrier: &str) {
    let Some(ucx) = Ucx::find(test) else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(exe) = pingpong("mpicc.mpich", dir.path()) else {
        skip(
            test,
            "mpicc.mpich not installed (apt-get install mpich libmpich-dev)",
        );
        return;
    };
    let Some(daemon) = Daemon::start(test) else {
        return;
    };
    let mut cmd = ucx.command(Path::new("mpiexec.mpich"), tls, &daemon);
    cmd.args(["-n", "2"]).arg(&exe).args(PINGPONG_ARGS);
    let out = run_with_timeout(&mut cmd, LIMIT);
    let t = text(&out);
    assert!(
        out.status.success(),
        "MPICH pingpong, UCX_TLS={tls}: {}\n{t}",
        out.status
    );
    assert_pingpong_checked(&t);
    assert_rebuilt_ucx_loaded(&ucx, &t);
    let cfg = ep_cfg(&t);
    assert!(
        cfg.iter().any(|c| c.contains(carrier)),
        "UCX_TLS={tls} did not carry the data over {carrier}: {cfg:?}\n{t}"
    );
}

#[test]
fn mpich_pingpong_over_xpmem_checks_every_byte() {
    mpich_pingpong(
        "mpich_pingpong_over_xpmem_checks_every_byte",
        "xpmem,self",
        "xpmem/memory",
    );
}

#[test]
fn mpich_pingpong_over_cma_checks_every_byte() {
    mpich_pingpong(
        "mpich_pingpong_over_cma_checks_every_byte",
        "posix,cma,self",
        "cma/memory",
    );
}

#[test]
fn open_mpi_pml_ucx_pingpong_over_xpmem_checks_every_byte() {
    let test = "open_mpi_pml_ucx_pingpong_over_xpmem_checks_every_byte";
    let Some(ucx) = Ucx::find(test) else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(exe) = pingpong("mpicc.openmpi", dir.path()) else {
        skip(
            test,
            "mpicc.openmpi not installed (apt-get install openmpi-bin libopenmpi-dev)",
        );
        return;
    };
    let Some(daemon) = Daemon::start(test) else {
        return;
    };
    let mut cmd = ucx.command(Path::new("mpirun.openmpi"), "xpmem,self", &daemon);
    cmd.args(["--allow-run-as-root", "--oversubscribe", "-n", "2"])
        .args([
            "-x",
            "LD_LIBRARY_PATH",
            "-x",
            "UCX_TLS",
            "-x",
            "UCX_LOG_LEVEL",
        ])
        .args(["-x", "UCX_ALLOC_PRIO", "-x", "HOBBES_STATE_DIR"])
        // pml ucx on any transport: its default list names InfiniBand and GPU
        // transports only, and without one it declines to run.
        .args(["--mca", "pml", "ucx", "--mca", "pml_ucx_tls", "any"])
        .args(["--mca", "pml_ucx_devices", "any", "--mca", "btl", "self"])
        .arg(&exe)
        .args(PINGPONG_ARGS);
    let out = run_with_timeout(&mut cmd, LIMIT);
    let t = text(&out);
    assert!(
        out.status.success(),
        "Open MPI pingpong: {}\n{t}",
        out.status
    );
    assert_pingpong_checked(&t);
    assert_rebuilt_ucx_loaded(&ucx, &t);
    let cfg = ep_cfg(&t);
    assert!(
        !cfg.is_empty() && cfg.iter().any(|c| c.contains("tag(xpmem/memory)")),
        "Open MPI did not carry the data over xpmem: {cfg:?}\n{t}"
    );
}
