//! Processes: sessions, the child-subreaper and parent-death-signal
//! settings, the OOM score, CPU affinity, signals, pidfds, a process's
//! identity across pid reuse (pid + start time), its children, and readers
//! of `/proc/<pid>/status` (parent, supplementary groups, pids per PID
//! namespace).
//!
//! The calls meant for the child between `fork` and `exec`
//! ([`new_session`], [`reset_oom_score_adj`]) are async-signal-safe: they
//! neither allocate nor lock.

use std::io;

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::Errno;

/// Start a new session (and process group) led by the calling process,
/// `setsid(2)`. Async-signal-safe (for use between `fork` and `exec`).
pub fn new_session() -> Result<(), Errno> {
    nix::unistd::setsid().map(drop)
}

/// Become the reaper of orphaned descendants,
/// `prctl(PR_SET_CHILD_SUBREAPER, 1)` (for a manager that is not pid 1).
pub fn set_child_subreaper() -> Result<(), Errno> {
    // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer flag and no pointers.
    let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    Errno::result(r).map(drop)
}

/// Ask the kernel to send `signal` to the calling thread's process when
/// the thread that created it exits, `prctl(PR_SET_PDEATHSIG)`.
pub fn set_parent_death_signal(signal: Signal) -> Result<(), Errno> {
    // SAFETY: PR_SET_PDEATHSIG takes a signal number and no pointers.
    let r = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_int, 0, 0, 0) };
    Errno::result(r).map(drop)
}

/// Reset the calling process's OOM score adjustment to 0 (writes
/// `/proc/self/oom_score_adj`). Without `/proc` there is nothing to reset
/// and it succeeds; so it does when the write is refused (the score then
/// stays what it was). Async-signal-safe (for use between `fork` and
/// `exec`): no allocation, only `open`/`write`/`close`.
pub fn reset_oom_score_adj() -> Result<(), Errno> {
    const PATH: &[u8] = b"/proc/self/oom_score_adj\0";
    // SAFETY: PATH is NUL-terminated and static; the flags are plain integers.
    let fd = unsafe { libc::open(PATH.as_ptr().cast(), libc::O_WRONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Ok(()); // no /proc: nothing was inherited worth resetting
    }
    // SAFETY: `fd` was just opened by us; the buffer is one static byte.
    unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
    // SAFETY: `fd` is ours and closed exactly once, here.
    unsafe { libc::close(fd) };
    Ok(())
}

/// Cores the calling thread may run on (`sched_getaffinity`).
pub fn affinity() -> Result<Vec<u32>, Errno> {
    let set = nix::sched::sched_getaffinity(Pid::from_raw(0))?;
    Ok((0..nix::sched::CpuSet::count())
        .filter(|&i| set.is_set(i).unwrap_or(false))
        .filter_map(|i| u32::try_from(i).ok())
        .collect())
}

/// The values of the `key:` line of `/proc/<pid>/status`, parsed one per
/// whitespace-separated word (unparsable words skipped); empty when the
/// process or the line does not exist.
fn status_numbers(pid: u32, key: &str) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| parse_status_line(&s, key))
        .unwrap_or_default()
}

fn parse_status_line(status: &str, key: &str) -> Option<Vec<u32>> {
    status.lines().find_map(|l| {
        let rest = l.strip_prefix(key)?.strip_prefix(':')?;
        Some(
            rest.split_whitespace()
                .filter_map(|w| w.parse().ok())
                .collect(),
        )
    })
}

/// Parent pid of `pid` (the `PPid:` line), `None` when it is gone.
pub fn parent_of(pid: u32) -> Option<u32> {
    status_numbers(pid, "PPid").first().copied()
}

/// Supplementary groups of `pid` (the `Groups:` line); empty when it is gone.
pub fn groups_of(pid: u32) -> Vec<u32> {
    status_numbers(pid, "Groups")
}

/// Pids of `pid` in every PID namespace from ours down (the `NSpid:`
/// line): the last is its pid in its own namespace. Empty when it is gone.
pub fn ns_pids(pid: u32) -> Vec<u32> {
    status_numbers(pid, "NSpid")
}

/// Start time of a process (clock ticks after boot, field 22 of
/// /proc/PID/stat): with the pid, it identifies a process across pid reuse.
pub fn proc_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and ')'; fields after the
    // last ')' are well-formed. Field 22 is the 20th after it.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(19)?.parse().ok()
}

/// Is `pid` alive and the same process that started at `start_time`?
/// Zombies count as dead.
pub fn same_process_alive(pid: u32, start_time: Option<u64>) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some(close) = stat.rfind(')') else {
        return false;
    };
    if stat[close + 2..].starts_with('Z') {
        return false;
    }
    match start_time {
        Some(t) => proc_start_time(pid) == Some(t),
        None => true,
    }
}

/// Direct children of `pid`, forked by any of its threads (each thread's
/// own list in `/proc/PID/task/TID/children`; needs CONFIG_PROC_CHILDREN,
/// present in distro kernels).
pub fn children_of(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut children: Vec<u32> = tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect();
    children.sort_unstable();
    children.dedup();
    children
}

/// Pin the calling thread (and what it execs) to `cores`.
pub fn set_affinity(pid: u32, cores: &[u32]) -> io::Result<()> {
    let mut set = nix::sched::CpuSet::new();
    for &c in cores {
        set.set(c as usize).map_err(io::Error::from)?;
    }
    nix::sched::sched_setaffinity(Pid::from_raw(pid as i32), &set).map_err(io::Error::from)
}

/// Send `signal` to process `pid`.
pub fn kill(pid: u32, signal: i32) -> io::Result<()> {
    // SAFETY: kill takes plain integers.
    let r = unsafe { libc::kill(pid as i32, signal) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Signal a whole process group.
pub fn kill_group(pgid: u32, signal: i32) -> io::Result<()> {
    kill_neg(pgid, signal)
}

fn kill_neg(pgid: u32, signal: i32) -> io::Result<()> {
    // SAFETY: kill takes plain integers; a negative pid names a process group.
    let r = unsafe { libc::kill(-(pgid as i32), signal) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `pidfd_open(2)`: a descriptor that becomes readable when `pid` exits.
pub fn pidfd_open(pid: u32) -> io::Result<std::os::fd::OwnedFd> {
    let pid = rustix::process::Pid::from_raw(pid as i32)
        .ok_or_else(|| io::Error::from_raw_os_error(libc::ESRCH))?;
    Ok(rustix::process::pidfd_open(
        pid,
        rustix::process::PidfdFlags::empty(),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn children_forked_by_any_thread_are_found() {
        let mut child = std::thread::spawn(|| {
            std::process::Command::new("sleep")
                .arg("60")
                .spawn()
                .unwrap()
        })
        .join()
        .unwrap();
        let found = children_of(std::process::id()).contains(&child.id());
        let _ = child.kill();
        let _ = child.wait();
        assert!(found, "a child forked by another thread is a child");
    }

    #[test]
    fn status_lines_parse() {
        let s = "Name:\tx\nPPid:\t17\nGroups:\t4 24 27 \nNSpid:\t900\t1\n";
        assert_eq!(parse_status_line(s, "PPid"), Some(vec![17]));
        assert_eq!(parse_status_line(s, "Groups"), Some(vec![4, 24, 27]));
        assert_eq!(parse_status_line(s, "NSpid"), Some(vec![900, 1]));
        assert_eq!(parse_status_line(s, "Pid"), None);
    }

    #[test]
    fn our_own_status() {
        let me = std::process::id();
        assert_eq!(parent_of(me), Some(nix::unistd::getppid().as_raw() as u32));
        assert_eq!(ns_pids(me).first(), Some(&me));
        assert!(parent_of(u32::MAX).is_none());
        assert!(groups_of(u32::MAX).is_empty());
        assert!(!affinity().unwrap().is_empty());
    }
}
