//! Real MPICH programs against this crate's PMI server, in both modes.
//!
//! Needs `mpicc.mpich` (Debian: `apt-get install mpich libmpich-dev`, which `scripts/deps.sh`
//! is to install); without it every test prints a SKIP line and passes. The programs are
//! compiled into a temporary directory and started as plain child processes with the
//! environment the server gives each rank, exactly as a launcher would.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use hobbes_pmi::{Job, JobConfig, JobEvent, PmiTransport, SocketpairServer, TcpServer};

/// Generous: MPI_Init alone takes ~50 ms per process, and the machine is shared.
const TIMEOUT: Duration = Duration::from_secs(60);

const HELLO: &str = r#"
#include <mpi.h>
#include <stdio.h>
int main(int argc, char **argv) {
    int rank, size, sum = 0, *appnum, flag = 0;
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    MPI_Barrier(MPI_COMM_WORLD);
    MPI_Allreduce(&rank, &sum, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    MPI_Comm_get_attr(MPI_COMM_WORLD, MPI_APPNUM, &appnum, &flag);
    MPI_Barrier(MPI_COMM_WORLD);
    printf("rank=%d size=%d sum=%d appnum=%d\n", rank, size, sum, flag ? *appnum : -1);
    fflush(stdout);
    MPI_Finalize();
    return 0;
}
"#;

const ABORT: &str = r#"
#include <mpi.h>
#include <stdio.h>
int main(int argc, char **argv) {
    int rank, size;
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    printf("rank=%d up\n", rank);
    fflush(stdout);
    if (rank == size - 1)
        MPI_Abort(MPI_COMM_WORLD, 7);
    MPI_Barrier(MPI_COMM_WORLD); /* never completes: the launcher kills the job */
    MPI_Finalize();
    return 0;
}
"#;

const PUBLISH: &str = r#"
#include <mpi.h>
#include <stdio.h>
#include <string.h>
int main(int argc, char **argv) {
    int rank, rc;
    char port[MPI_MAX_PORT_NAME] = "";
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_set_errhandler(MPI_COMM_SELF, MPI_ERRORS_RETURN);
    if (rank == 0) {
        rc = MPI_Publish_name("remora-svc", MPI_INFO_NULL, "remora-port-42");
        printf("rank=0 publish rc=%d\n", rc);
    }
    MPI_Barrier(MPI_COMM_WORLD);
    if (rank == 1) {
        rc = MPI_Lookup_name("remora-svc", MPI_INFO_NULL, port);
        printf("rank=1 lookup rc=%d port=%s\n", rc, rc == MPI_SUCCESS ? port : "-");
        rc = MPI_Lookup_name("from-launcher", MPI_INFO_NULL, port);
        printf("rank=1 lookup rc=%d port=%s\n", rc, rc == MPI_SUCCESS ? port : "-");
    }
    MPI_Barrier(MPI_COMM_WORLD);
    if (rank == 0) {
        rc = MPI_Unpublish_name("remora-svc", MPI_INFO_NULL, "remora-port-42");
        printf("rank=0 unpublish rc=%d\n", rc);
    }
    fflush(stdout);
    MPI_Finalize();
    return 0;
}
"#;

/// Print a SKIP line past the harness's capture when MPICH is not installed.
fn mpicc(test: &str) -> Option<&'static str> {
    let found = Command::new("mpicc.mpich")
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        Some("mpicc.mpich")
    } else {
        let _ = writeln!(
            std::io::stdout(),
            "SKIP {test}: mpicc.mpich not installed (apt-get install mpich libmpich-dev)"
        );
        None
    }
}

fn compile(mpicc: &str, dir: &Path, name: &str, source: &str) -> PathBuf {
    let src = dir.join(format!("{name}.c"));
    std::fs::write(&src, source).unwrap();
    let bin = dir.join(name);
    let out = Command::new(mpicc)
        .arg("-o")
        .arg(&bin)
        .arg(&src)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{mpicc} {name}.c failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    bin
}

/// The processes of one job. Dropping it kills and reaps every one still running, so a
/// failing assertion leaves nothing behind.
struct Ranks {
    children: Vec<Child>,
    /// Each rank's stdout, sent when the rank closes it (at exit).
    outputs: mpsc::Receiver<(usize, String)>,
}

impl Ranks {
    fn start(bin: &Path, n: u32, transport: &dyn PmiTransport) -> Ranks {
        let (tx, outputs) = mpsc::channel();
        let mut ranks = Ranks {
            children: Vec::new(),
            outputs,
        };
        for rank in 0..n {
            let mut cmd = Command::new(bin);
            cmd.stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit());
            transport.configure_command(rank, &mut cmd).unwrap();
            let mut child = cmd.spawn().unwrap();
            transport.spawned(rank);
            let mut stdout = child.stdout.take().unwrap();
            let tx = tx.clone();
            thread::spawn(move || {
                let mut s = String::new();
                let _ = stdout.read_to_string(&mut s);
                let _ = tx.send((rank as usize, s));
            });
            ranks.children.push(child);
        }
        ranks
    }

    /// Wait (bounded) for every rank to exit; returns each rank's stdout and exit status.
    fn wait(mut self) -> Vec<(String, ExitStatus)> {
        let deadline = Instant::now() + TIMEOUT;
        let mut outs = vec![String::new(); self.children.len()];
        for _ in 0..self.children.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            let (rank, out) = self
                .outputs
                .recv_timeout(left)
                .expect("ranks did not all exit in time");
            outs[rank] = out;
        }
        let statuses: Vec<ExitStatus> = self
            .children
            .iter_mut()
            .map(|c| c.wait().unwrap())
            .collect();
        self.children.clear();
        outs.into_iter().zip(statuses).collect()
    }

    /// Kill every rank (the launcher's reaction to an abort); returns their exit statuses.
    fn kill(mut self) -> Vec<ExitStatus> {
        let statuses = self
            .children
            .iter_mut()
            .map(|c| {
                let _ = c.kill();
                c.wait().unwrap()
            })
            .collect();
        self.children.clear();
        statuses
    }
}

impl Drop for Ranks {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Mode {
    Socketpair,
    Tcp,
}

fn transport(mode: Mode, job: Arc<Job>) -> Box<dyn PmiTransport> {
    match mode {
        Mode::Socketpair => Box::new(SocketpairServer::start(job).unwrap()),
        Mode::Tcp => Box::new(TcpServer::start(job).unwrap()),
    }
}

/// Run `bin` as one job with `app_sizes` applications; assert every rank exited 0 and the
/// job saw every finalize. Returns each rank's stdout.
fn run_ok(bin: &Path, mode: Mode, app_sizes: &[u32]) -> Vec<String> {
    let job = Arc::new(
        Job::new(JobConfig::mpmd(
            format!("kvs_{mode:?}_{}", std::process::id()),
            app_sizes,
        ))
        .unwrap(),
    );
    let server = transport(mode, job.clone());
    let ranks = Ranks::start(bin, job.size(), server.as_ref());
    let results = ranks.wait();
    for (rank, (out, status)) in results.iter().enumerate() {
        assert!(
            status.success(),
            "{mode:?} rank {rank} exited {status}: {out}"
        );
    }
    assert!(job.all_finalized(), "{mode:?}: not every rank finalized");
    assert_eq!(job.aborted(), None);
    results.into_iter().map(|(out, _)| out).collect()
}

fn check_hello(outs: &[String], appnums: &[u32]) {
    let n = outs.len();
    let sum = n * (n - 1) / 2;
    for (rank, out) in outs.iter().enumerate() {
        assert_eq!(
            out.trim(),
            format!("rank={rank} size={n} sum={sum} appnum={}", appnums[rank]),
            "rank {rank}"
        );
    }
}

#[test]
fn hello_barrier_allreduce_1_2_4_ranks_both_modes() {
    let Some(cc) = mpicc("hello_barrier_allreduce_1_2_4_ranks_both_modes") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let bin = compile(cc, dir.path(), "hello", HELLO);
    for mode in [Mode::Socketpair, Mode::Tcp] {
        for n in [1, 2, 4] {
            let outs = run_ok(&bin, mode, &[n]);
            check_hello(&outs, &vec![0; n as usize]);
        }
    }
}

#[test]
fn mpmd_job_gets_appnums() {
    let Some(cc) = mpicc("mpmd_job_gets_appnums") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let bin = compile(cc, dir.path(), "hello", HELLO);
    // Two applications of 2 and 1 ranks as one job (the composition): one world of 3.
    for mode in [Mode::Socketpair, Mode::Tcp] {
        let outs = run_ok(&bin, mode, &[2, 1]);
        check_hello(&outs, &[0, 0, 1]);
    }
}

#[test]
fn abort_fires_the_event_with_its_exit_code() {
    let Some(cc) = mpicc("abort_fires_the_event_with_its_exit_code") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let bin = compile(cc, dir.path(), "abort", ABORT);
    for mode in [Mode::Socketpair, Mode::Tcp] {
        // Alone, MPICH 4.0.2 does not call PMI_Abort: the process exits with the code itself,
        // which the server sees as a disconnect without finalize.
        let job = Arc::new(Job::new(JobConfig::new("kvs_abort_1", 1)).unwrap());
        let server = transport(mode, job.clone());
        let results = Ranks::start(&bin, 1, server.as_ref()).wait();
        assert_eq!(results[0].1.code(), Some(7), "{mode:?} n=1");
        assert_eq!(
            job.wait_event(TIMEOUT, |e| matches!(e, JobEvent::Disconnected { .. })),
            Some(JobEvent::Disconnected { rank: 0 })
        );

        for n in [2, 4] {
            let job = Arc::new(Job::new(JobConfig::new("kvs_abort", n)).unwrap());
            let server = transport(mode, job.clone());
            let ranks = Ranks::start(&bin, n, server.as_ref());
            let ev = job.wait_event(TIMEOUT, |e| matches!(e, JobEvent::Abort { .. }));
            assert_eq!(
                ev,
                Some(JobEvent::Abort {
                    rank: n - 1,
                    exitcode: 7
                }),
                "{mode:?} n={n}"
            );
            // The aborting rank waits for the launcher: every rank is still alive here, and
            // dies by the launcher's signal.
            let statuses = ranks.kill();
            job.cancel();
            for s in statuses {
                assert_eq!(
                    std::os::unix::process::ExitStatusExt::signal(&s),
                    Some(9),
                    "{mode:?} n={n}: {s}"
                );
            }
            assert_eq!(job.aborted(), Some((n - 1, 7)));
        }
    }
}

#[test]
fn name_service_publish_lookup_unpublish() {
    let Some(cc) = mpicc("name_service_publish_lookup_unpublish") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let bin = compile(cc, dir.path(), "publish", PUBLISH);
    for mode in [Mode::Socketpair, Mode::Tcp] {
        let job = Arc::new(Job::new(JobConfig::new("kvs_names", 2)).unwrap());
        // Published by the server side: MPICH finding it proves it asks over PMI (it also
        // has a file-based name service).
        job.publish("from-launcher".into(), "launcher-port".into())
            .unwrap();
        let server = transport(mode, job.clone());
        let outs = Ranks::start(&bin, 2, server.as_ref()).wait();
        for (out, status) in &outs {
            assert!(status.success(), "{mode:?}: {status} {out}");
        }
        assert_eq!(
            outs[0].0.trim(),
            "rank=0 publish rc=0\nrank=0 unpublish rc=0",
            "{mode:?}"
        );
        assert_eq!(
            outs[1].0.trim(),
            "rank=1 lookup rc=0 port=remora-port-42\nrank=1 lookup rc=0 port=launcher-port",
            "{mode:?}"
        );
        assert_eq!(job.lookup("remora-svc"), None, "unpublished");
    }
}

#[test]
fn garbage_from_a_fake_client_leaves_a_concurrent_job_alone() {
    let Some(cc) = mpicc("garbage_from_a_fake_client_leaves_a_concurrent_job_alone") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let bin = compile(cc, dir.path(), "hello", HELLO);

    // A real 4-rank job over TCP, and a 2-rank job over socketpairs, running concurrently.
    let tcp_job = Arc::new(Job::new(JobConfig::new("kvs_real_tcp", 4)).unwrap());
    let tcp = TcpServer::start(tcp_job.clone()).unwrap();
    let sp_job = Arc::new(Job::new(JobConfig::new("kvs_real_sp", 2)).unwrap());
    let sp = SocketpairServer::start(sp_job.clone()).unwrap();
    let tcp_ranks = Ranks::start(&bin, 4, &tcp);
    let sp_ranks = Ranks::start(&bin, 2, &sp);

    // A fake client on the real job's TCP port: garbage before any handshake.
    let mut fake = TcpStream::connect(tcp.addr()).unwrap();
    fake.write_all(b"\x00\xffGET / HTTP/1.1\r\n\r\n").unwrap();
    // Closed without a word (an error, if the server closed with bytes unread, is fine too).
    let mut rest = Vec::new();
    let _ = fake.read_to_end(&mut rest);
    assert!(rest.is_empty(), "the fake client got {rest:?}");

    // A fake rank of a third job on a socketpair: a valid start, then garbage.
    let bad_job = Arc::new(Job::new(JobConfig::new("kvs_bad", 1)).unwrap());
    let bad = SocketpairServer::start(bad_job.clone()).unwrap();
    let fd = bad.child_fd(0).unwrap();
    // SAFETY: `fd` is the child end owned by `bad`; duplicate it so the fake owns its own.
    let dup = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }
        .try_clone_to_owned()
        .unwrap();
    bad.spawned(0);
    let mut fake_rank = std::os::unix::net::UnixStream::from(dup);
    fake_rank
        .write_all(b"cmd=init pmi_version=1 pmi_subversion=1\ncmd=get_maxes\n")
        .unwrap();
    let expected = b"cmd=response_to_init pmi_version=1 pmi_subversion=1 rc=0\n";
    let mut line = vec![0u8; expected.len()];
    fake_rank.read_exact(&mut line).unwrap();
    assert_eq!(&line[..], expected);
    // A line without end: the server stops reading at its bound and closes, so this write
    // and the read may fail (EPIPE, ECONNRESET) once it has.
    let _ = fake_rank.write_all(&vec![b'x'; 100_000]);
    let mut rest = Vec::new();
    let _ = fake_rank.read_to_end(&mut rest);
    assert!(rest.starts_with(b"cmd=maxes"), "{rest:?}");

    assert!(matches!(
        bad_job.wait_event(TIMEOUT, |e| matches!(e, JobEvent::RankError { .. })),
        Some(JobEvent::RankError { rank: 0, ref error }) if error.contains("longer than")
    ));
    assert!(matches!(
        tcp_job.wait_event(TIMEOUT, |e| matches!(e, JobEvent::StrayConnection { .. })),
        Some(JobEvent::StrayConnection { .. })
    ));

    let tcp_outs = tcp_ranks.wait();
    let sp_outs = sp_ranks.wait();
    for (outs, n) in [(tcp_outs, 4), (sp_outs, 2)] {
        for (rank, (out, status)) in outs.iter().enumerate() {
            assert!(status.success(), "rank {rank} of {n}: {status}");
            assert_eq!(
                out.trim(),
                format!("rank={rank} size={n} sum={} appnum=0", n * (n - 1) / 2)
            );
        }
    }
    assert!(tcp_job.all_finalized() && sp_job.all_finalized());
}
