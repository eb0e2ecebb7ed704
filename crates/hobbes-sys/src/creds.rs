//! Credentials: a Unix socket peer's (`SO_PEERCRED`), this process's
//! effective uid, and the per-thread filesystem identity
//! (`setfsuid`/`setfsgid`) for file access on someone else's behalf.

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;

use crate::Errno;

/// Credentials of the process at the other end of a Unix socket, with its
/// pid as seen from our PID namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCred {
    /// The peer's pid in our PID namespace (0 when the peer is in a PID
    /// namespace we cannot see into).
    pub pid: u32,
    /// The peer's effective uid when it connected.
    pub uid: u32,
    /// The peer's effective gid when it connected.
    pub gid: u32,
}

/// The credentials of `stream`'s peer (`SO_PEERCRED`), as the kernel
/// recorded them at `connect`. Errors only if the `getsockopt` fails (not
/// a Unix socket).
pub fn peer_cred(stream: &UnixStream) -> Result<PeerCred, Errno> {
    let c = nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials)?;
    Ok(PeerCred {
        pid: u32::try_from(c.pid()).unwrap_or(0),
        uid: c.uid(),
        gid: c.gid(),
    })
}

/// Has the peer of `stream` closed its end (process gone, or shut down)?
/// Does not consume anything the peer sent.
pub fn peer_hung_up(stream: &UnixStream) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    // A closed peer (the usual case: its process died) shows as POLLHUP.
    let mut fds = [PollFd::new(stream.as_fd(), PollFlags::empty())];
    match poll(&mut fds, PollTimeout::ZERO) {
        Ok(n) if n > 0 => fds[0]
            .revents()
            .is_some_and(|r| r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR)),
        _ => false,
    }
}

/// This process's effective uid.
pub fn geteuid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// Run `f` with this thread's filesystem uid/gid set to `uid`/`gid`, so
/// file access on someone's behalf is checked as if they made it, then
/// restore them. Linux's fsuid/fsgid are per thread; setting them needs
/// `CAP_SETUID`/`CAP_SETGID` (without, they stay as they are).
pub fn with_fs_identity<T>(uid: u32, gid: u32, f: impl FnOnce() -> T) -> T {
    // SAFETY: setfsuid/setfsgid take plain integers, affect only this
    // thread, and return the previous value, which we restore below.
    let (old_gid, old_uid) = unsafe {
        let g = libc::syscall(libc::SYS_setfsgid, gid);
        let u = libc::syscall(libc::SYS_setfsuid, uid);
        (g, u)
    };
    /// Restores the identity even when `f` panics.
    struct Restore(libc::c_long, libc::c_long);
    impl Drop for Restore {
        fn drop(&mut self) {
            // SAFETY: as above: plain integers, this thread only.
            unsafe {
                libc::syscall(libc::SYS_setfsuid, self.0);
                libc::syscall(libc::SYS_setfsgid, self.1);
            }
        }
    }
    let _restore = Restore(old_uid, old_gid);
    f()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socketpair_peer_is_us() {
        let (a, b) = UnixStream::pair().unwrap();
        let c = peer_cred(&a).unwrap();
        assert_eq!(c.pid, std::process::id());
        assert_eq!(c.uid, geteuid());
        assert!(!peer_hung_up(&a));
        drop(b);
        assert!(peer_hung_up(&a));
    }

    #[test]
    fn fs_identity_is_restored() {
        // Our own identity: allowed without privileges, and a no-op.
        let uid = geteuid();
        let gid = nix::unistd::getegid().as_raw();
        let out = with_fs_identity(uid, gid, || std::fs::metadata("/proc/self").is_ok());
        assert!(out);
        // setfsuid(-1) only reports the current value.
        // SAFETY: a query with an invalid id changes nothing.
        let now = unsafe { libc::syscall(libc::SYS_setfsuid, u32::MAX) };
        assert_eq!(now as u32, uid);
    }
}
