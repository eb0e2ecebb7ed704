//! Thin wrappers over the syscalls the daemon and the control process need.
//! All `unsafe` in this crate lives here, one small block per call.

use std::io;

pub use hobbes_kind::sys::{
    children_of, kill, kill_group, pidfd_open, proc_start_time, same_process_alive, set_affinity,
};
use std::os::unix::net::UnixStream;

use nix::unistd::Pid;

/// Credentials of the process at the other end of a Unix socket, with its pid
/// as seen from our PID namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCred {
    /// The peer's pid in our PID namespace (0 when the peer is in a PID
    /// namespace we cannot see into).
    pub pid: u32,
    /// The peer's effective uid when it connected: what requests are authorized by.
    pub uid: u32,
    /// The peer's effective gid when it connected: apps it launches run with it.
    pub gid: u32,
}

/// The credentials of `stream`'s peer (`SO_PEERCRED`), as the kernel recorded
/// them at `connect`: every request on the daemon and enclave sockets is
/// authorized from them. Errors only if the getsockopt fails (not a Unix socket).
pub fn peer_cred(stream: &UnixStream) -> io::Result<PeerCred> {
    let c = nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials)
        .map_err(io::Error::from)?;
    Ok(PeerCred {
        pid: c.pid() as u32,
        uid: c.uid(),
        gid: c.gid(),
    })
}

/// Has the peer of `stream` closed its end (process gone, or shut down)?
/// Does not consume anything the peer sent.
pub fn peer_hung_up(stream: &UnixStream) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    // A closed peer (the usual case: its process died) shows as POLLHUP.
    let mut fds = [PollFd::new(stream.as_fd(), PollFlags::empty())];
    match poll(&mut fds, PollTimeout::ZERO) {
        Ok(n) if n > 0 => fds[0]
            .revents()
            .is_some_and(|r| r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR)),
        _ => false,
    }
}

/// Pids of `pid` in every PID namespace from ours down (the NSpid line).
pub fn ns_pids(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("NSpid:")).map(|l| {
                l["NSpid:".len()..]
                    .split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect()
            })
        })
        .unwrap_or_default()
}

/// Find the host pid of the child of `parent` whose innermost pid is `local`.
pub fn host_pid_of_child(parent: u32, local: u32) -> Option<u32> {
    children_of(parent)
        .into_iter()
        .find(|&child| ns_pids(child).last() == Some(&local))
}

/// Cores the calling thread may run on.
pub fn affinity() -> io::Result<Vec<u32>> {
    let set = nix::sched::sched_getaffinity(Pid::from_raw(0)).map_err(io::Error::from)?;
    Ok((0..nix::sched::CpuSet::count())
        .filter(|&i| set.is_set(i).unwrap_or(false))
        .map(|i| i as u32)
        .collect())
}

/// Become the reaper of orphaned descendants (used where we are not pid 1).
pub fn set_child_subreaper() -> io::Result<()> {
    // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer flag and no pointers.
    let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Ask the kernel to SIGKILL us when the process that started us dies.
pub fn set_parent_death_signal() -> io::Result<()> {
    // SAFETY: PR_SET_PDEATHSIG takes a signal number and no pointers.
    let r = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Run `f` with this thread's filesystem uid/gid set to a client's, so file
/// access on its behalf is checked as if it made it. Linux's fsuid is per thread.
pub fn with_fs_identity<T>(uid: u32, gid: u32, f: impl FnOnce() -> T) -> T {
    // SAFETY: setfsuid/setfsgid take plain integers and affect only this thread;
    // they return the previous value, which we restore.
    let (old_gid, old_uid) = unsafe {
        let g = libc::syscall(libc::SYS_setfsgid, gid) as u32;
        let u = libc::syscall(libc::SYS_setfsuid, uid) as u32;
        (g, u)
    };
    let out = f();
    // SAFETY: as above.
    unsafe {
        libc::syscall(libc::SYS_setfsuid, old_uid);
        libc::syscall(libc::SYS_setfsgid, old_gid);
    }
    out
}

/// This process's effective uid; 0 means the daemon runs privileged (unless
/// configured `unprivileged`).
pub fn geteuid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// Reset the calling process's OOM score adjustment to 0. Async-signal-safe
/// (for use between `fork` and `exec`).
pub fn reset_oom_score_adj() -> io::Result<()> {
    const PATH: &[u8] = b"/proc/self/oom_score_adj\0";
    // SAFETY: PATH is NUL-terminated; open/write/close take plain pointers to
    // static data and an fd we own; none allocates.
    unsafe {
        let fd = libc::open(PATH.as_ptr().cast(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Ok(()); // no /proc: nothing was inherited worth resetting
        }
        libc::write(fd, b"0".as_ptr().cast(), 1);
        libc::close(fd);
    }
    Ok(())
}

/// `pidfd_getfd(2)`: a duplicate of descriptor `target_fd` of the process
/// behind `pidfd` (needs ptrace access to it: root, in practice).
pub fn pidfd_getfd(
    pidfd: std::os::fd::BorrowedFd<'_>,
    target_fd: i32,
) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::AsRawFd;
    // SAFETY: plain integers in, a new descriptor we own out.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), target_fd, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just gave us this descriptor.
    Ok(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) })
}

/// Is `fd` a memfd? (Only memfds and a few shmem files answer F_GET_SEALS.)
pub fn is_memfd(fd: std::os::fd::BorrowedFd<'_>) -> bool {
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GET_SEALS).is_ok()
}

/// Parent pid of `pid`.
pub fn parent_of(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find(|l| l.starts_with("PPid:"))?["PPid:".len()..]
        .trim()
        .parse()
        .ok()
}

/// Supplementary groups of `pid`.
pub fn groups_of(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("Groups:")).map(|l| {
                l["Groups:".len()..]
                    .split_whitespace()
                    .filter_map(|g| g.parse().ok())
                    .collect()
            })
        })
        .unwrap_or_default()
}

/// Start a new session (and process group) led by the calling process
/// (between fork and exec: async-signal-safe).
pub fn new_session() -> io::Result<()> {
    nix::unistd::setsid().map(drop).map_err(io::Error::from)
}

/// Let `fd` survive `exec` (between fork and exec: async-signal-safe).
pub fn clear_cloexec(fd: i32) -> io::Result<()> {
    // SAFETY: fcntl(F_SETFD) on a plain integer descriptor; no memory involved.
    let r = unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
