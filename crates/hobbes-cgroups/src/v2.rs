//! cgroup v2: one hierarchy. An enclave's cgroup carries its cores (a
//! partition when exclusive) and enables the memory controller for two
//! children: `control` (the control process, no limit) and `apps`
//! (`memory.max`). Processes live in the children only, as v2 requires of a
//! cgroup that enables controllers for its children.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hobbes_proto::model::{CgroupMode, CoreId, EnclaveId};

use super::{
    dir_name, enclave_ids_in, procs_tree, read, sigkill, wait_gone, write, CgroupManager, DirOps,
    EnclaveCgroup, Result,
};
use hobbes_proto::model::format_id_list as format_cpu_list;

/// The node's cgroup v2 layout (see the module's documentation).
#[derive(Debug, Clone)]
pub struct V2 {
    parent: PathBuf,
    /// `<parent>/hobbes`: exclusive enclaves.
    exclusive: PathBuf,
    /// `<parent>/hobbes-shared`: shared enclaves.
    shared: PathBuf,
    /// Enclave cgroups are `<prefix>-N`.
    prefix: &'static str,
    ops: DirOps,
}

impl V2 {
    /// Under the cgroup the daemon starts from (the unified mount, or a
    /// delegated cgroup in it).
    pub fn new(parent: PathBuf) -> V2 {
        V2::with_dir_ops(parent, DirOps::KERNEL)
    }

    /// As `new`, making and removing directories with `ops` (test fixtures).
    pub fn with_dir_ops(parent: PathBuf, ops: DirOps) -> V2 {
        V2 {
            exclusive: parent.join("hobbes"),
            shared: parent.join("hobbes-shared"),
            parent,
            prefix: super::ENCLAVE_PREFIX,
            ops,
        }
    }

    /// Name enclave cgroups `<prefix>-N` (default `enclave`).
    pub fn with_prefix(mut self, prefix: &'static str) -> V2 {
        self.prefix = prefix;
        self
    }

    fn enclave_at(&self, id: EnclaveId, shared: bool) -> V2Enclave {
        let dir = if shared {
            &self.shared
        } else {
            &self.exclusive
        }
        .join(dir_name(self.prefix, id));
        V2Enclave {
            control: dir.join("control"),
            apps: dir.join("apps"),
            dir,
            exclusive: !shared,
            ops: self.ops,
        }
    }
}

impl CgroupManager for V2 {
    fn mode(&self) -> CgroupMode {
        CgroupMode::Unified
    }

    fn setup(
        &self,
        all_cores: &[CoreId],
        host_cores: &[CoreId],
        mems: &str,
        exclusive: bool,
    ) -> Result<usize> {
        if !exclusive {
            return Err(super::CgroupError::Unsupported(
                "cores shared with Slurm's cgroups (leviathan --slurm-cgroups) are supported on cgroup v1 only; this node's cpuset is cgroup v2".into(),
            ));
        }
        let mut made = Vec::new();
        let result = self.make_parents(all_cores, host_cores, mems, &mut made);
        if result.is_err() {
            // Leave the node as it was: remove the parents this call made
            // (and only those), innermost last made first.
            for dir in made.iter().rev() {
                let _ = self.ops.rmdir(dir);
            }
        }
        result
    }

    fn teardown(&self) -> Result<()> {
        if self.exclusive.exists() {
            let _ = write(&self.exclusive.join("cpuset.cpus.partition"), "member");
        }
        let _ = self.ops.rmdir(&self.exclusive);
        let _ = self.ops.rmdir(&self.shared);
        Ok(())
    }

    fn enclave(&self, id: EnclaveId, shared: bool) -> Box<dyn EnclaveCgroup> {
        Box::new(self.enclave_at(id, shared))
    }

    fn existing_enclaves(&self) -> Vec<(EnclaveId, bool, Box<dyn EnclaveCgroup>)> {
        let mut out = Vec::new();
        for (dir, shared) in [(&self.exclusive, false), (&self.shared, true)] {
            for id in enclave_ids_in(dir, self.prefix) {
                let cg: Box<dyn EnclaveCgroup> = Box::new(self.enclave_at(id, shared));
                out.push((id, shared, cg));
            }
        }
        out
    }
}

impl V2 {
    /// `hobbes` (a partition root owning the managed cores the host does
    /// not keep; none when there are none, as on a one-core subset) and
    /// `hobbes-shared` (the host's cores), with cpuset and memory enabled
    /// for their children. The v2 form of v1's host cpuset
    /// ([`super::host_cpus`]): the partition takes the assignable cores from
    /// the base cgroup, whose tasks keep the rest, unmanaged cores included.
    /// The directories it makes are pushed to `made`.
    fn make_parents(
        &self,
        all_cores: &[CoreId],
        host_cores: &[CoreId],
        mems: &str,
        made: &mut Vec<PathBuf>,
    ) -> Result<usize> {
        let _ = write(
            &self.parent.join("cgroup.subtree_control"),
            "+cpuset +memory",
        );
        for dir in [&self.exclusive, &self.shared] {
            self.ops.mkdir(dir)?;
            made.push(dir.clone());
            let _ = write(&dir.join("cgroup.subtree_control"), "+cpuset +memory");
        }
        let managed: Vec<CoreId> = all_cores
            .iter()
            .copied()
            .filter(|c| !host_cores.contains(c))
            .collect();
        write(
            &self.shared.join("cpuset.cpus"),
            &format_cpu_list(host_cores),
        )?;
        if !managed.is_empty() {
            write(
                &self.exclusive.join("cpuset.cpus"),
                &format_cpu_list(&managed),
            )?;
            write(&self.exclusive.join("cpuset.mems"), mems)?;
            // A partition root takes its cores away from every other cgroup.
            write(&self.exclusive.join("cpuset.cpus.partition"), "root")?;
        }
        Ok(0)
    }
}

/// An enclave's v2 cgroup and its two children.
#[derive(Debug, Clone)]
pub struct V2Enclave {
    /// `hobbes[-shared]/enclave-N`: cores, memory nodes, partition.
    dir: PathBuf,
    /// `<dir>/control`: the control process.
    control: PathBuf,
    /// `<dir>/apps`: apps, under `memory.max`.
    apps: PathBuf,
    exclusive: bool,
    ops: DirOps,
}

impl EnclaveCgroup for V2Enclave {
    fn path(&self) -> &Path {
        &self.dir
    }

    fn exists(&self) -> bool {
        self.dir.exists()
    }

    fn create(&self, cores: &[CoreId], mems: &str, limit_bytes: u64) -> Result<()> {
        self.ops.mkdir(&self.dir)?;
        let result = (|| {
            write(&self.dir.join("cpuset.cpus"), &format_cpu_list(cores))?;
            write(&self.dir.join("cpuset.mems"), mems)?;
            if self.exclusive {
                write(&self.dir.join("cpuset.cpus.partition"), "isolated")
                    .or_else(|_| write(&self.dir.join("cpuset.cpus.partition"), "root"))?;
            }
            // The children inherit the cores; only the memory limit differs.
            write(&self.dir.join("cgroup.subtree_control"), "+memory")?;
            self.ops.mkdir(&self.control)?;
            self.ops.mkdir(&self.apps)?;
            self.set_memory_limit(limit_bytes)
        })();
        if result.is_err() {
            let _ = self.remove();
        }
        result
    }

    fn add_pid(&self, pid: u32) -> Result<()> {
        write(&self.apps.join("cgroup.procs"), &pid.to_string())
    }

    fn add_control_pid(&self, pid: u32) -> Result<()> {
        write(&self.control.join("cgroup.procs"), &pid.to_string())
    }

    fn app_cgroup(&self) -> &Path {
        &self.apps
    }

    fn control_cgroup(&self) -> &Path {
        &self.control
    }

    fn thread_cgroup(&self) -> Option<&Path> {
        None
    }

    fn set_cpus(&self, cores: &[CoreId]) -> Result<()> {
        write(&self.dir.join("cpuset.cpus"), &format_cpu_list(cores))
    }

    fn set_mems(&self, mems: &str) -> Result<()> {
        write(&self.dir.join("cpuset.mems"), mems)
    }

    fn set_memory_limit(&self, bytes: u64) -> Result<()> {
        write(&self.apps.join("memory.max"), &bytes.to_string())
    }

    fn memory_limit(&self) -> Option<u64> {
        read(&self.apps.join("memory.max")).ok()?.parse().ok()
    }

    fn procs(&self) -> Vec<u32> {
        procs_tree(&[&self.dir])
    }

    fn memory_procs(&self) -> Vec<u32> {
        procs_tree(&[&self.apps])
    }

    fn all_procs(&self) -> Vec<u32> {
        procs_tree(&[&self.dir])
    }

    fn kill_all(&self, timeout: Duration) -> Result<()> {
        if !self.exists() {
            return Ok(());
        }
        // cgroup.kill (5.14+) takes the whole subtree, forks included.
        if write(&self.dir.join("cgroup.kill"), "1").is_ok() {
            return wait_gone(&self.dir, timeout, || self.all_procs(), |_| {});
        }
        wait_gone(&self.dir, timeout, || self.all_procs(), sigkill)
    }

    fn remove(&self) -> Result<()> {
        self.ops.rmdir_tree(&self.dir)
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::super::fixture::{self, read_file};
    use super::*;

    const LIMIT: u64 = 64 << 20;

    /// A unified node offering cpuset and memory, 4 cpus on one NUMA node.
    fn node() -> (tempfile::TempDir, V2) {
        let dir = tempfile::tempdir().unwrap();
        fixture::v2_root(dir.path(), "0-3", "0");
        let m = V2::with_dir_ops(dir.path().to_path_buf(), fixture::DIR_OPS);
        m.setup(&[0, 1, 2, 3], &[0], "0", true).unwrap();
        (dir, m)
    }

    fn at(dir: &tempfile::TempDir, rel: &str) -> PathBuf {
        dir.path().join(rel)
    }

    #[test]
    fn setup_makes_a_partition_of_the_managed_cores_and_teardown_undoes_it() {
        let (dir, m) = node();
        assert_eq!(m.mode(), CgroupMode::Unified);
        assert_eq!(
            read_file(&at(&dir, "cgroup.subtree_control")),
            "+cpuset +memory"
        );
        assert_eq!(read_file(&at(&dir, "hobbes/cpuset.cpus")), "1-3");
        assert_eq!(read_file(&at(&dir, "hobbes/cpuset.mems")), "0");
        assert_eq!(read_file(&at(&dir, "hobbes/cpuset.cpus.partition")), "root");
        assert_eq!(
            read_file(&at(&dir, "hobbes/cgroup.subtree_control")),
            "+cpuset +memory"
        );
        assert_eq!(read_file(&at(&dir, "hobbes-shared/cpuset.cpus")), "0");
        m.teardown().unwrap();
        assert!(!at(&dir, "hobbes").exists());
        assert!(!at(&dir, "hobbes-shared").exists());
    }

    #[test]
    fn a_subset_partition_owns_only_the_managed_cores_the_host_does_not_keep() {
        // `leviathan --cpus 4-15 --host-cores 4` on a 16-core node: the
        // partition takes 5-15 from the root, whose tasks keep 0-4 (the
        // kernel's doing: nothing of ours moves them).
        let dir = tempfile::tempdir().unwrap();
        fixture::v2_root(dir.path(), "0-15", "0");
        let m = V2::with_dir_ops(dir.path().to_path_buf(), fixture::DIR_OPS);
        let managed: Vec<CoreId> = (4..16).collect();
        assert_eq!(m.setup(&managed, &[4], "0", true).unwrap(), 0);
        assert_eq!(read_file(&at(&dir, "hobbes/cpuset.cpus")), "5-15");
        assert_eq!(read_file(&at(&dir, "hobbes/cpuset.cpus.partition")), "root");
        assert_eq!(read_file(&at(&dir, "hobbes-shared/cpuset.cpus")), "4");
        assert_eq!(read_file(&at(&dir, "cgroup.procs")), "", "nothing moved");
        m.enclave(1, false).create(&[5, 6], "0", LIMIT).unwrap();
        m.enclave(2, true).create(&[4], "0", LIMIT).unwrap();
        assert_eq!(read_file(&at(&dir, "hobbes/enclave-1/cpuset.cpus")), "5-6");
        assert_eq!(
            read_file(&at(&dir, "hobbes-shared/enclave-2/cpuset.cpus")),
            "4"
        );
        assert_eq!(fixture::stray_files(dir.path()), Vec::<PathBuf>::new());
    }

    #[test]
    fn a_one_core_node_makes_no_partition_and_runs_shared_enclaves() {
        // A simulated node: leviathan in the delegated cgroup hobbes-slurm/n0
        // (cpus 0) with `--cpus 0`: the host keeps the core, nothing is assignable.
        let dir = tempfile::tempdir().unwrap();
        let base = at(&dir, "hobbes-slurm/n0");
        fixture::v2_root(&base, "0", "0");
        let m = V2::with_dir_ops(base, fixture::DIR_OPS);
        m.setup(&[0], &[0], "0", true).unwrap();
        assert_eq!(
            read_file(&at(&dir, "hobbes-slurm/n0/hobbes/cpuset.cpus")),
            ""
        );
        assert_eq!(
            read_file(&at(&dir, "hobbes-slurm/n0/hobbes/cpuset.cpus.partition")),
            "member",
            "no partition: it would take the host's only core"
        );
        assert_eq!(
            read_file(&at(&dir, "hobbes-slurm/n0/hobbes-shared/cpuset.cpus")),
            "0"
        );
        let e = m.enclave(1, true);
        e.create(&[0], "0", LIMIT).unwrap();
        assert_eq!(
            e.path(),
            at(&dir, "hobbes-slurm/n0/hobbes-shared/enclave-1")
        );
        e.remove().unwrap();
        m.teardown().unwrap();
        assert!(!at(&dir, "hobbes-slurm/n0/hobbes").exists());
        assert_eq!(fixture::stray_files(dir.path()), Vec::<PathBuf>::new());
    }

    #[test]
    fn create_puts_cores_on_the_enclave_and_the_limit_on_its_apps() {
        let (dir, m) = node();
        let e = m.enclave(3, false);
        e.create(&[1, 2], "0", LIMIT).unwrap();
        assert!(e.exists());
        assert_eq!(e.path(), at(&dir, "hobbes/enclave-3"));
        assert_eq!(read_file(&at(&dir, "hobbes/enclave-3/cpuset.cpus")), "1-2");
        assert_eq!(read_file(&at(&dir, "hobbes/enclave-3/cpuset.mems")), "0");
        assert_eq!(
            read_file(&at(&dir, "hobbes/enclave-3/cpuset.cpus.partition")),
            "isolated"
        );
        assert_eq!(
            read_file(&at(&dir, "hobbes/enclave-3/cgroup.subtree_control")),
            "+memory"
        );
        assert_eq!(
            read_file(&at(&dir, "hobbes/enclave-3/memory.max")),
            "max",
            "the enclave as a whole (control process included) has no limit"
        );
        assert_eq!(
            read_file(&at(&dir, "hobbes/enclave-3/control/memory.max")),
            "max"
        );
        assert_eq!(
            read_file(&at(&dir, "hobbes/enclave-3/apps/memory.max")),
            LIMIT.to_string()
        );
        assert!(
            !at(&dir, "hobbes/enclave-3/apps/cpuset.cpus").exists(),
            "the children inherit the enclave's cores"
        );
        assert_eq!(e.memory_limit(), Some(LIMIT));
        e.set_memory_limit(2 * LIMIT).unwrap();
        assert_eq!(
            read_file(&at(&dir, "hobbes/enclave-3/apps/memory.max")),
            (2 * LIMIT).to_string()
        );
        e.set_cpus(&[3]).unwrap();
        e.set_mems("0-1").unwrap();
        assert_eq!(read_file(&at(&dir, "hobbes/enclave-3/cpuset.cpus")), "3");
        assert_eq!(read_file(&at(&dir, "hobbes/enclave-3/cpuset.mems")), "0-1");
        assert_eq!(
            fixture::stray_files(dir.path()),
            Vec::<PathBuf>::new(),
            "every file written is one the kernel makes"
        );
    }

    #[test]
    fn shared_enclaves_live_in_hobbes_shared_and_are_no_partition() {
        let (dir, m) = node();
        let e = m.enclave(4, true);
        e.create(&[0], "0", LIMIT).unwrap();
        assert_eq!(e.path(), at(&dir, "hobbes-shared/enclave-4"));
        assert_eq!(
            read_file(&at(&dir, "hobbes-shared/enclave-4/cpuset.cpus.partition")),
            "member"
        );
        assert_eq!(
            read_file(&at(&dir, "hobbes-shared/enclave-4/apps/memory.max")),
            LIMIT.to_string()
        );
    }

    #[test]
    fn control_process_and_apps_go_to_the_children_only() {
        let (dir, m) = node();
        let e = m.enclave(2, false);
        e.create(&[1], "0", LIMIT).unwrap();
        e.add_control_pid(5_000_001).unwrap();
        e.add_pid(5_000_002).unwrap();
        assert_eq!(
            read_file(&at(&dir, "hobbes/enclave-2/control/cgroup.procs")),
            "5000001"
        );
        assert_eq!(
            read_file(&at(&dir, "hobbes/enclave-2/apps/cgroup.procs")),
            "5000002"
        );
        assert_eq!(
            read_file(&at(&dir, "hobbes/enclave-2/cgroup.procs")),
            "",
            "no internal processes"
        );
        assert_eq!(e.app_cgroup(), at(&dir, "hobbes/enclave-2/apps"));
        assert_eq!(e.memory_procs(), vec![5_000_002]);
        assert_eq!(e.procs(), vec![5_000_001, 5_000_002]);
        assert_eq!(e.all_procs(), vec![5_000_001, 5_000_002]);
        let err = e.remove().unwrap_err();
        assert!(err.to_string().contains("enclave-2"), "{err}");
        assert_eq!(fixture::stray_files(dir.path()), Vec::<PathBuf>::new());
    }

    #[test]
    fn kill_all_uses_cgroup_kill_and_remove_takes_the_children_too() {
        let (dir, m) = node();
        let e = m.enclave(5, false);
        e.kill_all(Duration::from_secs(1)).unwrap();
        e.create(&[1], "0", LIMIT).unwrap();
        e.kill_all(Duration::from_secs(1)).unwrap();
        assert_eq!(read_file(&at(&dir, "hobbes/enclave-5/cgroup.kill")), "1");
        e.remove().unwrap();
        assert!(!e.exists());
        assert!(!at(&dir, "hobbes/enclave-5").exists());
        e.remove().unwrap();
        m.teardown().unwrap();
        assert!(!at(&dir, "hobbes").exists());
    }

    #[test]
    fn existing_enclaves_lists_both_parents() {
        let (dir, m) = node();
        m.enclave(7, false).create(&[1], "0", LIMIT).unwrap();
        m.enclave(3, true).create(&[0], "0", LIMIT).unwrap();
        m.enclave(2, false).create(&[2], "0", LIMIT).unwrap();
        fs::create_dir(at(&dir, "hobbes/not-an-enclave")).unwrap();
        let found: Vec<(EnclaveId, bool, PathBuf)> = m
            .existing_enclaves()
            .into_iter()
            .map(|(id, shared, cg)| (id, shared, cg.path().to_path_buf()))
            .collect();
        assert_eq!(
            found,
            vec![
                (2, false, at(&dir, "hobbes/enclave-2")),
                (7, false, at(&dir, "hobbes/enclave-7")),
                (3, true, at(&dir, "hobbes-shared/enclave-3")),
            ]
        );
        for (_, _, cg) in m.existing_enclaves() {
            cg.kill_all(Duration::from_secs(1)).unwrap();
            cg.remove().unwrap();
        }
        assert!(m.existing_enclaves().is_empty());
    }

    #[test]
    fn failed_create_leaves_nothing_behind() {
        let (dir, _) = node();
        // The kernel refuses the `apps` child (cgroup.max.descendants reached, say).
        let ops = DirOps {
            mkdir: |p| {
                if p.ends_with("apps") {
                    return Err(std::io::Error::from_raw_os_error(libc::EAGAIN));
                }
                fixture::mkdir(p)
            },
            rmdir: fixture::rmdir,
        };
        let m = V2::with_dir_ops(dir.path().to_path_buf(), ops);
        let e = m.enclave(6, false);
        let err = e.create(&[1], "0", LIMIT).unwrap_err();
        assert!(err.to_string().contains("enclave-6/apps"), "{err}");
        assert!(!at(&dir, "hobbes/enclave-6").exists());
        assert_eq!(fixture::stray_files(dir.path()), Vec::<PathBuf>::new());
    }
}
