//! The crate's only `unsafe`: thin wrappers over the system calls XASM
//! needs (anonymous memory, mprotect, memfd, hole punching, pwritev, flock,
//! shared futexes, userfaultfd write-protection, the `PAGEMAP_SCAN` ioctl)
//! and the process-wide SIGSEGV handler of the mprotect mechanism.
//!
//! Addresses are plain `usize`; callers guarantee (and document) which
//! ranges they own. The userfaultfd and `PAGEMAP_SCAN` definitions are
//! written out here because libc does not have them (Linux uapi
//! `linux/userfaultfd.h` and `linux/fs.h`, 6.7+).

use std::ffi::{c_int, c_void, CStr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::AtomicU32;
use std::sync::OnceLock;
use std::time::Duration;

use nix::errno::Errno;

/// The base page size.
pub fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(n).ok().filter(|n| *n > 0).unwrap_or(4096)
}

fn check(r: c_int) -> Result<c_int, Errno> {
    if r < 0 {
        Err(Errno::last())
    } else {
        Ok(r)
    }
}

// ---------------------------------------------------------------- memory

/// A new private anonymous read-write mapping of `len` bytes, where the
/// kernel picks or exactly at `at` (`MAP_FIXED_NOREPLACE`: EEXIST when
/// something is mapped there already).
pub fn mmap_anon(len: usize, at: Option<usize>) -> Result<usize, Errno> {
    let fixed = if at.is_some() {
        libc::MAP_FIXED_NOREPLACE
    } else {
        0
    };
    // SAFETY: an anonymous mapping; MAP_FIXED_NOREPLACE never replaces an
    // existing mapping.
    let p = unsafe {
        libc::mmap(
            at.unwrap_or(0) as *mut c_void,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | fixed,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(Errno::last());
    }
    if at.is_some_and(|a| a != p as usize) {
        // Kernels before 4.17 ignore MAP_FIXED_NOREPLACE and treat it as a hint.
        let _ = munmap(p as usize, len);
        return Err(Errno::EEXIST);
    }
    Ok(p as usize)
}

/// A `MAP_SHARED` read-write mapping of `len` bytes of `fd` from offset 0
/// (the producer's window on its pool; pages past the end of the file are
/// never touched).
pub fn mmap_shared_rw(fd: BorrowedFd<'_>, len: usize) -> Result<usize, Errno> {
    // SAFETY: a new shared mapping of a descriptor we hold, at an address
    // the kernel picks; it replaces nothing.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(Errno::last());
    }
    Ok(p as usize)
}

/// Copy `len` bytes from `src` to `dst`. The caller guarantees both ranges
/// are mapped (`src` readable, `dst` writable), do not overlap, and nobody
/// writes `src` meanwhile.
pub fn copy(src: usize, dst: usize, len: usize) {
    // SAFETY: per the caller's guarantee above.
    unsafe { std::ptr::copy_nonoverlapping(src as *const u8, dst as *mut u8, len) };
}

/// `munmap(addr, len)`. The caller owns the range and nothing refers to it
/// any more.
pub fn munmap(addr: usize, len: usize) -> Result<(), Errno> {
    if len == 0 {
        return Ok(());
    }
    // SAFETY: the caller owns [addr, addr+len) and drops every reference into it.
    check(unsafe { libc::munmap(addr as *mut c_void, len) }).map(drop)
}

/// `madvise(MADV_NOHUGEPAGE)`: dirty tracking is per base page.
pub fn no_huge_pages(addr: usize, len: usize) -> Result<(), Errno> {
    // SAFETY: MADV_NOHUGEPAGE changes neither contents nor protections.
    check(unsafe { libc::madvise(addr as *mut c_void, len, libc::MADV_NOHUGEPAGE) }).map(drop)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prot {
    Read,
    ReadWrite,
}

/// `mprotect(addr, len, prot)` of memory the caller owns. Async-signal-safe
/// (one system call): the SIGSEGV handler uses it.
pub fn mprotect(addr: usize, len: usize, prot: Prot) -> Result<(), Errno> {
    let prot = match prot {
        Prot::Read => libc::PROT_READ,
        Prot::ReadWrite => libc::PROT_READ | libc::PROT_WRITE,
    };
    // SAFETY: changes only the protection of a range the caller owns; no
    // Rust reference is invalidated (writes to a read-only page fault and
    // are resolved by the SIGSEGV handler).
    check(unsafe { libc::mprotect(addr as *mut c_void, len, prot) }).map(drop)
}

/// The bytes `[addr, addr+len)`. The caller guarantees the range is mapped
/// readable for as long as the slice lives and that nobody writes it then.
pub fn slice<'a>(addr: usize, len: usize) -> &'a [u8] {
    if len == 0 {
        return &[];
    }
    // SAFETY: per the caller's guarantee above.
    unsafe { std::slice::from_raw_parts(addr as *const u8, len) }
}

/// The bytes `[addr, addr+len)`, writable. The caller guarantees the range
/// is its own read-write (or write-tracked) memory for as long as the slice
/// lives, with no other reference to it.
pub fn slice_mut<'a>(addr: usize, len: usize) -> &'a mut [u8] {
    if len == 0 {
        return &mut [];
    }
    // SAFETY: per the caller's guarantee above.
    unsafe { std::slice::from_raw_parts_mut(addr as *mut u8, len) }
}

/// Write the byte at `addr` back unchanged (a write fault: it gives a
/// never-written anonymous mapping its reverse-map structure before the
/// mprotect mechanism splits it, so the pieces can merge back). The caller
/// owns the byte and no other thread writes it now.
pub fn rewrite_byte(addr: usize) {
    // SAFETY: per the caller's guarantee above; volatile so the store is kept.
    unsafe {
        let p = addr as *mut u8;
        p.write_volatile(p.read_volatile());
    }
}

/// A `&T` at `addr`: the caller guarantees a properly aligned, initialized
/// `T` lives there (mapped) for `'a`. Used for the channel page header.
pub fn at<'a, T>(addr: usize) -> &'a T {
    // SAFETY: per the caller's guarantee above.
    unsafe { &*(addr as *const T) }
}

/// Write `value` at `addr` (a plain store into memory the caller owns,
/// properly aligned for `T`).
pub fn write_at<T>(addr: usize, value: T) {
    // SAFETY: per the caller's guarantee above.
    unsafe { (addr as *mut T).write(value) }
}

// ------------------------------------------------------------------ files

/// `memfd_create(name, MFD_CLOEXEC)`.
pub fn memfd_create(name: &CStr) -> Result<OwnedFd, Errno> {
    // SAFETY: `name` is a valid C string; memfd_create does not keep it.
    let fd = check(unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) })?;
    // SAFETY: a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub fn ftruncate(fd: BorrowedFd<'_>, len: u64) -> Result<(), Errno> {
    let len = libc::off_t::try_from(len).map_err(|_| Errno::EFBIG)?;
    nix::unistd::ftruncate(fd, len)
}

/// Free `[offset, offset+len)` of a file (`fallocate(PUNCH_HOLE|KEEP_SIZE)`).
pub fn punch_hole(fd: BorrowedFd<'_>, offset: u64, len: u64) -> Result<(), Errno> {
    use nix::fcntl::{fallocate, FallocateFlags};
    let off = libc::off_t::try_from(offset).map_err(|_| Errno::EINVAL)?;
    let len = libc::off_t::try_from(len).map_err(|_| Errno::EINVAL)?;
    fallocate(
        fd,
        FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
        off,
        len,
    )
}

/// (file size, bytes of memory it uses) of a descriptor.
pub fn file_usage(fd: BorrowedFd<'_>) -> Result<(u64, u64), Errno> {
    let st = nix::sys::stat::fstat(fd)?;
    Ok((
        u64::try_from(st.st_size).unwrap_or(0),
        u64::try_from(st.st_blocks).unwrap_or(0) * 512,
    ))
}

/// Write the memory ranges `parts` (address, length), one after the
/// other, into `fd` at `offset` with as few `pwritev` calls as possible.
/// The caller guarantees every part is mapped readable and not written
/// during the call.
pub fn pwritev_mem(fd: BorrowedFd<'_>, offset: u64, parts: &[(usize, usize)]) -> Result<(), Errno> {
    const IOV_MAX: usize = 1024;
    let mut iov: Vec<libc::iovec> = parts
        .iter()
        .filter(|(_, len)| *len > 0)
        .map(|&(addr, len)| libc::iovec {
            iov_base: addr as *mut c_void,
            iov_len: len,
        })
        .collect();
    let mut at = offset;
    let mut first = 0;
    while first < iov.len() {
        let n = (iov.len() - first).min(IOV_MAX);
        let off = libc::off_t::try_from(at).map_err(|_| Errno::EFBIG)?;
        // SAFETY: the iovecs describe readable memory per the caller's
        // guarantee; pwritev only reads it.
        let r = unsafe { libc::pwritev(fd.as_raw_fd(), iov[first..].as_ptr(), n as c_int, off) };
        if r < 0 {
            match Errno::last() {
                Errno::EINTR => continue,
                e => return Err(e),
            }
        }
        let mut done = r as usize;
        if done == 0 {
            return Err(Errno::EIO);
        }
        at += done as u64;
        // Skip what was written; a part written halfway is shortened.
        while done > 0 {
            let v = &mut iov[first];
            if done >= v.iov_len {
                done -= v.iov_len;
                first += 1;
            } else {
                v.iov_base = (v.iov_base as usize + done) as *mut c_void;
                v.iov_len -= done;
                done = 0;
            }
        }
    }
    Ok(())
}

/// `flock(fd, LOCK_EX | LOCK_NB)`: true when taken, false when another open
/// file description holds a lock on the file.
pub fn try_lock_exclusive(fd: BorrowedFd<'_>) -> Result<bool, Errno> {
    flock(fd, libc::LOCK_EX | libc::LOCK_NB)
}

/// `flock(fd, LOCK_UN)`.
pub fn unlock(fd: BorrowedFd<'_>) -> Result<(), Errno> {
    flock(fd, libc::LOCK_UN).map(drop)
}

/// `flock(fd, LOCK_SH | LOCK_NB)`: true when taken.
#[cfg(test)]
pub fn try_lock_shared(fd: BorrowedFd<'_>) -> Result<bool, Errno> {
    flock(fd, libc::LOCK_SH | libc::LOCK_NB)
}

fn flock(fd: BorrowedFd<'_>, op: c_int) -> Result<bool, Errno> {
    loop {
        // SAFETY: flock on a descriptor we hold; no memory is involved.
        match check(unsafe { libc::flock(fd.as_raw_fd(), op) }) {
            Ok(_) => return Ok(true),
            Err(Errno::EWOULDBLOCK) => return Ok(false),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// How many descriptors this process has open (for leak checks).
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

// ----------------------------------------------------------------- futex

/// `FUTEX_WAIT` (shared: works between processes mapping the same file)
/// while `*word == expected`, at most `timeout`. Returns on wake-up,
/// timeout, signal or a changed value alike: callers re-check.
pub fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) -> Result<(), Errno> {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `word` is a live, aligned u32 (in a shared mapping); the
    // kernel only reads it and the timespec.
    let r = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            &ts as *const libc::timespec,
            std::ptr::null::<u32>(),
            0u32,
        )
    };
    if r < 0 {
        return match Errno::last() {
            Errno::EAGAIN | Errno::ETIMEDOUT | Errno::EINTR => Ok(()),
            e => Err(e),
        };
    }
    Ok(())
}

/// `FUTEX_WAKE` (shared) every waiter on `word`.
pub fn futex_wake_all(word: &AtomicU32) -> Result<(), Errno> {
    // SAFETY: `word` is a live, aligned u32; FUTEX_WAKE does not touch memory.
    let r = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            i32::MAX,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        )
    };
    if r < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

// ----------------------------------------------------------- userfaultfd

const fn ioc(dir: u64, ty: u64, nr: u64, size: u64) -> u64 {
    (dir << 30) | (size << 16) | (ty << 8) | nr
}
const IOC_WRITE: u64 = 1;
const IOC_READ: u64 = 2;

const UFFD_API: u64 = 0xAA;
const UFFD_USER_MODE_ONLY: c_int = 1;
pub const UFFD_FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
pub const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;
const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1 << 0;

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
const UFFDIO_WRITEPROTECT: u64 = ioc(IOC_READ | IOC_WRITE, 0xAA, 0x06, 24);

fn ioctl<T>(fd: BorrowedFd<'_>, request: u64, arg: &mut T) -> Result<c_int, Errno> {
    loop {
        // SAFETY: every request used here takes a pointer to the #[repr(C)]
        // structure `T` matching its uapi definition (sizes are encoded in
        // the request numbers above and checked by the kernel).
        let r = unsafe { libc::ioctl(fd.as_raw_fd(), request as _, arg as *mut T) };
        match check(r) {
            Err(Errno::EINTR) => continue,
            other => return other,
        }
    }
}

/// A userfaultfd for user-mode faults only (no privilege needed), with the
/// `features` it supports (UFFDIO_API handshake with `want`; 0 asks for
/// none and reports all).
pub fn userfaultfd(want: u64) -> Result<(OwnedFd, u64), Errno> {
    // SAFETY: the userfaultfd system call takes flags only.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_userfaultfd,
            libc::O_CLOEXEC | libc::O_NONBLOCK | UFFD_USER_MODE_ONLY,
        )
    };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as c_int) };
    let mut api = UffdioApi {
        api: UFFD_API,
        features: want,
        ioctls: 0,
    };
    ioctl(fd.as_fd(), UFFDIO_API, &mut api)?;
    Ok((fd, api.features))
}

/// Register `[addr, addr+len)` (memory of ours) for write-protect tracking.
pub fn uffd_register_wp(fd: BorrowedFd<'_>, addr: usize, len: usize) -> Result<(), Errno> {
    let mut reg = UffdioRegister {
        range: UffdioRange {
            start: addr as u64,
            len: len as u64,
        },
        mode: UFFDIO_REGISTER_MODE_WP,
        ioctls: 0,
    };
    ioctl(fd, UFFDIO_REGISTER, &mut reg).map(drop)
}

pub fn uffd_unregister(fd: BorrowedFd<'_>, addr: usize, len: usize) -> Result<(), Errno> {
    let mut range = UffdioRange {
        start: addr as u64,
        len: len as u64,
    };
    ioctl(fd, UFFDIO_UNREGISTER, &mut range).map(drop)
}

/// Set (`protect`) or clear the write-protect bit of every page in range.
pub fn uffd_writeprotect(
    fd: BorrowedFd<'_>,
    addr: usize,
    len: usize,
    protect: bool,
) -> Result<(), Errno> {
    let mut wp = UffdioWriteprotect {
        range: UffdioRange {
            start: addr as u64,
            len: len as u64,
        },
        mode: if protect {
            UFFDIO_WRITEPROTECT_MODE_WP
        } else {
            0
        },
    };
    ioctl(fd, UFFDIO_WRITEPROTECT, &mut wp).map(drop)
}

// ----------------------------------------------------------- PAGEMAP_SCAN

pub const PAGE_IS_WRITTEN: u64 = 1 << 1;
pub const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
pub const PM_SCAN_CHECK_WPASYNC: u64 = 1 << 1;

/// `struct page_region`: `[start, end)` pages with `categories`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct PageRegion {
    pub start: u64,
    pub end: u64,
    pub categories: u64,
}

#[repr(C)]
#[derive(Default)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

const PAGEMAP_SCAN: u64 = ioc(IOC_READ | IOC_WRITE, b'f' as u64, 16, 96);

/// One `PAGEMAP_SCAN` of `[start, end)` on `/proc/self/pagemap`: fills
/// `out` with the matching regions; returns how many and where the walk
/// stopped (`end` when it covered the whole range).
pub fn pagemap_scan(
    pagemap: BorrowedFd<'_>,
    start: usize,
    end: usize,
    out: &mut [PageRegion],
    flags: u64,
    category_mask: u64,
    return_mask: u64,
) -> Result<(usize, u64), Errno> {
    let mut arg = PmScanArg {
        size: std::mem::size_of::<PmScanArg>() as u64,
        flags,
        start: start as u64,
        end: end as u64,
        vec: out.as_mut_ptr() as u64,
        vec_len: out.len() as u64,
        category_mask,
        return_mask,
        ..Default::default()
    };
    // The kernel writes at most vec_len regions into `out` (ours, mutable).
    let n = ioctl(pagemap, PAGEMAP_SCAN, &mut arg)?;
    Ok(((n as usize).min(out.len()), arg.walk_end))
}

// -------------------------------------------------------------- SIGSEGV

/// The handler that was installed before ours (chained to for faults that
/// are not ours).
static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();

/// Install the process-wide SIGSEGV handler (once; later calls do nothing).
/// Write faults on pages [`crate::track::on_write_fault`] claims are
/// resolved there; everything else goes to the previous handler.
pub fn install_segv_handler() -> Result<(), Errno> {
    static INSTALLED: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let mut done = INSTALLED.lock().unwrap_or_else(|p| p.into_inner());
    if *done {
        return Ok(());
    }
    // SAFETY: zeroed sigaction structures are valid (empty masks, no flags).
    let mut new: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    new.sa_sigaction = segv_handler as *const () as usize;
    new.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_RESTART;
    // SAFETY: sigemptyset on our own structure.
    unsafe { libc::sigemptyset(&mut new.sa_mask) };
    // Record the old handler before ours can run: query first, then install.
    // SAFETY: querying with a NULL new action changes nothing.
    check(unsafe { libc::sigaction(libc::SIGSEGV, std::ptr::null(), &mut old) })?;
    let _ = PREVIOUS.set(old);
    // SAFETY: installs a handler that only uses async-signal-safe operations
    // (atomics, mprotect, sigaction, raise) and chains to `old`.
    check(unsafe { libc::sigaction(libc::SIGSEGV, &new, std::ptr::null_mut()) })?;
    *done = true;
    Ok(())
}

/// `si_code` of a fault on a mapped page without the needed permission.
const SEGV_ACCERR: c_int = 2;

extern "C" fn segv_handler(sig: c_int, info: *mut libc::siginfo_t, ctx: *mut c_void) {
    // SAFETY: for an SA_SIGINFO handler the kernel passes a valid siginfo.
    let (addr, code) = unsafe { ((*info).si_addr() as usize, (*info).si_code) };
    if code == SEGV_ACCERR && crate::track::on_write_fault(addr) {
        return;
    }
    chain(sig, info, ctx, code);
}

/// Hand a fault that is not ours to the previous handler, or to the default
/// action (termination, with a core dump where enabled).
fn chain(sig: c_int, info: *mut libc::siginfo_t, ctx: *mut c_void, code: c_int) {
    let prev = PREVIOUS.get();
    let action = prev.map(|p| p.sa_sigaction).unwrap_or(libc::SIG_DFL);
    if action == libc::SIG_DFL || action == libc::SIG_IGN {
        // SAFETY: zeroed is SIG_DFL with an empty mask.
        let dfl: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: restoring the default action; async-signal-safe.
        unsafe { libc::sigaction(libc::SIGSEGV, &dfl, std::ptr::null_mut()) };
        if code <= 0 {
            // Sent by kill(): it does not repeat on return, so raise it again.
            // SAFETY: raise is async-signal-safe.
            unsafe { libc::raise(sig) };
        }
        // A fault repeats on return and now takes the default action.
        return;
    }
    let flags = prev.map(|p| p.sa_flags).unwrap_or(0);
    if flags & libc::SA_SIGINFO != 0 {
        // SAFETY: the previous SA_SIGINFO handler has this signature; we
        // pass the kernel's own arguments.
        let f: extern "C" fn(c_int, *mut libc::siginfo_t, *mut c_void) =
            unsafe { std::mem::transmute(action) };
        f(sig, info, ctx);
    } else {
        // SAFETY: a plain handler takes the signal number only.
        let f: extern "C" fn(c_int) = unsafe { std::mem::transmute(action) };
        f(sig);
    }
}

/// Read the cycle counter (x86-64 `rdtsc`; 0 elsewhere).
pub fn cycles() -> u64 {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: rdtsc has no preconditions on x86-64.
    return unsafe { core::arch::x86_64::_rdtsc() };
    #[cfg(not(target_arch = "x86_64"))]
    return 0;
}

/// The global pid of this process (its pid in the initial namespace when
/// visible, else the namespace's pid).
pub fn pid() -> u32 {
    std::process::id()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_the_uapi() {
        assert_eq!(UFFDIO_API, 0xC018_AA3F);
        assert_eq!(UFFDIO_REGISTER, 0xC020_AA00);
        assert_eq!(UFFDIO_UNREGISTER, 0x8010_AA01);
        assert_eq!(UFFDIO_WRITEPROTECT, 0xC018_AA06);
        assert_eq!(PAGEMAP_SCAN, 0xC060_6610);
        assert_eq!(std::mem::size_of::<PmScanArg>(), 96);
        assert_eq!(std::mem::size_of::<PageRegion>(), 24);
    }

    #[test]
    fn pwritev_writes_parts_in_order() {
        let fd = memfd_create(c"xasm-sys-test").unwrap();
        let a = vec![1u8; 5000];
        let b = vec![2u8; 3000];
        pwritev_mem(
            fd.as_fd(),
            100,
            &[
                (a.as_ptr() as usize, a.len()),
                (b.as_ptr() as usize, b.len()),
            ],
        )
        .unwrap();
        let mut out = vec![0u8; 8100];
        let n = nix::sys::uio::pread(fd.as_fd(), &mut out, 0).unwrap();
        assert_eq!(n, 8100);
        assert!(out[..100].iter().all(|x| *x == 0));
        assert!(out[100..5100].iter().all(|x| *x == 1));
        assert!(out[5100..].iter().all(|x| *x == 2));
    }

    #[test]
    fn flock_conflicts_between_descriptions() {
        let fd = memfd_create(c"xasm-flock-test").unwrap();
        let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
        let other = std::fs::File::open(path).unwrap();
        let other: OwnedFd = other.into();
        assert!(try_lock_shared(other.as_fd()).unwrap());
        assert!(!try_lock_exclusive(fd.as_fd()).unwrap());
        drop(other);
        assert!(try_lock_exclusive(fd.as_fd()).unwrap());
    }

    #[test]
    fn futex_wait_times_out_and_sees_changes() {
        let word = AtomicU32::new(5);
        let t = std::time::Instant::now();
        futex_wait(&word, 5, Duration::from_millis(20)).unwrap();
        assert!(t.elapsed() >= Duration::from_millis(15));
        // A different value returns at once.
        futex_wait(&word, 6, Duration::from_secs(10)).unwrap();
        futex_wake_all(&word).unwrap();
    }
}
