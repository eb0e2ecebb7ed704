//! The guest's mounts: the early file systems init mounts ([`EARLY`]) and
//! what `Setup` asks for (the host's export and its binds).
//!
//! The plans are data so they can be checked anywhere; only [`mount_early`]
//! and [`setup`] touch the machine, and only init calls them.

use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};
use vm_guest_proto::{Bind, EXPORT_MOUNT, EXPORT_TAG};

/// One early mount: what, where, with which flags and options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EarlyMount {
    /// File system type (also the source name).
    pub fstype: &'static str,
    /// Mount point.
    pub target: &'static str,
    /// Mount flags.
    pub flags: MsFlags,
    /// File-system options.
    pub data: &'static str,
    /// A failure stops the boot (without it the agent cannot work).
    pub required: bool,
}

const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

/// What init mounts before anything else, in order (parents first).
pub const EARLY: &[EarlyMount] = &[
    EarlyMount {
        fstype: "proc",
        target: "/proc",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
        required: true,
    },
    EarlyMount {
        fstype: "sysfs",
        target: "/sys",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
        required: true,
    },
    EarlyMount {
        fstype: "devtmpfs",
        target: "/dev",
        flags: MsFlags::MS_NOSUID,
        data: "mode=0755",
        required: true,
    },
    EarlyMount {
        fstype: "devpts",
        target: "/dev/pts",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        data: "mode=0620,ptmxmode=0666",
        required: false,
    },
    EarlyMount {
        fstype: "tmpfs",
        target: "/dev/shm",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: "mode=1777",
        required: false,
    },
    EarlyMount {
        fstype: "tmpfs",
        target: "/tmp",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: "mode=1777",
        required: false,
    },
    EarlyMount {
        fstype: "tmpfs",
        target: "/run",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: "mode=0755",
        required: false,
    },
    // The image doubles as a cgroup-v2 host.
    EarlyMount {
        fstype: "cgroup2",
        target: "/sys/fs/cgroup",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
        required: false,
    },
];

/// Mount [`EARLY`]. A required mount's failure is returned at once; the
/// others' are returned together after trying all (init logs them).
pub fn mount_early() -> Result<Vec<String>, String> {
    let mut warnings = Vec::new();
    for m in EARLY {
        let result = std::fs::create_dir_all(m.target)
            .map_err(|e| format!("cannot make mount point {}: {e}", m.target))
            .and_then(|()| {
                mount(
                    Some(m.fstype),
                    m.target,
                    Some(m.fstype),
                    m.flags,
                    Some(m.data),
                )
                .map_err(|e| format!("cannot mount {} at {}: {e}", m.fstype, m.target))
            });
        match result {
            Ok(()) => {}
            Err(e) if m.required => return Err(e),
            Err(e) => warnings.push(e),
        }
    }
    Ok(warnings)
}

/// One bind of `Setup`, resolved: from where in the guest, to where, and
/// whether read-only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindPlan {
    /// The directory under [`EXPORT_MOUNT`].
    pub from: PathBuf,
    /// The target in the guest.
    pub to: PathBuf,
    /// Remount read-only after binding.
    pub read_only: bool,
}

/// Resolve checked binds against the export's mount point.
pub fn plan_binds(export_mount: &Path, binds: &[Bind]) -> Vec<BindPlan> {
    binds
        .iter()
        .map(|b| BindPlan {
            from: export_mount.join(&b.source),
            to: PathBuf::from(&b.target),
            read_only: !b.writable,
        })
        .collect()
}

/// Do `Setup`: the hostname, the export (virtiofs tag [`EXPORT_TAG`] at
/// [`EXPORT_MOUNT`]) and the binds (checked by the caller), in order.
pub fn setup(hostname: &str, export: bool, binds: &[Bind]) -> Result<(), String> {
    nix::unistd::sethostname(hostname)
        .map_err(|e| format!("cannot set the hostname to {hostname:?}: {e}"))?;
    if export {
        std::fs::create_dir_all(EXPORT_MOUNT)
            .map_err(|e| format!("cannot make {EXPORT_MOUNT}: {e}"))?;
        mount(
            Some(EXPORT_TAG),
            EXPORT_MOUNT,
            Some("virtiofs"),
            MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|e| {
            format!(
                "cannot mount the host's export (virtiofs tag {EXPORT_TAG}) at {EXPORT_MOUNT}: {e}"
            )
        })?;
    }
    for plan in plan_binds(Path::new(EXPORT_MOUNT), binds) {
        bind(&plan)?;
    }
    Ok(())
}

fn bind(plan: &BindPlan) -> Result<(), String> {
    let (from, to) = (plan.from.display(), plan.to.display());
    std::fs::create_dir_all(&plan.to).map_err(|e| format!("cannot make bind target {to}: {e}"))?;
    mount(
        Some(&plan.from),
        &plan.to,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| format!("cannot bind {from} onto {to}: {e}"))?;
    if plan.read_only {
        // A bind mount takes its flags from the remount, not the first call.
        mount(
            None::<&str>,
            &plan.to,
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(|e| format!("cannot make the bind of {from} onto {to} read-only: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn early_mounts_come_parents_first() {
        for (i, m) in EARLY.iter().enumerate() {
            for later in &EARLY[i + 1..] {
                assert!(
                    !Path::new(m.target).starts_with(later.target),
                    "{} is mounted before its parent {}",
                    m.target,
                    later.target
                );
            }
        }
        let required: Vec<_> = EARLY
            .iter()
            .filter(|m| m.required)
            .map(|m| m.target)
            .collect();
        assert_eq!(required, ["/proc", "/sys", "/dev"]);
    }

    #[test]
    fn binds_come_from_the_export_read_only_unless_writable() {
        let binds = [
            Bind {
                source: "usr".into(),
                target: "/usr".into(),
                writable: false,
            },
            Bind {
                source: "home/u".into(),
                target: "/home/u".into(),
                writable: true,
            },
            Bind {
                source: "".into(),
                target: "/host".into(),
                writable: false,
            },
        ];
        let plans = plan_binds(Path::new(EXPORT_MOUNT), &binds);
        assert_eq!(plans[0].from, Path::new("/.hobbes/host/usr"));
        assert_eq!(plans[0].to, Path::new("/usr"));
        assert!(plans[0].read_only);
        assert_eq!(plans[1].from, Path::new("/.hobbes/host/home/u"));
        assert!(!plans[1].read_only);
        assert_eq!(
            plans[2].from,
            Path::new("/.hobbes/host/"),
            "the whole export"
        );
    }
}
