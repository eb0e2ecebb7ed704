//! Descriptors: close-on-exec, memfd and shared-memory-file detection, and
//! taking a descriptor out of another process (`pidfd_getfd`).

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use rustix::io::FdFlags;

use crate::{errno, Errno};

/// Let `fd` survive `exec` (clears `FD_CLOEXEC`). Async-signal-safe (for
/// use between `fork` and `exec`).
pub fn clear_cloexec(fd: BorrowedFd<'_>) -> Result<(), Errno> {
    rustix::io::fcntl_setfd(fd, FdFlags::empty()).map_err(errno)
}

/// Is `fd` a memfd? Only memfds (and a few shmem files) answer
/// `F_GET_SEALS`.
pub fn is_memfd(fd: BorrowedFd<'_>) -> bool {
    crate::file::seals(fd).is_ok()
}

/// `statfs` magic of tmpfs (and of the kernel's internal shmem mount).
const TMPFS_MAGIC: i64 = 0x0102_1994;
/// `statfs` magic of hugetlbfs.
const HUGETLBFS_MAGIC: i64 = 0x9584_58f6;

/// Is `fd` memory that can be shared by descriptor: a memfd, or a regular
/// file on tmpfs or hugetlbfs (a file a daemon's huge-page tmpfs made with
/// `O_TMPFILE`, say)? Files on disk, pipes and sockets are not.
pub fn is_shared_memory_file(fd: BorrowedFd<'_>) -> bool {
    if is_memfd(fd) {
        return true;
    }
    let regular = rustix::fs::fstat(fd).is_ok_and(|st| {
        rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::RegularFile
    });
    // `f_type`'s integer type differs between architectures.
    #[allow(clippy::unnecessary_cast)]
    let on_shmem = rustix::fs::fstatfs(fd)
        .is_ok_and(|fs| matches!(fs.f_type as i64, TMPFS_MAGIC | HUGETLBFS_MAGIC));
    regular && on_shmem
}

/// `pidfd_getfd(2)`: a duplicate (close-on-exec) of descriptor
/// `target_fd` of the process behind `pidfd`. Needs ptrace access to that
/// process (root, in practice).
pub fn pidfd_getfd(pidfd: BorrowedFd<'_>, target_fd: i32) -> Result<OwnedFd, Errno> {
    // SAFETY: plain integers in (a descriptor we borrow, a number in the
    // other process, no flags); the kernel checks both.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), target_fd, 0) };
    let fd = Errno::result(fd)?;
    let fd = i32::try_from(fd).map_err(|_| Errno::EBADF)?;
    // SAFETY: the kernel just gave us this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::file::{memfd_create, MemfdFlags};
    use std::os::fd::AsFd;
    use std::os::unix::fs::OpenOptionsExt;

    #[test]
    fn memfds_are_told_apart() {
        let fd = memfd_create(c"hobbes-sys-fd", MemfdFlags::empty()).unwrap();
        assert!(is_memfd(fd.as_fd()));
        let file = std::fs::File::open("/proc/self/status").unwrap();
        assert!(!is_memfd(file.as_fd()));
    }

    #[test]
    fn shared_memory_files_are_told_apart() {
        let fd = memfd_create(c"hobbes-sys-shm", MemfdFlags::empty()).unwrap();
        assert!(is_shared_memory_file(fd.as_fd()));
        let disk = std::fs::File::open("/proc/self/exe").unwrap();
        assert!(!is_shared_memory_file(disk.as_fd()));
        let (r, _w) = nix::unistd::pipe().unwrap();
        assert!(!is_shared_memory_file(r.as_fd()));
        // /dev/shm is a tmpfs on every distribution we run on.
        if let Ok(f) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_TMPFILE)
            .open("/dev/shm")
        {
            assert!(is_shared_memory_file(f.as_fd()));
        }
    }

    #[test]
    fn cloexec_is_cleared() {
        let fd = memfd_create(c"hobbes-sys-cloexec", MemfdFlags::empty()).unwrap();
        assert!(rustix::io::fcntl_getfd(&fd)
            .unwrap()
            .contains(FdFlags::CLOEXEC));
        clear_cloexec(fd.as_fd()).unwrap();
        assert!(!rustix::io::fcntl_getfd(&fd)
            .unwrap()
            .contains(FdFlags::CLOEXEC));
    }

    #[test]
    fn pidfd_getfd_of_ourselves() {
        let me = rustix::process::pidfd_open(
            rustix::process::getpid(),
            rustix::process::PidfdFlags::empty(),
        )
        .unwrap();
        let fd = memfd_create(c"hobbes-sys-getfd", MemfdFlags::empty()).unwrap();
        match pidfd_getfd(me.as_fd(), fd.as_raw_fd()) {
            Ok(dup) => {
                assert!(is_memfd(dup.as_fd()));
                assert_eq!(crate::inode(dup.as_fd()), crate::inode(fd.as_fd()));
            }
            // Older kernels, or a ptrace policy that refuses even ourselves.
            Err(Errno::ENOSYS | Errno::EPERM) => {}
            Err(e) => panic!("pidfd_getfd: {e}"),
        }
    }
}
