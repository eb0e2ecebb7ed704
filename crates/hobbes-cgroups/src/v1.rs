//! cgroup v1: separate cpuset and memory hierarchies. The control process is
//! in the enclave's cpuset and in the memory parent `<memory>/hobbes` (no
//! limit of ours); apps are in the enclave's cpuset (inherited) and its
//! memory cgroup.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hobbes_proto::model::{CgroupMode, CoreId, EnclaveId};

use super::{
    dir_name, enclave_ids_in, host_cpus, move_all, parse_cpu_list, procs, procs_tree, read,
    sigkill, wait_gone, write, CgroupManager, DirOps, EnclaveCgroup, Result,
};
use hobbes_proto::model::format_id_list as format_cpu_list;

/// The node's cgroup v1 layout (see the module's documentation).
#[derive(Debug, Clone)]
pub struct V1 {
    /// The daemon's own cpuset (whose tasks the host confinement moves).
    cpuset_parent: PathBuf,
    /// `<cpuset_parent>/hobbes`.
    cpuset: PathBuf,
    /// `<memory parent>/hobbes`.
    memory: PathBuf,
    /// Enclave cgroups are `<prefix>-N`.
    prefix: &'static str,
    ops: DirOps,
}

impl V1 {
    /// Under the cpuset and memory cgroups the daemon starts from (a
    /// controller's mount, or a delegated cgroup in it).
    pub fn new(cpuset_parent: PathBuf, memory_parent: PathBuf) -> V1 {
        V1::with_dir_ops(cpuset_parent, memory_parent, DirOps::KERNEL)
    }

    /// As `new`, making and removing directories with `ops` (test fixtures).
    pub fn with_dir_ops(cpuset_parent: PathBuf, memory_parent: PathBuf, ops: DirOps) -> V1 {
        V1 {
            cpuset: cpuset_parent.join("hobbes"),
            cpuset_parent,
            memory: memory_parent.join("hobbes"),
            prefix: super::ENCLAVE_PREFIX,
            ops,
        }
    }

    /// Name enclave cgroups `<prefix>-N` (default `enclave`).
    pub fn with_prefix(mut self, prefix: &'static str) -> V1 {
        self.prefix = prefix;
        self
    }

    fn enclave_at(&self, id: EnclaveId, exclusive: bool) -> V1Enclave {
        let name = dir_name(self.prefix, id);
        // Under a parent that is not cpu_exclusive (`leviathan
        // --slurm-cgroups`), no enclave can be: v1 refuses it.
        let exclusive =
            exclusive && read(&self.cpuset.join("cpuset.cpu_exclusive")).map_or(true, |v| v == "1");
        V1Enclave {
            cpuset: self.cpuset.join(&name),
            memory: self.memory.join(&name),
            control_memory: self.memory.clone(),
            exclusive,
            ops: self.ops,
        }
    }
}

impl CgroupManager for V1 {
    fn mode(&self) -> CgroupMode {
        CgroupMode::Legacy
    }

    fn setup(
        &self,
        all_cores: &[CoreId],
        host_cores: &[CoreId],
        _mems: &str,
        exclusive: bool,
    ) -> Result<usize> {
        let cpuset = &self.cpuset;
        if self.ops.mkdir(cpuset)? || read(&cpuset.join("cpuset.cpus"))?.is_empty() {
            write(
                &cpuset.join("cpuset.cpus"),
                &read(&self.cpuset_parent.join("cpuset.cpus"))?,
            )?;
            write(
                &cpuset.join("cpuset.mems"),
                &read(&self.cpuset_parent.join("cpuset.mems"))?,
            )?;
        }
        // Enclave cpusets are cpu_exclusive, which v1 allows only under an
        // exclusive parent. Not so when Slurm confines jobs on this node: v1
        // also refuses Slurm's own cpuset, which holds every CPU, beside an
        // exclusive one (docs/slurm.md).
        let flag = if exclusive { "1" } else { "0" };
        if read(&cpuset.join("cpuset.cpu_exclusive"))? != flag {
            write(&cpuset.join("cpuset.cpu_exclusive"), flag)?;
        }
        let host = cpuset.join("host");
        self.ops.mkdir(&host)?;
        let base = read(&self.cpuset_parent.join("cpuset.cpus"))?;
        let host_cpus = host_cpus(&parse_cpu_list(&base), all_cores, host_cores);
        write(&host.join("cpuset.cpus"), &format_cpu_list(&host_cpus))?;
        // The host's tasks keep the base's memory nodes: those of a managed
        // subset are no limit on the tasks of the rest of the node.
        write(
            &host.join("cpuset.mems"),
            &read(&cpuset.join("cpuset.mems"))?,
        )?;
        self.ops.mkdir(&self.memory)?;
        Ok(move_all(&self.cpuset_parent, &host))
    }

    fn teardown(&self) -> Result<()> {
        let host = self.cpuset.join("host");
        if host.exists() {
            move_all(&host, &self.cpuset_parent);
            wait_gone(&host, Duration::from_secs(2), || procs(&host), |_| {})?;
            self.ops.rmdir(&host)?;
        }
        let _ = self.ops.rmdir(&self.cpuset);
        let _ = self.ops.rmdir(&self.memory);
        Ok(())
    }

    fn enclave(&self, id: EnclaveId, shared: bool) -> Box<dyn EnclaveCgroup> {
        Box::new(self.enclave_at(id, !shared))
    }

    fn existing_enclaves(&self) -> Vec<(EnclaveId, bool, Box<dyn EnclaveCgroup>)> {
        let mut ids = enclave_ids_in(&self.cpuset, self.prefix);
        ids.extend(enclave_ids_in(&self.memory, self.prefix));
        ids.sort_unstable();
        ids.dedup();
        ids.into_iter()
            .map(|id| {
                let exclusive = read(
                    &self
                        .cpuset
                        .join(dir_name(self.prefix, id))
                        .join("cpuset.cpu_exclusive"),
                )
                .is_ok_and(|v| v == "1");
                let cg: Box<dyn EnclaveCgroup> = Box::new(self.enclave_at(id, exclusive));
                (id, !exclusive, cg)
            })
            .collect()
    }
}

/// An enclave's v1 cgroups.
#[derive(Debug, Clone)]
pub struct V1Enclave {
    /// `<cpuset>/hobbes/enclave-N`: the control process and apps.
    cpuset: PathBuf,
    /// `<memory>/hobbes/enclave-N`: apps, under the limit.
    memory: PathBuf,
    /// `<memory>/hobbes`: the control process.
    control_memory: PathBuf,
    exclusive: bool,
    ops: DirOps,
}

impl EnclaveCgroup for V1Enclave {
    fn path(&self) -> &Path {
        &self.cpuset
    }

    fn exists(&self) -> bool {
        self.cpuset.exists() || self.memory.exists()
    }

    fn create(&self, cores: &[CoreId], mems: &str, limit_bytes: u64) -> Result<()> {
        self.ops.mkdir(&self.cpuset)?;
        let result = (|| {
            write(&self.cpuset.join("cpuset.cpus"), &format_cpu_list(cores))?;
            write(&self.cpuset.join("cpuset.mems"), mems)?;
            if self.exclusive {
                write(&self.cpuset.join("cpuset.cpu_exclusive"), "1")?;
            }
            self.ops.mkdir(&self.memory)?;
            self.set_memory_limit(limit_bytes)
        })();
        if result.is_err() {
            let _ = self.remove();
        }
        result
    }

    fn add_pid(&self, pid: u32) -> Result<()> {
        write(&self.cpuset.join("cgroup.procs"), &pid.to_string())?;
        write(&self.memory.join("cgroup.procs"), &pid.to_string())
    }

    fn add_control_pid(&self, pid: u32) -> Result<()> {
        write(&self.cpuset.join("cgroup.procs"), &pid.to_string())?;
        write(&self.control_memory.join("cgroup.procs"), &pid.to_string())
    }

    fn app_cgroup(&self) -> &Path {
        &self.memory
    }

    fn control_cgroup(&self) -> &Path {
        &self.control_memory
    }

    fn thread_cgroup(&self) -> Option<&Path> {
        Some(&self.cpuset)
    }

    fn set_cpus(&self, cores: &[CoreId]) -> Result<()> {
        write(&self.cpuset.join("cpuset.cpus"), &format_cpu_list(cores))
    }

    fn set_mems(&self, mems: &str) -> Result<()> {
        write(&self.cpuset.join("cpuset.mems"), mems)
    }

    fn set_memory_limit(&self, bytes: u64) -> Result<()> {
        write(
            &self.memory.join("memory.limit_in_bytes"),
            &bytes.to_string(),
        )
    }

    fn memory_limit(&self) -> Option<u64> {
        read(&self.memory.join("memory.limit_in_bytes"))
            .ok()?
            .parse()
            .ok()
    }

    fn procs(&self) -> Vec<u32> {
        procs_tree(&[&self.cpuset])
    }

    fn memory_procs(&self) -> Vec<u32> {
        procs_tree(&[&self.memory])
    }

    fn all_procs(&self) -> Vec<u32> {
        procs_tree(&[&self.cpuset, &self.memory])
    }

    fn kill_all(&self, timeout: Duration) -> Result<()> {
        if !self.exists() {
            return Ok(());
        }
        wait_gone(&self.cpuset, timeout, || self.all_procs(), sigkill)
    }

    fn remove(&self) -> Result<()> {
        self.ops.rmdir_tree(&self.cpuset)?;
        self.ops.rmdir_tree(&self.memory)
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::super::fixture::{self, read_file};
    use super::*;

    const LIMIT: u64 = 64 << 20;

    /// A v1 node: cpuset and memory mounts with 4 cpus on one NUMA node.
    fn node() -> (tempfile::TempDir, V1) {
        let dir = tempfile::tempdir().unwrap();
        let cpuset = dir.path().join("cpuset");
        let memory = dir.path().join("memory");
        fixture::v1_root(&cpuset, &memory, "0-3", "0");
        let m = V1::with_dir_ops(cpuset, memory, fixture::DIR_OPS);
        (dir, m)
    }

    fn at(dir: &tempfile::TempDir, rel: &str) -> PathBuf {
        dir.path().join(rel)
    }

    #[test]
    fn setup_makes_exclusive_parent_and_host_cpuset_and_teardown_removes_them() {
        let (dir, m) = node();
        assert_eq!(m.setup(&[0, 1, 2, 3], &[0], "0", true).unwrap(), 0);
        assert_eq!(read_file(&at(&dir, "cpuset/hobbes/cpuset.cpus")), "0-3");
        assert_eq!(read_file(&at(&dir, "cpuset/hobbes/cpuset.mems")), "0");
        assert_eq!(
            read_file(&at(&dir, "cpuset/hobbes/cpuset.cpu_exclusive")),
            "1"
        );
        assert_eq!(read_file(&at(&dir, "cpuset/hobbes/host/cpuset.cpus")), "0");
        assert_eq!(read_file(&at(&dir, "cpuset/hobbes/host/cpuset.mems")), "0");
        assert!(at(&dir, "memory/hobbes/memory.limit_in_bytes").exists());
        // Idempotent: a restarted daemon finds it all in place.
        m.setup(&[0, 1, 2, 3], &[0], "0", true).unwrap();
        assert_eq!(m.mode(), CgroupMode::Legacy);

        m.teardown().unwrap();
        assert!(!at(&dir, "cpuset/hobbes").exists());
        assert!(!at(&dir, "memory/hobbes").exists());
    }

    #[test]
    fn a_subset_in_the_root_cgroup_leaves_the_unmanaged_cores_to_the_host() {
        // `leviathan --cpus 4-15 --host-cores 4` on a 16-core node.
        let dir = tempfile::tempdir().unwrap();
        fixture::v1_root(&at(&dir, "cpuset"), &at(&dir, "memory"), "0-15", "0");
        let m = V1::with_dir_ops(at(&dir, "cpuset"), at(&dir, "memory"), fixture::DIR_OPS);
        let managed: Vec<CoreId> = (4..16).collect();
        m.setup(&managed, &[4], "0", true).unwrap();
        assert_eq!(read_file(&at(&dir, "cpuset/hobbes/cpuset.cpus")), "0-15");
        assert_eq!(
            read_file(&at(&dir, "cpuset/hobbes/host/cpuset.cpus")),
            "0-4",
            "the host keeps its core of the subset and every unmanaged core"
        );
        m.enclave(1, false).create(&[5, 6], "0", LIMIT).unwrap();
        m.enclave(2, true).create(&[4], "0", LIMIT).unwrap();
        assert_eq!(
            read_file(&at(&dir, "cpuset/hobbes/enclave-1/cpuset.cpus")),
            "5-6"
        );
        assert_eq!(
            read_file(&at(&dir, "cpuset/hobbes/enclave-2/cpuset.cpus")),
            "4"
        );
        // The whole node managed: the host keeps exactly its cores, as before.
        m.setup(&(0..16).collect::<Vec<_>>(), &[0, 1], "0", true)
            .unwrap();
        assert_eq!(
            read_file(&at(&dir, "cpuset/hobbes/host/cpuset.cpus")),
            "0-1"
        );
        assert_eq!(fixture::stray_files(dir.path()), Vec::<PathBuf>::new());
    }

    #[test]
    fn two_one_core_nodes_in_sibling_cgroups_each_keep_their_core() {
        // Two simulated Slurm nodes: leviathan started in
        // cpuset/hobbes-slurm/n0 (cpus 0, cpu_exclusive) and .../n1 (cpus 1),
        // each with `--cpus N`: the host keeps the one core, shared enclaves only.
        let dir = tempfile::tempdir().unwrap();
        let node = |n: u32| {
            let cpuset = at(&dir, &format!("cpuset/hobbes-slurm/n{n}"));
            let memory = at(&dir, &format!("memory/hobbes-slurm/n{n}"));
            fixture::v1_root(&cpuset, &memory, &n.to_string(), "0");
            V1::with_dir_ops(cpuset, memory, fixture::DIR_OPS)
        };
        let (n0, n1) = (node(0), node(1));
        n0.setup(&[0], &[0], "0", true).unwrap();
        n1.setup(&[1], &[1], "0", true).unwrap();
        for n in 0..2 {
            let base = format!("cpuset/hobbes-slurm/n{n}/hobbes");
            assert_eq!(
                read_file(&at(&dir, &format!("{base}/cpuset.cpus"))),
                n.to_string()
            );
            assert_eq!(
                read_file(&at(&dir, &format!("{base}/cpuset.cpu_exclusive"))),
                "1"
            );
            assert_eq!(
                read_file(&at(&dir, &format!("{base}/host/cpuset.cpus"))),
                n.to_string()
            );
            assert!(at(&dir, &format!("memory/hobbes-slurm/n{n}/hobbes")).is_dir());
        }
        let e = n0.enclave(1, true);
        e.create(&[0], "0", LIMIT).unwrap();
        assert_eq!(
            e.path(),
            at(&dir, "cpuset/hobbes-slurm/n0/hobbes/enclave-1")
        );
        assert_eq!(
            e.app_cgroup(),
            at(&dir, "memory/hobbes-slurm/n0/hobbes/enclave-1")
        );
        assert_eq!(n1.existing_enclaves().len(), 0, "n1 sees only its own");
        e.remove().unwrap();
        n0.teardown().unwrap();
        assert!(!at(&dir, "cpuset/hobbes-slurm/n0/hobbes").exists());
        assert!(at(&dir, "cpuset/hobbes-slurm/n1/hobbes/host").is_dir());
        assert_eq!(fixture::stray_files(dir.path()), Vec::<PathBuf>::new());
    }

    #[test]
    fn beside_slurms_cgroups_nothing_is_cpu_exclusive() {
        let (dir, m) = node();
        m.setup(&[0, 1, 2, 3], &[0], "0", false).unwrap();
        assert_eq!(
            read_file(&at(&dir, "cpuset/hobbes/cpuset.cpu_exclusive")),
            "0"
        );
        let e = m.enclave(5, false);
        e.create(&[2], "0", LIMIT).unwrap();
        assert_ne!(
            read_file(&at(&dir, "cpuset/hobbes/enclave-5/cpuset.cpu_exclusive")),
            "1",
            "an exclusive enclave is not cpu_exclusive under a parent that is not"
        );
        e.remove().unwrap();
        // A restart with the flag off makes the parent exclusive again.
        m.setup(&[0, 1, 2, 3], &[0], "0", true).unwrap();
        assert_eq!(
            read_file(&at(&dir, "cpuset/hobbes/cpuset.cpu_exclusive")),
            "1"
        );
        m.teardown().unwrap();
    }

    #[test]
    fn create_writes_cores_mems_exclusive_and_limit() {
        let (dir, m) = node();
        m.setup(&[0, 1, 2, 3], &[0], "0", true).unwrap();
        let e = m.enclave(3, false);
        assert!(!e.exists());
        e.create(&[2, 3, 1], "0", LIMIT).unwrap();
        assert!(e.exists());
        assert_eq!(e.path(), at(&dir, "cpuset/hobbes/enclave-3"));
        assert_eq!(
            read_file(&at(&dir, "cpuset/hobbes/enclave-3/cpuset.cpus")),
            "1-3"
        );
        assert_eq!(
            read_file(&at(&dir, "cpuset/hobbes/enclave-3/cpuset.mems")),
            "0"
        );
        assert_eq!(
            read_file(&at(&dir, "cpuset/hobbes/enclave-3/cpuset.cpu_exclusive")),
            "1"
        );
        assert_eq!(
            read_file(&at(&dir, "memory/hobbes/enclave-3/memory.limit_in_bytes")),
            LIMIT.to_string()
        );
        assert_eq!(e.memory_limit(), Some(LIMIT));

        let s = m.enclave(4, true);
        s.create(&[0], "0", LIMIT).unwrap();
        assert_eq!(
            read_file(&at(&dir, "cpuset/hobbes/enclave-4/cpuset.cpu_exclusive")),
            "0",
            "a shared enclave's cpuset is not exclusive"
        );
        assert_eq!(fixture::stray_files(dir.path()), Vec::<PathBuf>::new());
    }

    #[test]
    fn set_cpus_mems_and_limit_write_their_files() {
        let (dir, m) = node();
        m.setup(&[0, 1, 2, 3], &[0], "0", true).unwrap();
        let e = m.enclave(1, false);
        e.create(&[1], "0", LIMIT).unwrap();
        e.set_cpus(&[1, 2]).unwrap();
        e.set_mems("0-1").unwrap();
        e.set_memory_limit(2 * LIMIT).unwrap();
        assert_eq!(
            read_file(&at(&dir, "cpuset/hobbes/enclave-1/cpuset.cpus")),
            "1-2"
        );
        assert_eq!(
            read_file(&at(&dir, "cpuset/hobbes/enclave-1/cpuset.mems")),
            "0-1"
        );
        assert_eq!(
            read_file(&at(&dir, "memory/hobbes/enclave-1/memory.limit_in_bytes")),
            (2 * LIMIT).to_string()
        );
        assert_eq!(e.memory_limit(), Some(2 * LIMIT));
        assert_eq!(
            fixture::stray_files(dir.path()),
            Vec::<PathBuf>::new(),
            "every file written is one the kernel makes"
        );
    }

    #[test]
    fn control_process_is_on_the_cores_but_outside_the_limit_and_apps_under_it() {
        let (dir, m) = node();
        m.setup(&[0, 1, 2, 3], &[0], "0", true).unwrap();
        let e = m.enclave(2, false);
        e.create(&[1], "0", LIMIT).unwrap();
        e.add_control_pid(5_000_001).unwrap();
        assert_eq!(
            read_file(&at(&dir, "cpuset/hobbes/enclave-2/cgroup.procs")),
            "5000001"
        );
        assert_eq!(
            read_file(&at(&dir, "memory/hobbes/cgroup.procs")),
            "5000001"
        );
        assert_eq!(e.memory_procs(), Vec::<u32>::new(), "not under the limit");
        assert_eq!(e.procs(), vec![5_000_001]);
        assert_eq!(e.app_cgroup(), at(&dir, "memory/hobbes/enclave-2"));

        // An app: what the control process's child writes to app_cgroup(),
        // or add_pid from outside.
        e.add_pid(5_000_002).unwrap();
        assert_eq!(
            read_file(&at(&dir, "memory/hobbes/enclave-2/cgroup.procs")),
            "5000002"
        );
        assert_eq!(e.memory_procs(), vec![5_000_002]);
        // (The fixture's cgroup.procs holds the last pid written.)
        fs::write(
            at(&dir, "cpuset/hobbes/enclave-2/cgroup.procs"),
            "5000001\n5000002\n",
        )
        .unwrap();
        assert_eq!(e.all_procs(), vec![5_000_001, 5_000_002]);
        assert_eq!(fixture::stray_files(dir.path()), Vec::<PathBuf>::new());
    }

    #[test]
    fn existing_enclaves_lists_enclave_dirs_of_either_hierarchy() {
        let (dir, m) = node();
        m.setup(&[0, 1, 2, 3], &[0], "0", true).unwrap();
        m.enclave(7, false).create(&[1], "0", LIMIT).unwrap();
        m.enclave(3, true).create(&[0], "0", LIMIT).unwrap();
        // Half-made: only the memory cgroup of enclave 9 exists.
        (fixture::DIR_OPS.mkdir)(&at(&dir, "memory/hobbes/enclave-9")).unwrap();
        // Not enclaves.
        fs::create_dir(at(&dir, "cpuset/hobbes/enclave-x")).unwrap();
        let found: Vec<(EnclaveId, bool, PathBuf)> = m
            .existing_enclaves()
            .into_iter()
            .map(|(id, shared, cg)| (id, shared, cg.path().to_path_buf()))
            .collect();
        assert_eq!(
            found,
            vec![
                (3, true, at(&dir, "cpuset/hobbes/enclave-3")),
                (7, false, at(&dir, "cpuset/hobbes/enclave-7")),
                (9, true, at(&dir, "cpuset/hobbes/enclave-9")),
            ]
        );
        let nine = m.existing_enclaves().pop().unwrap().2;
        assert!(nine.exists());
        nine.kill_all(Duration::from_secs(1)).unwrap();
        nine.remove().unwrap();
        assert!(!at(&dir, "memory/hobbes/enclave-9").exists());
    }

    #[test]
    fn two_prefixes_share_the_parents_and_see_only_their_own_enclaves() {
        let (dir, native) = node();
        let lwk = V1::with_dir_ops(at(&dir, "cpuset"), at(&dir, "memory"), fixture::DIR_OPS)
            .with_prefix("lwk");
        native.setup(&[0, 1, 2, 3], &[0], "0", true).unwrap();
        // The second kind's set-up finds the node set up: nothing changes.
        lwk.setup(&[0, 1, 2, 3], &[0], "0", true).unwrap();
        assert_eq!(read_file(&at(&dir, "cpuset/hobbes/host/cpuset.cpus")), "0");
        native.enclave(1, false).create(&[1], "0", LIMIT).unwrap();
        let l = lwk.enclave(2, false);
        l.create(&[2], "0", LIMIT).unwrap();
        assert_eq!(l.path(), at(&dir, "cpuset/hobbes/lwk-2"));
        assert_eq!(
            read_file(&at(&dir, "cpuset/hobbes/lwk-2/cpuset.cpu_exclusive")),
            "1"
        );
        assert_eq!(l.app_cgroup(), at(&dir, "memory/hobbes/lwk-2"));
        // Out of the limit again without leaving the cpuset it was in.
        assert_eq!(l.control_cgroup(), at(&dir, "memory/hobbes"));
        assert_eq!(
            l.thread_cgroup(),
            Some(at(&dir, "cpuset/hobbes/lwk-2").as_path())
        );
        let ids = |m: &V1| -> Vec<EnclaveId> {
            m.existing_enclaves()
                .into_iter()
                .map(|(id, _, _)| id)
                .collect()
        };
        assert_eq!(ids(&native), vec![1]);
        assert_eq!(ids(&lwk), vec![2]);
        l.remove().unwrap();
        assert!(!at(&dir, "memory/hobbes/lwk-2").exists());
        assert!(at(&dir, "cpuset/hobbes/enclave-1").exists());
    }

    #[test]
    fn remove_removes_both_dirs_and_refuses_while_busy() {
        let (dir, m) = node();
        m.setup(&[0, 1, 2, 3], &[0], "0", true).unwrap();
        let e = m.enclave(5, false);
        e.create(&[1], "0", LIMIT).unwrap();
        e.add_pid(5_000_005).unwrap();
        let err = e.remove().unwrap_err();
        assert!(err.to_string().contains("enclave-5"), "{err}");
        fs::write(at(&dir, "cpuset/hobbes/enclave-5/cgroup.procs"), "").unwrap();
        fs::write(at(&dir, "memory/hobbes/enclave-5/cgroup.procs"), "").unwrap();
        e.kill_all(Duration::from_secs(1)).unwrap();
        e.remove().unwrap();
        assert!(!e.exists());
        assert!(!at(&dir, "cpuset/hobbes/enclave-5").exists());
        assert!(!at(&dir, "memory/hobbes/enclave-5").exists());
        e.remove().unwrap();
        e.kill_all(Duration::from_secs(1)).unwrap();
        // With the enclaves gone the parents go too.
        m.teardown().unwrap();
        assert!(!at(&dir, "cpuset/hobbes").exists());
    }

    #[test]
    fn failed_create_leaves_nothing_behind() {
        let (dir, m) = node();
        m.setup(&[0, 1, 2, 3], &[0], "0", true).unwrap();
        // The memory parent vanished (say): the enclave's memory cgroup cannot be made.
        fs::remove_dir_all(at(&dir, "memory/hobbes")).unwrap();
        let e = m.enclave(6, false);
        let err = e.create(&[1], "0", LIMIT).unwrap_err();
        assert!(err.to_string().contains("memory/hobbes/enclave-6"), "{err}");
        assert!(!at(&dir, "cpuset/hobbes/enclave-6").exists());
    }
}
