//! The daemon under hostile clients, crashes and exhaustion (root tests).
//!
//! Each test reproduces one way a local user or a crash could make the node
//! unusable, and checks the daemon survives it and leaves the node as found.

mod common;

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use hobbes_client::proto::frame::{encode, read_frame};
use hobbes_client::proto::model::EnclaveState;
use hobbes_client::proto::msg::{ErrorCode, Request, Response};
use hobbes_client::Client;

const NOBODY: u32 = 65534;

/// Run `f` on a thread whose credentials are `uid`/`gid` (Linux credentials
/// are per thread at the syscall level), so its connections are that user's.
fn as_user<T: Send + 'static>(uid: u32, f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        // SAFETY: raw setresgid/setresuid take integers and change only this
        // thread's credentials (glibc's wrappers would change every thread's).
        unsafe {
            assert_eq!(
                libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<u32>()),
                0
            );
            assert_eq!(libc::syscall(libc::SYS_setresgid, uid, uid, uid), 0);
            assert_eq!(libc::syscall(libc::SYS_setresuid, uid, uid, uid), 0);
        }
        f()
    })
    .join()
    .expect("user thread")
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn error_of(resp: Response) -> (ErrorCode, String) {
    match resp {
        Response::Error(e) => (e.code, e.message),
        other => panic!("expected an error, got {other:?}"),
    }
}

/// Item 1: a frame with more descriptors than allowed is refused and every
/// descriptor is closed, for any number of such connections from any user.
#[test]
fn descriptor_flood_as_nobody_leaks_nothing() {
    if !require_root("descriptor_flood_as_nobody_leaks_nothing") {
        return;
    }
    let d = Daemon::start(&[]);
    let pid = d.pid();
    d.client().status().unwrap();
    let before = open_fds(pid);
    let socket = d.socket();
    let rounds = 2000;
    let replies = as_user(NOBODY, move || {
        let devnull = std::fs::File::open("/dev/null").unwrap();
        let fds: Vec<OwnedFd> = (0..5)
            .map(|_| OwnedFd::from(devnull.try_clone().unwrap()))
            .collect();
        let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
        let frame = encode(&Request::Status).unwrap();
        let mut replies = Vec::new();
        for _ in 0..rounds {
            let mut s = UnixStream::connect(&socket).unwrap();
            nix::sys::socket::sendmsg::<()>(
                s.as_raw_fd(),
                &[std::io::IoSlice::new(&frame[..1])],
                &[nix::sys::socket::ControlMessage::ScmRights(&raw)],
                nix::sys::socket::MsgFlags::empty(),
                None,
            )
            .unwrap();
            let _ = s.write_all(&frame[1..]);
            replies.push(read_frame::<_, Response>(&mut s).map(error_of));
        }
        replies
    });
    for r in &replies {
        let (code, message) = r.as_ref().expect("an answer");
        assert_eq!(*code, ErrorCode::BadRequest);
        assert!(message.contains("5 descriptors"), "{message}");
    }
    // Connection threads close their streams as they end: wait for the count to settle.
    let settled = wait_for(
        "the daemon's descriptors to settle",
        Duration::from_secs(10),
        || {
            let now = open_fds(pid);
            (now <= before + 2).then_some(now)
        },
    );
    eprintln!("daemon fds: {before} before, {settled} after {rounds} floods");
    // The daemon still works for everyone.
    d.client().status().unwrap();
    let spec = spec("after-flood", 1, 64, false);
    let mut c = d.client();
    c.create_enclave(spec).unwrap();
    c.destroy_enclave(hobbes_client::proto::msg::EnclaveRef::Name(
        "after-flood".into(),
    ))
    .unwrap();
}

/// Item 3: idle connections from one user are capped per uid and time out;
/// root and other users are still served; a half-sent frame times out.
#[test]
fn idle_flood_does_not_lock_out_root() {
    if !require_root("idle_flood_does_not_lock_out_root") {
        return;
    }
    let d = Daemon::start(&[
        "--max-clients-per-uid",
        "8",
        "--client-idle-timeout-s",
        "1",
        "--request-timeout-ms",
        "300",
    ]);
    let socket = d.socket();
    let s2 = socket.clone();
    // Nobody fills its allowance with idle connections...
    let (idle, refused_raw, refused_status, refused_list) = as_user(NOBODY, move || {
        let idle: Vec<UnixStream> = (0..8).map(|_| UnixStream::connect(&s2).unwrap()).collect();
        // Admission happens on the daemon's accept thread: a round trip on
        // one of them proves all eight were admitted before the ninth.
        let mut probe = UnixStream::connect(&s2).unwrap();
        let refused_raw = read_frame::<_, Response>(&mut probe).map(error_of);
        let status = Client::connect(&s2).unwrap().status().unwrap_err();
        let list = Client::connect(&s2).unwrap().list_enclaves().unwrap_err();
        (idle, refused_raw, status.to_string(), list.to_string())
    });
    let (code, message) = refused_raw.expect("the refusal is readable");
    assert_eq!(code, ErrorCode::Unavailable);
    assert!(message.contains("uid 65534"), "{message}");
    // ...and every command says the same thing.
    assert_eq!(refused_status, message);
    assert_eq!(refused_list, message);
    // Root is served, and so is another user.
    d.client().status().unwrap();
    let s3 = socket.clone();
    as_user(1, move || {
        Client::connect(&s3).unwrap().list_enclaves().unwrap()
    });
    // The idle ones are closed by the daemon (EOF), which frees nobody's allowance.
    let start = Instant::now();
    for mut s in idle {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(s.read(&mut buf).unwrap(), 0, "idle connection closed");
    }
    eprintln!("idle connections closed after {:?}", start.elapsed());
    let s4 = socket.clone();
    as_user(NOBODY, move || {
        Client::connect(&s4).unwrap().status().unwrap()
    });
    // A client idle past the timeout reconnects by itself.
    let mut c = d.client();
    c.status().unwrap();
    let mut probe = UnixStream::connect(&socket).unwrap();
    probe
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut b = [0u8; 1];
    assert_eq!(probe.read(&mut b).unwrap(), 0, "the probe timed out too");
    c.status().expect("transparent reconnect");
    // A half-sent frame is answered with the reason and the connection closed.
    let mut half = UnixStream::connect(&socket).unwrap();
    let frame = encode(&Request::Status).unwrap();
    half.write_all(&frame[..frame.len() - 2]).unwrap();
    let (code, message) = error_of(read_frame::<_, Response>(&mut half).unwrap());
    assert_eq!(code, ErrorCode::BadRequest);
    assert!(message.contains("not completed within"), "{message}");
}

/// Item 5: a client that goes away before the answer leaves no enclave
/// behind, so a retry does not find the name taken.
#[test]
fn create_undone_when_the_client_goes_away() {
    if !require_root("create_undone_when_the_client_goes_away") {
        return;
    }
    let d = Daemon::start(&[]);
    let mut s = UnixStream::connect(d.socket()).unwrap();
    let frame = encode(&Request::CreateEnclave {
        spec: spec("gone", 1, 64, false),
        slurm: None,
        bound_to_pid: None,
        owner: None,
        step_cpus: None,
    })
    .unwrap();
    s.write_all(&frame).unwrap();
    drop(s);
    let nis = hobbes_client::NisReader::open(d.nis_dir()).unwrap();
    // The creation was recorded (counter) and then undone (no record).
    wait_for("the creation to be undone", Duration::from_secs(20), || {
        let h = nis.header().ok()?;
        (h.counters.enclaves_created == 1 && nis.enclaves().ok()?.is_empty()).then_some(())
    });
    assert!(d.log().contains("went away before the enclave was created"));
    let mut c = d.client();
    let rec = c.create_enclave(spec("gone", 1, 64, false)).unwrap();
    assert_eq!(rec.name, "gone");
    c.destroy_enclave(hobbes_client::proto::msg::EnclaveRef::Name("gone".into()))
        .unwrap();
}

/// Processes that run the leviathan executable under another name: forks of
/// a daemon that never reached exec.
fn strays() -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for p in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let exe = std::fs::read_link(p.path().join("exe")).unwrap_or_default();
        let comm = std::fs::read_to_string(p.path().join("comm")).unwrap_or_default();
        let name = exe.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with("leviathan") && comm.trim() != "leviathan" {
            out.push((pid, comm.trim().to_string()));
        }
    }
    out
}

/// A small deterministic generator for the kill points (seed printed).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, max: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % (max + 1)
    }
}

/// Item 2: `kill -9` of the daemon at random points of an enclave creation
/// never leaves anything that blocks the node: a restart works (and finishes
/// or undoes the creation), and so does `leviathan cleanup`.
#[test]
fn kill9_during_creation_never_blocks_the_node() {
    if !require_root("kill9_during_creation_never_blocks_the_node") {
        return;
    }
    if ncpus() < 2 {
        skip(
            "kill9_during_creation_never_blocks_the_node",
            "needs 2 cores",
        );
        return;
    }
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("seed {seed}");
    let mut rng = Lcg(seed);
    let mut d = Daemon::start(&[]);
    let mut outcomes = std::collections::BTreeMap::<&str, u32>::new();
    for round in 0..40 {
        let socket = d.socket();
        let creator = std::thread::spawn(move || {
            Client::connect(&socket)
                .and_then(|mut c| c.create_enclave(spec("victim", 1, 64, false)))
                .is_ok()
        });
        // The kill point, not a synchronization: any point is fair. A creation
        // takes a few ms here, so most points fall inside it.
        std::thread::sleep(Duration::from_micros(rng.next(6000)));
        d.kill9();
        // Nothing the dead daemon forked may survive un-exec'd (checked
        // before joining the creator: a stray holding the daemon's end of its
        // connection would keep it waiting for ever).
        let left = wait_for("strays to exit", Duration::from_secs(5), || {
            let s = strays();
            s.is_empty().then_some(s)
        });
        assert!(left.is_empty());
        let answered = creator.join().unwrap_or(false);
        if round % 2 == 0 {
            // Restart: the creation is finished or undone; destroy what exists.
            d.spawn();
            let mut c = d.client();
            let found = c.list_enclaves().unwrap();
            *outcomes
                .entry(match (answered, found.is_empty()) {
                    (true, _) => "created before the kill",
                    (false, false) => "recorded, killed mid-creation",
                    (false, true) => "killed before the record",
                })
                .or_default() += 1;
            for e in found {
                wait_for("the enclave to settle", Duration::from_secs(20), || {
                    let rec = c
                        .enclave(hobbes_client::proto::msg::EnclaveRef::Id(e.id))
                        .ok();
                    match rec {
                        None => Some(()),
                        Some(r) if r.state != EnclaveState::Starting => Some(()),
                        _ => None,
                    }
                });
                let _ = c.destroy_enclave(hobbes_client::proto::msg::EnclaveRef::Id(e.id));
            }
            assert!(c.list_enclaves().unwrap().is_empty());
        } else {
            // Clean up instead, then a fresh start on the same state directory.
            cleanup_ok(d.state_dir(), &[]);
            d.spawn();
            let mut c = d.client();
            for e in c.list_enclaves().unwrap() {
                let _ = c.destroy_enclave(hobbes_client::proto::msg::EnclaveRef::Id(e.id));
            }
        }
    }
    eprintln!("restart rounds: {outcomes:?}");
}

/// Removes a daemon's leftovers whatever the test's outcome.
struct CleanupOnDrop(PathBuf);
impl Drop for CleanupOnDrop {
    fn drop(&mut self) {
        let _ = Command::new(leviathan())
            .args(["cleanup", "--orphans", "--state-dir"])
            .arg(&self.0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Start a raw daemon on `dir`; Ok(child) once it answers, Err(stderr) if it exits.
fn raw_daemon(dir: &Path, extra: &[&str]) -> Result<std::process::Child, String> {
    // Another test binary or a benchmark may hold the node: wait for it.
    wait_for_node_lock();
    raw_daemon_now(dir, extra)
}

/// [`raw_daemon`] without waiting for the node lock (a test holds it on purpose).
fn raw_daemon_now(dir: &Path, extra: &[&str]) -> Result<std::process::Child, String> {
    let log = dir.join("leviathan.log");
    let mut child = Command::new(leviathan())
        .arg("--state-dir")
        .arg(dir)
        .args(daemon_args(extra))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let sock = dir.join("leviathan.sock");
    let up = wait_for(
        "the daemon to answer or exit",
        Duration::from_secs(15),
        || {
            if let Ok(Some(_)) = child.try_wait() {
                return Some(false);
            }
            Client::connect(&sock).ok()?.status().ok().map(|_| true)
        },
    );
    if up {
        Ok(child)
    } else {
        Err(std::fs::read_to_string(&log).unwrap_or_default())
    }
}

fn sigterm(mut child: std::process::Child) -> Option<i32> {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    child.wait().ok()?.code()
}

/// Item 4: a daemon started on a fresh state directory after another one
/// crashed finds the other's live enclaves, refuses with the exact command,
/// changes nothing, and starts once that command ran; empty leftovers it
/// removes by itself.
#[test]
fn second_daemon_after_a_crashed_one() {
    if !require_root("second_daemon_after_a_crashed_one") {
        return;
    }
    if ncpus() < 2 {
        skip("second_daemon_after_a_crashed_one", "needs 2 cores");
        return;
    }
    // Each part's clean-up guards run before it gives the node back: a
    // `leviathan cleanup` briefly binds the node lock to learn whether a
    // daemon runs, and must not race the next test's daemon for it (seen in
    // CI: "the node lock is held by pid N (leviathan)").
    {
        let _node = lock_node();
        let first = state_tempdir();
        let _guard_first = CleanupOnDrop(first.path().to_path_buf());
        let mut a = raw_daemon(first.path(), &[]).expect("first daemon");
        Client::connect(first.path().join("leviathan.sock"))
            .unwrap()
            .create_enclave(spec("left", 1, 64, false))
            .unwrap();
        a.kill().unwrap();
        a.wait().unwrap();

        let second = state_tempdir();
        let _guard_second = CleanupOnDrop(second.path().to_path_buf());
        let host_before = host_affinity_of(std::process::id());
        let err = raw_daemon(second.path(), &[]).expect_err("must refuse");
        let want = format!("leviathan cleanup --state-dir {}", first.path().display());
        assert!(err.contains(&want), "{err}");
        assert!(err.contains("hold cores"), "{err}");
        // It changed nothing: the host still runs on its confined cores, the enclave lives.
        assert_eq!(host_affinity_of(std::process::id()), host_before);
        // The suggested command resolves it.
        cleanup_ok(first.path(), &[]);
    }
    let mut b = Daemon::start(&[]);
    let status = b.client().status().unwrap();
    assert_eq!(
        status.cores_free as usize,
        ncpus() - 1,
        "all enclave cores are free again"
    );

    // A crashed daemon whose state directory is gone: --orphans.
    b.client()
        .create_enclave(spec("orphan", 1, 64, false))
        .unwrap();
    b.kill9();
    std::fs::remove_dir_all(b.state_dir().join("nis")).unwrap();
    let third = state_tempdir();
    let _guard_third = CleanupOnDrop(third.path().to_path_buf());
    let err = raw_daemon(third.path(), &[]).expect_err("must refuse");
    assert!(err.contains("leviathan cleanup --orphans"), "{err}");
    let stdout = cleanup_ok(third.path(), &["--orphans"]);
    assert!(stdout.contains("removed orphan enclave cgroup"));
    // An empty leftover cgroup is simply removed.
    let c = raw_daemon(third.path(), &[]).expect("starts after --orphans");
    assert_eq!(sigterm(c), Some(0));
}

/// Item 2, recovery: a lock left held by a stray (a process running the
/// leviathan executable under a thread's name) is recovered by a restarting
/// daemon and by `leviathan cleanup`, which say what they did.
#[test]
fn stale_lock_holders_are_recovered() {
    if !require_root("stale_lock_holders_are_recovered") {
        return;
    }
    let _node = lock_node();
    let dir = state_tempdir();
    let _guard = CleanupOnDrop(dir.path().to_path_buf());
    // A NIS for the stray to hold open, as a daemon's fork would.
    let a = raw_daemon(dir.path(), &[]).expect("daemon");
    assert_eq!(sigterm(a), Some(0));

    for user in ["daemon", "cleanup"] {
        // One stray per lock for the daemon (each is recovered on its own),
        // one for both for cleanup.
        wait_for_node_lock();
        let mut strays = match user {
            "daemon" => vec![
                fabricate_stray(dir.path(), true, false),
                fabricate_stray(dir.path(), false, true),
            ],
            _ => vec![fabricate_stray(dir.path(), true, true)],
        };
        match user {
            "daemon" => {
                let d = raw_daemon_now(dir.path(), &[]).expect("starts despite the strays");
                assert_eq!(sigterm(d), Some(0));
                let log = std::fs::read_to_string(dir.path().join("leviathan.log")).unwrap();
                assert!(
                    log.contains(
                        "a fork of a dead leviathan that still held the state directory lock"
                    ),
                    "{log}"
                );
                assert!(log.contains("still held the node lock"), "{log}");
            }
            _ => {
                let stdout = cleanup_ok(dir.path(), &[]);
                assert!(
                    stdout.contains("still held the state directory lock"),
                    "{stdout}"
                );
            }
        }
        for stray in &mut strays {
            let st = stray.wait().unwrap();
            assert_eq!(
                std::os::unix::process::ExitStatusExt::signal(&st),
                Some(libc::SIGKILL)
            );
        }
    }
}

/// A process like the strays of item 2: runs the leviathan executable, is
/// named `client` (exec through a symlink of that name), and holds the state
/// directory's lock and/or the node lock, inherited.
fn fabricate_stray(state_dir: &Path, state_lock: bool, node_lock: bool) -> std::process::Child {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::process::CommandExt;
    let mut held: Vec<OwnedFd> = Vec::new();
    if state_lock {
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(state_dir.join("leviathan.pid"))
            .unwrap();
        // A pid that is not running: the daemon that held the lock is gone.
        writeln!(&lock, "999999999").unwrap();
        // A plain flock, which closing our copy does not undo (the stray shares
        // the open file description, as a fork does).
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).unwrap();
        held.push(lock.into());
    }
    if node_lock {
        let addr =
            std::os::unix::net::SocketAddr::from_abstract_name(b"hobbes-leviathan-node-lock")
                .unwrap();
        held.push(
            std::os::unix::net::UnixListener::bind_addr(&addr)
                .unwrap()
                .into(),
        );
    }
    let link = state_dir.join("client");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(leviathan(), &link).unwrap();
    let keep: Vec<i32> = held.iter().map(|f| f.as_raw_fd()).collect();
    let mut cmd = Command::new(&link);
    cmd.args(["nis-dump", "--hold-ms", "600000", "--nis"])
        .arg(state_dir.join("nis"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: between fork and exec: fcntl on two integers only.
    unsafe {
        cmd.pre_exec(move || {
            for &fd in &keep {
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd.spawn().unwrap();
    // It holds them now; our copies go.
    drop(held);
    std::fs::remove_file(&link).unwrap();
    wait_for("the stray to run", Duration::from_secs(5), || {
        let comm = std::fs::read_to_string(format!("/proc/{}/comm", child.id())).ok()?;
        (comm.trim() == "client").then_some(())
    });
    child
}

/// Resource exhaustion: a daemon out of descriptors tells clients so, rolls a
/// creation that fails half-way back completely, and still stops cleanly.
#[test]
fn exhaustion_mid_create_rolls_back_and_sigterm_is_clean() {
    if !require_root("exhaustion_mid_create_rolls_back_and_sigterm_is_clean") {
        return;
    }
    let mut d = Daemon::start(&[]);
    let pid = d.pid();
    d.client().status().unwrap();
    let limit_with_free = |free: u64| {
        // RLIMIT_NOFILE bounds descriptor numbers: find the limit leaving
        // exactly `free` unused numbers below it.
        let mut used: Vec<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect();
        used.sort_unstable();
        let mut limit = 0;
        let mut holes = 0;
        loop {
            if !used.contains(&limit) {
                if holes == free {
                    break limit;
                }
                holes += 1;
            }
            limit += 1;
        }
    };
    // The daemon inherited our limits.
    let original = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    let set_limit = |n: u64| {
        let target = rustix::process::Pid::from_raw(pid as i32);
        rustix::process::prlimit(
            target,
            rustix::process::Resource::Nofile,
            rustix::process::Rlimit {
                current: Some(n),
                maximum: original.maximum,
            },
        )
        .expect("prlimit");
    };
    let mut c = d.client();

    // The daemon's descriptor table is only still when no connection is
    // closing: a descriptor freed after the limit was computed leaves a hole
    // under it. So each phase retries (bounded) until the limit held.

    // No descriptor left: a new client is told so instead of hanging.
    let refusal = (0..20).find_map(|_| {
        set_limit(limit_with_free(0));
        Client::connect(d.socket()).unwrap().status().err()
    });
    let err = refusal.expect("refused within 20 tries");
    assert!(err.to_string().contains("out of file descriptors"), "{err}");

    // One left (the connection's): the creation fails and is rolled back whole.
    let failure = (0..20).find_map(|_| {
        set_limit(limit_with_free(1));
        match Client::connect(d.socket())
            .unwrap()
            .create_enclave(spec("starved", 1, 64, false))
        {
            Err(e) => Some(e),
            Ok(_) => {
                set_limit(original.current.unwrap_or(1024));
                c.destroy_enclave(hobbes_client::proto::msg::EnclaveRef::Name(
                    "starved".into(),
                ))
                .unwrap();
                None
            }
        }
    });
    let err = failure.expect("failed within 20 tries");
    eprintln!("create under exhaustion: {err}");
    set_limit(original.current.unwrap_or(1024));
    assert!(c.list_enclaves().unwrap().is_empty(), "no record left");
    let left: Vec<_> = std::fs::read_dir(d.state_dir().join("enclaves"))
        .map(|r| r.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "enclave directories left: {left:?}");
    let status = c.status().unwrap();
    assert_eq!(status.cores_allocated, 0);
    // Nothing is stuck: the same creation works now.
    c.create_enclave(spec("starved", 1, 64, false)).unwrap();

    // Out of descriptors again, SIGTERM still tears everything down.
    drop(c);
    set_limit(limit_with_free(0));
    assert_eq!(d.stop(), Some(0), "clean exit:\n{}", d.log());
    for dir in [
        "/sys/fs/cgroup/cpuset/hobbes",
        "/sys/fs/cgroup/memory/hobbes",
        "/sys/fs/cgroup/hobbes",
    ] {
        assert!(!Path::new(dir).exists(), "{dir} left behind");
    }
}
