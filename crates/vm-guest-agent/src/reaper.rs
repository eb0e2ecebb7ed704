//! The one thread that reaps every child of the agent.
//!
//! As PID 1 the agent adopts every orphan of the guest, so it must wait for
//! any child (`waitpid(-1)`), not only for the ones it started; nobody else in
//! the agent may wait for a child (never `Child::wait`). Whoever starts a
//! process does it through [`Reaper::spawn`], which records a callback for its
//! end before the process can be reaped.
//!
//! Two races are closed by one lock, held by [`Reaper::spawn`] from before
//! the fork until the pid is recorded:
//! * a child that ends at once is not reaped before its callback is recorded:
//!   the reaper thread first *peeks* at an exited child (`waitid` with
//!   `WNOWAIT`), then takes the lock, and only then reaps it;
//! * when `exec` fails, `std::process::Command::spawn` reaps the failed child
//!   itself before returning the error; it does so under the lock, so the
//!   reaper's own reap of that pid simply finds nothing (`ECHILD`).
//!
//! In a process with no children `waitid` returns `ECHILD` at once; the
//! thread then sleeps on a condition variable until the next spawn. (Orphans
//! cannot appear then: every process of the guest descends from PID 1, so a
//! future orphan has a living ancestor that is already the agent's child.)

use std::collections::HashMap;
use std::io;
use std::process::{Child, Command};
use std::sync::{Condvar, Mutex, OnceLock};

use hobbes_proto::model::ExitStatus;
use rustix::process::{Pid, WaitOptions};

/// What to do when a recorded child ends.
type OnExit = Box<dyn FnOnce(ExitStatus) + Send>;

/// See the module docs. One per process: [`Reaper::global`].
pub struct Reaper {
    state: Mutex<State>,
    spawned: Condvar,
}

struct State {
    /// Counts spawns, so the thread can tell "no children yet" from "no
    /// children since I last looked".
    generation: u64,
    /// Callbacks of the children started through [`Reaper::spawn`], by pid.
    watchers: HashMap<i32, OnExit>,
}

impl Reaper {
    /// The process's reaper; its thread starts on first use.
    pub fn global() -> &'static Reaper {
        static REAPER: OnceLock<&'static Reaper> = OnceLock::new();
        REAPER.get_or_init(|| {
            let reaper: &'static Reaper = Box::leak(Box::new(Reaper {
                state: Mutex::new(State {
                    generation: 0,
                    watchers: HashMap::new(),
                }),
                spawned: Condvar::new(),
            }));
            std::thread::Builder::new()
                .name("reaper".into())
                .spawn(move || reaper.run())
                .expect("cannot start the reaper thread");
            reaper
        })
    }

    /// Start `cmd` and call `on_exit` (on the reaper thread) with how it
    /// ended. Returns the child for its pid and pipes; never wait on it.
    pub fn spawn(
        &self,
        cmd: &mut Command,
        on_exit: impl FnOnce(ExitStatus) + Send + 'static,
    ) -> io::Result<Child> {
        let mut state = self.lock();
        let child = cmd.spawn()?;
        state.generation += 1;
        state.watchers.insert(child.id() as i32, Box::new(on_exit));
        drop(state);
        self.spawned.notify_all();
        Ok(child)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic in a callback does not run under this lock, so poisoning
        // can only come from a bug here; keep reaping regardless.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn run(&self) {
        loop {
            let seen = self.lock().generation;
            match peek_exited_child() {
                Ok(pid) => self.reap(pid),
                Err(e) if e.raw_os_error() == Some(libc::ECHILD) => {
                    let mut state = self.lock();
                    while state.generation == seen {
                        state = self.spawned.wait(state).unwrap_or_else(|p| p.into_inner());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // Cannot happen with these arguments; say so loudly and
                    // wait for the next spawn instead of spinning.
                    crate::log!("reaper: waitid failed: {e}");
                    let mut state = self.lock();
                    while state.generation == seen {
                        state = self.spawned.wait(state).unwrap_or_else(|p| p.into_inner());
                    }
                }
            }
        }
    }

    /// Reap `pid` (an exited child) under the lock and run its callback, if
    /// it has one, outside it.
    fn reap(&self, pid: i32) {
        let Some(pid_t) = Pid::from_raw(pid) else {
            return;
        };
        let mut state = self.lock();
        let status = match rustix::process::waitpid(Some(pid_t), WaitOptions::NOHANG) {
            Ok(Some((_, status))) => status,
            // Reaped by someone else (a failed spawn), or not really gone.
            Ok(None) | Err(_) => return,
        };
        let exit = if let Some(code) = status.exit_status() {
            ExitStatus::Code(code)
        } else if let Some(sig) = status.terminating_signal() {
            ExitStatus::Signal(sig)
        } else {
            return;
        };
        let watcher = state.watchers.remove(&pid);
        drop(state);
        // No watcher: an adopted orphan, or the agent's own helper; reaping
        // it was the point.
        if let Some(on_exit) = watcher {
            on_exit(exit);
        }
    }
}

/// Block until some child has exited and return its pid, leaving it a zombie
/// (`WNOWAIT`) so the caller reaps it under its lock.
fn peek_exited_child() -> io::Result<i32> {
    // SAFETY: an all-zero siginfo_t is a valid value of this plain C struct.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid writes only into `info`, which lives across the call.
    let rc = unsafe { libc::waitid(libc::P_ALL, 0, &mut info, libc::WEXITED | libc::WNOWAIT) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: waitid succeeded with WEXITED, so the kernel filled in the
    // SIGCHLD fields of `info`, si_pid among them.
    Ok(unsafe { info.si_pid() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;
    use std::sync::mpsc;
    use std::time::Duration;

    // The reaper thread waits for these children, not the test.
    #[allow(clippy::zombie_processes)]
    #[test]
    fn exits_reach_their_callbacks_even_when_the_child_ends_at_once() {
        let reaper = Reaper::global();
        let (tx, rx) = mpsc::channel();
        for code in 0..20 {
            let tx = tx.clone();
            reaper
                .spawn(
                    Command::new("/bin/sh").args(["-c", &format!("exit {code}")]),
                    move |status| tx.send((code, status)).unwrap(),
                )
                .unwrap();
        }
        let mut got: Vec<_> = (0..20)
            .map(|_| rx.recv_timeout(Duration::from_secs(30)).unwrap())
            .collect();
        got.sort_by_key(|(code, _)| *code);
        for (code, status) in got {
            assert_eq!(status, ExitStatus::Code(code));
        }
    }

    #[test]
    fn a_failed_exec_is_an_error_not_a_panic() {
        let reaper = Reaper::global();
        for _ in 0..20 {
            // uid() forces std's fork path, where it reaps the failed child.
            let me = rustix::process::getuid().as_raw();
            let err = reaper
                .spawn(Command::new("/nonexistent/program").uid(me), |_| {
                    panic!("a child that never ran has no exit")
                })
                .unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::NotFound);
        }
    }
}
