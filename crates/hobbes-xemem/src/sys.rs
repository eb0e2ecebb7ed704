//! The crate's only `unsafe`: thin wrappers over memfd, mmap, munmap,
//! madvise, raw copies between mappings, and eventfd reads/writes.
//!
//! Addresses are plain `usize` here; callers guarantee (and document) which
//! ranges they own.

use std::ffi::CStr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};

/// The base page size.
pub fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(n).ok().filter(|n| *n > 0).unwrap_or(4096)
}

/// `memfd_create(name, MFD_CLOEXEC | extra)`.
pub fn memfd_create(name: &CStr, hugetlb: bool) -> Result<OwnedFd, Errno> {
    let flags = libc::MFD_CLOEXEC | if hugetlb { libc::MFD_HUGETLB } else { 0 };
    // SAFETY: `name` is a valid NUL-terminated string; memfd_create does not
    // retain the pointer.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), flags) };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: memfd_create returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub fn ftruncate(fd: BorrowedFd<'_>, len: usize) -> Result<(), Errno> {
    let len = libc::off_t::try_from(len).map_err(|_| Errno::EFBIG)?;
    nix::unistd::ftruncate(fd, len)
}

/// Protection of a shared mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prot {
    Read,
    ReadWrite,
}

/// `mmap(at, len, prot, MAP_SHARED [| MAP_FIXED], fd, offset)`; returns the
/// mapping's address. With `fixed`, whatever was mapped in `[at, at+len)` is
/// replaced: the caller must own that range.
pub fn mmap_shared(
    at: Option<usize>,
    len: usize,
    prot: Prot,
    fd: BorrowedFd<'_>,
    offset: u64,
) -> Result<usize, Errno> {
    let prot = match prot {
        Prot::Read => libc::PROT_READ,
        Prot::ReadWrite => libc::PROT_READ | libc::PROT_WRITE,
    };
    let flags = libc::MAP_SHARED | if at.is_some() { libc::MAP_FIXED } else { 0 };
    let offset = libc::off_t::try_from(offset).map_err(|_| Errno::EINVAL)?;
    // SAFETY: a shared mapping of a descriptor we hold. Without MAP_FIXED the
    // kernel picks free addresses; with it the caller owns the range it
    // replaces (documented on the public functions that pass `at`).
    let p = unsafe {
        libc::mmap(
            at.unwrap_or(0) as *mut libc::c_void,
            len,
            prot,
            flags,
            fd.as_raw_fd(),
            offset,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(Errno::last());
    }
    Ok(p as usize)
}

/// Reserve `len` bytes of address space (PROT_NONE, no memory), to carve an
/// aligned mapping out of.
pub fn reserve(len: usize) -> Result<usize, Errno> {
    // SAFETY: an anonymous PROT_NONE mapping at an address the kernel picks
    // touches no existing memory.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(Errno::last());
    }
    Ok(p as usize)
}

/// Reserve `len` bytes of address space (PROT_NONE, no memory) at `at`
/// (`MAP_FIXED`: the caller owns that range) or where the kernel picks; a
/// composite attachment maps its extents over it.
pub fn reserve_at(at: Option<usize>, len: usize) -> Result<usize, Errno> {
    let Some(at) = at else {
        return reserve(len);
    };
    // SAFETY: an anonymous PROT_NONE mapping; with MAP_FIXED it replaces
    // [at, at+len), which the caller owns (documented on `attach`).
    let p = unsafe {
        libc::mmap(
            at as *mut libc::c_void,
            len,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(Errno::last());
    }
    Ok(p as usize)
}

/// `flock(fd, LOCK_SH | LOCK_NB)`: true when taken, false when an exclusive
/// lock is held on the file (EWOULDBLOCK). The lock belongs to the open file
/// description: it lasts until every descriptor of it is closed.
pub fn flock_shared_nb(fd: BorrowedFd<'_>) -> Result<bool, Errno> {
    loop {
        // SAFETY: flock on a descriptor we hold; no memory is involved.
        let r = unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
        if r == 0 {
            return Ok(true);
        }
        match Errno::last() {
            Errno::EINTR => continue,
            Errno::EWOULDBLOCK => return Ok(false),
            e => return Err(e),
        }
    }
}

/// Length of the file behind a descriptor.
pub fn file_len(fd: BorrowedFd<'_>) -> Result<u64, Errno> {
    nix::sys::stat::fstat(fd).map(|st| u64::try_from(st.st_size).unwrap_or(0))
}

/// `munmap(addr, len)`. The caller owns the range and nothing refers to it
/// any more.
pub fn munmap(addr: usize, len: usize) -> Result<(), Errno> {
    if len == 0 {
        return Ok(());
    }
    // SAFETY: the caller owns [addr, addr+len) (a mapping this crate made, or
    // part of one) and drops every reference into it.
    let r = unsafe { libc::munmap(addr as *mut libc::c_void, len) };
    if r != 0 {
        return Err(Errno::last());
    }
    Ok(())
}

/// `madvise(addr, len, MADV_HUGEPAGE)`: a hint; failure only costs huge pages.
pub fn advise_hugepage(addr: usize, len: usize) -> Result<(), Errno> {
    // SAFETY: madvise(MADV_HUGEPAGE) changes no contents and no protections;
    // the range is a mapping of ours.
    let r = unsafe { libc::madvise(addr as *mut libc::c_void, len, libc::MADV_HUGEPAGE) };
    if r != 0 {
        return Err(Errno::last());
    }
    Ok(())
}

/// Copy `len` bytes from `src` to `dst`.
///
/// The caller guarantees both ranges are mapped, `src` readable and `dst`
/// writable, that they do not overlap, and that no other thread writes `src`
/// during the copy (the quiescence `make` requires).
pub fn copy(src: usize, dst: usize, len: usize) {
    // SAFETY: per the caller's guarantees above.
    unsafe { std::ptr::copy_nonoverlapping(src as *const u8, dst as *mut u8, len) };
}

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

/// Inode of a descriptor (identifies a memfd in /proc/self/maps).
pub fn inode(fd: BorrowedFd<'_>) -> Result<u64, Errno> {
    nix::sys::stat::fstat(fd).map(|st| st.st_ino)
}

/// Test helpers: private anonymous memory and byte access to it.
#[cfg(test)]
pub mod testing {
    /// `mmap(MAP_PRIVATE|MAP_ANONYMOUS)` of `len` read-write bytes.
    pub fn mmap_private(len: usize) -> usize {
        // SAFETY: a fresh anonymous mapping at a kernel-chosen address.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        p as usize
    }

    pub fn fill(addr: usize, len: usize, byte: u8) {
        // SAFETY: tests pass ranges they mapped read-write.
        unsafe { std::ptr::write_bytes(addr as *mut u8, byte, len) };
    }

    pub fn read(addr: usize, len: usize) -> Vec<u8> {
        // SAFETY: tests pass ranges they mapped readable.
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

    #[test]
    fn page_size_is_a_power_of_two() {
        assert!(page_size().is_power_of_two());
    }
}
