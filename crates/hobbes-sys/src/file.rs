//! Files: memfd creation and seals, sizes, hole punching, `flock`, and a
//! vectored positional write.

use std::ffi::CStr;
use std::io::IoSlice;
use std::os::fd::{BorrowedFd, OwnedFd};

use rustix::fs::{FallocateFlags, FlockOperation};

use crate::{errno, Errno};

pub use rustix::fs::{MemfdFlags, SealFlags};

/// `memfd_create(name, MFD_CLOEXEC | flags)`.
pub fn memfd_create(name: &CStr, flags: MemfdFlags) -> Result<OwnedFd, Errno> {
    rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | flags).map_err(errno)
}

/// `fcntl(F_ADD_SEALS)` (the memfd needs [`MemfdFlags::ALLOW_SEALING`]).
pub fn add_seals(fd: BorrowedFd<'_>, seals: SealFlags) -> Result<(), Errno> {
    rustix::fs::fcntl_add_seals(fd, seals).map_err(errno)
}

/// `fcntl(F_GET_SEALS)`.
pub fn seals(fd: BorrowedFd<'_>) -> Result<SealFlags, Errno> {
    rustix::fs::fcntl_get_seals(fd).map_err(errno)
}

/// `ftruncate(fd, len)`.
pub fn ftruncate(fd: BorrowedFd<'_>, len: u64) -> Result<(), Errno> {
    if i64::try_from(len).is_err() {
        return Err(Errno::EFBIG);
    }
    rustix::fs::ftruncate(fd, len).map_err(errno)
}

/// Free `[offset, offset+len)` of a file (`fallocate(PUNCH_HOLE |
/// KEEP_SIZE)`): reads give zeros, the size stays.
pub fn punch_hole(fd: BorrowedFd<'_>, offset: u64, len: u64) -> Result<(), Errno> {
    if i64::try_from(offset).is_err() || i64::try_from(len).is_err() {
        return Err(Errno::EINVAL);
    }
    rustix::fs::fallocate(
        fd,
        FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
        offset,
        len,
    )
    .map_err(errno)
}

/// (file size, bytes of memory or disk it uses) of a descriptor.
pub fn file_usage(fd: BorrowedFd<'_>) -> Result<(u64, u64), Errno> {
    let st = rustix::fs::fstat(fd).map_err(errno)?;
    Ok((
        u64::try_from(st.st_size).unwrap_or(0),
        u64::try_from(st.st_blocks).unwrap_or(0) * 512,
    ))
}

/// Length of the file behind a descriptor.
pub fn file_len(fd: BorrowedFd<'_>) -> Result<u64, Errno> {
    file_usage(fd).map(|(size, _)| size)
}

/// Inode number of a descriptor (identifies a memfd in /proc/self/maps).
pub fn inode(fd: BorrowedFd<'_>) -> Result<u64, Errno> {
    rustix::fs::fstat(fd).map(|st| st.st_ino).map_err(errno)
}

/// `flock(fd, LOCK_EX | LOCK_NB)`: true when taken, false when another
/// open file description holds a lock on the file.
pub fn try_lock_exclusive(fd: BorrowedFd<'_>) -> Result<bool, Errno> {
    flock(fd, FlockOperation::NonBlockingLockExclusive)
}

/// `flock(fd, LOCK_SH | LOCK_NB)`: true when taken, false when another
/// open file description holds an exclusive lock. The lock belongs to the
/// open file description: it lasts until every descriptor of it is closed.
pub fn try_lock_shared(fd: BorrowedFd<'_>) -> Result<bool, Errno> {
    flock(fd, FlockOperation::NonBlockingLockShared)
}

/// `flock(fd, LOCK_UN)`.
pub fn unlock(fd: BorrowedFd<'_>) -> Result<(), Errno> {
    flock(fd, FlockOperation::Unlock).map(drop)
}

fn flock(fd: BorrowedFd<'_>, op: FlockOperation) -> Result<bool, Errno> {
    loop {
        match rustix::fs::flock(fd, op).map_err(errno) {
            Ok(()) => return Ok(true),
            Err(Errno::EWOULDBLOCK) => return Ok(false),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Write `parts`, one after the other, into `fd` at `offset` with as few
/// `pwritev` calls as possible (at most `IOV_MAX` parts each; short writes
/// and EINTR are retried).
pub fn pwrite_all_vectored(fd: BorrowedFd<'_>, offset: u64, parts: &[&[u8]]) -> Result<(), Errno> {
    const IOV_MAX: usize = 1024;
    let mut parts: Vec<&[u8]> = parts.iter().copied().filter(|p| !p.is_empty()).collect();
    let mut at = offset;
    let mut first = 0;
    while first < parts.len() {
        let end = parts.len().min(first + IOV_MAX);
        let iov: Vec<IoSlice<'_>> = parts[first..end].iter().map(|p| IoSlice::new(p)).collect();
        if i64::try_from(at).is_err() {
            return Err(Errno::EFBIG);
        }
        let mut done = match rustix::io::pwritev(fd, &iov, at).map_err(errno) {
            Ok(0) => return Err(Errno::EIO),
            Ok(n) => n,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        };
        at += done as u64;
        // Skip what was written; a part written halfway is shortened.
        while done > 0 {
            let p = parts[first];
            if done >= p.len() {
                done -= p.len();
                first += 1;
            } else {
                parts[first] = &p[done..];
                done = 0;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsFd, AsRawFd};

    #[test]
    fn memfd_grows_punches_and_seals() {
        let fd = memfd_create(c"hobbes-sys-memfd", MemfdFlags::ALLOW_SEALING).unwrap();
        assert_eq!(file_len(fd.as_fd()).unwrap(), 0);
        ftruncate(fd.as_fd(), 3 * 4096).unwrap();
        assert_eq!(file_len(fd.as_fd()).unwrap(), 3 * 4096);
        rustix::io::pwrite(fd.as_fd(), &[1u8; 3 * 4096], 0).unwrap();
        let (_, used) = file_usage(fd.as_fd()).unwrap();
        assert!(used >= 3 * 4096, "{used}");
        punch_hole(fd.as_fd(), 4096, 4096).unwrap();
        let mut b = [9u8; 1];
        rustix::io::pread(fd.as_fd(), &mut b, 4096).unwrap();
        assert_eq!(b, [0]);
        assert_eq!(file_len(fd.as_fd()).unwrap(), 3 * 4096);
        assert!(inode(fd.as_fd()).unwrap() > 0);
        add_seals(fd.as_fd(), SealFlags::GROW | SealFlags::SHRINK).unwrap();
        assert!(seals(fd.as_fd())
            .unwrap()
            .contains(SealFlags::GROW | SealFlags::SHRINK));
        assert_eq!(ftruncate(fd.as_fd(), 4 * 4096), Err(Errno::EPERM));
        assert_eq!(ftruncate(fd.as_fd(), 4096), Err(Errno::EPERM));
        add_seals(fd.as_fd(), SealFlags::SEAL).unwrap();
        assert_eq!(add_seals(fd.as_fd(), SealFlags::WRITE), Err(Errno::EPERM));
    }

    #[test]
    fn memfd_without_sealing_refuses_seals() {
        let fd = memfd_create(c"hobbes-sys-noseal", MemfdFlags::empty()).unwrap();
        assert_eq!(add_seals(fd.as_fd(), SealFlags::GROW), Err(Errno::EPERM));
    }

    #[test]
    fn pwritev_writes_parts_in_order() {
        let fd = memfd_create(c"hobbes-sys-pwritev", MemfdFlags::empty()).unwrap();
        let a = vec![1u8; 5000];
        let b = vec![2u8; 3000];
        let many: Vec<&[u8]> = std::iter::repeat_n(&[3u8][..], 2000).collect();
        pwrite_all_vectored(fd.as_fd(), 100, &[&a, &[], &b]).unwrap();
        pwrite_all_vectored(fd.as_fd(), 8100, &many).unwrap();
        let mut out = vec![0u8; 10100];
        let n = rustix::io::pread(fd.as_fd(), &mut out, 0).unwrap();
        assert_eq!(n, 10100);
        assert!(out[..100].iter().all(|x| *x == 0));
        assert!(out[100..5100].iter().all(|x| *x == 1));
        assert!(out[5100..8100].iter().all(|x| *x == 2));
        assert!(out[8100..].iter().all(|x| *x == 3));
    }

    #[test]
    fn flock_conflicts_between_descriptions() {
        let fd = memfd_create(c"hobbes-sys-flock", MemfdFlags::empty()).unwrap();
        let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
        let other: OwnedFd = std::fs::File::open(path).unwrap().into();
        assert!(try_lock_shared(other.as_fd()).unwrap());
        assert!(!try_lock_exclusive(fd.as_fd()).unwrap());
        unlock(other.as_fd()).unwrap();
        assert!(try_lock_exclusive(fd.as_fd()).unwrap());
        assert!(!try_lock_shared(other.as_fd()).unwrap());
    }
}
