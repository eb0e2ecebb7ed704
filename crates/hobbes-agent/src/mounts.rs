//! An agent's mount view: the enclave sees the primary NIS's path with its
//! own replica bound over it (each enclave reads its own replica: LMDB
//! identifies readers by pid, and pids collide across PID namespaces), and
//! nothing it mounts propagates to the host.

use std::path::Path;

use nix::mount::{mount, MsFlags};

/// Stop mount propagation between this mount namespace and the host's (the
/// caller is in a new one: cloned with `CLONE_NEWNS`, or after
/// `unshare(CLONE_NEWNS)`).
pub fn make_private() -> anyhow::Result<()> {
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| anyhow::anyhow!("cannot make mounts private: {e}"))
}

/// Mount a `/proc` that shows the caller's PID namespace.
pub fn mount_proc() -> anyhow::Result<()> {
    mount(
        Some("proc"),
        "/proc",
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|e| anyhow::anyhow!("cannot mount /proc: {e}"))
}

/// Bind the enclave's NIS replica over the primary's path.
pub fn bind_nis_replica(replica: &Path, target: &Path) -> anyhow::Result<()> {
    mount(
        Some(replica),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| {
        anyhow::anyhow!(
            "cannot bind the NIS replica {} over {}: {e}",
            replica.display(),
            target.display()
        )
    })
}
