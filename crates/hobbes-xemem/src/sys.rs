//! eventfd reads and writes (the signal channel of segments) and test
//! helpers. The memfd and mapping calls come from `hobbes-sys`.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};

/// Add 1 to an eventfd's counter (a signal).
pub fn eventfd_signal(fd: BorrowedFd<'_>) -> Result<(), Errno> {
    loop {
        match nix::unistd::write(fd, &1u64.to_ne_bytes()) {
            Ok(_) => return Ok(()),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Wait until the eventfd is readable (`None`: forever), then consume one
/// signal (EFD_SEMAPHORE: the counter drops by one). False on timeout.
pub fn eventfd_wait(fd: BorrowedFd<'_>, timeout: Option<Duration>) -> Result<bool, Errno> {
    let deadline = timeout.map(|t| std::time::Instant::now() + t);
    loop {
        let left = match deadline {
            None => PollTimeout::NONE,
            Some(d) => {
                let ms = d
                    .saturating_duration_since(std::time::Instant::now())
                    .as_millis();
                PollTimeout::try_from(ms.min(i32::MAX as u128) as i32).unwrap_or(PollTimeout::MAX)
            }
        };
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        match nix::poll::poll(&mut fds, left) {
            Ok(0) if deadline.is_some() => return Ok(false),
            Ok(0) | Err(Errno::EINTR) => continue,
            Ok(_) => break,
            Err(e) => return Err(e),
        }
    }
    eventfd_ack(fd).map(|_| true)
}

/// Consume one signal: read the eventfd (blocks while it is zero).
pub fn eventfd_ack(fd: BorrowedFd<'_>) -> Result<u64, Errno> {
    let mut buf = [0u8; 8];
    loop {
        match nix::unistd::read(fd, &mut buf) {
            Ok(8) => return Ok(u64::from_ne_bytes(buf)),
            Ok(_) => return Err(Errno::EIO),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Consume one signal from a raw eventfd number a C caller gave us.
pub fn eventfd_ack_raw(fd: std::os::fd::RawFd) -> Result<u64, Errno> {
    let mut buf = [0u8; 8];
    loop {
        // SAFETY: read writes at most 8 bytes into our 8-byte buffer; a bad
        // descriptor number only makes it fail with EBADF.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        match n {
            8 => return Ok(u64::from_ne_bytes(buf)),
            -1 if Errno::last() == Errno::EINTR => continue,
            -1 => return Err(Errno::last()),
            _ => return Err(Errno::EIO),
        }
    }
}

/// A new EFD_CLOEXEC | EFD_SEMAPHORE eventfd at zero.
pub fn eventfd() -> Result<OwnedFd, Errno> {
    use nix::sys::eventfd::{EfdFlags, EventFd};
    EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_SEMAPHORE)
        .map(OwnedFd::from)
}

/// Test helpers: private anonymous memory and byte access to it.
#[cfg(test)]
pub mod testing {
    /// `mmap(MAP_PRIVATE|MAP_ANONYMOUS)` of `len` read-write bytes, left
    /// to the test to unmap.
    pub fn mmap_private(len: usize) -> usize {
        hobbes_sys::Mapping::anon(len).unwrap().into_raw().0
    }

    /// Set `len` bytes at `addr` to `byte`.
    ///
    /// # Safety
    ///
    /// `[addr, addr+len)` must be mapped read-write, and no reference into
    /// it may be alive.
    pub unsafe fn fill(addr: usize, len: usize, byte: u8) {
        // SAFETY: passed on from our caller.
        unsafe { std::ptr::write_bytes(addr as *mut u8, byte, len) };
    }

    /// A copy of the `len` bytes at `addr`.
    ///
    /// # Safety
    ///
    /// `[addr, addr+len)` must be mapped readable, and not written during
    /// the call.
    pub unsafe fn read(addr: usize, len: usize) -> Vec<u8> {
        // SAFETY: passed on from our caller.
        unsafe { std::slice::from_raw_parts(addr as *const u8, len) }.to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eventfd_counts_signals() {
        let fd = eventfd().unwrap();
        assert!(!eventfd_wait(fd.as_fd(), Some(Duration::from_millis(1))).unwrap());
        eventfd_signal(fd.as_fd()).unwrap();
        eventfd_signal(fd.as_fd()).unwrap();
        assert!(eventfd_wait(fd.as_fd(), Some(Duration::ZERO)).unwrap());
        assert!(eventfd_wait(fd.as_fd(), None).unwrap());
        assert!(!eventfd_wait(fd.as_fd(), Some(Duration::ZERO)).unwrap());
    }
}
