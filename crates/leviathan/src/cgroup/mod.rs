//! Enclave cgroups on cgroup v1 (legacy/hybrid) and v2 (unified).
//!
//! Layout, v1 (`<cpuset>` and `<memory>` are the controllers' mounts plus the
//! daemon's own cgroup in each, so a delegated subtree works too):
//!
//! ```text
//! <cpuset>/hobbes/            cpu_exclusive, all cpus: parent of everything we make
//! <cpuset>/hobbes/host/       the host's tasks, confined to the host's cores
//! <cpuset>/hobbes/enclave-N/  one per enclave (cpu_exclusive unless shared)
//! <memory>/hobbes/enclave-N/  memory.limit_in_bytes
//! ```
//!
//! v2 (`<root>` = the unified mount plus the daemon's cgroup):
//!
//! ```text
//! <root>/hobbes/              partition root owning the managed cores: the
//!                             kernel takes them from the host's tasks itself
//! <root>/hobbes/enclave-N/    exclusive enclaves (partition root), memory.max
//! <root>/hobbes-shared/enclave-N/ shared enclaves (member, host cores)
//! ```
//!
//! Shape after youki's libcgroups: one detection function, one manager enum,
//! errors carrying the path and the data that failed.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hobbes_proto::model::{CgroupMode, CoreId, EnclaveId};

use crate::config::format_cpu_list;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("failed to write {data:?} to {path}: {source}")]
    Write {
        path: PathBuf,
        data: String,
        source: io::Error,
    },
    #[error("failed to {what} {path}: {source}")]
    Fs {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{path} still has processes {pids:?} after {waited:?}")]
    Busy {
        path: PathBuf,
        pids: Vec<u32>,
        waited: Duration,
    },
}

pub type Result<T> = std::result::Result<T, CgroupError>;

fn write(path: &Path, data: &str) -> Result<()> {
    fs::write(path, data).map_err(|source| CgroupError::Write {
        path: path.to_path_buf(),
        data: data.to_string(),
        source,
    })
}

fn read(path: &Path) -> Result<String> {
    fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|source| CgroupError::Fs {
            what: "read",
            path: path.to_path_buf(),
            source,
        })
}

fn mkdir(path: &Path) -> Result<bool> {
    match fs::create_dir(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(source) => Err(CgroupError::Fs {
            what: "create",
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn rmdir(path: &Path) -> Result<()> {
    match fs::remove_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(CgroupError::Fs {
            what: "remove",
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn procs(dir: &Path) -> Vec<u32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// The enclave directory name.
pub fn enclave_dir_name(id: EnclaveId) -> String {
    format!("enclave-{id}")
}

/// Mounts found in /proc/self/mountinfo and our own cgroup paths.
#[derive(Debug, Default)]
struct Found {
    v1_cpuset: Option<PathBuf>,
    v1_memory: Option<PathBuf>,
    v2: Option<PathBuf>,
    own_v1_cpuset: Option<String>,
    own_v1_memory: Option<String>,
    own_v2: Option<String>,
}

fn discover() -> Found {
    let mut f = Found::default();
    if let Ok(info) = fs::read_to_string("/proc/self/mountinfo") {
        for line in info.lines() {
            // ... mount-point ... - fstype source super-options
            let Some((pre, post)) = line.split_once(" - ") else {
                continue;
            };
            let mount_point = pre.split(' ').nth(4).unwrap_or("");
            let mut post = post.split(' ');
            let fstype = post.next().unwrap_or("");
            let opts = post.nth(1).unwrap_or("");
            match fstype {
                "cgroup" if opts.split(',').any(|o| o == "cpuset") => {
                    f.v1_cpuset = Some(mount_point.into())
                }
                "cgroup" if opts.split(',').any(|o| o == "memory") => {
                    f.v1_memory = Some(mount_point.into())
                }
                "cgroup2" => f.v2 = Some(mount_point.into()),
                _ => {}
            }
        }
    }
    if let Ok(cg) = fs::read_to_string("/proc/self/cgroup") {
        for line in cg.lines() {
            let mut parts = line.splitn(3, ':');
            let (_, ctrls, path) = (
                parts.next(),
                parts.next().unwrap_or(""),
                parts.next().unwrap_or("/"),
            );
            if ctrls.is_empty() {
                f.own_v2 = Some(path.to_string());
            } else if ctrls.split(',').any(|c| c == "cpuset") {
                f.own_v1_cpuset = Some(path.to_string());
            } else if ctrls.split(',').any(|c| c == "memory") {
                f.own_v1_memory = Some(path.to_string());
            }
        }
    }
    f
}

/// The daemon's own cgroup, minus anything of ours it was moved into
/// (after a restart the daemon itself sits in `hobbes/host`).
fn base_of(mount: &Path, own: Option<&str>) -> PathBuf {
    let own = own.unwrap_or("/");
    let own = match own.find("/hobbes/") {
        Some(i) => &own[..i],
        None if own.ends_with("/hobbes") => &own[..own.len() - "/hobbes".len()],
        None => own,
    };
    mount.join(own.trim_start_matches('/'))
}

/// The cgroup system the daemon drives.
#[derive(Debug, Clone)]
pub enum Cgroups {
    V1 {
        /// The daemon's own cpuset (whose tasks the host confinement moves).
        cpuset_parent: PathBuf,
        /// `<cpuset_parent>/hobbes`.
        cpuset: PathBuf,
        /// `<memory parent>/hobbes`.
        memory: PathBuf,
    },
    V2 {
        parent: PathBuf,
        /// `<parent>/hobbes`: exclusive enclaves.
        exclusive: PathBuf,
        /// `<parent>/hobbes-shared`: shared enclaves.
        shared: PathBuf,
    },
    /// Unprivileged: CPU affinity and process groups only.
    None,
}

impl Cgroups {
    /// Find the cgroup layout: v1 when cpuset and memory are v1 controllers
    /// (legacy or hybrid), v2 when the unified hierarchy offers both, else none.
    pub fn detect(privileged: bool) -> Cgroups {
        if !privileged {
            return Cgroups::None;
        }
        let f = discover();
        if let (Some(cpuset), Some(memory)) = (&f.v1_cpuset, &f.v1_memory) {
            let cpuset_parent = base_of(cpuset, f.own_v1_cpuset.as_deref());
            return Cgroups::V1 {
                cpuset: cpuset_parent.join("hobbes"),
                cpuset_parent,
                memory: base_of(memory, f.own_v1_memory.as_deref()).join("hobbes"),
            };
        }
        if let Some(v2) = &f.v2 {
            let controllers = fs::read_to_string(v2.join("cgroup.controllers")).unwrap_or_default();
            let has = |c: &str| controllers.split_whitespace().any(|x| x == c);
            if has("cpuset") && has("memory") {
                let parent = base_of(v2, f.own_v2.as_deref());
                return Cgroups::V2 {
                    exclusive: parent.join("hobbes"),
                    shared: parent.join("hobbes-shared"),
                    parent,
                };
            }
        }
        Cgroups::None
    }

    pub fn mode(&self) -> CgroupMode {
        match self {
            Cgroups::V1 { .. } => CgroupMode::Legacy,
            Cgroups::V2 { .. } => CgroupMode::Unified,
            Cgroups::None => CgroupMode::None,
        }
    }

    /// Create our parent cgroups and confine the host's tasks to `host_cores`.
    /// Idempotent: a restarted daemon finds them in place.
    pub fn setup(&self, all_cores: &[CoreId], host_cores: &[CoreId], mems: &str) -> Result<usize> {
        match self {
            Cgroups::V1 {
                cpuset_parent,
                cpuset,
                memory,
            } => {
                if mkdir(cpuset)? || read(&cpuset.join("cpuset.cpus"))?.is_empty() {
                    write(
                        &cpuset.join("cpuset.cpus"),
                        &read(&cpuset_parent.join("cpuset.cpus"))?,
                    )?;
                    write(
                        &cpuset.join("cpuset.mems"),
                        &read(&cpuset_parent.join("cpuset.mems"))?,
                    )?;
                }
                // Enclave cpusets are cpu_exclusive, which v1 allows only under an exclusive parent.
                if read(&cpuset.join("cpuset.cpu_exclusive"))? != "1" {
                    write(&cpuset.join("cpuset.cpu_exclusive"), "1")?;
                }
                let host = cpuset.join("host");
                mkdir(&host)?;
                write(&host.join("cpuset.cpus"), &format_cpu_list(host_cores))?;
                write(&host.join("cpuset.mems"), mems)?;
                mkdir(memory)?;
                Ok(move_all(cpuset_parent, &host))
            }
            Cgroups::V2 {
                parent,
                exclusive,
                shared,
            } => {
                let _ = write(&parent.join("cgroup.subtree_control"), "+cpuset +memory");
                for dir in [exclusive, shared] {
                    mkdir(dir)?;
                    let _ = write(&dir.join("cgroup.subtree_control"), "+cpuset +memory");
                }
                let managed: Vec<CoreId> = all_cores
                    .iter()
                    .copied()
                    .filter(|c| !host_cores.contains(c))
                    .collect();
                write(&shared.join("cpuset.cpus"), &format_cpu_list(host_cores))?;
                if !managed.is_empty() {
                    write(&exclusive.join("cpuset.cpus"), &format_cpu_list(&managed))?;
                    write(&exclusive.join("cpuset.mems"), mems)?;
                    // A partition root takes its cores away from every other cgroup.
                    write(&exclusive.join("cpuset.cpus.partition"), "root")?;
                }
                Ok(0)
            }
            Cgroups::None => Ok(0),
        }
    }

    /// Undo [`Cgroups::setup`]: give the host back all its cores. Leaves the
    /// parents in place while enclave cgroups still exist.
    pub fn teardown(&self) -> Result<()> {
        match self {
            Cgroups::V1 {
                cpuset_parent,
                cpuset,
                memory,
            } => {
                let host = cpuset.join("host");
                if host.exists() {
                    move_all(&host, cpuset_parent);
                    wait_empty(&host, Duration::from_secs(2))?;
                    rmdir(&host)?;
                }
                let _ = rmdir(cpuset);
                let _ = rmdir(memory);
                Ok(())
            }
            Cgroups::V2 {
                exclusive, shared, ..
            } => {
                if exclusive.exists() {
                    let _ = write(&exclusive.join("cpuset.cpus.partition"), "member");
                }
                let _ = rmdir(exclusive);
                let _ = rmdir(shared);
                Ok(())
            }
            Cgroups::None => Ok(()),
        }
    }

    /// The cgroups of enclave `id` (whether or not they exist).
    pub fn enclave(&self, id: EnclaveId, shared: bool) -> Option<EnclaveCgroup> {
        let name = enclave_dir_name(id);
        match self {
            Cgroups::V1 { cpuset, memory, .. } => Some(EnclaveCgroup {
                v2: false,
                cpuset: cpuset.join(&name),
                memory: memory.join(&name),
                exclusive: !shared,
            }),
            Cgroups::V2 {
                exclusive,
                shared: sh,
                ..
            } => {
                let dir = if shared {
                    sh.join(&name)
                } else {
                    exclusive.join(&name)
                };
                Some(EnclaveCgroup {
                    v2: true,
                    cpuset: dir.clone(),
                    memory: dir,
                    exclusive: !shared,
                })
            }
            Cgroups::None => None,
        }
    }
}

/// Enclave ids of the `enclave-N` directories in `dir`.
fn enclave_ids_in(dir: &Path) -> Vec<EnclaveId> {
    let mut ids: Vec<EnclaveId> = fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.path().is_dir())
                .filter_map(|e| {
                    e.file_name()
                        .to_str()?
                        .strip_prefix("enclave-")?
                        .parse()
                        .ok()
                })
                .collect()
        })
        .unwrap_or_default();
    ids.sort_unstable();
    ids
}

impl Cgroups {
    /// Every enclave cgroup on the node, whichever daemon made it: (id, shared, cgroup).
    pub fn existing_enclaves(&self) -> Vec<(EnclaveId, bool, EnclaveCgroup)> {
        match self {
            Cgroups::V1 { cpuset, memory, .. } => {
                let mut ids = enclave_ids_in(cpuset);
                ids.extend(enclave_ids_in(memory));
                ids.sort_unstable();
                ids.dedup();
                ids.into_iter()
                    .map(|id| {
                        let name = enclave_dir_name(id);
                        let exclusive = read(&cpuset.join(&name).join("cpuset.cpu_exclusive"))
                            .is_ok_and(|v| v == "1");
                        let cg = EnclaveCgroup {
                            v2: false,
                            cpuset: cpuset.join(&name),
                            memory: memory.join(&name),
                            exclusive,
                        };
                        (id, !exclusive, cg)
                    })
                    .collect()
            }
            Cgroups::V2 {
                exclusive, shared, ..
            } => {
                let mut out = Vec::new();
                for (dir, is_shared) in [(exclusive, false), (shared, true)] {
                    for id in enclave_ids_in(dir) {
                        let path = dir.join(enclave_dir_name(id));
                        out.push((
                            id,
                            is_shared,
                            EnclaveCgroup {
                                v2: true,
                                cpuset: path.clone(),
                                memory: path,
                                exclusive: !is_shared,
                            },
                        ));
                    }
                }
                out
            }
            Cgroups::None => Vec::new(),
        }
    }
}

/// Move every task of `from` into `to`; returns how many moved. Kernel
/// threads bound to a CPU refuse (EINVAL) and stay; tasks forked while we move
/// are caught by the next pass.
fn move_all(from: &Path, to: &Path) -> usize {
    let mut moved = 0;
    for _pass in 0..10 {
        let mut this_pass = 0;
        for pid in procs(from) {
            if fs::write(to.join("cgroup.procs"), pid.to_string()).is_ok() {
                this_pass += 1;
            }
        }
        moved += this_pass;
        if this_pass == 0 {
            break;
        }
    }
    moved
}

/// Wait (bounded) until a cgroup has no processes.
fn wait_empty(dir: &Path, timeout: Duration) -> Result<()> {
    let start = Instant::now();
    loop {
        let left = procs(dir);
        if left.is_empty() {
            return Ok(());
        }
        if start.elapsed() >= timeout {
            return Err(CgroupError::Busy {
                path: dir.to_path_buf(),
                pids: left,
                waited: timeout,
            });
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// One enclave's cgroups.
#[derive(Debug, Clone)]
pub struct EnclaveCgroup {
    v2: bool,
    pub cpuset: PathBuf,
    pub memory: PathBuf,
    exclusive: bool,
}

impl EnclaveCgroup {
    pub fn exists(&self) -> bool {
        self.cpuset.exists() || self.memory.exists()
    }

    /// Create with its cores, memory nodes and limit.
    pub fn create(&self, cores: &[CoreId], mems: &str, limit_bytes: u64) -> Result<()> {
        mkdir(&self.cpuset)?;
        let result = (|| {
            write(&self.cpuset.join("cpuset.cpus"), &format_cpu_list(cores))?;
            write(&self.cpuset.join("cpuset.mems"), mems)?;
            if self.v2 {
                if self.exclusive {
                    write(&self.cpuset.join("cpuset.cpus.partition"), "isolated")
                        .or_else(|_| write(&self.cpuset.join("cpuset.cpus.partition"), "root"))?;
                }
            } else {
                if self.exclusive {
                    write(&self.cpuset.join("cpuset.cpu_exclusive"), "1")?;
                }
                mkdir(&self.memory)?;
            }
            self.set_memory_limit(limit_bytes)
        })();
        if result.is_err() {
            let _ = self.remove();
        }
        result
    }

    pub fn add_pid(&self, pid: u32) -> Result<()> {
        write(&self.cpuset.join("cgroup.procs"), &pid.to_string())?;
        if !self.v2 {
            write(&self.memory.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    pub fn set_cpus(&self, cores: &[CoreId]) -> Result<()> {
        write(&self.cpuset.join("cpuset.cpus"), &format_cpu_list(cores))
    }

    pub fn set_mems(&self, mems: &str) -> Result<()> {
        write(&self.cpuset.join("cpuset.mems"), mems)
    }

    pub fn set_memory_limit(&self, bytes: u64) -> Result<()> {
        if self.v2 {
            write(&self.memory.join("memory.max"), &bytes.to_string())
        } else {
            write(
                &self.memory.join("memory.limit_in_bytes"),
                &bytes.to_string(),
            )
        }
    }

    pub fn memory_limit(&self) -> Option<u64> {
        let file = if self.v2 {
            "memory.max"
        } else {
            "memory.limit_in_bytes"
        };
        read(&self.memory.join(file)).ok()?.parse().ok()
    }

    pub fn procs(&self) -> Vec<u32> {
        procs(&self.cpuset)
    }

    /// Processes in any of the enclave's cgroups (v1 has two).
    pub fn all_procs(&self) -> Vec<u32> {
        let mut p = procs(&self.cpuset);
        if !self.v2 {
            p.extend(procs(&self.memory));
        }
        p.sort_unstable();
        p.dedup();
        p
    }

    /// SIGKILL everything in the enclave's cgroups and wait until they are empty.
    pub fn kill_all(&self, timeout: Duration) -> Result<()> {
        if !self.exists() {
            return Ok(());
        }
        if self.v2 && write(&self.cpuset.join("cgroup.kill"), "1").is_ok() {
            return wait_empty(&self.cpuset, timeout);
        }
        let start = Instant::now();
        loop {
            let left = self.all_procs();
            if left.is_empty() {
                return Ok(());
            }
            for pid in &left {
                let _ = crate::sys::kill(*pid, libc::SIGKILL);
            }
            if start.elapsed() >= timeout {
                return Err(CgroupError::Busy {
                    path: self.cpuset.clone(),
                    pids: left,
                    waited: timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Remove the (empty) cgroups.
    pub fn remove(&self) -> Result<()> {
        rmdir(&self.cpuset)?;
        if !self.v2 {
            rmdir(&self.memory)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_strips_our_own_subtree() {
        let m = Path::new("/sys/fs/cgroup/cpuset");
        assert_eq!(
            base_of(m, Some("/")),
            PathBuf::from("/sys/fs/cgroup/cpuset/")
        );
        assert_eq!(
            base_of(m, Some("/hobbes/host")),
            PathBuf::from("/sys/fs/cgroup/cpuset/")
        );
        assert_eq!(
            base_of(m, Some("/job1/hobbes/host")),
            PathBuf::from("/sys/fs/cgroup/cpuset/job1")
        );
        assert_eq!(
            base_of(m, Some("/job1")),
            PathBuf::from("/sys/fs/cgroup/cpuset/job1")
        );
    }

    #[test]
    fn unprivileged_has_no_cgroups() {
        assert!(matches!(Cgroups::detect(false), Cgroups::None));
        assert_eq!(Cgroups::detect(false).mode(), CgroupMode::None);
    }
}
