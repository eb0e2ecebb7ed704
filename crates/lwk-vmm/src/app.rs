//! An app running in an LWK: its address space, descriptors, threads, and
//! how it ends.

use std::collections::BTreeMap;
use std::fmt;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use crate::space::AddressSpace;
use crate::{sysnames, ExitKind};

/// A CPU exception that ended an app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestFault {
    /// The exception vector (14: page fault, 13: general protection, ...).
    pub vector: u8,
    /// The error code the CPU pushed (0 when it pushes none).
    pub error_code: u64,
    /// The instruction that faulted.
    pub rip: u64,
    /// For a page fault, the address accessed (CR2).
    pub address: Option<u64>,
}

impl GuestFault {
    /// The exception's name.
    pub fn name(&self) -> &'static str {
        match self.vector {
            0 => "divide error",
            1 => "debug exception",
            3 => "breakpoint",
            4 => "overflow",
            5 => "bound range exceeded",
            6 => "invalid opcode",
            7 => "device not available",
            8 => "double fault",
            10 => "invalid TSS",
            11 => "segment not present",
            12 => "stack fault",
            13 => "general protection fault",
            14 => "page fault",
            16 => "x87 floating-point error",
            17 => "alignment check",
            18 => "machine check",
            19 => "SIMD floating-point error",
            21 => "control protection fault",
            _ => "exception",
        }
    }

    /// The signal Linux would deliver for it (its default action ends the app).
    pub fn signal(&self) -> i32 {
        match self.vector {
            0 | 16 | 19 => libc::SIGFPE,
            1 | 3 => libc::SIGTRAP,
            6 => libc::SIGILL,
            17 => libc::SIGBUS,
            _ => libc::SIGSEGV,
        }
    }
}

impl fmt::Display for GuestFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (vector {}) at rip {:#x}",
            self.name(),
            self.vector,
            self.rip
        )?;
        if let Some(a) = self.address {
            write!(f, " accessing {a:#x}")?;
            let what = if self.error_code & 2 != 0 {
                "write"
            } else if self.error_code & 16 != 0 {
                "instruction fetch"
            } else {
                "read"
            };
            write!(f, " ({what})")?;
        } else if self.error_code != 0 {
            write!(f, ", error code {:#x}", self.error_code)?;
        }
        Ok(())
    }
}

/// How a system call was handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Handling {
    /// By the LWK itself (memory, time, identity, threads).
    Served,
    /// Performed on the host on the app's behalf.
    Forwarded,
    /// Not implemented: the app got `-ENOSYS`.
    Unsupported,
}

/// What an app asked for: calls by name and how each was handled.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallSummary {
    /// (handling, name) -> count.
    pub counts: BTreeMap<(Handling, String), u64>,
    /// Calls that reached the monitor through the proxy's fast path.
    pub fast_path: u64,
    /// Calls that reached the monitor through an exit to the vCPU's thread.
    pub exits: u64,
}

impl CallSummary {
    /// How many calls were handled this way.
    pub fn total(&self, h: Handling) -> u64 {
        self.counts
            .iter()
            .filter(|((k, _), _)| *k == h)
            .map(|(_, n)| n)
            .sum()
    }
}

impl fmt::Display for CallSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (h, label) in [
            (Handling::Forwarded, "forwarded"),
            (Handling::Served, "served"),
            (Handling::Unsupported, "unsupported (-ENOSYS)"),
        ] {
            let mut items: Vec<(&String, u64)> = self
                .counts
                .iter()
                .filter(|((k, _), _)| *k == h)
                .map(|((_, n), c)| (n, *c))
                .collect();
            if items.is_empty() {
                continue;
            }
            items.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
            if !first {
                write!(f, "; ")?;
            }
            first = false;
            write!(f, "{label}: ")?;
            let list: Vec<String> = items.iter().map(|(n, c)| format!("{n} {c}")).collect();
            write!(f, "{}", list.join(", "))?;
        }
        if first {
            write!(f, "no system calls")?;
        } else if self.fast_path + self.exits > 0 {
            write!(
                f,
                " (through the proxy {}, through exits {})",
                self.fast_path, self.exits
            )?;
        }
        Ok(())
    }
}

/// How an app ended, with what it asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppExit {
    /// Exit code or signal.
    pub kind: ExitKind,
    /// The CPU exception that ended it, if one did.
    pub fault: Option<GuestFault>,
    /// Its system calls.
    pub calls: CallSummary,
}

/// One guest descriptor.
pub struct GuestFd {
    /// The host descriptor behind it.
    pub fd: Arc<OwnedFd>,
    /// `FD_CLOEXEC` (kept for `fcntl(F_GETFD)`; there is no exec).
    pub cloexec: bool,
}

/// A running thread of an app.
#[derive(Debug, Clone, Copy)]
pub struct ThreadInfo {
    /// Its host thread's kernel id (to kick it), once it runs.
    pub host_tid: i32,
}

/// The mutable parts of an app.
pub struct AppCore {
    /// Its memory.
    pub space: Option<AddressSpace>,
    /// Its threads by guest tid.
    pub threads: BTreeMap<u32, ThreadInfo>,
    /// Addresses to clear and wake when each thread ends (`set_tid_address`,
    /// `CLONE_CHILD_CLEARTID`).
    pub clear_tid: BTreeMap<u32, u64>,
    /// Its descriptors.
    pub fds: BTreeMap<i32, GuestFd>,
    /// Its working directory: an `O_PATH` descriptor and the path.
    pub cwd: (Arc<OwnedFd>, PathBuf),
    /// The next guest thread id.
    pub next_tid: u32,
    /// Signal handlers the app installed (recorded and reported; signals
    /// take their default actions in an LWK enclave).
    pub sigactions: BTreeMap<i32, [u8; 32]>,
    /// How it ends, once decided (the first reason wins).
    pub ending: Option<(ExitKind, Option<GuestFault>)>,
    /// Call counts by (handling, number).
    pub calls: BTreeMap<(Handling, u64), u64>,
    /// umask.
    pub umask: u32,
}

/// An app.
pub struct AppState {
    /// Its guest pid (its main thread's tid).
    pub pid: u32,
    /// The program's host path (`/proc/self/exe`).
    pub program: PathBuf,
    /// Credentials forwarded calls run with.
    pub uid: u32,
    /// See `uid`.
    pub gid: u32,
    /// Set once it is ending: threads stop at their next chance.
    pub exiting: AtomicBool,
    /// Calls the proxy served (the fast path).
    pub fast_calls: AtomicU64,
    /// Calls served after an exit to the vCPU's thread.
    pub exit_calls: AtomicU64,
    /// Everything else.
    pub core: Mutex<AppCore>,
    /// The final result, once every thread stopped and memory was freed.
    pub done: Mutex<Option<AppExit>>,
    /// Signalled with `done`.
    pub done_cv: Condvar,
    /// Signalled (with `core`) when a thread stops.
    pub threads_cv: Condvar,
}

impl AppState {
    /// A new app with its memory, descriptors 0-2 and working directory.
    pub fn new(
        pid: u32,
        program: PathBuf,
        uid: u32,
        gid: u32,
        space: AddressSpace,
        stdio: [OwnedFd; 3],
        cwd: (OwnedFd, PathBuf),
    ) -> AppState {
        let mut fds = BTreeMap::new();
        for (n, fd) in stdio.into_iter().enumerate() {
            fds.insert(
                n as i32,
                GuestFd {
                    fd: Arc::new(fd),
                    cloexec: false,
                },
            );
        }
        AppState {
            pid,
            program,
            uid,
            gid,
            exiting: AtomicBool::new(false),
            fast_calls: AtomicU64::new(0),
            exit_calls: AtomicU64::new(0),
            core: Mutex::new(AppCore {
                space: Some(space),
                threads: BTreeMap::new(),
                clear_tid: BTreeMap::new(),
                fds,
                cwd: (Arc::new(cwd.0), cwd.1),
                next_tid: pid + 1,
                sigactions: BTreeMap::new(),
                ending: None,
                calls: BTreeMap::new(),
                umask: 0o022,
            }),
            done: Mutex::new(None),
            done_cv: Condvar::new(),
            threads_cv: Condvar::new(),
        }
    }

    /// Record a call.
    pub fn count(&self, h: Handling, nr: u64) {
        *self.core.lock().unwrap().calls.entry((h, nr)).or_default() += 1;
    }

    /// Decide how the app ends (first caller wins) and mark it exiting; the
    /// caller kicks the threads.
    pub fn end(&self, kind: ExitKind, fault: Option<GuestFault>) {
        let mut c = self.core.lock().unwrap();
        if c.ending.is_none() {
            c.ending = Some((kind, fault));
        }
        self.exiting.store(true, Ordering::SeqCst);
    }

    /// The summary of calls so far.
    pub fn summary(&self, core: &AppCore) -> CallSummary {
        let mut s = CallSummary {
            fast_path: self.fast_calls.load(Ordering::Relaxed),
            exits: self.exit_calls.load(Ordering::Relaxed),
            ..Default::default()
        };
        for ((h, nr), n) in &core.calls {
            *s.counts
                .entry((*h, sysnames::name(*nr).into_owned()))
                .or_default() += n;
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_read_like_a_kernel_report() {
        let f = GuestFault {
            vector: 14,
            error_code: 6,
            rip: 0x401136,
            address: Some(0),
        };
        assert_eq!(
            f.to_string(),
            "page fault (vector 14) at rip 0x401136 accessing 0x0 (write)"
        );
        assert_eq!(f.signal(), libc::SIGSEGV);
        let ud = GuestFault {
            vector: 6,
            error_code: 0,
            rip: 0x1000,
            address: None,
        };
        assert_eq!(ud.to_string(), "invalid opcode (vector 6) at rip 0x1000");
        assert_eq!(ud.signal(), libc::SIGILL);
    }

    #[test]
    fn summaries_group_by_handling() {
        let mut s = CallSummary::default();
        s.counts.insert((Handling::Forwarded, "write".into()), 3);
        s.counts.insert((Handling::Forwarded, "openat".into()), 1);
        s.counts.insert((Handling::Served, "brk".into()), 2);
        s.counts.insert((Handling::Unsupported, "rseq".into()), 1);
        assert_eq!(
            s.to_string(),
            "forwarded: write 3, openat 1; served: brk 2; unsupported (-ENOSYS): rseq 1"
        );
        assert_eq!(s.total(Handling::Forwarded), 4);
        assert_eq!(CallSummary::default().to_string(), "no system calls");
    }
}
