//! The server-side state of one PMI job.
//!
//! An MPMD composition is one job: every application's ranks share the key/value space and the
//! barriers, and `get_appnum` tells each rank which application it belongs to. [`Job::handle`]
//! turns one client [`Command`] into what the server answers; it blocks only in barriers.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::wire::{token_safe, Command, Reply, KVSNAME_MAX};

/// Default cap on the bytes (keys + values) one job may store: a runaway client gets
/// `put_result rc=-1` instead of eating the daemon's memory.
pub const DEFAULT_MAX_KVS_BYTES: usize = 64 << 20;

/// Mirrors what happens in a job elsewhere (the daemon records it in the Node Information
/// Service). Every method has a no-op default. Called with the job's lock held, so calls are
/// in the job's order; an observer must not call back into the [`Job`].
pub trait JobObserver: Send + Sync {
    /// A put was accepted (not called for a put refused with `kvs_full`); `value` is the
    /// client's token as sent (usually hex).
    fn on_put(&self, _key: &str, _value: &str) {}
    /// A barrier completed; `generation` counts completed barriers from 1.
    fn on_barrier(&self, _generation: u64) {}
    /// `rank` sent `abort` (or the launcher called [`Job::abort`]); `exitcode` is 1 when the
    /// client sent none. Called for every abort, not only the first.
    fn on_abort(&self, _rank: u32, _exitcode: i32) {}
    /// `rank` sent `finalize` for the first time (repeats are not reported).
    fn on_finalize(&self, _rank: u32) {}
    /// A connection misbehaved (`rank` is `None` before it identified itself).
    fn on_error(&self, _rank: Option<u32>, _error: &str) {}
}

/// An observer that does nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoopObserver;
impl JobObserver for NoopObserver {}

/// What the job's owner (the launcher) is told, in order, through [`Job::next_event`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobEvent {
    /// A rank called `PMI_Abort`: kill the job and report `exitcode`.
    Abort {
        /// The rank that aborted.
        rank: u32,
        /// The exit code the launcher should exit with (1 when the client sent none).
        exitcode: i32,
    },
    /// A rank broke the protocol; its connection was closed. The job is likely lost.
    RankError {
        /// The rank whose connection was closed.
        rank: u32,
        /// What it did wrong, for the log.
        error: String,
    },
    /// A rank's connection ended without `finalize` (the process died or never finalized).
    /// Not reported after an abort or once the job is cancelled.
    Disconnected {
        /// The rank whose connection ended.
        rank: u32,
    },
    /// A connection that never became a rank (bad or duplicate `pmiid`, garbage before the
    /// handshake) was refused. The job itself is unaffected.
    StrayConnection {
        /// Why it was refused, for the log.
        error: String,
    },
    /// A rank sent `finalize` (reported once per rank); its process is expected to exit.
    Finalized {
        /// The rank that finalized.
        rank: u32,
    },
    /// Every rank has finalized.
    AllFinalized,
}

/// A job's configuration is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// [`JobConfig::appnums`] is empty: a job of size 0.
    #[error("a job needs at least one rank")]
    Empty,
    /// The KVS name (given) is empty, longer than [`KVSNAME_MAX`] bytes, or holds a blank,
    /// `=` or a control character (it must be one wire token).
    #[error(
        "kvsname {0:?} must be 1..={KVSNAME_MAX} bytes without blanks, '=' or control characters"
    )]
    BadKvsname(String),
    /// The `PMI_process_mapping` value (given) is empty or holds a blank or control character.
    #[error("process mapping {0:?} must be non-empty without blanks or control characters")]
    BadMapping(String),
    /// [`JobConfig::universe_size`] is below the number of ranks.
    #[error("universe size {universe} is smaller than the job size {size}")]
    SmallUniverse {
        /// The configured universe size.
        universe: u32,
        /// The job's size (number of ranks).
        size: u32,
    },
}

/// Why a rank cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    /// The rank is not below the job's size.
    #[error("rank {rank} is outside the job (size {size})")]
    Unknown {
        /// The rank asked for.
        rank: u32,
        /// The job's size: valid ranks are `0..size`.
        size: u32,
    },
    /// The rank (given) was already claimed: a rank is served by one connection in a job's
    /// lifetime, even after that connection ended.
    #[error("rank {0} is already connected")]
    Duplicate(u32),
}

/// How one job is described. Ranks of application `i` are contiguous, as the launcher assigns
/// them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobConfig {
    /// The job's KVS name, returned by `get_my_kvsname` and expected in `get`/`put`: 1 to
    /// [`KVSNAME_MAX`] bytes, one wire token (no blanks, `=` or control characters).
    pub kvsname: String,
    /// The application index (`appnum`) of every rank; its length is the job size.
    pub appnums: Vec<u32>,
    /// Answered to `get_universe_size`; at least the job size. [`JobConfig::new`] and
    /// [`JobConfig::mpmd`] set it to the job size.
    pub universe_size: u32,
    /// The value of `PMI_process_mapping`; `None` means all ranks on one node,
    /// `(vector,(0,1,N))`.
    pub process_mapping: Option<String>,
    /// Cap on the bytes of every key plus every value stored (including
    /// `PMI_process_mapping`); a put beyond it gets `rc=-1 msg=kvs_full`. Defaults to
    /// [`DEFAULT_MAX_KVS_BYTES`] (64 MiB).
    pub max_kvs_bytes: usize,
}

impl JobConfig {
    /// A single-application job of `size` ranks.
    pub fn new(kvsname: impl Into<String>, size: u32) -> Self {
        Self::mpmd(kvsname, &[size])
    }

    /// An MPMD job: application `i` has `app_sizes[i]` ranks, numbered after those of `i - 1`.
    pub fn mpmd(kvsname: impl Into<String>, app_sizes: &[u32]) -> Self {
        let appnums: Vec<u32> = app_sizes
            .iter()
            .zip(0u32..)
            .flat_map(|(&n, app)| std::iter::repeat(app).take(n as usize))
            .collect();
        let size = u32::try_from(appnums.len()).unwrap_or(u32::MAX);
        Self {
            kvsname: kvsname.into(),
            appnums,
            universe_size: size,
            process_mapping: None,
            max_kvs_bytes: DEFAULT_MAX_KVS_BYTES,
        }
    }

    /// Set the `PMI_process_mapping` value, e.g. `(vector,(0,2,4))` for blocks of 4 ranks on
    /// 2 nodes. Checked by [`Job::new`] ([`ConfigError::BadMapping`]).
    pub fn with_process_mapping(mut self, mapping: impl Into<String>) -> Self {
        self.process_mapping = Some(mapping.into());
        self
    }

    /// Set the universe size answered to `get_universe_size`; [`Job::new`] refuses one below
    /// the job size ([`ConfigError::SmallUniverse`]).
    pub fn with_universe_size(mut self, universe_size: u32) -> Self {
        self.universe_size = universe_size;
        self
    }

    /// The number of ranks (the length of [`JobConfig::appnums`], saturated at `u32::MAX`).
    pub fn size(&self) -> u32 {
        u32::try_from(self.appnums.len()).unwrap_or(u32::MAX)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let size = self.size();
        if size == 0 {
            return Err(ConfigError::Empty);
        }
        let k = &self.kvsname;
        if k.is_empty() || k.len() > KVSNAME_MAX || token_safe(k) != *k {
            return Err(ConfigError::BadKvsname(k.clone()));
        }
        if let Some(m) = &self.process_mapping {
            if m.is_empty() || m.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(ConfigError::BadMapping(m.clone()));
            }
        }
        if self.universe_size < size {
            return Err(ConfigError::SmallUniverse {
                universe: self.universe_size,
                size,
            });
        }
        Ok(())
    }
}

/// What the server does after a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send this reply and read on.
    Reply(Reply),
    /// Send nothing and read on (a spawn block that is not the last of a multi-spawn).
    Nothing,
    /// The rank aborted: never reply (the client waits forever for the launcher to kill it).
    Aborted,
    /// The job was cancelled while the rank waited in a barrier: close the connection.
    Cancelled,
    /// The command makes no sense here: close the connection and report the error.
    Close(String),
}

#[derive(Debug)]
struct State {
    kvs: HashMap<String, String>,
    kvs_bytes: usize,
    names: HashMap<String, String>,
    /// Completed barriers.
    generation: u64,
    /// Ranks in the current barrier.
    in_barrier: Vec<bool>,
    arrived: u32,
    connected: Vec<bool>,
    finalized: Vec<bool>,
    finalized_count: u32,
    abort: Option<(u32, i32)>,
    cancelled: bool,
    events: VecDeque<JobEvent>,
}

/// One PMI job, shared (in an `Arc`) by every connection serving one of its ranks.
pub struct Job {
    config: JobConfig,
    state: Mutex<State>,
    /// Signalled when a barrier completes or the job is cancelled.
    barrier_cv: Condvar,
    /// Signalled when an event is queued.
    event_cv: Condvar,
    observer: Arc<dyn JobObserver>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("kvsname", &self.config.kvsname)
            .field("size", &self.size())
            .finish_non_exhaustive()
    }
}

impl Job {
    /// A job with no observer; see [`Job::with_observer`].
    ///
    /// # Errors
    ///
    /// [`ConfigError`] when `config` is unusable (no ranks, bad KVS name or mapping, universe
    /// smaller than the job).
    pub fn new(config: JobConfig) -> Result<Self, ConfigError> {
        Self::with_observer(config, Arc::new(NoopObserver))
    }

    /// A job whose puts, barriers, aborts, finalizes and errors are also reported to
    /// `observer`. The KVS starts holding `PMI_process_mapping` (`(vector,(0,1,<size>))` unless
    /// configured), no rank claimed, no barrier completed.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] when `config` is unusable, as for [`Job::new`].
    pub fn with_observer(
        config: JobConfig,
        observer: Arc<dyn JobObserver>,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        let n = config.appnums.len();
        let mapping = config
            .process_mapping
            .clone()
            .unwrap_or_else(|| format!("(vector,(0,1,{n}))"));
        let mut kvs = HashMap::new();
        let kvs_bytes = "PMI_process_mapping".len() + mapping.len();
        kvs.insert("PMI_process_mapping".to_owned(), mapping);
        Ok(Self {
            state: Mutex::new(State {
                kvs,
                kvs_bytes,
                names: HashMap::new(),
                generation: 0,
                in_barrier: vec![false; n],
                arrived: 0,
                connected: vec![false; n],
                finalized: vec![false; n],
                finalized_count: 0,
                abort: None,
                cancelled: false,
                events: VecDeque::new(),
            }),
            config,
            barrier_cv: Condvar::new(),
            event_cv: Condvar::new(),
            observer,
        })
    }

    /// The configuration the job was created with.
    pub fn config(&self) -> &JobConfig {
        &self.config
    }

    /// The job's KVS name (see [`JobConfig::kvsname`]).
    pub fn kvsname(&self) -> &str {
        &self.config.kvsname
    }

    /// The number of ranks; ranks are `0..size`.
    pub fn size(&self) -> u32 {
        self.config.size()
    }

    // A panic elsewhere while holding the lock leaves consistent state (every update is a
    // few assignments), so a poisoned lock is still used.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push_event(&self, st: &mut State, ev: JobEvent) {
        st.events.push_back(ev);
        self.event_cv.notify_all();
    }

    /// Mark `rank` as connected; a rank is served by one connection in a job's lifetime.
    pub fn claim(&self, rank: u32) -> Result<(), ClaimError> {
        let mut st = self.lock();
        let slot = st
            .connected
            .get_mut(rank as usize)
            .ok_or(ClaimError::Unknown {
                rank,
                size: self.size(),
            })?;
        if *slot {
            return Err(ClaimError::Duplicate(rank));
        }
        *slot = true;
        Ok(())
    }

    /// Whether `rank` connected (was claimed) at some point.
    pub fn is_connected(&self, rank: u32) -> bool {
        self.lock().connected.get(rank as usize) == Some(&true)
    }

    /// Answer one command from `rank` (which the caller has claimed). Blocks in `barrier_in`
    /// until every rank has entered the barrier or the job is cancelled.
    pub fn handle(&self, rank: u32, cmd: Command) -> Action {
        let cfg = &self.config;
        let reply = match cmd {
            Command::InitAck { .. } => {
                return Action::Close("initack after the connection was set up".into())
            }
            Command::Init { .. } => Reply::ResponseToInit,
            Command::GetMaxes => Reply::Maxes,
            Command::GetAppnum => {
                Reply::Appnum(cfg.appnums.get(rank as usize).copied().unwrap_or(0))
            }
            Command::GetMyKvsname => Reply::MyKvsname(cfg.kvsname.clone()),
            Command::GetUniverseSize => Reply::UniverseSize(cfg.universe_size),
            Command::Get { kvsname, key } => Reply::GetResult(self.get_checked(kvsname, &key)),
            Command::Put {
                kvsname,
                key,
                value,
            } => Reply::PutResult(self.put_checked(kvsname, key, value)),
            Command::BarrierIn => return self.barrier(rank),
            Command::PublishName { service, port } => {
                Reply::PublishResult(self.publish(service, port))
            }
            Command::LookupName { service } => Reply::LookupResult(
                self.lookup(&service)
                    .ok_or_else(|| format!("service_{}_not_found", token_safe(&service))),
            ),
            Command::UnpublishName { service } => {
                Reply::UnpublishResult(match self.unpublish(&service) {
                    Some(_) => Ok(()),
                    None => Err(format!("service_{}_not_found", token_safe(&service))),
                })
            }
            Command::Finalize => {
                self.finalize(rank);
                Reply::FinalizeAck
            }
            Command::Abort { exitcode } => {
                // MPICH always sends a code; 1 stands in for a missing or garbled one.
                self.abort(rank, exitcode.unwrap_or(1));
                return Action::Aborted;
            }
            Command::Spawn(req) => {
                if !req.is_last() {
                    return Action::Nothing;
                }
                Reply::SpawnResult(Err("spawn_not_supported".into()))
            }
        };
        Action::Reply(reply)
    }

    fn check_kvsname(&self, kvsname: Option<String>) -> Result<(), String> {
        match kvsname {
            Some(k) if k != self.config.kvsname => Err(format!("kvs_{}_not_found", token_safe(&k))),
            _ => Ok(()),
        }
    }

    fn get_checked(&self, kvsname: Option<String>, key: &str) -> Result<String, String> {
        self.check_kvsname(kvsname)?;
        self.get(key)
            .ok_or_else(|| format!("key_{}_not_found", token_safe(key)))
    }

    fn put_checked(
        &self,
        kvsname: Option<String>,
        key: String,
        value: String,
    ) -> Result<(), String> {
        self.check_kvsname(kvsname)?;
        self.put(key, value)
    }

    /// The value of `key`, if any rank has put it (or it is `PMI_process_mapping`).
    pub fn get(&self, key: &str) -> Option<String> {
        self.lock().kvs.get(key).cloned()
    }

    /// Store `key`; visible to every rank at once. A put to an existing key replaces it.
    pub fn put(&self, key: String, value: String) -> Result<(), String> {
        let mut st = self.lock();
        let old = st.kvs.get(&key).map_or(0, |v| key.len() + v.len());
        let bytes = st.kvs_bytes - old + key.len() + value.len();
        if bytes > self.config.max_kvs_bytes {
            return Err("kvs_full".into());
        }
        st.kvs_bytes = bytes;
        self.observer.on_put(&key, &value);
        st.kvs.insert(key, value);
        Ok(())
    }

    /// Publish `service` at `port` in the job's name service (`MPI_Publish_name`); a name
    /// is published once until unpublished.
    pub fn publish(&self, service: String, port: String) -> Result<(), String> {
        let mut st = self.lock();
        if st.names.contains_key(&service) {
            return Err(format!(
                "service_{}_already_published",
                token_safe(&service)
            ));
        }
        st.names.insert(service, port);
        Ok(())
    }

    /// The port published for `service`, `None` when it is not published.
    pub fn lookup(&self, service: &str) -> Option<String> {
        self.lock().names.get(service).cloned()
    }

    /// Remove `service`, returning its port.
    pub fn unpublish(&self, service: &str) -> Option<String> {
        self.lock().names.remove(service)
    }

    fn barrier(&self, rank: u32) -> Action {
        let mut st = self.lock();
        if st.cancelled {
            return Action::Cancelled;
        }
        match st.in_barrier.get_mut(rank as usize) {
            None => return Action::Close(format!("rank {rank} outside the job")),
            Some(true) => return Action::Close("barrier_in twice in one barrier".into()),
            Some(slot) => *slot = true,
        }
        st.arrived += 1;
        if st.arrived == self.size() {
            // Resetting the count together with bumping the generation means a rank that
            // leaves this barrier and enters the next one counts towards the next one only.
            st.generation += 1;
            st.arrived = 0;
            st.in_barrier.iter_mut().for_each(|b| *b = false);
            self.observer.on_barrier(st.generation);
            self.barrier_cv.notify_all();
            return Action::Reply(Reply::BarrierOut);
        }
        let entered = st.generation;
        let st = self
            .barrier_cv
            .wait_while(st, |s| s.generation == entered && !s.cancelled)
            .unwrap_or_else(|p| p.into_inner());
        if st.generation != entered {
            Action::Reply(Reply::BarrierOut)
        } else {
            Action::Cancelled
        }
    }

    /// Completed barriers so far.
    pub fn barrier_generation(&self) -> u64 {
        self.lock().generation
    }

    fn finalize(&self, rank: u32) {
        let mut st = self.lock();
        let Some(done) = st.finalized.get_mut(rank as usize) else {
            return;
        };
        if std::mem::replace(done, true) {
            return;
        }
        st.finalized_count += 1;
        self.observer.on_finalize(rank);
        self.push_event(&mut st, JobEvent::Finalized { rank });
        if st.finalized_count == self.size() {
            self.push_event(&mut st, JobEvent::AllFinalized);
        }
    }

    /// Record an abort. The first one is the job's outcome; every one is reported.
    pub fn abort(&self, rank: u32, exitcode: i32) {
        let mut st = self.lock();
        st.abort.get_or_insert((rank, exitcode));
        self.observer.on_abort(rank, exitcode);
        self.push_event(&mut st, JobEvent::Abort { rank, exitcode });
    }

    /// The first abort, as `(rank, exitcode)`.
    pub fn aborted(&self) -> Option<(u32, i32)> {
        self.lock().abort
    }

    /// Whether `rank` has sent `finalize` (`false` for a rank outside the job).
    pub fn is_finalized(&self, rank: u32) -> bool {
        self.lock()
            .finalized
            .get(rank as usize)
            .copied()
            .unwrap_or(false)
    }

    /// Whether every rank of the job has sent `finalize`.
    pub fn all_finalized(&self) -> bool {
        let st = self.lock();
        st.finalized_count == self.size()
    }

    /// Record that a connection of `rank` ended without `finalize`.
    pub(crate) fn disconnected(&self, rank: u32) {
        let mut st = self.lock();
        let finalized = st.finalized.get(rank as usize).copied().unwrap_or(false);
        if !finalized && st.abort.is_none() && !st.cancelled {
            self.observer
                .on_error(Some(rank), "connection closed without finalize");
            self.push_event(&mut st, JobEvent::Disconnected { rank });
        }
    }

    /// Record a protocol error (`rank` is `None` for a connection that never identified).
    pub fn report_error(&self, rank: Option<u32>, error: &str) {
        let mut st = self.lock();
        self.observer.on_error(rank, error);
        let ev = match rank {
            Some(rank) => JobEvent::RankError {
                rank,
                error: error.to_owned(),
            },
            None => JobEvent::StrayConnection {
                error: error.to_owned(),
            },
        };
        self.push_event(&mut st, ev);
    }

    /// The launcher is tearing the job down: ranks waiting in a barrier are released (their
    /// connections close) and no new barrier blocks.
    pub fn cancel(&self) {
        self.lock().cancelled = true;
        self.barrier_cv.notify_all();
        self.event_cv.notify_all();
    }

    /// Whether [`Job::cancel`] has been called.
    pub fn is_cancelled(&self) -> bool {
        self.lock().cancelled
    }

    /// The next event, waiting up to `timeout` for one. `None` when none came in time, or
    /// at once when the job is cancelled and every event has been taken.
    pub fn next_event(&self, timeout: Duration) -> Option<JobEvent> {
        let deadline = Instant::now() + timeout;
        let mut st = self.lock();
        loop {
            if let Some(ev) = st.events.pop_front() {
                return Some(ev);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || st.cancelled {
                return None;
            }
            st = self
                .event_cv
                .wait_timeout(st, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Wait up to `timeout` for an event matching `pred`, dropping the others on the way.
    pub fn wait_event(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&JobEvent) -> bool,
    ) -> Option<JobEvent> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_event(left) {
                Some(ev) if pred(&ev) => return Some(ev),
                Some(_) => continue,
                None => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::thread;

    fn job(size: u32) -> Arc<Job> {
        Arc::new(Job::new(JobConfig::new("kvs_t_0", size)).unwrap())
    }

    fn reply(a: Action) -> Reply {
        match a {
            Action::Reply(r) => r,
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    #[test]
    fn config_is_checked() {
        assert_eq!(
            Job::new(JobConfig::new("kvs", 0)).unwrap_err(),
            ConfigError::Empty
        );
        assert!(matches!(
            Job::new(JobConfig::new("a b", 1)).unwrap_err(),
            ConfigError::BadKvsname(_)
        ));
        assert!(matches!(
            Job::new(JobConfig::new("k", 2).with_universe_size(1)).unwrap_err(),
            ConfigError::SmallUniverse { .. }
        ));
        assert!(matches!(
            Job::new(JobConfig::new("k", 2).with_process_mapping("a\nb")).unwrap_err(),
            ConfigError::BadMapping(_)
        ));
    }

    #[test]
    fn mpmd_appnums_are_contiguous() {
        let cfg = JobConfig::mpmd("k", &[2, 1, 3]);
        assert_eq!(cfg.appnums, vec![0, 0, 1, 2, 2, 2]);
        let j = Job::new(cfg).unwrap();
        assert_eq!(reply(j.handle(2, Command::GetAppnum)), Reply::Appnum(1));
        assert_eq!(reply(j.handle(5, Command::GetAppnum)), Reply::Appnum(2));
        assert_eq!(
            reply(j.handle(0, Command::GetUniverseSize)),
            Reply::UniverseSize(6)
        );
    }

    #[test]
    fn kvs_put_get_replace_and_mapping() {
        let j = job(4);
        let get = |k: &str| {
            reply(j.handle(
                0,
                Command::Get {
                    kvsname: Some("kvs_t_0".into()),
                    key: k.into(),
                },
            ))
        };
        assert_eq!(
            get("PMI_process_mapping"),
            Reply::GetResult(Ok("(vector,(0,1,4))".into()))
        );
        assert_eq!(get("k"), Reply::GetResult(Err("key_k_not_found".into())));
        for v in ["one", "two"] {
            let put = Command::Put {
                kvsname: None,
                key: "k".into(),
                value: v.into(),
            };
            assert_eq!(reply(j.handle(1, put)), Reply::PutResult(Ok(())));
        }
        assert_eq!(get("k"), Reply::GetResult(Ok("two".into())));
        let wrong = Command::Get {
            kvsname: Some("other".into()),
            key: "k".into(),
        };
        assert_eq!(
            reply(j.handle(0, wrong)),
            Reply::GetResult(Err("kvs_other_not_found".into()))
        );

        let custom =
            Job::new(JobConfig::new("k", 2).with_process_mapping("(vector,(0,2,1))")).unwrap();
        assert_eq!(
            custom.get("PMI_process_mapping").unwrap(),
            "(vector,(0,2,1))"
        );
    }

    #[test]
    fn kvs_is_bounded() {
        let mut cfg = JobConfig::new("k", 1);
        cfg.max_kvs_bytes = 64;
        let j = Job::new(cfg).unwrap();
        assert!(j.put("a".into(), "x".repeat(20)).is_ok());
        assert_eq!(j.put("b".into(), "x".repeat(40)), Err("kvs_full".into()));
        // Replacing frees the old value's bytes first.
        assert!(j.put("a".into(), "y".repeat(20)).is_ok());
    }

    #[test]
    fn name_service() {
        let j = job(1);
        let publish = |s: &str| {
            reply(j.handle(
                0,
                Command::PublishName {
                    service: s.into(),
                    port: "p1".into(),
                },
            ))
        };
        assert_eq!(publish("svc"), Reply::PublishResult(Ok(())));
        assert!(matches!(publish("svc"), Reply::PublishResult(Err(_))));
        let lookup = |s: &str| reply(j.handle(0, Command::LookupName { service: s.into() }));
        assert_eq!(lookup("svc"), Reply::LookupResult(Ok("p1".into())));
        let unpublish = Command::UnpublishName {
            service: "svc".into(),
        };
        assert_eq!(
            reply(j.handle(0, unpublish.clone())),
            Reply::UnpublishResult(Ok(()))
        );
        assert!(matches!(
            reply(j.handle(0, unpublish)),
            Reply::UnpublishResult(Err(_))
        ));
        assert!(matches!(lookup("svc"), Reply::LookupResult(Err(_))));
    }

    #[test]
    fn claims_refuse_unknown_and_duplicate_ranks() {
        let j = job(2);
        assert_eq!(j.claim(0), Ok(()));
        assert_eq!(j.claim(0), Err(ClaimError::Duplicate(0)));
        assert_eq!(j.claim(2), Err(ClaimError::Unknown { rank: 2, size: 2 }));
    }

    #[derive(Default)]
    struct Count(AtomicU64);
    impl JobObserver for Count {
        fn on_barrier(&self, generation: u64) {
            self.0.store(generation, Ordering::SeqCst);
        }
    }

    #[test]
    fn barriers_release_together_and_never_mix_generations() {
        const RANKS: u32 = 4;
        const ROUNDS: u64 = 50;
        let obs = Arc::new(Count::default());
        let j = Arc::new(Job::with_observer(JobConfig::new("k", RANKS), obs.clone()).unwrap());
        let threads: Vec<_> = (0..RANKS)
            .map(|rank| {
                let j = j.clone();
                thread::spawn(move || {
                    for round in 0..ROUNDS {
                        // Everything put before a barrier is visible after it.
                        j.put(format!("r{rank}-{round}"), "v".into()).unwrap();
                        assert_eq!(
                            j.handle(rank, Command::BarrierIn),
                            Action::Reply(Reply::BarrierOut)
                        );
                        for other in 0..RANKS {
                            assert!(j.get(&format!("r{other}-{round}")).is_some());
                        }
                        assert!(j.barrier_generation() > round);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(j.barrier_generation(), ROUNDS);
        assert_eq!(obs.0.load(Ordering::SeqCst), ROUNDS);
    }

    #[test]
    fn double_barrier_entry_closes_and_cancel_releases_waiters() {
        let j = job(3);
        let waiter = {
            let j = j.clone();
            thread::spawn(move || j.handle(0, Command::BarrierIn))
        };
        // Rank 1 entering twice is a protocol error; its first entry stays counted.
        let j2 = j.clone();
        let second = thread::spawn(move || j2.handle(1, Command::BarrierIn));
        // Wait until both are counted (condition, not a sleep).
        let deadline = Instant::now() + Duration::from_secs(10);
        while j.lock().arrived < 2 {
            assert!(Instant::now() < deadline, "ranks never entered the barrier");
            thread::yield_now();
        }
        assert!(matches!(j.handle(1, Command::BarrierIn), Action::Close(_)));
        j.cancel();
        assert_eq!(waiter.join().unwrap(), Action::Cancelled);
        assert_eq!(second.join().unwrap(), Action::Cancelled);
        assert_eq!(j.handle(2, Command::BarrierIn), Action::Cancelled);
    }

    #[test]
    fn cancel_wakes_an_event_waiter_after_the_queued_events() {
        let j = job(2);
        j.abort(0, 3);
        let waiter = {
            let j = j.clone();
            thread::spawn(move || {
                let first = j.next_event(Duration::from_secs(60));
                let started = Instant::now();
                (
                    first,
                    j.next_event(Duration::from_secs(60)),
                    started.elapsed(),
                )
            })
        };
        // Cancelled while the waiter waits (or before): either way it returns at once.
        j.cancel();
        let (first, second, waited) = waiter.join().unwrap();
        assert_eq!(
            first,
            Some(JobEvent::Abort {
                rank: 0,
                exitcode: 3
            })
        );
        assert_eq!(second, None);
        assert!(waited < Duration::from_secs(30), "waited {waited:?}");
    }

    #[test]
    fn abort_and_finalize_events() {
        let j = job(2);
        assert_eq!(
            j.handle(1, Command::Abort { exitcode: Some(7) }),
            Action::Aborted
        );
        assert_eq!(
            j.next_event(Duration::from_secs(1)),
            Some(JobEvent::Abort {
                rank: 1,
                exitcode: 7
            })
        );
        assert_eq!(j.aborted(), Some((1, 7)));
        assert_eq!(reply(j.handle(0, Command::Finalize)), Reply::FinalizeAck);
        assert_eq!(reply(j.handle(1, Command::Finalize)), Reply::FinalizeAck);
        assert_eq!(
            j.wait_event(Duration::from_secs(1), |e| *e == JobEvent::AllFinalized),
            Some(JobEvent::AllFinalized)
        );
        assert!(j.all_finalized());
        assert_eq!(j.next_event(Duration::from_millis(1)), None);
    }

    #[test]
    fn spawn_is_refused_after_the_last_block() {
        use crate::wire::SpawnRequest;
        let j = job(1);
        let block = |sofar: &str| {
            Command::Spawn(SpawnRequest {
                fields: vec![
                    ("totspawns".into(), "2".into()),
                    ("spawnssofar".into(), sofar.into()),
                ],
            })
        };
        assert_eq!(j.handle(0, block("1")), Action::Nothing);
        assert_eq!(
            reply(j.handle(0, block("2"))),
            Reply::SpawnResult(Err("spawn_not_supported".into()))
        );
    }
}
