//! The system-call wrappers every Hobbes crate shares: memfd files
//! ([`file`]), owned memory mappings ([`mem::Mapping`]) and the raw
//! mapping calls behind them, shared futexes ([`futex`]), userfaultfd
//! as a typed descriptor with the `PAGEMAP_SCAN` ioctl ([`uffd`]),
//! descriptors ([`fd`]: close-on-exec, memfd detection, `pidfd_getfd`),
//! processes ([`process`]: sessions, subreaper, OOM score, affinity,
//! `/proc/<pid>/status`) and credentials ([`creds`]: socket peers,
//! filesystem identity).
//!
//! Errors are [`Errno`] values (nix's). Calls go through `rustix` where it
//! has them; raw `ioctl`s only for the userfaultfd and `PAGEMAP_SCAN`
//! requests neither rustix nor nix define. Functions that take a raw
//! address range and map over it, change its protection or dereference it
//! are `unsafe fn`s; everything reachable from a [`mem::Mapping`] is safe.

#![deny(missing_docs)]

pub mod creds;
pub mod fd;
pub mod file;
pub mod futex;
pub mod mem;
pub mod process;
pub mod uffd;

pub use nix::errno::Errno;

pub use creds::{geteuid, peer_cred, peer_hung_up, with_fs_identity, PeerCred};
pub use fd::{clear_cloexec, is_memfd, pidfd_getfd};
pub use file::{
    add_seals, file_len, file_usage, ftruncate, inode, memfd_create, punch_hole,
    pwrite_all_vectored, seals, try_lock_exclusive, try_lock_shared, unlock, MemfdFlags, SealFlags,
};
pub use futex::{futex_wait, futex_wake, futex_wake_all};
pub use mem::{Advice, Mapping, Prot};
pub use process::{
    affinity, groups_of, new_session, ns_pids, parent_of, reset_oom_score_adj, set_child_subreaper,
    set_parent_death_signal,
};
pub use uffd::Userfaultfd;

/// The base page size (4096 when `sysconf` cannot tell).
pub fn page_size() -> usize {
    rustix::param::page_size()
}

/// A rustix error as the [`Errno`] this crate returns.
pub(crate) fn errno(e: rustix::io::Errno) -> Errno {
    Errno::from_raw(e.raw_os_error())
}

#[cfg(test)]
mod tests {
    #[test]
    fn page_size_is_a_power_of_two() {
        assert!(super::page_size().is_power_of_two());
    }
}
