//! The system calls of whole-address-space shares: a userfaultfd with the
//! modes, events and ioctls they use ([`Uffd`]), mappings with any
//! protection at a fixed address, and copying raw memory into a file.
//!
//! The userfaultfd structures and request numbers are written out here
//! (Linux uapi `linux/userfaultfd.h`): neither libc, nix nor rustix has
//! them, and `hobbes_sys::uffd` covers write-protect tracking only.

use std::ffi::{c_int, c_void};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use rustix::mm::{MapFlags, MprotectFlags, MremapFlags, ProtFlags, UserfaultfdFlags};

fn errno(e: rustix::io::Errno) -> Errno {
    Errno::from_raw(e.raw_os_error())
}

const fn ioc(dir: u64, ty: u64, nr: u64, size: u64) -> u64 {
    (dir << 30) | (size << 16) | (ty << 8) | nr
}
const IOC_WRITE: u64 = 1;
const IOC_READ: u64 = 2;

const UFFD_API: u64 = 0xAA;
const UFFD_USER_MODE_ONLY: u32 = 1;
/// `UFFD_FEATURE_EVENT_REMAP`: report `mremap` of registered ranges.
pub const FEATURE_EVENT_REMAP: u64 = 1 << 2;
/// `UFFD_FEATURE_EVENT_UNMAP`: report `munmap`, `MAP_FIXED` and `brk`
/// shrinking of registered ranges.
pub const FEATURE_EVENT_UNMAP: u64 = 1 << 6;
/// `UFFD_FEATURE_WP_HUGETLBFS_SHMEM`: write-protect shared memory too.
pub const FEATURE_WP_SHMEM: u64 = 1 << 12;
/// `UFFD_FEATURE_WP_UNPOPULATED`: write-protect never-touched pages too.
pub const FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
/// `UFFDIO_REGISTER_MODE_MISSING`.
pub const MODE_MISSING: u64 = 1;
/// `UFFDIO_REGISTER_MODE_WP`.
pub const MODE_WP: u64 = 2;

const EVENT_PAGEFAULT: u8 = 0x12;
const EVENT_REMAP: u8 = 0x14;
const EVENT_UNMAP: u8 = 0x16;

#[repr(C)]
#[derive(Default)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioRange {
    start: u64,
    len: u64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioWriteprotect {
    range: UffdioRange,
    mode: u64,
}

const UFFDIO_API: u64 = ioc(IOC_READ | IOC_WRITE, 0xAA, 0x3F, 24);
const UFFDIO_REGISTER: u64 = ioc(IOC_READ | IOC_WRITE, 0xAA, 0x00, 32);
const UFFDIO_UNREGISTER: u64 = ioc(IOC_READ, 0xAA, 0x01, 16);
const UFFDIO_WAKE: u64 = ioc(IOC_READ, 0xAA, 0x02, 16);
const UFFDIO_WRITEPROTECT: u64 = ioc(IOC_READ | IOC_WRITE, 0xAA, 0x06, 24);

/// `ioctl(fd, request, arg)`, retried on EINTR.
///
/// # Safety
/// `request` must take a pointer to a `T` matching its uapi structure.
unsafe fn ioctl<T>(fd: BorrowedFd<'_>, request: u64, arg: &mut T) -> Result<c_int, Errno> {
    loop {
        // SAFETY: per this function's contract; `arg` is a live, exclusive
        // structure of the size the request encodes (the kernel checks it).
        let r = unsafe { libc::ioctl(fd.as_raw_fd(), request as _, arg as *mut T) };
        if r >= 0 {
            return Ok(r);
        }
        match Errno::last() {
            Errno::EINTR => continue,
            e => return Err(e),
        }
    }
}

/// What a userfaultfd reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A thread faulted at `addr` (`write`: a write; `wp`: on a
    /// write-protected page) and waits to be woken.
    Fault { addr: u64, write: bool, wp: bool },
    /// `[start, end)` of a registered range was unmapped.
    Unmap { start: u64, end: u64 },
    /// `[from, from+len)` moved to `to` (`mremap`).
    Remap { from: u64, to: u64, len: u64 },
    /// Another event (not asked for).
    Other(u8),
}

/// A userfaultfd (`O_CLOEXEC | O_NONBLOCK`) after the `UFFDIO_API`
/// handshake.
#[derive(Debug)]
pub struct Uffd {
    fd: OwnedFd,
}

impl Uffd {
    /// Open one with `features`: first able to handle faults the kernel
    /// takes on the process's behalf (needs privilege where
    /// `vm.unprivileged_userfaultfd` is 0), else user-mode faults only (a
    /// system call touching a blocked range then fails with EFAULT).
    pub fn open(features: u64) -> Result<Uffd, Errno> {
        let base = UserfaultfdFlags::CLOEXEC | UserfaultfdFlags::NONBLOCK;
        // SAFETY: the call takes flags only; the descriptor does nothing
        // until a range is registered, which is an `unsafe fn` below.
        let fd = match unsafe { rustix::mm::userfaultfd(base) } {
            Ok(fd) => fd,
            Err(_) => {
                let flags = base | UserfaultfdFlags::from_bits_retain(UFFD_USER_MODE_ONLY);
                // SAFETY: as above.
                unsafe { rustix::mm::userfaultfd(flags) }.map_err(errno)?
            }
        };
        let mut api = UffdioApi {
            api: UFFD_API,
            features,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_API takes a `struct uffdio_api`, which UffdioApi is.
        unsafe { ioctl(fd.as_fd(), UFFDIO_API, &mut api) }?;
        Ok(Uffd { fd })
    }

    /// Register `[addr, addr+len)` with `mode` (`MODE_*` bits).
    ///
    /// # Safety
    /// The range must be memory whose faults this descriptor's owner
    /// resolves (a thread faulting there blocks until woken).
    pub unsafe fn register(&self, addr: usize, len: usize, mode: u64) -> Result<(), Errno> {
        let mut reg = UffdioRegister {
            range: UffdioRange {
                start: addr as u64,
                len: len as u64,
            },
            mode,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_REGISTER takes a `struct uffdio_register`.
        unsafe { ioctl(self.fd.as_fd(), UFFDIO_REGISTER, &mut reg) }.map(drop)
    }

    /// Unregister `[addr, addr+len)` (wakes threads waiting there).
    pub fn unregister(&self, addr: usize, len: usize) -> Result<(), Errno> {
        let mut range = UffdioRange {
            start: addr as u64,
            len: len as u64,
        };
        // SAFETY: UFFDIO_UNREGISTER takes a `struct uffdio_range`; it
        // changes no memory, only which faults reach this descriptor.
        unsafe { ioctl(self.fd.as_fd(), UFFDIO_UNREGISTER, &mut range) }.map(drop)
    }

    /// Wake the threads waiting on faults in `[addr, addr+len)`: they retry.
    pub fn wake(&self, addr: usize, len: usize) -> Result<(), Errno> {
        let mut range = UffdioRange {
            start: addr as u64,
            len: len as u64,
        };
        // SAFETY: UFFDIO_WAKE takes a `struct uffdio_range`; waking makes
        // the faulting threads retry, which is always safe.
        unsafe { ioctl(self.fd.as_fd(), UFFDIO_WAKE, &mut range) }.map(drop)
    }

    /// Write-protect (`protect`) or unprotect `[addr, addr+len)`; writes
    /// to protected pages block until woken.
    ///
    /// # Safety
    /// As for [`register`](Self::register).
    pub unsafe fn writeprotect(&self, addr: usize, len: usize, protect: bool) -> Result<(), Errno> {
        let mut wp = UffdioWriteprotect {
            range: UffdioRange {
                start: addr as u64,
                len: len as u64,
            },
            mode: u64::from(protect),
        };
        // SAFETY: UFFDIO_WRITEPROTECT takes a `struct uffdio_writeprotect`.
        unsafe { ioctl(self.fd.as_fd(), UFFDIO_WRITEPROTECT, &mut wp) }.map(drop)
    }

    /// The events queued now (none: empty), without blocking.
    pub fn read_events(&self) -> Result<Vec<Event>, Errno> {
        let mut buf = [0u8; 32 * 16];
        let mut events = Vec::new();
        loop {
            match nix::unistd::read(self.fd.as_fd(), &mut buf) {
                Ok(n) => {
                    for m in buf[..n - n % 32].chunks_exact(32) {
                        events.push(decode_msg(m));
                    }
                    if n < buf.len() {
                        return Ok(events);
                    }
                }
                Err(Errno::EAGAIN) => return Ok(events),
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_ne_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// One `struct uffd_msg` (32 bytes: event at 0, arguments from 8).
fn decode_msg(m: &[u8]) -> Event {
    match m[0] {
        EVENT_PAGEFAULT => {
            let flags = u64_at(m, 8);
            Event::Fault {
                addr: u64_at(m, 16),
                write: flags & 1 != 0,
                wp: flags & 2 != 0,
            }
        }
        EVENT_REMAP => Event::Remap {
            from: u64_at(m, 8),
            to: u64_at(m, 16),
            len: u64_at(m, 24),
        },
        EVENT_UNMAP => Event::Unmap {
            start: u64_at(m, 8),
            end: u64_at(m, 16),
        },
        other => Event::Other(other),
    }
}

impl AsFd for Uffd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_the_uapi() {
        assert_eq!(UFFDIO_API, 0xC018_AA3F);
        assert_eq!(UFFDIO_REGISTER, 0xC020_AA00);
        assert_eq!(UFFDIO_UNREGISTER, 0x8010_AA01);
        assert_eq!(UFFDIO_WAKE, 0x8010_AA02);
        assert_eq!(UFFDIO_WRITEPROTECT, 0xC018_AA06);
    }

    #[test]
    fn messages_decode() {
        let mut m = [0u8; 32];
        m[0] = EVENT_UNMAP;
        m[8..16].copy_from_slice(&0x1000u64.to_ne_bytes());
        m[16..24].copy_from_slice(&0x3000u64.to_ne_bytes());
        assert_eq!(
            decode_msg(&m),
            Event::Unmap {
                start: 0x1000,
                end: 0x3000
            }
        );
        m[0] = EVENT_PAGEFAULT;
        m[8..16].copy_from_slice(&3u64.to_ne_bytes());
        assert_eq!(
            decode_msg(&m),
            Event::Fault {
                addr: 0x3000,
                write: true,
                wp: true
            }
        );
        m[0] = EVENT_REMAP;
        m[24..32].copy_from_slice(&0x1000u64.to_ne_bytes());
        assert_eq!(
            decode_msg(&m),
            Event::Remap {
                from: 3,
                to: 0x3000,
                len: 0x1000
            }
        );
        m[0] = 0x13;
        assert_eq!(decode_msg(&m), Event::Other(0x13));
    }
}
