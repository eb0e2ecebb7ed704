//! Process helpers every kind needs: a process's identity across pid reuse
//! (pid + start time), its children, signals, CPU affinity, pidfds. All
//! `unsafe` in this crate lives here, one small block per call.

use std::io;

use nix::unistd::Pid;

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

/// Direct children of `pid` (needs CONFIG_PROC_CHILDREN, present in distro kernels).
pub fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
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
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just gave us this descriptor.
    Ok(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) })
}
