//! The system calls of whole-address-space shares: mappings with any
//! protection at a fixed address, and copying raw memory into a file. Their
//! userfaultfd (modes, events, wake) is `hobbes_sys::uffd`'s, under the
//! names used here.

use std::ffi::c_void;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use rustix::mm::{MapFlags, MprotectFlags, MremapFlags, ProtFlags};

pub use hobbes_sys::uffd::{
    Event, Userfaultfd as Uffd, UFFDIO_REGISTER_MODE_MISSING as MODE_MISSING,
    UFFDIO_REGISTER_MODE_WP as MODE_WP, UFFD_FEATURE_EVENT_REMAP as FEATURE_EVENT_REMAP,
    UFFD_FEATURE_EVENT_UNMAP as FEATURE_EVENT_UNMAP,
    UFFD_FEATURE_WP_HUGETLBFS_SHMEM as FEATURE_WP_SHMEM,
    UFFD_FEATURE_WP_UNPOPULATED as FEATURE_WP_UNPOPULATED,
};

fn errno(e: rustix::io::Errno) -> Errno {
    Errno::from_raw(e.raw_os_error())
}

/// Protection bits as `/proc/self/maps` shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Perms {
    pub read: bool,
    pub write: bool,
    pub exec: bool,
}

impl Perms {
    fn prot(self) -> ProtFlags {
        let mut p = ProtFlags::empty();
        if self.read {
            p |= ProtFlags::READ;
        }
        if self.write {
            p |= ProtFlags::WRITE;
        }
        if self.exec {
            p |= ProtFlags::EXEC;
        }
        p
    }
}

/// `mmap(at, len, perms, MAP_SHARED | MAP_FIXED, fd, offset)`.
///
/// # Safety
/// The caller owns `[at, at+len)` and whatever refers to the memory it
/// replaces finds the same contents there (or gives it up).
pub unsafe fn map_shared_fixed(
    at: usize,
    len: usize,
    perms: Perms,
    fd: BorrowedFd<'_>,
    offset: u64,
) -> Result<(), Errno> {
    // SAFETY: per this function's contract.
    unsafe {
        rustix::mm::mmap(
            at as *mut c_void,
            len,
            perms.prot(),
            MapFlags::SHARED | MapFlags::FIXED,
            fd,
            offset,
        )
    }
    .map(drop)
    .map_err(errno)
}

/// Map `len` bytes of `fd` from `offset` shared, where the kernel chooses.
pub fn map_shared(
    fd: BorrowedFd<'_>,
    len: usize,
    offset: u64,
    write: bool,
) -> Result<usize, Errno> {
    let prot = match write {
        true => ProtFlags::READ | ProtFlags::WRITE,
        false => ProtFlags::READ,
    };
    // SAFETY: a new mapping where the kernel chooses replaces nothing; the
    // caller owns it from here.
    unsafe {
        rustix::mm::mmap(
            std::ptr::null_mut(),
            len,
            prot,
            MapFlags::SHARED,
            fd,
            offset,
        )
    }
    .map(|p| p as usize)
    .map_err(errno)
}

/// Replace `[at, at+len)` with an inaccessible private page range, so that
/// a thread retrying a fault there gets SIGSEGV.
///
/// # Safety
/// As for [`map_shared_fixed`].
pub unsafe fn map_none_fixed(at: usize, len: usize) -> Result<(), Errno> {
    // SAFETY: per this function's contract.
    unsafe {
        rustix::mm::mmap_anonymous(
            at as *mut c_void,
            len,
            ProtFlags::empty(),
            MapFlags::PRIVATE | MapFlags::FIXED | MapFlags::NORESERVE,
        )
    }
    .map(drop)
    .map_err(errno)
}

/// Replace `[at, at+len)` with a private anonymous copy of its current
/// contents, with protection `perms`: a new mapping is filled from the
/// range, then moved over it in one `mremap`.
///
/// # Safety
/// `[at, at+len)` must be readable and the caller's to replace; a write
/// that lands in it between the copy and the move is lost unless the caller
/// blocks writers (write-protect).
pub unsafe fn privatize(at: usize, len: usize, perms: Perms) -> Result<(), Errno> {
    // SAFETY: a new mapping where the kernel chooses replaces nothing.
    let tmp = unsafe {
        rustix::mm::mmap_anonymous(
            std::ptr::null_mut(),
            len,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::PRIVATE,
        )
    }
    .map_err(errno)? as usize;
    // SAFETY: `at` is readable for `len` bytes (contract) and `tmp` is our
    // fresh, writable mapping of `len` bytes; they do not overlap.
    unsafe { std::ptr::copy_nonoverlapping(at as *const u8, tmp as *mut u8, len) };
    // SAFETY: moves our temporary mapping over the caller's range.
    let moved = unsafe {
        rustix::mm::mremap_fixed(
            tmp as *mut c_void,
            len,
            len,
            MremapFlags::MAYMOVE,
            at as *mut c_void,
        )
    };
    if let Err(e) = moved {
        // SAFETY: our temporary mapping, unused.
        let _ = unsafe { rustix::mm::munmap(tmp as *mut c_void, len) };
        return Err(errno(e));
    }
    let mut flags = MprotectFlags::empty();
    if perms.read {
        flags |= MprotectFlags::READ;
    }
    if perms.write {
        flags |= MprotectFlags::WRITE;
    }
    if perms.exec {
        flags |= MprotectFlags::EXEC;
    }
    // SAFETY: the caller's range, now our private copy, back to its
    // protection.
    unsafe { rustix::mm::mprotect(at as *mut c_void, len, flags) }.map_err(errno)
}

/// `madvise(MADV_DONTFORK)`: a `fork()` child gets nothing mapped there.
/// Failure only costs the hint.
pub fn dont_fork(addr: usize, len: usize) {
    // SAFETY: MADV_DONTFORK changes neither contents nor protections in
    // this process; it only keeps the range out of children.
    let _ =
        unsafe { rustix::mm::madvise(addr as *mut c_void, len, rustix::mm::Advice::LinuxDontFork) };
}

/// `munmap(addr, len)`.
///
/// # Safety
/// The caller owns the range and nothing refers to it any more.
pub unsafe fn unmap(addr: usize, len: usize) -> Result<(), Errno> {
    // SAFETY: per this function's contract.
    unsafe { rustix::mm::munmap(addr as *mut c_void, len) }.map_err(errno)
}

/// Write the `len` bytes at address `src` to `fd` at `offset` (the kernel
/// reads the memory: an unmapped part fails with EFAULT, never a fault
/// here).
pub fn pwrite_memory(fd: BorrowedFd<'_>, src: usize, len: usize, offset: u64) -> Result<(), Errno> {
    let mut done = 0usize;
    while done < len {
        let chunk = (len - done).min(1 << 30);
        // SAFETY: pwrite only reads `chunk` bytes at the address through
        // the kernel's user-copy, which fails with EFAULT rather than
        // faulting on memory that is not mapped; nothing is written here.
        let n = unsafe {
            libc::pwrite(
                fd.as_raw_fd(),
                (src + done) as *const c_void,
                chunk,
                (offset + done as u64) as libc::off_t,
            )
        };
        match n {
            n if n > 0 => done += n as usize,
            0 => return Err(Errno::EIO),
            _ if Errno::last() == Errno::EINTR => continue,
            _ => return Err(Errno::last()),
        }
    }
    Ok(())
}

/// `fstat`'s (device, inode) of a descriptor.
pub fn dev_ino(fd: BorrowedFd<'_>) -> Result<(u64, u64), Errno> {
    let st = rustix::fs::fstat(fd).map_err(errno)?;
    Ok((st.st_dev, st.st_ino))
}

/// Whether a descriptor was opened for writing.
pub fn writable(fd: BorrowedFd<'_>) -> Result<bool, Errno> {
    let fl = rustix::fs::fcntl_getfl(fd).map_err(errno)?;
    Ok(fl & rustix::fs::OFlags::RWMODE == rustix::fs::OFlags::RDWR)
}

/// A fresh read-only open file description of the same file (through
/// `/proc/self/fd`), close-on-exec.
pub fn reopen_read_only(fd: BorrowedFd<'_>) -> Result<OwnedFd, Errno> {
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    rustix::fs::open(
        path.as_str(),
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(errno)
}
