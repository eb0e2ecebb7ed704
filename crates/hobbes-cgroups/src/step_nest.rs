//! An enclave's cgroups inside a Slurm job step's (cgroup v1), for nodes
//! where Slurm confines jobs itself (`TaskPlugin=task/cgroup`): the enclave
//! then lives inside the job's allocation, as Slurm's own limits apply to
//! everything below the step's cgroup.
//!
//! Slurm's task/cgroup puts each task of step `S` of job `J` into
//! `<controller>/<slurm root>/uid_U/job_J/step_S/task_N` (cpuset, memory) and
//! removes those directories when the step ends, before the SPANK plugins'
//! `slurm_spank_exit`. Under a step whose task joined an enclave we make
//! `<controller>/.../job_J/step_S/hobbes-<enclave>`: the enclave's cores
//! (which must lie inside the step's cpuset, the kernel checks) and the
//! parent's memory nodes in the cpuset hierarchy, the enclave's memory limit
//! in the memory hierarchy, and move the task there. A hierarchy Slurm does
//! not confine (the task is not in the step's cgroup there) is not nested.
//! The directories must be gone before Slurm removes the step's, so the
//! daemon [`StepNest::release`]s them when the enclave's last task ends.
//!
//! Slurm's freezer cgroup (proctrack/cgroup) is never touched: the task stays
//! in it, so Slurm still signals, tracks and kills everything of the step.

use std::fs;
use std::path::{Path, PathBuf};

use hobbes_proto::model::{format_id_list as format_cpu_list, CoreId};

use std::time::Duration;

use super::{
    memberships, mounts, move_all, procs, read, sigkill, wait_gone, write, CgroupError, DirOps,
    Result,
};

/// The controllers an enclave nests in.
const CONTROLLERS: [&str; 2] = ["cpuset", "memory"];

/// An enclave's cgroups under a Slurm step's, one directory per controller
/// Slurm confines the step's tasks in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepNest {
    /// The cpuset directory, when Slurm confines cores.
    pub cpuset: Option<PathBuf>,
    /// The memory directory, when Slurm confines memory.
    pub memory: Option<PathBuf>,
}

impl StepNest {
    /// Where enclave `name`'s cgroups go for the task `pid` of step
    /// `job.step`: below the step's directory of each v1 controller whose
    /// cgroup for `pid` is in `/job_<job>/step_<step>`. `None` when Slurm
    /// confines the task in none.
    pub fn for_task(pid: u32, job: u32, step: &str, name: &str) -> Option<StepNest> {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
        let cgroup = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        Self::find(&mountinfo, &cgroup, job, step, name)
    }

    /// [`StepNest::for_task`] from the text of /proc/self/mountinfo and the
    /// task's /proc/PID/cgroup.
    pub fn find(
        mountinfo: &str,
        cgroup: &str,
        job: u32,
        step: &str,
        name: &str,
    ) -> Option<StepNest> {
        let marker = format!("/job_{job}/step_{step}");
        let dir = format!("hobbes-{name}");
        let mut nest = StepNest {
            cpuset: None,
            memory: None,
        };
        for (ctrls, path) in memberships(cgroup) {
            let Some(i) = path.find(&marker) else {
                continue;
            };
            let rest = &path[i + marker.len()..];
            if !(rest.is_empty() || rest.starts_with('/')) {
                continue; // step_1 is not step_10
            }
            let step_dir = &path[..i + marker.len()];
            for ctrl in CONTROLLERS {
                if !ctrls.split(',').any(|c| c == ctrl) {
                    continue;
                }
                if let Some(mount) = v1_mount(mountinfo, ctrl) {
                    let p = mount.join(step_dir.trim_start_matches('/')).join(&dir);
                    match ctrl {
                        "cpuset" => nest.cpuset = Some(p),
                        _ => nest.memory = Some(p),
                    }
                }
            }
        }
        (nest.cpuset.is_some() || nest.memory.is_some()).then_some(nest)
    }

    /// Its directories, for the enclave's record.
    pub fn dirs(&self) -> Vec<String> {
        self.cpuset
            .iter()
            .chain(&self.memory)
            .map(|p| p.display().to_string())
            .collect()
    }

    /// Back from [`StepNest::dirs`]: which is which by the controller's files.
    pub fn from_dirs(dirs: &[String]) -> StepNest {
        let mut nest = StepNest {
            cpuset: None,
            memory: None,
        };
        for d in dirs {
            let p = PathBuf::from(d);
            let under = |ctrl: &str| {
                p.parent()
                    .is_some_and(|s| s.join(format!("{ctrl}.{}", file_of(ctrl))).exists())
            };
            if under("cpuset") {
                nest.cpuset = Some(p);
            } else if under("memory") {
                nest.memory = Some(p);
            }
        }
        nest
    }

    /// Make the directories (those there already are kept): the enclave's
    /// `cores` in the cpuset, `limit_bytes` in memory. Nothing is left
    /// behind on failure.
    pub fn create(&self, cores: &[CoreId], limit_bytes: u64) -> Result<()> {
        let ops = DirOps::KERNEL;
        let result = (|| {
            if let Some(cpuset) = &self.cpuset {
                if ops.mkdir(cpuset)? {
                    let step = parent(cpuset);
                    write(&cpuset.join("cpuset.cpus"), &format_cpu_list(cores)).map_err(|e| {
                        outside_step(
                            e,
                            cores,
                            &read(&step.join("cpuset.cpus")).unwrap_or_default(),
                        )
                    })?;
                    write(
                        &cpuset.join("cpuset.mems"),
                        &read(&step.join("cpuset.mems"))?,
                    )?;
                }
            }
            if let Some(memory) = &self.memory {
                if ops.mkdir(memory)? {
                    write(
                        &memory.join("memory.limit_in_bytes"),
                        &limit_bytes.to_string(),
                    )?;
                }
            }
            Ok(())
        })();
        if result.is_err() {
            let _ = self.release();
        }
        result
    }

    /// Move process `pid` into the directories.
    pub fn add_pid(&self, pid: u32) -> Result<()> {
        for dir in self.cpuset.iter().chain(&self.memory) {
            write(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// Processes still in the directories.
    pub fn procs(&self) -> Vec<u32> {
        let mut out: Vec<u32> = self
            .cpuset
            .iter()
            .chain(&self.memory)
            .flat_map(|d| procs(d))
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// SIGKILL everything in the directories and wait (at most `timeout`)
    /// until they are empty: the enclave is destroyed while its step runs.
    pub fn kill_all(&self, timeout: Duration) -> Result<()> {
        match self.cpuset.as_ref().or(self.memory.as_ref()) {
            Some(dir) if dir.exists() => wait_gone(dir, timeout, || self.procs(), sigkill),
            _ => Ok(()),
        }
    }

    /// Remove the directories, moving what is still in them up into the
    /// step's cgroup first (Slurm kills the step's processes itself; they
    /// must not keep Slurm from removing its step). Gone already is fine.
    pub fn release(&self) -> Result<()> {
        for dir in self.cpuset.iter().chain(&self.memory) {
            if !dir.exists() {
                continue;
            }
            move_all(dir, parent(dir));
            DirOps::KERNEL.rmdir(dir)?;
        }
        Ok(())
    }
}

/// The step directory above a nest directory.
fn parent(dir: &Path) -> &Path {
    dir.parent().unwrap_or(dir)
}

/// A control file every cgroup of `ctrl` has (to tell the hierarchies apart).
fn file_of(ctrl: &str) -> &'static str {
    match ctrl {
        "cpuset" => "cpus",
        _ => "limit_in_bytes",
    }
}

/// The mount point of the v1 hierarchy with controller `ctrl`.
fn v1_mount(mountinfo: &str, ctrl: &str) -> Option<PathBuf> {
    mounts(mountinfo).find_map(|(mount_point, fstype, opts)| {
        (fstype == "cgroup" && opts.split(',').any(|o| o == ctrl))
            .then(|| PathBuf::from(mount_point))
    })
}

/// The kernel's EINVAL for a cpuset outside its parent's, said in Slurm's terms.
fn outside_step(e: CgroupError, cores: &[CoreId], step_cpus: &str) -> CgroupError {
    match e {
        CgroupError::Write { path, data, source } if source.raw_os_error() == Some(libc::EINVAL) => {
            CgroupError::Write {
                path,
                data,
                source: std::io::Error::other(format!(
                    "the enclave's cores {} are not all in the Slurm step's cpuset ({step_cpus}): give leviathan --slurm-cgroups the node's cores Slurm allocates",
                    format_cpu_list(cores)
                )),
            }
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
30 23 0:26 / /sys/fs/cgroup/cpuset rw,nosuid shared:9 - cgroup cgroup rw,cpuset
31 23 0:27 / /sys/fs/cgroup/memory rw,nosuid shared:10 - cgroup cgroup rw,memory
32 23 0:28 / /sys/fs/cgroup/freezer rw,nosuid shared:11 - cgroup cgroup rw,freezer
";

    #[test]
    fn nests_under_the_step_in_each_confined_hierarchy() {
        let cgroup = "\
12:freezer:/slurm_n0/uid_0/job_7/step_0
5:memory:/slurm_n0/uid_0/job_7/step_0/task_1
3:cpuset:/slurm_n0/uid_0/job_7/step_0/task_1
0::/
";
        let n = StepNest::find(MOUNTINFO, cgroup, 7, "0", "slurm-7.0").unwrap();
        assert_eq!(
            n.cpuset.as_deref(),
            Some(Path::new(
                "/sys/fs/cgroup/cpuset/slurm_n0/uid_0/job_7/step_0/hobbes-slurm-7.0"
            ))
        );
        assert_eq!(
            n.memory.as_deref(),
            Some(Path::new(
                "/sys/fs/cgroup/memory/slurm_n0/uid_0/job_7/step_0/hobbes-slurm-7.0"
            ))
        );
    }

    #[test]
    fn only_where_slurm_confines_and_only_this_step() {
        let cores_only = "5:memory:/hobbes/host\n3:cpuset:/slurm/uid_5/job_7/step_1/task_0\n";
        let n = StepNest::find(MOUNTINFO, cores_only, 7, "1", "e").unwrap();
        assert!(n.cpuset.is_some() && n.memory.is_none());
        // step_10 is not step_1; job_70 is not job_7.
        assert!(StepNest::find(
            MOUNTINFO,
            "3:cpuset:/slurm/uid_5/job_7/step_10/task_0\n",
            7,
            "1",
            "e"
        )
        .is_none());
        assert!(StepNest::find(
            MOUNTINFO,
            "3:cpuset:/slurm/uid_5/job_70/step_1/task_0\n",
            7,
            "1",
            "e"
        )
        .is_none());
        assert!(StepNest::find(MOUNTINFO, "3:cpuset:/hobbes/host\n", 7, "1", "e").is_none());
        // A batch step's id is a word.
        assert!(StepNest::find(
            MOUNTINFO,
            "3:cpuset:/slurm/uid_5/job_7/step_batch/task_0\n",
            7,
            "batch",
            "e"
        )
        .is_some());
    }

    #[test]
    fn dirs_round_trip_by_the_controllers_files() {
        let tmp = tempfile::tempdir().unwrap();
        let cpu_step = tmp.path().join("cpuset/step_0");
        let mem_step = tmp.path().join("memory/step_0");
        fs::create_dir_all(&cpu_step).unwrap();
        fs::create_dir_all(&mem_step).unwrap();
        fs::write(cpu_step.join("cpuset.cpus"), "0-1").unwrap();
        fs::write(mem_step.join("memory.limit_in_bytes"), "1").unwrap();
        let n = StepNest {
            cpuset: Some(cpu_step.join("hobbes-e")),
            memory: Some(mem_step.join("hobbes-e")),
        };
        assert_eq!(StepNest::from_dirs(&n.dirs()), n);
    }
}
