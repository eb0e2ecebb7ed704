//! Who may hold a client connection, and how the daemon still answers when it
//! is out of file descriptors.
//!
//! Every connection costs a thread and a descriptor, and any local user may
//! connect. So connections are counted per uid: one user may hold at most
//! `max_clients_per_uid`; all non-root users together at most
//! [`NON_ROOT_TOTAL`]; root is counted apart, with an allowance no other user
//! can consume. One user therefore cannot lock out root or another user.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

/// Connections all non-root users together may hold.
pub const NON_ROOT_TOTAL: usize = 1024;
/// Connections root may hold, whatever other users do.
pub const ROOT_ALLOWANCE: usize = 256;

/// Connection counts per uid.
pub struct Admission {
    per_uid: usize,
    counts: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    by_uid: HashMap<u32, usize>,
    non_root: usize,
}

/// Held for the life of one admitted connection; gives its place back when dropped.
pub struct Ticket {
    admission: Arc<Admission>,
    uid: u32,
}

impl Admission {
    pub fn new(per_uid: usize) -> Arc<Admission> {
        Arc::new(Admission {
            per_uid,
            counts: Mutex::new(Counts::default()),
        })
    }

    /// Admit a connection from `uid`, or say why not (the message the client sees).
    pub fn admit(self: &Arc<Self>, uid: u32) -> Result<Ticket, String> {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let held = c.by_uid.get(&uid).copied().unwrap_or(0);
        let limit = if uid == 0 {
            ROOT_ALLOWANCE.max(self.per_uid)
        } else {
            self.per_uid
        };
        if held >= limit {
            return Err(format!(
                "leviathan is busy: uid {uid} already holds {held} connections, the most one user may (max_clients_per_uid = {limit}); close some or retry later"
            ));
        }
        if uid != 0 && c.non_root >= NON_ROOT_TOTAL {
            return Err(format!(
                "leviathan is busy: non-root users hold {} connections, the most it serves at once; retry later",
                c.non_root
            ));
        }
        *c.by_uid.entry(uid).or_default() += 1;
        if uid != 0 {
            c.non_root += 1;
        }
        Ok(Ticket {
            admission: self.clone(),
            uid,
        })
    }

    /// Connections `uid` holds now.
    #[cfg(test)]
    pub fn held_by(&self, uid: u32) -> usize {
        let c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        c.by_uid.get(&uid).copied().unwrap_or(0)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut c = self
            .admission
            .counts
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = c.by_uid.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                c.by_uid.remove(&self.uid);
            }
        }
        if self.uid != 0 {
            c.non_root = c.non_root.saturating_sub(1);
        }
    }
}

/// Bounds what one user can make the daemon write to its log: refused
/// connections, bad frames and refused requests are logged at most
/// [`LOG_BURST`] times per uid per [`LOG_WINDOW`]; the rest are counted and
/// reported once when the window ends. (Unbounded, a flood from one user
/// would fill the disk the log lives on.)
pub struct LogLimiter {
    by_uid: Mutex<HashMap<u32, LogWindow>>,
}

pub const LOG_BURST: u32 = 20;
pub const LOG_WINDOW: std::time::Duration = std::time::Duration::from_secs(10);

struct LogWindow {
    started: std::time::Instant,
    logged: u32,
    suppressed: u64,
}

impl LogLimiter {
    pub fn new() -> LogLimiter {
        LogLimiter {
            by_uid: Mutex::new(HashMap::new()),
        }
    }

    /// May a line about `uid` be logged now? Says (through `tracing`) how
    /// many were dropped when a window with drops ends.
    pub fn allow(&self, uid: u32) -> bool {
        self.allow_at(uid, std::time::Instant::now())
    }

    fn allow_at(&self, uid: u32, now: std::time::Instant) -> bool {
        let mut map = self.by_uid.lock().unwrap_or_else(|p| p.into_inner());
        let w = map.entry(uid).or_insert(LogWindow {
            started: now,
            logged: 0,
            suppressed: 0,
        });
        if now.duration_since(w.started) >= LOG_WINDOW {
            if w.suppressed > 0 {
                tracing::warn!(
                    uid,
                    suppressed = w.suppressed,
                    "{} more refusals of uid {uid}'s connections or requests were not logged",
                    w.suppressed
                );
            }
            *w = LogWindow {
                started: now,
                logged: 0,
                suppressed: 0,
            };
        }
        if w.logged < LOG_BURST {
            w.logged += 1;
            true
        } else {
            w.suppressed += 1;
            false
        }
    }
}

impl Default for LogLimiter {
    fn default() -> Self {
        Self::new()
    }
}

/// Descriptors held back for bad times: one lets the accept loop take a
/// connection and say "out of file descriptors" instead of spinning on
/// `EMFILE`; the rest are released at shutdown so that tearing enclaves down
/// (cgroup files, `/proc`) can always open what it needs.
pub struct FdReserve {
    fds: Mutex<Vec<OwnedFd>>,
}

/// How many descriptors the daemon holds back.
pub const FD_RESERVE: usize = 32;

fn placeholder() -> Option<OwnedFd> {
    File::open("/dev/null").ok().map(OwnedFd::from)
}

impl FdReserve {
    pub fn new() -> FdReserve {
        FdReserve {
            fds: Mutex::new((0..FD_RESERVE).filter_map(|_| placeholder()).collect()),
        }
    }

    /// Run `f` with one reserved descriptor given back to the process, then
    /// take it again. False when the reserve is empty (`f` not run).
    pub fn with_one_released(&self, f: impl FnOnce()) -> bool {
        let released = {
            let mut fds = self.fds.lock().unwrap_or_else(|p| p.into_inner());
            fds.pop()
        };
        let Some(fd) = released else {
            return false;
        };
        drop(fd);
        f();
        if let Some(fd) = placeholder() {
            self.fds.lock().unwrap_or_else(|p| p.into_inner()).push(fd);
        }
        true
    }

    /// Run `f` with every reserved descriptor given back to the process (a
    /// roll-back after exhaustion), then take them again as far as possible.
    pub fn with_all_released(&self, f: impl FnOnce()) {
        let released = std::mem::take(&mut *self.fds.lock().unwrap_or_else(|p| p.into_inner()));
        let count = released.len();
        drop(released);
        f();
        let again: Vec<OwnedFd> = (0..count).filter_map(|_| placeholder()).collect();
        self.fds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(again);
    }

    /// Give every reserved descriptor back (at shutdown).
    pub fn release_all(&self) {
        self.fds.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.fds.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

impl Default for FdReserve {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_user_cannot_lock_out_root_or_others() {
        let a = Admission::new(3);
        let flood: Vec<_> = (0..3).map(|_| a.admit(65534).unwrap()).collect();
        let refused = a.admit(65534).err().unwrap();
        assert!(refused.contains("uid 65534"), "{refused}");
        assert!(refused.contains("max_clients_per_uid"), "{refused}");
        // Root and another user still get in.
        let _root = a.admit(0).unwrap();
        let _other = a.admit(1000).unwrap();
        drop(flood);
        assert_eq!(a.held_by(65534), 0);
        let _again = a.admit(65534).unwrap();
    }

    #[test]
    fn root_has_its_own_allowance() {
        let a = Admission::new(2);
        let root: Vec<_> = (0..ROOT_ALLOWANCE).map(|_| a.admit(0).unwrap()).collect();
        assert!(a.admit(0).is_err());
        // Root's connections take nothing from the users' total.
        let _user = a.admit(1000).unwrap();
        drop(root);
        assert_eq!(a.held_by(0), 0);
    }

    #[test]
    fn non_root_users_together_are_capped() {
        let a = Admission::new(1);
        let held: Vec<_> = (1..=NON_ROOT_TOTAL as u32)
            .map(|uid| a.admit(uid).unwrap())
            .collect();
        let refused = a.admit(999_999).err().unwrap();
        assert!(refused.contains("non-root users"), "{refused}");
        let _root = a.admit(0).unwrap();
        drop(held);
        let _now = a.admit(999_999).unwrap();
    }

    #[test]
    fn log_lines_per_user_are_bounded() {
        let l = LogLimiter::new();
        let t0 = std::time::Instant::now();
        let allowed = (0..1000).filter(|_| l.allow_at(65534, t0)).count();
        assert_eq!(allowed, LOG_BURST as usize);
        // Another user has its own budget.
        assert!(l.allow_at(1000, t0));
        // A new window, a new budget.
        assert!(l.allow_at(65534, t0 + LOG_WINDOW));
    }

    #[test]
    fn reserve_gives_back_and_takes_again() {
        let r = FdReserve::new();
        assert_eq!(r.len(), FD_RESERVE);
        let mut ran = false;
        assert!(r.with_one_released(|| ran = true));
        assert!(ran);
        assert_eq!(r.len(), FD_RESERVE);
        r.release_all();
        assert_eq!(r.len(), 0);
        assert!(!r.with_one_released(|| panic!("not run")));
    }
}
