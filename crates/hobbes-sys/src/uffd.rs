//! userfaultfd as a typed descriptor ([`Userfaultfd`]) with the ioctls of
//! write-protect tracking (XASM) and of missing-page and unmap handling
//! (whole-address-space XPMEM shares: registration modes, wake, the event
//! messages as [`Event`]), and the `PAGEMAP_SCAN` ioctl of
//! `/proc/self/pagemap` ([`pagemap_scan`]).
//!
//! The structures and request numbers are written out here because
//! neither libc, nix nor rustix has them (Linux uapi
//! `linux/userfaultfd.h` and `linux/fs.h`, 6.7+).

use std::ffi::c_int;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use rustix::mm::UserfaultfdFlags;

use crate::{errno, Errno};

const fn ioc(dir: u64, ty: u64, nr: u64, size: u64) -> u64 {
    (dir << 30) | (size << 16) | (ty << 8) | nr
}
const IOC_WRITE: u64 = 1;
const IOC_READ: u64 = 2;

const UFFD_API: u64 = 0xAA;
/// `UFFD_USER_MODE_ONLY`: faults from user mode only (no privilege needed).
const UFFD_USER_MODE_ONLY: u32 = 1;
/// `UFFD_FEATURE_EVENT_REMAP`: report `mremap` of registered ranges.
pub const UFFD_FEATURE_EVENT_REMAP: u64 = 1 << 2;
/// `UFFD_FEATURE_EVENT_UNMAP`: report `munmap`, `MAP_FIXED` and `brk`
/// shrinking of registered ranges.
pub const UFFD_FEATURE_EVENT_UNMAP: u64 = 1 << 6;
/// `UFFD_FEATURE_WP_HUGETLBFS_SHMEM`: write-protect shared memory too.
pub const UFFD_FEATURE_WP_HUGETLBFS_SHMEM: u64 = 1 << 12;
/// `UFFD_FEATURE_WP_UNPOPULATED`: write-protect never-touched pages too.
pub const UFFD_FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
/// `UFFD_FEATURE_WP_ASYNC`: the kernel resolves write-protect faults
/// itself (the written bit shows in `PAGEMAP_SCAN`).
pub const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;
/// `UFFDIO_REGISTER_MODE_MISSING`: faults on pages not there yet.
pub const UFFDIO_REGISTER_MODE_MISSING: u64 = 1 << 0;
/// `UFFDIO_REGISTER_MODE_WP`: faults on write-protected pages.
pub const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1 << 0;

const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
const UFFD_EVENT_REMAP: u8 = 0x14;
const UFFD_EVENT_UNMAP: u8 = 0x16;

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
/// `request` must take a pointer to a `T` (a `#[repr(C)]` structure
/// matching its uapi definition), and any memory the structure points to
/// must be valid for what the request does with it.
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

/// A userfaultfd (`O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY`) after
/// the `UFFDIO_API` handshake, with the features the kernel granted.
#[derive(Debug)]
pub struct Userfaultfd {
    fd: OwnedFd,
    features: u64,
}

impl Userfaultfd {
    /// Open one and ask for the `want`ed features (`UFFD_FEATURE_*`; 0 asks
    /// for none and reports all the kernel has). Fails with EPERM where
    /// `vm.unprivileged_userfaultfd` and the seccomp policy forbid it,
    /// ENOSYS on kernels without it, EINVAL when a wanted feature is
    /// unknown.
    pub fn open(want: u64) -> Result<Userfaultfd, Errno> {
        Self::open_flags(UFFD_USER_MODE_ONLY, want)
    }

    /// As [`Userfaultfd::open`], but first able to handle the faults the
    /// kernel takes on the process's behalf (a system call touching a
    /// registered range waits like a thread does; needs privilege where
    /// `vm.unprivileged_userfaultfd` is 0), else user-mode faults only (such
    /// a system call then fails with EFAULT).
    pub fn open_for_kernel_faults(want: u64) -> Result<Userfaultfd, Errno> {
        Self::open_flags(0, want).or_else(|_| Self::open_flags(UFFD_USER_MODE_ONLY, want))
    }

    fn open_flags(mode_bits: u32, want: u64) -> Result<Userfaultfd, Errno> {
        let flags = UserfaultfdFlags::CLOEXEC
            | UserfaultfdFlags::NONBLOCK
            | UserfaultfdFlags::from_bits_retain(mode_bits);
        // SAFETY: the call takes flags only; the descriptor does nothing
        // until a range is registered, which is an `unsafe fn` below.
        let fd = unsafe { rustix::mm::userfaultfd(flags) }.map_err(errno)?;
        let mut api = UffdioApi {
            api: UFFD_API,
            features: want,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_API takes a `struct uffdio_api`, which UffdioApi is.
        unsafe { ioctl(fd.as_fd(), UFFDIO_API, &mut api) }?;
        Ok(Userfaultfd {
            fd,
            features: api.features,
        })
    }

    /// The features the `UFFDIO_API` handshake reported.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// Register `[addr, addr+len)` for write-protect tracking
    /// (`UFFDIO_REGISTER_MODE_WP`).
    ///
    /// # Safety
    /// The range must be page-aligned private anonymous memory the caller
    /// owns for as long as it stays registered: without
    /// `UFFD_FEATURE_WP_ASYNC`, writes to protected pages block until this
    /// descriptor resolves them.
    pub unsafe fn register_wp(&self, addr: usize, len: usize) -> Result<(), Errno> {
        // SAFETY: per this function's contract.
        unsafe { self.register(addr, len, UFFDIO_REGISTER_MODE_WP) }
    }

    /// Register `[addr, addr+len)` with `mode` (`UFFDIO_REGISTER_MODE_*`).
    ///
    /// # Safety
    /// The range must be memory the caller owns and whose faults it
    /// resolves for as long as it stays registered: a thread faulting there
    /// blocks until this descriptor wakes it.
    pub unsafe fn register(&self, addr: usize, len: usize, mode: u64) -> Result<(), Errno> {
        let mut reg = UffdioRegister {
            range: range(addr, len),
            mode,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_REGISTER takes a `struct uffdio_register`; the
        // range is the caller's per this function's contract.
        unsafe { ioctl(self.fd.as_fd(), UFFDIO_REGISTER, &mut reg) }.map(drop)
    }

    /// Unregister `[addr, addr+len)`: its faults no longer reach this
    /// descriptor (threads waiting there are woken).
    pub fn unregister(&self, addr: usize, len: usize) -> Result<(), Errno> {
        let mut range = range(addr, len);
        // SAFETY: UFFDIO_UNREGISTER takes a `struct uffdio_range`; it
        // changes no memory, only which faults reach this descriptor.
        unsafe { ioctl(self.fd.as_fd(), UFFDIO_UNREGISTER, &mut range) }.map(drop)
    }

    /// Wake the threads waiting on faults in `[addr, addr+len)`: they retry.
    pub fn wake(&self, addr: usize, len: usize) -> Result<(), Errno> {
        let mut range = range(addr, len);
        // SAFETY: UFFDIO_WAKE takes a `struct uffdio_range`; waking makes
        // the faulting threads retry, which is always safe.
        unsafe { ioctl(self.fd.as_fd(), UFFDIO_WAKE, &mut range) }.map(drop)
    }

    /// The events queued now (none: empty), without blocking.
    pub fn read_events(&self) -> Result<Vec<Event>, Errno> {
        let mut buf = [0u8; UFFD_MSG_LEN * 16];
        let mut events = Vec::new();
        loop {
            match rustix::io::read(&self.fd, &mut buf) {
                Ok(n) => {
                    events.extend(
                        buf[..n - n % UFFD_MSG_LEN]
                            .chunks_exact(UFFD_MSG_LEN)
                            .map(Event::decode),
                    );
                    if n < buf.len() {
                        return Ok(events);
                    }
                }
                Err(rustix::io::Errno::AGAIN) => return Ok(events),
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(errno(e)),
            }
        }
    }

    /// Set (`protect`) or clear the write-protect bit of every page of
    /// `[addr, addr+len)`.
    ///
    /// # Safety
    /// As for [`register_wp`](Self::register_wp): a registered range the
    /// caller owns.
    pub unsafe fn writeprotect(&self, addr: usize, len: usize, protect: bool) -> Result<(), Errno> {
        let mut wp = UffdioWriteprotect {
            range: range(addr, len),
            mode: if protect {
                UFFDIO_WRITEPROTECT_MODE_WP
            } else {
                0
            },
        };
        // SAFETY: UFFDIO_WRITEPROTECT takes a `struct uffdio_writeprotect`;
        // the range is the caller's per this function's contract.
        unsafe { ioctl(self.fd.as_fd(), UFFDIO_WRITEPROTECT, &mut wp) }.map(drop)
    }
}

fn range(addr: usize, len: usize) -> UffdioRange {
    UffdioRange {
        start: addr as u64,
        len: len as u64,
    }
}

/// The size of a `struct uffd_msg`.
const UFFD_MSG_LEN: usize = 32;

/// What a userfaultfd reported (`struct uffd_msg`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A thread faulted and waits to be woken.
    Fault {
        /// The faulting address.
        addr: u64,
        /// A write fault.
        write: bool,
        /// On a write-protected page.
        wp: bool,
    },
    /// Part of a registered range was unmapped.
    Unmap {
        /// Its first byte.
        start: u64,
        /// One past its last byte.
        end: u64,
    },
    /// Part of a registered range moved (`mremap`).
    Remap {
        /// Where it was.
        from: u64,
        /// Where it is now.
        to: u64,
        /// How long it is.
        len: u64,
    },
    /// Another event (not asked for).
    Other(u8),
}

impl Event {
    /// One `struct uffd_msg` (the event at byte 0, its arguments from 8).
    fn decode(m: &[u8]) -> Event {
        let at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&m[i..i + 8]);
            u64::from_ne_bytes(b)
        };
        match m[0] {
            UFFD_EVENT_PAGEFAULT => Event::Fault {
                addr: at(16),
                write: at(8) & 1 != 0,
                wp: at(8) & 2 != 0,
            },
            UFFD_EVENT_REMAP => Event::Remap {
                from: at(8),
                to: at(16),
                len: at(24),
            },
            UFFD_EVENT_UNMAP => Event::Unmap {
                start: at(8),
                end: at(16),
            },
            other => Event::Other(other),
        }
    }
}

impl AsFd for Userfaultfd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl From<Userfaultfd> for OwnedFd {
    fn from(u: Userfaultfd) -> OwnedFd {
        u.fd
    }
}

// ----------------------------------------------------------- PAGEMAP_SCAN

/// `PAGE_IS_WRITTEN`: the page was written since it was write-protected.
pub const PAGE_IS_WRITTEN: u64 = 1 << 1;
/// `PM_SCAN_WP_MATCHING`: write-protect the matching pages again.
pub const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
/// `PM_SCAN_CHECK_WPASYNC`: fail unless the range is async-WP registered.
pub const PM_SCAN_CHECK_WPASYNC: u64 = 1 << 1;

/// `struct page_region`: pages `[start, end)` with `categories`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PageRegion {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
    /// `PAGE_IS_*` bits (masked by the scan's return mask).
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

/// One `PAGEMAP_SCAN` of `[start, end)` on a `/proc/self/pagemap`
/// descriptor: fills `out` with the regions matching `category_mask`;
/// returns how many and where the walk stopped (`end` when it covered the
/// whole range). With [`PM_SCAN_WP_MATCHING`] the matching pages are
/// write-protected again (the scan reads no memory of the range).
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
    // SAFETY: PAGEMAP_SCAN takes a `struct pm_scan_arg`; the kernel writes
    // at most `vec_len` regions into `out`, which we borrow mutably.
    let n = unsafe { ioctl(pagemap, PAGEMAP_SCAN, &mut arg) }?;
    Ok(((n as usize).min(out.len()), arg.walk_end))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::Mapping;

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
    fn userfaultfd_tracks_writes_where_the_kernel_allows() {
        let uffd = match Userfaultfd::open(0) {
            Ok(u) => u,
            Err(e) => {
                println!(
                    "SKIP userfaultfd_tracks_writes_where_the_kernel_allows: userfaultfd: {e}"
                );
                return;
            }
        };
        let want = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED;
        if uffd.features() & want != want {
            println!(
                "SKIP userfaultfd_tracks_writes_where_the_kernel_allows: no WP_ASYNC/WP_UNPOPULATED (features {:#x})",
                uffd.features()
            );
            return;
        }
        drop(uffd);
        let uffd = Userfaultfd::open(want).unwrap();
        let page = crate::page_size();
        let mut m = Mapping::anon(4 * page).unwrap();
        // SAFETY: our own private anonymous mapping, unregistered below
        // before it is unmapped.
        unsafe { uffd.register_wp(m.addr(), m.len()) }.unwrap();
        // SAFETY: as above.
        unsafe { uffd.writeprotect(m.addr(), m.len(), true) }.unwrap();
        m.as_mut_slice()[page] = 1;
        m.as_mut_slice()[3 * page] = 1;
        let pagemap = std::fs::File::open("/proc/self/pagemap").unwrap();
        let mut out = [PageRegion::default(); 8];
        let (n, walk_end) = pagemap_scan(
            pagemap.as_fd(),
            m.addr(),
            m.addr() + m.len(),
            &mut out,
            PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
            PAGE_IS_WRITTEN,
            PAGE_IS_WRITTEN,
        )
        .unwrap();
        assert_eq!(walk_end, (m.addr() + m.len()) as u64);
        let pages: Vec<u64> = out[..n]
            .iter()
            .map(|r| (r.start - m.addr() as u64) / page as u64)
            .collect();
        assert_eq!(pages, [1, 3]);
        // SAFETY: the range we registered above.
        unsafe { uffd.writeprotect(m.addr(), m.len(), false) }.unwrap();
        uffd.unregister(m.addr(), m.len()).unwrap();
    }
}

#[cfg(test)]
mod event_tests {
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
        let mut m = [0u8; UFFD_MSG_LEN];
        m[0] = UFFD_EVENT_UNMAP;
        m[8..16].copy_from_slice(&0x1000u64.to_ne_bytes());
        m[16..24].copy_from_slice(&0x3000u64.to_ne_bytes());
        assert_eq!(
            Event::decode(&m),
            Event::Unmap {
                start: 0x1000,
                end: 0x3000
            }
        );
        m[0] = UFFD_EVENT_PAGEFAULT;
        m[8..16].copy_from_slice(&3u64.to_ne_bytes());
        assert_eq!(
            Event::decode(&m),
            Event::Fault {
                addr: 0x3000,
                write: true,
                wp: true
            }
        );
        m[0] = UFFD_EVENT_REMAP;
        m[24..32].copy_from_slice(&0x1000u64.to_ne_bytes());
        assert_eq!(
            Event::decode(&m),
            Event::Remap {
                from: 3,
                to: 0x3000,
                len: 0x1000
            }
        );
        m[0] = 0x13;
        assert_eq!(Event::decode(&m), Event::Other(0x13));
    }
}
