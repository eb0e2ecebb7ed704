//! The daemon's huge-page tmpfs, where XEMEM segments and XASM versions
//! get their memory (docs/xemem.md, "Huge pages").
//!
//! A tmpfs mounted with `huge=within_size` gives its files transparent huge
//! pages whatever `/sys/kernel/mm/transparent_hugepage/shmem_enabled` says
//! (that setting governs memfds and SysV memory; only its `deny` and `force`
//! override mounts), so segments get 2 MiB pages without a change to the
//! node's policy: mapping and touching 1 GiB takes ~8 ms instead of ~41 ms
//! here. Clients make unnamed files in it (`O_TMPFILE`) which, like memfds,
//! vanish with their last descriptor or mapping, and hand them to the name
//! server as they hand memfds. Like /dev/shm it is mode 1777 and may hold
//! half of the node's memory; pages are charged to the memory cgroup of the
//! process that touches them, so an enclave's segments count against its
//! limit.
//!
//! The mount lives at `<state>/shm` for the daemon's life and is lazily
//! unmounted at its exit (files still open or mapped live on until they are
//! let go); after a `kill -9` the next daemon finds it again, and
//! `leviathan cleanup` unmounts it.

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};

/// Where the mount goes in the state directory.
const DIR_NAME: &str = "shm";

/// The mount's source name: marks it as ours in /proc/self/mountinfo.
const SOURCE: &str = "hobbes-shm";

/// Mount options: transparent huge pages for whatever fits them, and a
/// directory anyone may make (unnamed) files in.
const OPTIONS: &str = "huge=within_size,mode=1777";

/// The mount's directory for state directory `root`.
pub fn dir(root: &Path) -> PathBuf {
    root.join(DIR_NAME)
}

/// Mount the tmpfs at `<root>/shm`, or find the one a killed daemon left
/// there. Returns its directory, or why there is none (the caller falls
/// back to memfds and says so).
pub fn mount(root: &Path) -> Result<PathBuf, String> {
    let dir = dir(root);
    if let Some((source, options)) = mounted_at(&dir) {
        if source == SOURCE && options.split(',').any(|o| o == "huge=within_size") {
            tracing::info!(dir = %dir.display(), "segment tmpfs still mounted: reusing it");
            return Ok(dir);
        }
        return Err(format!(
            "{} is already a tmpfs mount point ({source}, {options}); it is left alone",
            dir.display()
        ));
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    nix::mount::mount(
        Some(SOURCE),
        &dir,
        Some("tmpfs"),
        // Not noexec: memfds may be mapped executable (code shared between
        // processes), and segments made here must allow what memfds allow.
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(OPTIONS),
    )
    .map_err(|e| {
        format!(
            "cannot mount a huge-page tmpfs ({OPTIONS}) on {}: {e}",
            dir.display()
        )
    })?;
    tracing::info!(dir = %dir.display(), options = OPTIONS, "segment tmpfs mounted");
    Ok(dir)
}

/// Unmount our tmpfs at `<root>/shm` if it is mounted, lazily: segments
/// still open or mapped keep their memory until let go. Returns whether it
/// was mounted. Another mount there is left alone.
pub fn unmount(root: &Path) -> bool {
    let dir = dir(root);
    let ours = mounted_at(&dir).is_some_and(|(source, _)| source == SOURCE);
    if !ours {
        return false;
    }
    match nix::mount::umount2(&dir, MntFlags::MNT_DETACH) {
        Ok(()) => {
            let _ = std::fs::remove_dir(&dir);
            tracing::info!(dir = %dir.display(), "segment tmpfs unmounted");
            true
        }
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot unmount the segment tmpfs");
            false
        }
    }
}

/// The source and super options of the tmpfs mounted at `dir`, if one is.
fn mounted_at(dir: &Path) -> Option<(String, String)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    tmpfs_options_at(&info, &dir.to_string_lossy())
}

/// From a mountinfo text: the source and super options of the tmpfs whose
/// mount point is `dir` (the last one, as the one on top).
fn tmpfs_options_at(mountinfo: &str, dir: &str) -> Option<(String, String)> {
    mountinfo.lines().rev().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let point = left.split_whitespace().nth(4)?;
        let mut right = right.split_whitespace();
        let fstype = right.next()?;
        let source = right.next()?;
        let options = right.next()?;
        (point == dir && fstype == "tmpfs").then(|| (source.to_string(), options.to_string()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_tmpfs_on_a_mount_point() {
        let info = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
90 22 0:50 / /run/hobbes/shm rw,nosuid,nodev,noexec,relatime shared:40 - tmpfs hobbes-shm rw,huge=within_size,inode64
91 22 0:51 / /run/hobbes/other rw - tmpfs tmpfs rw
92 22 0:52 / /run/hobbes/ext rw - ext4 /dev/sdb rw\n";
        assert_eq!(
            tmpfs_options_at(info, "/run/hobbes/shm"),
            Some(("hobbes-shm".into(), "rw,huge=within_size,inode64".into()))
        );
        assert_eq!(
            tmpfs_options_at(info, "/run/hobbes/other"),
            Some(("tmpfs".into(), "rw".into()))
        );
        assert_eq!(tmpfs_options_at(info, "/run/hobbes/ext"), None);
        assert_eq!(tmpfs_options_at(info, "/run/hobbes/none"), None);
        assert_eq!(tmpfs_options_at("garbage\n - \n", "/x"), None);
    }
}
