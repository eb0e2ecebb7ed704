//! Thin wrappers over the syscalls the daemon and the control process need.
//! All `unsafe` in this crate lives here, one small block per call.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;

use nix::sched::CloneFlags;
use nix::unistd::Pid;

/// Credentials of the process at the other end of a Unix socket, with its pid
/// as seen from our PID namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCred {
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
}

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

/// Find the host pid of the child of `parent` whose innermost pid is `local`.
pub fn host_pid_of_child(parent: u32, local: u32) -> Option<u32> {
    children_of(parent)
        .into_iter()
        .find(|&child| ns_pids(child).last() == Some(&local))
}

/// A child created in new namespaces, stopped before `execve` until [`Held::release`].
pub struct Held {
    pub pid: u32,
    go: OwnedFd,
}

impl Held {
    /// Let the child exec (after the caller put it in its cgroups).
    pub fn release(self) -> io::Result<()> {
        nix::unistd::write(&self.go, b"g").map_err(io::Error::from)?;
        Ok(())
    }
}

/// Everything the child needs, built before `clone` so the child never allocates
/// (another thread may hold the allocator's lock at the time of the clone).
struct ExecImage {
    path: CString,
    // Owned strings the pointer arrays below point into.
    _argv: Vec<CString>,
    _envp: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    envp_ptrs: Vec<*const libc::c_char>,
}

impl ExecImage {
    fn new(path: &OsStr, argv: &[String], env: &[(String, String)]) -> io::Result<Self> {
        let cstr = |b: &[u8]| {
            CString::new(b).map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidInput, "NUL byte in exec argument")
            })
        };
        let path = cstr(path.as_bytes())?;
        let argv = argv
            .iter()
            .map(|a| cstr(a.as_bytes()))
            .collect::<io::Result<Vec<_>>>()?;
        let envp = env
            .iter()
            .map(|(k, v)| cstr(format!("{k}={v}").as_bytes()))
            .collect::<io::Result<Vec<_>>>()?;
        let mut argv_ptrs: Vec<_> = argv.iter().map(|a| a.as_ptr()).collect();
        argv_ptrs.push(std::ptr::null());
        let mut envp_ptrs: Vec<_> = envp.iter().map(|a| a.as_ptr()).collect();
        envp_ptrs.push(std::ptr::null());
        Ok(ExecImage {
            path,
            _argv: argv,
            _envp: envp,
            argv_ptrs,
            envp_ptrs,
        })
    }
}

/// Clone a child into new PID, mount, UTS and (unless `new_ipc` is false) IPC namespaces. The child waits
/// on a pipe, then resets its signal mask and execs `path` with `argv`/`env`.
/// It is pid 1 of its PID namespace.
///
/// The child never outlives the daemon before its `exec`: it is a fork of a
/// multi-threaded daemon and inherits every descriptor (the state directory's
/// lock, the node lock socket, other children's go pipes), so a child stranded
/// by a `kill -9` of the daemon would hold the node. Therefore, before waiting,
/// the child
/// - asks for `SIGKILL` when the thread that cloned it dies (`PR_SET_PDEATHSIG`),
/// - closes every descriptor but stdio, its go pipe's read end and a pidfd of
///   the daemon (so it holds no lock and no pipe's write end, its own included),
/// - waits for either the go byte or the daemon's exit (the pidfd), which also
///   covers a daemon that died before `PR_SET_PDEATHSIG` took effect.
///
/// Once released it clears the death signal: the control process must outlive
/// the client thread that created its enclave.
pub fn spawn_in_new_namespaces(
    path: &OsStr,
    argv: &[String],
    env: &[(String, String)],
    new_ipc: bool,
) -> io::Result<Held> {
    let image = ExecImage::new(path, argv, env)?;
    let (go_read, go_write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)?;
    let daemon = pidfd_open(std::process::id())?;
    let keep = KeptFds::new(go_read.as_raw_fd(), daemon.as_raw_fd());
    let mut stack = vec![0u8; 256 * 1024];
    let mut flags = CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS;
    if new_ipc {
        flags |= CloneFlags::CLONE_NEWIPC;
    }
    let child = Box::new(|| -> isize {
        // Only async-signal-safe calls from here on: prctl, close_range, poll,
        // read, sigprocmask, execve, _exit.
        // SAFETY: PR_SET_PDEATHSIG takes a signal number and no pointers.
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
        keep.close_all_others();
        if !keep.wait_for_go() {
            // The daemon gave up on us (closed the pipe) or died: do not run.
            // SAFETY: _exit is always safe to call.
            unsafe { libc::_exit(120) };
        }
        // SAFETY: as above; 0 clears the death signal.
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, 0, 0, 0, 0) };
        // SAFETY: an empty, zero-initialised sigset is valid for SIG_SETMASK; the
        // daemon blocks signals it handles on a thread, and the child must not inherit that.
        unsafe {
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            libc::execve(
                image.path.as_ptr(),
                image.argv_ptrs.as_ptr(),
                image.envp_ptrs.as_ptr(),
            );
            libc::_exit(127)
        }
    });
    // SAFETY: the child runs only the closure above, which performs only
    // async-signal-safe calls on memory prepared before the clone; the stack
    // outlives the call (without CLONE_VM the child has its own copy).
    let pid = unsafe { nix::sched::clone(child, &mut stack, flags, Some(libc::SIGCHLD)) }
        .map_err(io::Error::from)?;
    drop(go_read);
    drop(daemon);
    Ok(Held {
        pid: pid.as_raw() as u32,
        go: go_write,
    })
}

/// The two descriptors a held child keeps: its go pipe and the daemon's pidfd.
#[derive(Clone, Copy)]
struct KeptFds {
    go: i32,
    daemon: i32,
}

impl KeptFds {
    fn new(go: i32, daemon: i32) -> Self {
        KeptFds { go, daemon }
    }

    /// Close every descriptor above stdio except the two kept (async-signal-safe).
    fn close_all_others(self) {
        let (lo, hi) = (
            self.go.min(self.daemon) as u32,
            self.go.max(self.daemon) as u32,
        );
        for (first, last) in [
            (3, lo.wrapping_sub(1)),
            (lo + 1, hi - 1),
            (hi + 1, u32::MAX),
        ] {
            if first <= last && first >= 3 {
                // SAFETY: close_range takes two integers and flags; it only closes
                // descriptors of this (child) process, none of which Rust code owns
                // after the clone.
                unsafe { libc::syscall(libc::SYS_close_range, first, last, 0) };
            }
        }
    }

    /// Block until the daemon says go (true), or hangs up or dies (false).
    fn wait_for_go(self) -> bool {
        let mut fds = [
            libc::pollfd {
                fd: self.go,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.daemon,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        loop {
            // SAFETY: poll reads and writes the two-element array on our stack.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
            if n < 0 {
                if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                return false;
            }
            if fds[1].revents != 0 {
                return false; // the daemon exited
            }
            if fds[0].revents != 0 {
                let mut byte = 0u8;
                // SAFETY: reading one byte into a valid stack buffer from an fd we own.
                let r = unsafe { libc::read(self.go, (&mut byte as *mut u8).cast(), 1) };
                return r == 1;
            }
        }
    }
}

/// Pin the calling thread (and what it execs) to `cores`.
pub fn set_affinity(pid: u32, cores: &[u32]) -> io::Result<()> {
    let mut set = nix::sched::CpuSet::new();
    for &c in cores {
        set.set(c as usize).map_err(io::Error::from)?;
    }
    nix::sched::sched_setaffinity(Pid::from_raw(pid as i32), &set).map_err(io::Error::from)
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

pub fn geteuid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

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
