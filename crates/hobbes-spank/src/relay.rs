//! Entering an enclave from a Slurm task, and the relay.
//!
//! `setns` moves the calling process into an enclave's IPC, UTS and mount
//! namespaces, but a PID namespace only for the caller's *future children*.
//! So the task enters them while still root ([`enter`], in
//! `task_init_privileged`), and forks once Slurm and the daemon have put it
//! into its cgroups ([`fork_if_entered`], in `task_init`, as the user, just
//! before exec): the child returns to Slurm, which execs the program, now a
//! process of the enclave's PID namespace (it sees the enclave's processes
//! only, and its own pid there) in the task's cgroups; the parent stays
//! behind as the **relay**, the process Slurm started and waits for. The
//! relay
//!
//! * closes every descriptor but 0-2 (it holds nothing of Slurm's open),
//! * forwards SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGCONT,
//!   SIGTSTP and SIGALRM to the child, except those slurmstepd (its parent)
//!   sends: slurmstepd signals every process of the step, the child
//!   included, and a second copy would reach the program twice,
//! * waits for the child and ends as it did: the same exit code, or killed
//!   by the same signal (default disposition, no core dump), so srun reports
//!   exit codes and signals as without the enclave.
//!
//! docs/slurm.md says why this and not the alternative (the task keeping its
//! host pid, only its children in the enclave's PID namespace).

use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::ffi;

/// The signals the relay forwards to the program.
pub const FORWARDED: [i32; 9] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGCONT,
    libc::SIGTSTP,
    libc::SIGALRM,
];

/// The namespace type (`CLONE_NEW*`) of a `/proc/<pid>/ns/<name>` entry.
pub fn ns_type(name: &str) -> Option<i32> {
    Some(match name {
        "ipc" => libc::CLONE_NEWIPC,
        "uts" => libc::CLONE_NEWUTS,
        "pid" => libc::CLONE_NEWPID,
        "mnt" => libc::CLONE_NEWNS,
        "net" => libc::CLONE_NEWNET,
        "cgroup" => libc::CLONE_NEWCGROUP,
        _ => return None,
    })
}

/// This task entered an enclave's PID namespace: its program must be forked.
static ENTERED_PID_NAMESPACE: AtomicBool = AtomicBool::new(false);

/// Enter the namespaces `namespaces` of process `ns_pid` (in that order),
/// keeping the working directory. A PID namespace among them applies to the
/// children forked later by [`fork_if_entered`].
pub fn enter(ns_pid: u32, namespaces: &[String]) -> Result<(), String> {
    if namespaces.is_empty() {
        return Ok(()); // an unprivileged daemon's enclave: cgroups (affinity) only
    }
    // Open them all first: /proc may look different once in the mount namespace.
    let mut opened = Vec::new();
    for name in namespaces {
        let ty = ns_type(name).ok_or_else(|| format!("unknown namespace {name:?}"))?;
        let path = format!("/proc/{ns_pid}/ns/{name}");
        let file = std::fs::File::open(&path).map_err(|e| format!("cannot open {path}: {e}"))?;
        opened.push((name, ty, file));
    }
    let cwd = std::env::current_dir().ok();
    for (name, ty, file) in &opened {
        ffi::setns(file.as_fd(), *ty)
            .map_err(|e| format!("cannot enter the enclave's {name} namespace: {e}"))?;
    }
    drop(opened);
    // Entering a mount namespace moves us to its root; the job's directory
    // is the same path in the enclave (its mounts are the host's).
    if let Some(cwd) = cwd {
        let _ = std::env::set_current_dir(cwd);
    }
    if namespaces.iter().any(|n| n == "pid") {
        ENTERED_PID_NAMESPACE.store(true, Ordering::SeqCst);
    }
    Ok(())
}

/// When [`enter`] entered a PID namespace, fork: returns in the child only;
/// the parent becomes the relay and never returns.
pub fn fork_if_entered() -> Result<(), String> {
    if ENTERED_PID_NAMESPACE.swap(false, Ordering::SeqCst) {
        fork_relay()?;
    }
    Ok(())
}

/// Fork; in the child return, in the parent relay until the child ends.
fn fork_relay() -> Result<(), String> {
    let mut set = FORWARDED.to_vec();
    set.push(libc::SIGCHLD);
    // Blocked before the fork, so nothing sent meanwhile is lost: the
    // relay takes them with sigwaitinfo, the child gets its mask back.
    let old = ffi::block_signals(&set).map_err(|e| format!("cannot block signals: {e}"))?;
    match ffi::fork() {
        Ok(ffi::Forked::Child) => {
            ffi::set_signal_mask(&old);
            Ok(())
        }
        Ok(ffi::Forked::Parent(child)) => relay(child, &set),
        Err(e) => {
            ffi::set_signal_mask(&old);
            Err(format!("cannot fork into the enclave's PID namespace: {e}"))
        }
    }
}

/// The relay's life: forward signals, wait, end as the child did.
fn relay(child: libc::pid_t, set: &[i32]) -> ! {
    ffi::close_descriptors_from(3);
    let parent = ffi::parent_pid();
    loop {
        let Ok((sig, sender)) = ffi::wait_signal(set) else {
            continue;
        };
        if sig == libc::SIGCHLD {
            if let Some(status) = ffi::try_wait(child) {
                ffi::end_as(status);
            }
        } else if sender != parent {
            let _ = ffi::kill(child, sig);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_names() {
        assert_eq!(ns_type("pid"), Some(libc::CLONE_NEWPID));
        assert_eq!(ns_type("mnt"), Some(libc::CLONE_NEWNS));
        assert_eq!(ns_type("user"), None);
    }

    #[test]
    fn nothing_to_enter_is_fine() {
        assert_eq!(enter(1, &[]), Ok(()));
        assert!(enter(1, &["user".into()])
            .unwrap_err()
            .contains("unknown namespace"));
    }
}
