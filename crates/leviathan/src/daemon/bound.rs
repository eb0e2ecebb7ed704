//! Lifetimes bound to host processes: an enclave created with `bound_to_pid`
//! (a Slurm step's slurmstepd) is destroyed when that process ends, and a
//! joined app (a Slurm task) is marked ended when its process does.
//!
//! The health thread ([`super::link`]) owns one [`BoundWatch`]: a pidfd per
//! watched process, polled as the thread's wait between health checks, so an
//! exit is acted on at once. The NIS is the list of what to watch (each
//! record names its process by pid and start time), so a restarted daemon
//! picks its bindings up again on its first tick: a process that ended while
//! the daemon was down, or whose pid now names another process, counts as
//! ended then.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hobbes_proto::model::{AppId, AppState, BoundProcess, EnclaveId, EnclaveState};
use hobbes_proto::msg::{EnclaveRef, ErrorCode};

use super::Daemon;
use crate::sys::{self, PeerCred};

/// Bumped whenever a binding is recorded (an enclave created with
/// `bound_to_pid`, a process joined), so the watch re-reads the NIS soon
/// rather than on its next periodic pass. A counter shared by every daemon
/// of this process: a bump only costs another daemon one extra read.
static BINDINGS_CHANGED: AtomicU64 = AtomicU64::new(0);

/// The longest the watch goes without re-reading the NIS.
const FULL_PASS: Duration = Duration::from_secs(5);

/// The daemon acting on ended processes: root's rights.
const AS_DAEMON: PeerCred = PeerCred {
    pid: 0,
    uid: 0,
    gid: 0,
};

/// Say that a binding was recorded (see [`BINDINGS_CHANGED`]).
pub(super) fn bindings_changed() {
    BINDINGS_CHANGED.fetch_add(1, Ordering::SeqCst);
}

/// What a watched process is bound to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Bound {
    /// An enclave's life.
    Enclave(EnclaveId),
    /// A joined app's run.
    App(AppId),
}

/// The health thread's pidfds of bound processes.
pub(super) struct BoundWatch {
    watched: HashMap<Bound, OwnedFd>,
    /// [`BINDINGS_CHANGED`] at the last read of the NIS; `None`: never read.
    seen: Option<u64>,
    last_pass: Instant,
}

impl BoundWatch {
    /// Nothing watched yet; the first [`BoundWatch::tick`] reads the NIS.
    pub(super) fn new() -> BoundWatch {
        BoundWatch {
            watched: HashMap::new(),
            seen: None,
            last_pass: Instant::now(),
        }
    }

    /// Wait up to `timeout` (the health thread's tick) for a bound process to
    /// end, and act on every one that did: destroy its enclave, or mark its
    /// app ended.
    pub(super) fn tick(&mut self, d: &Daemon, timeout: Duration) {
        let mut ended = self.refresh(d);
        if ended.is_empty() {
            ended = self.wait(timeout);
        }
        for b in ended {
            self.act(d, b);
        }
    }

    /// Bring the table in line with the NIS when a binding was recorded
    /// since the last read, or every [`FULL_PASS`]: a pidfd for each bound
    /// enclave and running joined app not yet watched, none for records that
    /// are gone. Returns those whose process is already gone.
    fn refresh(&mut self, d: &Daemon) -> Vec<Bound> {
        let changes = BINDINGS_CHANGED.load(Ordering::SeqCst);
        if self.seen == Some(changes) && self.last_pass.elapsed() < FULL_PASS {
            return vec![];
        }
        self.seen = Some(changes);
        self.last_pass = Instant::now();
        let nis = d.nis.reader();
        let mut wanted: Vec<(Bound, BoundProcess)> = Vec::new();
        for e in nis.enclaves().unwrap_or_default() {
            // A starting enclave is its creator's to finish or undo.
            if let (Some(p), false) = (e.bound_to, e.state == EnclaveState::Starting) {
                wanted.push((Bound::Enclave(e.id), p));
            }
        }
        for a in nis.apps().unwrap_or_default() {
            if let (Some(p), AppState::Running) = (a.joined, a.state) {
                wanted.push((Bound::App(a.id), p));
            }
        }
        self.watched
            .retain(|b, _| wanted.iter().any(|(w, _)| w == b));
        let mut ended = Vec::new();
        for (b, p) in wanted {
            if self.watched.contains_key(&b) {
                continue;
            }
            match open(p) {
                Some(fd) => {
                    self.watched.insert(b, fd);
                }
                None => ended.push(b),
            }
        }
        ended
    }

    /// Poll the pidfds for up to `timeout`; the ones whose process ended
    /// leave the table and are returned. With nothing to watch, just wait.
    fn wait(&mut self, timeout: Duration) -> Vec<Bound> {
        if self.watched.is_empty() {
            std::thread::sleep(timeout);
            return vec![];
        }
        let keys: Vec<Bound> = self.watched.keys().copied().collect();
        let mut polls: Vec<nix::poll::PollFd> = keys
            .iter()
            .map(|k| nix::poll::PollFd::new(self.watched[k].as_fd(), nix::poll::PollFlags::POLLIN))
            .collect();
        let timeout =
            nix::poll::PollTimeout::try_from(timeout).unwrap_or(nix::poll::PollTimeout::MAX);
        if nix::poll::poll(&mut polls, timeout).is_err() {
            return vec![];
        }
        let ended: Vec<Bound> = keys
            .into_iter()
            .zip(&polls)
            .filter(|(_, p)| p.revents().is_some_and(|r| !r.is_empty()))
            .map(|(k, _)| k)
            .collect();
        drop(polls);
        for k in &ended {
            self.watched.remove(k);
        }
        ended
    }

    fn act(&mut self, d: &Daemon, b: Bound) {
        match b {
            Bound::Enclave(id) => {
                tracing::info!(
                    enclave = id,
                    "the process the enclave is bound to ended: destroying it"
                );
                match d.destroy_enclave(&AS_DAEMON, &EnclaveRef::Id(id)) {
                    Ok(()) => {}
                    Err(e) if e.code == ErrorCode::NotFound => {}
                    Err(e) => {
                        // Retried on the next full pass (the process stays gone).
                        tracing::warn!(enclave = id, error = %e.message, "cannot destroy an enclave whose bound process ended");
                        self.seen = None;
                    }
                }
            }
            Bound::App(id) => d.joined_process_ended(id),
        }
    }
}

/// A pidfd of `p`'s process, if it still runs and is the same process (its
/// start time matches: the pid was not recycled). The pidfd is opened before
/// the start time is read, so it can only refer to the process checked.
fn open(p: BoundProcess) -> Option<OwnedFd> {
    let fd = sys::pidfd_open(p.pid).ok()?;
    sys::same_process_alive(p.pid, p.start_time).then_some(fd)
}
