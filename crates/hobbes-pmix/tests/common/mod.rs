//! Shared by the integration tests: building the test programs, a server in
//! a temporary directory, and running a job whose ranks are plain children
//! of the test, started with `client_env` + `open_mpi_env` and the parent's
//! PATH/LD_LIBRARY_PATH only.
//!
//! libpmix allows one server per process and cannot start again after
//! finalizing, so each test file holds one test (its own process) that
//! starts and drops one server. Without `mpicc.openmpi` (or libpmix) the
//! tests print SKIP and pass.
#![allow(dead_code)] // each test binary uses part of it

use hobbes_pmix::{AppLayout, Event, JobLayout, Server};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a job may take before the test kills it and fails.
const JOB_DEADLINE: Duration = Duration::from_secs(90);

pub fn find_in_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|f| f.is_file())
    })
}

/// The test programs, built into a temporary directory.
pub struct Programs {
    dir: tempfile::TempDir,
}

impl Programs {
    /// Build `tests/mpi/<name>.c` for each name with `mpicc.openmpi`; None
    /// (after printing SKIP) without Open MPI or libpmix.
    pub fn build(test: &str, names: &[&str]) -> Option<Programs> {
        if !Server::available() {
            println!("SKIP {test}: hobbes-pmix built without libpmix");
            return None;
        }
        let Some(mpicc) = find_in_path("mpicc.openmpi") else {
            println!("SKIP {test}: no Open MPI (mpicc.openmpi)");
            return None;
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mpi");
        for name in names {
            let out = Command::new(&mpicc)
                .arg("-O2")
                .arg("-o")
                .arg(dir.path().join(name))
                .arg(src.join(format!("{name}.c")))
                .output()
                .expect("run mpicc.openmpi");
            assert!(
                out.status.success(),
                "mpicc.openmpi {name}.c failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Some(Programs { dir })
    }

    /// Build the bare PMIx client with `cc` and pkg-config's flags.
    pub fn build_pmix_client(&self) -> PathBuf {
        let flags = Command::new("pkg-config")
            .args(["--cflags", "--libs", "pmix"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_else(|| "-I/usr/lib/x86_64-linux-gnu/pmix2/include -lpmix".to_string());
        let exe = self.dir.path().join("pmix_abort");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mpi/pmix_abort.c");
        let out = Command::new("cc")
            .arg("-o")
            .arg(&exe)
            .arg(&src)
            .args(flags.split_whitespace())
            .output()
            .expect("run cc");
        assert!(
            out.status.success(),
            "cc pmix_abort.c failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        exe
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// A server in its own temporary directory; dropping it finalizes libpmix
/// before the directory goes.
pub struct TestServer {
    pub server: Option<Arc<Server>>,
    dir: tempfile::TempDir,
}

impl TestServer {
    pub fn start() -> TestServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let server = Server::start(&dir.path().join("pmix")).expect("start the PMIx server");
        TestServer {
            server: Some(server),
            dir,
        }
    }

    pub fn get(&self) -> &Server {
        self.server.as_ref().expect("server")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.server = None;
        let _ = std::fs::remove_dir_all(self.dir.path());
    }
}

/// Children killed and reaped on drop, also when the test panics.
pub struct Kids(Vec<Child>);

impl Kids {
    pub fn kill_all(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
        }
    }

    pub fn wait_all(&mut self) -> Vec<ExitStatus> {
        self.0
            .iter_mut()
            .map(|c| c.wait().expect("wait for a rank"))
            .collect()
    }
}

impl Drop for Kids {
    fn drop(&mut self) {
        self.kill_all();
        for c in &mut self.0 {
            let _ = c.wait();
        }
    }
}

pub fn layout(nspace: &str, np: u32, argv0: &Path) -> JobLayout {
    use std::os::unix::fs::MetadataExt;
    let me = std::fs::metadata("/proc/self").expect("stat /proc/self");
    JobLayout {
        nspace: nspace.to_string(),
        apps: vec![AppLayout {
            appnum: 0,
            first_rank: 0,
            np,
            argv0: argv0.display().to_string(),
            cwd: None,
        }],
        uid: me.uid(),
        gid: me.gid(),
        hostname: std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "localhost".into()),
    }
}

/// A started job: its ranks and its event stream.
pub struct Job {
    nspace: String,
    np: u32,
    kids: Kids,
    readers: Vec<std::thread::JoinHandle<(String, String)>>,
    events: Receiver<Event>,
}

/// What a finished job did.
pub struct Outcome {
    pub statuses: Vec<ExitStatus>,
    pub stdout: Vec<String>,
    pub stderr: Vec<String>,
    pub events: Vec<Event>,
}

impl Outcome {
    pub fn describe(&self) -> String {
        format!(
            "statuses {:?}\nevents {:?}\nstdout {:#?}\nstderr {:#?}",
            self.statuses, self.events, self.stdout, self.stderr
        )
    }
}

/// Register `nspace` and start `np` ranks of `prog`.
pub fn start_job(server: &Server, nspace: &str, np: u32, prog: &Path) -> Job {
    let (tx, rx) = channel();
    server
        .register_job(&layout(nspace, np, prog), tx)
        .expect("register the job");
    let mut kids = Kids(Vec::new());
    let mut readers = Vec::new();
    for rank in 0..np {
        let mut cmd = Command::new(prog);
        cmd.env_clear();
        for var in ["PATH", "LD_LIBRARY_PATH"] {
            if let Some(v) = std::env::var_os(var) {
                cmd.env(var, v);
            }
        }
        cmd.envs(server.open_mpi_env(nspace))
            .envs(server.client_env(nspace, rank).expect("client env"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn a rank");
        let mut out = child.stdout.take().expect("stdout");
        let mut err = child.stderr.take().expect("stderr");
        kids.0.push(child);
        readers.push(std::thread::spawn(move || {
            let mut o = String::new();
            let mut e = String::new();
            let _ = out.read_to_string(&mut o);
            let _ = err.read_to_string(&mut e);
            (o, e)
        }));
    }
    Job {
        nspace: nspace.to_string(),
        np,
        kids,
        readers,
        events: rx,
    }
}

/// Wait until every rank finalized or one aborted (then kill the job, as the
/// daemon does), or the deadline passed (kill, and let the caller fail).
pub fn finish_job(server: &Server, mut job: Job) -> Outcome {
    let start = Instant::now();
    let mut events = Vec::new();
    let mut finalized = 0;
    loop {
        let left = JOB_DEADLINE.saturating_sub(start.elapsed());
        match job.events.recv_timeout(left) {
            Ok(ev) => {
                let stop = match &ev {
                    Event::Finalized { .. } => {
                        finalized += 1;
                        finalized == job.np
                    }
                    Event::Aborted { .. } => true,
                    _ => false,
                };
                events.push(ev);
                if stop {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    if finalized < job.np {
        job.kids.kill_all();
    }
    let statuses = job.kids.wait_all();
    let (stdout, stderr) = job
        .readers
        .drain(..)
        .map(|r| r.join().expect("reader thread"))
        .unzip();
    // Every event a rank caused was sent before the rank could exit.
    events.extend(job.events.try_iter());
    server.deregister_job(&job.nspace);
    assert!(
        !server.job_dir(&job.nspace).exists(),
        "deregister_job left {}",
        server.job_dir(&job.nspace).display()
    );
    Outcome {
        statuses,
        stdout,
        stderr,
        events,
    }
}

pub fn count(events: &[Event], want: impl Fn(&Event) -> bool) -> usize {
    events.iter().filter(|e| want(e)).count()
}

/// Every rank connected and finalized once, and at least one fence of the
/// whole job carried modex data.
pub fn assert_clean_run(np: u32, out: &Outcome) {
    for rank in 0..np {
        assert!(
            out.statuses[rank as usize].success(),
            "rank {rank} failed\n{}",
            out.describe()
        );
        let line = format!(
            "hello rank={rank} size={np} sum={} big=ok",
            np * (np - 1) / 2
        );
        assert!(
            out.stdout[rank as usize].contains(&line),
            "rank {rank} did not print {line:?}\n{}",
            out.describe()
        );
        assert_eq!(
            count(&out.events, |e| *e == Event::Connected { rank }),
            1,
            "Connected of rank {rank}\n{}",
            out.describe()
        );
        assert_eq!(
            count(&out.events, |e| *e == Event::Finalized { rank }),
            1,
            "Finalized of rank {rank}\n{}",
            out.describe()
        );
    }
    let fences = count(
        &out.events,
        |e| matches!(e, Event::Fence { participants, .. } if *participants == np),
    );
    let modex = count(
        &out.events,
        |e| matches!(e, Event::Fence { bytes, .. } if *bytes > 0),
    );
    assert!(
        fences >= 2 && modex >= 1,
        "expected MPI_Init's modex fence and more\n{}",
        out.describe()
    );
}
