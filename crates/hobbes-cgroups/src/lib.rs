#![deny(missing_docs)]

//! Enclave cgroups on cgroup v1 (legacy/hybrid) and v2 (unified), shared by
//! the enclave kinds that confine host threads with them (`kind-native`'s
//! apps, `kind-lwk`'s vCPU threads). It grew in `kind-native` and moved here
//! when a second kind needed it; no kind's internals are in it.
//!
//! One trait for the node ([`CgroupManager`]: parents, host confinement,
//! finding enclave cgroups) and one for an enclave ([`EnclaveCgroup`]), each
//! with a v1 ([`v1`]) and a v2 ([`v2`]) implementation built from explicit
//! root paths, and [`Cgroups::detect`] that picks one from
//! /proc/self/mountinfo. Shape after youki's libcgroups; errors carry the
//! path and the data that failed.
//!
//! Every enclave has two kinds of member: its control process, which is on the
//! enclave's cores but outside its memory limit (an enclave at its limit must
//! not starve its own heartbeats, as Slurm keeps slurmstepd out of the job's
//! limit), and its apps, on the same cores and under the limit. The control
//! process puts each app into [`EnclaveCgroup::app_cgroup`] between fork and
//! exec. Layouts:
//!
//! v1 (`<cpuset>` and `<memory>` are the controllers' mounts plus the daemon's
//! own cgroup in each, so a delegated subtree works too):
//!
//! ```text
//! <cpuset>/hobbes/            cpu_exclusive, all cpus: parent of everything we make
//! <cpuset>/hobbes/host/       the host's tasks, on the base's cores minus those
//!                             enclaves may take (the host's; with a managed
//!                             subset, the unmanaged cores too: [`host_cpus`])
//! <cpuset>/hobbes/enclave-N/  one per enclave (cpu_exclusive unless shared): control + apps
//! <memory>/hobbes/            control processes (no limit of ours)
//! <memory>/hobbes/enclave-N/  memory.limit_in_bytes: apps
//! ```
//!
//! v2 (`<root>` = the unified mount plus the daemon's cgroup; a cgroup with
//! controllers enabled for its children holds no processes itself):
//!
//! ```text
//! <root>/hobbes/                    partition root owning the managed cores the host
//!                                   does not keep: the kernel takes them from the
//!                                   host's tasks itself, which keep the rest (with a
//!                                   managed subset, the unmanaged cores too); no
//!                                   partition when no core is left to enclaves
//! <root>/hobbes/enclave-N/          exclusive enclaves (partition), cpus, mems, +memory
//! <root>/hobbes/enclave-N/control/  the control process (no limit)
//! <root>/hobbes/enclave-N/apps/     memory.max: apps
//! <root>/hobbes-shared/enclave-N/{control,apps}/  shared enclaves (member, host cores)
//! ```
//!
//! `enclave` is the prefix of the native kind's cgroups; another kind picks
//! its own ([`Cgroups::detect_with_prefix`]: `lwk-N` for LWK enclaves), so
//! each kind finds only its own cgroups as leftovers, and two kinds never
//! claim one directory. The parents and the host's confinement are the
//! node's, the same for every prefix: each kind's `setup` makes them if they
//! are missing (idempotent), so no kind depends on another being registered.
//!
//! Unit tests run both managers against temporary directories laid out like
//! cgroupfs ([`DirOps`] is the one seam: the kernel fills a new cgroup
//! directory with its files, a plain filesystem does not).

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hobbes_kind::{DriverResult, Leftover};
use hobbes_proto::model::{CgroupMode, CoreId, EnclaveId};

pub mod step_nest;
pub mod v1;
pub mod v2;

/// The prefix of the native kind's enclave cgroups (`enclave-N`), the default.
pub const ENCLAVE_PREFIX: &str = "enclave";

#[cfg(test)]
mod fixture;

/// A cgroup operation that failed, with the path and data involved.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// Writing a control file failed.
    #[error("failed to write {data:?} to {path}: {source}")]
    Write {
        /// The control file.
        path: PathBuf,
        /// What was written.
        data: String,
        /// Why it failed.
        source: io::Error,
    },
    /// A filesystem operation (`what`: create, remove, read) failed.
    #[error("failed to {what} {path}: {source}")]
    Fs {
        /// The operation.
        what: &'static str,
        /// The cgroup directory or file.
        path: PathBuf,
        /// Why it failed.
        source: io::Error,
    },
    /// Processes survived a kill.
    #[error("{path} still has processes {pids:?} after {waited:?}")]
    Busy {
        /// The cgroup.
        path: PathBuf,
        /// The processes still in it.
        pids: Vec<u32>,
        /// How long we waited for it to empty.
        waited: Duration,
    },
    /// This node's cgroups cannot do what was asked.
    #[error("{0}")]
    Unsupported(String),
}

/// The result of a cgroup operation.
pub type Result<T> = std::result::Result<T, CgroupError>;

/// The node's cgroups: our parents, the host's confinement, enclave cgroups.
pub trait CgroupManager: fmt::Debug + Send + Sync {
    /// The cgroup version in use (shown in the NIS header).
    fn mode(&self) -> CgroupMode;
    /// Create our parent cgroups and keep the host's tasks off the cores
    /// enclaves may take: `all_cores` are the cores the daemon manages (the
    /// whole node, or the subset of `leviathan --cpus`), `host_cores` those
    /// of them the host keeps, `mems` the NUMA nodes of the managed memory.
    /// The host keeps the daemon base cgroup's cores minus the assignable
    /// ones ([`host_cpus`]): exactly `host_cores` when the whole node is
    /// managed, the unmanaged cores too when a subset is. Returns how many
    /// tasks moved. Idempotent: a restarted daemon finds them in place.
    fn setup(
        &self,
        all_cores: &[CoreId],
        host_cores: &[CoreId],
        mems: &str,
        exclusive: bool,
    ) -> Result<usize>;
    /// Undo [`CgroupManager::setup`]: give the host back all its cores. Leaves
    /// the parents in place while enclave cgroups still exist.
    fn teardown(&self) -> Result<()>;
    /// The cgroups of enclave `id` (whether or not they exist).
    fn enclave(&self, id: EnclaveId, shared: bool) -> Box<dyn EnclaveCgroup>;
    /// Every enclave cgroup on the node, whichever daemon made it: (id, shared, cgroup).
    fn existing_enclaves(&self) -> Vec<(EnclaveId, bool, Box<dyn EnclaveCgroup>)>;
}

/// One enclave's cgroups.
pub trait EnclaveCgroup: fmt::Debug + Send + Sync {
    /// The directory that names the enclave's cgroups in messages (its cpuset).
    fn path(&self) -> &Path;
    /// Do its cgroups exist?
    fn exists(&self) -> bool;
    /// Create with its cores, memory nodes and limit; nothing is left behind
    /// on failure.
    fn create(&self, cores: &[CoreId], mems: &str, limit_bytes: u64) -> Result<()>;
    /// Put a process on the enclave's cores and under its memory limit (an app).
    fn add_pid(&self, pid: u32) -> Result<()>;
    /// Put the enclave's control process on its cores, outside its memory limit.
    fn add_control_pid(&self, pid: u32) -> Result<()>;
    /// The cgroup whose `cgroup.procs` an app joins, from the control
    /// process's cgroups, to come under the memory limit.
    fn app_cgroup(&self) -> &Path;
    /// The cgroup whose `cgroup.procs` takes a process out of the memory
    /// limit again, as [`EnclaveCgroup::add_control_pid`] puts the control
    /// process (v1: the memory parent, which leaves the process's cpuset as
    /// it is; v2: `control`, on the enclave's cores). An agent whose memory
    /// must be charged to the enclave once (an LWK's guest RAM, populated at
    /// start: the charge stays) joins [`EnclaveCgroup::app_cgroup`], makes
    /// it, and moves here.
    fn control_cgroup(&self) -> &Path;
    /// The cgroup one thread can join alone (its `tasks` file takes a
    /// thread id) to run on the enclave's cores while the other threads of
    /// its process stay on the host's: v1, where each hierarchy places
    /// threads one by one. `None` on v2, where a process's threads share its
    /// cpuset (threaded cgroups could split them, but not across the
    /// partition that makes the enclave's cores exclusive).
    fn thread_cgroup(&self) -> Option<&Path>;
    /// Give it exactly these cores.
    fn set_cpus(&self, cores: &[CoreId]) -> Result<()>;
    /// Bind its memory to these NUMA nodes (`cpuset.mems` syntax).
    fn set_mems(&self, mems: &str) -> Result<()>;
    /// Set its apps' memory limit.
    fn set_memory_limit(&self, bytes: u64) -> Result<()>;
    /// Its apps' memory limit, if it has one.
    fn memory_limit(&self) -> Option<u64>;
    /// Processes on the enclave's cores (the control process and apps).
    fn procs(&self) -> Vec<u32>;
    /// Processes under the enclave's memory limit (apps).
    fn memory_procs(&self) -> Vec<u32>;
    /// Processes in any of the enclave's cgroups.
    fn all_procs(&self) -> Vec<u32>;
    /// SIGKILL everything in the enclave's cgroups and wait until they are empty.
    fn kill_all(&self, timeout: Duration) -> Result<()>;
    /// Remove the (empty) cgroups.
    fn remove(&self) -> Result<()>;
}

/// How cgroup directories are made and removed: the one thing cgroupfs does
/// differently from a plain filesystem (a new cgroup comes with its control
/// files, and goes with them). Production uses [`DirOps::KERNEL`]; unit tests
/// a fixture that writes the files the kernel would.
#[derive(Clone, Copy)]
pub struct DirOps {
    /// Make a cgroup directory.
    pub mkdir: fn(&Path) -> io::Result<()>,
    /// Remove an (empty) cgroup directory.
    pub rmdir: fn(&Path) -> io::Result<()>,
}

impl DirOps {
    /// The real cgroupfs.
    pub const KERNEL: DirOps = DirOps {
        mkdir: |p| fs::create_dir(p),
        rmdir: |p| fs::remove_dir(p),
    };

    /// Create `path`; `Ok(false)` when it was there already.
    fn mkdir(&self, path: &Path) -> Result<bool> {
        match (self.mkdir)(path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(source) => Err(CgroupError::Fs {
                what: "create",
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Remove `path` (fine when it is gone).
    ///
    /// A cgroup whose last tasks were just killed can still be busy for a
    /// moment: a task killed with SIGKILL stays listed in `cgroup.procs`
    /// until its exit gets that far, and frees its hold on the cgroup a
    /// little later still, so on a loaded node `rmdir` right after the kill
    /// may fail with EBUSY (seen with v1 memory cgroups, with and without a
    /// task still listed). While the cgroup has no child cgroups, that is
    /// retried for up to [`RMDIR_BUSY_WAIT`]; a task that does not go away
    /// (nobody killed it) makes it fail then.
    fn rmdir(&self, path: &Path) -> Result<()> {
        let start = Instant::now();
        loop {
            match (self.rmdir)(path) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e)
                    if e.raw_os_error() == Some(libc::EBUSY)
                        && subdirs(path).is_empty()
                        && start.elapsed() < RMDIR_BUSY_WAIT =>
                {
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(source) => {
                    return Err(CgroupError::Fs {
                        what: "remove",
                        path: path.to_path_buf(),
                        source,
                    })
                }
            }
        }
    }

    /// Remove `path` and the cgroups below it, deepest first.
    fn rmdir_tree(&self, path: &Path) -> Result<()> {
        for child in subdirs(path) {
            self.rmdir_tree(&child)?;
        }
        self.rmdir(path)
    }
}

impl fmt::Debug for DirOps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DirOps")
    }
}

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

fn subdirs(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

fn procs(dir: &Path) -> Vec<u32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// Processes of `dir` and every cgroup below it, sorted, without duplicates.
fn procs_tree(dirs: &[&Path]) -> Vec<u32> {
    let mut todo: Vec<PathBuf> = dirs.iter().map(|d| d.to_path_buf()).collect();
    let mut out = Vec::new();
    while let Some(dir) = todo.pop() {
        out.extend(procs(&dir));
        todo.extend(subdirs(&dir));
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// The cores the host's tasks keep: the daemon base cgroup's cores `base`
/// minus the cores enclaves may take (`all_cores`, the managed ones, minus
/// `host_cores`). With the whole node managed that is `host_cores`; with a
/// subset (`leviathan --cpus 4-15` in the root cgroup) the unmanaged cores
/// stay the host's too, so the node's other tasks are not squeezed onto the
/// subset's host cores. Never empty: were nothing left (a base cgroup with
/// none of the host's cores, a configuration the kernel refuses anyway),
/// `host_cores`.
pub fn host_cpus(base: &[CoreId], all_cores: &[CoreId], host_cores: &[CoreId]) -> Vec<CoreId> {
    let assignable = |c: &CoreId| all_cores.contains(c) && !host_cores.contains(c);
    let mut out: Vec<CoreId> = base.iter().copied().filter(|c| !assignable(c)).collect();
    if out.is_empty() {
        out = host_cores.to_vec();
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// The cores of a kernel CPU list (`cpuset.cpus`: "0-3,8"); what does not
/// parse is left out (the kernel writes nothing else).
fn parse_cpu_list(text: &str) -> Vec<CoreId> {
    let mut out = Vec::new();
    for part in text
        .trim()
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<CoreId>(), b.parse::<CoreId>()) {
                    out.extend(a..=b);
                }
            }
            None => out.extend(part.parse::<CoreId>().ok()),
        }
    }
    out
}

/// `cpuset.mems` for a set of NUMA nodes ("0" for none: every node has a 0).
pub fn mems_of(nodes: &[u32]) -> String {
    if nodes.is_empty() {
        "0".into()
    } else {
        nodes
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// The directory name of enclave `id`'s cgroups with the native kind's prefix.
pub fn enclave_dir_name(id: EnclaveId) -> String {
    dir_name(ENCLAVE_PREFIX, id)
}

/// The directory name of enclave `id`'s cgroups with `prefix` (`lwk-3`).
pub fn dir_name(prefix: &str, id: EnclaveId) -> String {
    format!("{prefix}-{id}")
}

/// Enclave ids of the `<prefix>-N` directories in `dir`.
fn enclave_ids_in(dir: &Path, prefix: &str) -> Vec<EnclaveId> {
    let mut ids: Vec<EnclaveId> = subdirs(dir)
        .iter()
        .filter_map(|p| {
            p.file_name()?
                .to_str()?
                .strip_prefix(prefix)?
                .strip_prefix('-')?
                .parse()
                .ok()
        })
        .collect();
    ids.sort_unstable();
    ids
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

/// Wait (bounded) until `left()` is empty; `kill` is applied to what is left
/// on every pass. `path` names the cgroup in the error.
fn wait_gone(
    path: &Path,
    timeout: Duration,
    left: impl Fn() -> Vec<u32>,
    kill: impl Fn(u32),
) -> Result<()> {
    let start = Instant::now();
    loop {
        let pids = left();
        if pids.is_empty() {
            return Ok(());
        }
        for pid in &pids {
            kill(*pid);
        }
        if start.elapsed() >= timeout {
            return Err(CgroupError::Busy {
                path: path.to_path_buf(),
                pids,
                waited: timeout,
            });
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// SIGKILL, as `kill_all` sends it when the kernel cannot do it for us.
fn sigkill(pid: u32) {
    let _ = hobbes_sys::process::kill(pid, libc::SIGKILL);
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
    parse_found(
        &fs::read_to_string("/proc/self/mountinfo").unwrap_or_default(),
        &fs::read_to_string("/proc/self/cgroup").unwrap_or_default(),
    )
}

/// The mounts in /proc/PID/mountinfo's text: (mount point, file system
/// type, super options), for each line of the form
/// `... mount-point ... - fstype source super-options`.
fn mounts(mountinfo: &str) -> impl Iterator<Item = (&str, &str, &str)> {
    mountinfo.lines().filter_map(|line| {
        let (pre, post) = line.split_once(" - ")?;
        let mut post = post.split(' ');
        Some((
            pre.split(' ').nth(4).unwrap_or(""),
            post.next().unwrap_or(""),
            post.nth(1).unwrap_or(""),
        ))
    })
}

/// The lines of /proc/PID/cgroup: (controllers, cgroup path); the
/// controllers are empty for the v2 hierarchy.
fn memberships(cgroup: &str) -> impl Iterator<Item = (&str, &str)> {
    cgroup.lines().map(|line| {
        let mut parts = line.splitn(3, ':');
        let _id = parts.next();
        (parts.next().unwrap_or(""), parts.next().unwrap_or("/"))
    })
}

/// [`Found`] from the text of /proc/self/mountinfo and /proc/self/cgroup.
fn parse_found(mountinfo: &str, cgroup: &str) -> Found {
    let mut f = Found::default();
    for (mount_point, fstype, opts) in mounts(mountinfo) {
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
    for (ctrls, path) in memberships(cgroup) {
        if ctrls.is_empty() {
            f.own_v2 = Some(path.to_string());
        } else if ctrls.split(',').any(|c| c == "cpuset") {
            f.own_v1_cpuset = Some(path.to_string());
        } else if ctrls.split(',').any(|c| c == "memory") {
            f.own_v1_memory = Some(path.to_string());
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

/// The manager for what was found: v1 when cpuset and memory are v1
/// controllers (legacy or hybrid), v2 when the unified hierarchy offers both,
/// else none.
fn manager_for(f: &Found, prefix: &'static str) -> Option<Arc<dyn CgroupManager>> {
    if let (Some(cpuset), Some(memory)) = (&f.v1_cpuset, &f.v1_memory) {
        return Some(Arc::new(
            v1::V1::new(
                base_of(cpuset, f.own_v1_cpuset.as_deref()),
                base_of(memory, f.own_v1_memory.as_deref()),
            )
            .with_prefix(prefix),
        ));
    }
    if let Some(v2) = &f.v2 {
        let controllers = fs::read_to_string(v2.join("cgroup.controllers")).unwrap_or_default();
        let has = |c: &str| controllers.split_whitespace().any(|x| x == c);
        if has("cpuset") && has("memory") {
            return Some(Arc::new(
                v2::V2::new(base_of(v2, f.own_v2.as_deref())).with_prefix(prefix),
            ));
        }
    }
    None
}

/// The cgroup system the daemon drives: a manager, or none (unprivileged:
/// CPU affinity and process groups only).
#[derive(Debug, Clone, Default)]
pub struct Cgroups(Option<Arc<dyn CgroupManager>>);

impl Cgroups {
    /// Find the cgroup layout of this node (none when not privileged), for
    /// enclave cgroups named `enclave-N` (the native kind's).
    pub fn detect(privileged: bool) -> Cgroups {
        Cgroups::detect_with_prefix(privileged, ENCLAVE_PREFIX)
    }

    /// As [`Cgroups::detect`], for enclave cgroups named `<prefix>-N`: a
    /// kind's own family beside the native kind's (same parents, same host
    /// confinement).
    pub fn detect_with_prefix(privileged: bool, prefix: &'static str) -> Cgroups {
        if !privileged {
            return Cgroups(None);
        }
        Cgroups(manager_for(&discover(), prefix))
    }

    /// Drive this manager (tests, or a layout chosen by hand).
    pub fn with(manager: Arc<dyn CgroupManager>) -> Cgroups {
        Cgroups(Some(manager))
    }

    /// The manager in use (none without cgroups).
    pub fn manager(&self) -> Option<&dyn CgroupManager> {
        self.0.as_deref()
    }

    /// The cgroup version in use, `None` without cgroups.
    pub fn mode(&self) -> CgroupMode {
        self.manager().map_or(CgroupMode::None, |m| m.mode())
    }

    /// See [`CgroupManager::setup`]; nothing to do without cgroups.
    pub fn setup(
        &self,
        all_cores: &[CoreId],
        host_cores: &[CoreId],
        mems: &str,
        exclusive: bool,
    ) -> Result<usize> {
        self.manager()
            .map_or(Ok(0), |m| m.setup(all_cores, host_cores, mems, exclusive))
    }

    /// See [`CgroupManager::teardown`].
    pub fn teardown(&self) -> Result<()> {
        self.manager().map_or(Ok(()), |m| m.teardown())
    }

    /// A kind's [`hobbes_kind::EnclaveDriver::setup`]: the node's parents
    /// and the host confined to its cores (shared by the kinds, so made by
    /// whichever sets up first); the host tasks moved, or the error for the
    /// operator.
    pub fn setup_node(&self, node: &hobbes_kind::NodeSetup) -> DriverResult<usize> {
        self.setup(
            &node.all_cores,
            &node.host_cores,
            &mems_of(&node.numa_nodes),
            !node.slurm_cgroups,
        )
        .map_err(|e| format!("cgroup setup: {e}"))
    }

    /// A kind's [`hobbes_kind::EnclaveDriver::teardown`]: the host's cpuset restored.
    pub fn teardown_node(&self) -> DriverResult<()> {
        self.teardown()
            .map_err(|e| format!("cannot restore the host's cpuset: {e}"))
    }

    /// The cgroups of enclave `id`, when there are cgroups.
    pub fn enclave(&self, id: EnclaveId, shared: bool) -> Option<Box<dyn EnclaveCgroup>> {
        self.manager().map(|m| m.enclave(id, shared))
    }

    /// See [`CgroupManager::existing_enclaves`].
    pub fn existing_enclaves(&self) -> Vec<(EnclaveId, bool, Box<dyn EnclaveCgroup>)> {
        self.manager()
            .map(|m| m.existing_enclaves())
            .unwrap_or_default()
    }

    /// `leviathan cleanup` of enclave `id`'s cgroups (shared or not): kill
    /// and remove them, but only when `node_is_ours` (with another daemon
    /// running, a cgroup of this name may be its own).
    pub fn clean_up(
        &self,
        id: EnclaveId,
        shared: bool,
        node_is_ours: bool,
    ) -> std::result::Result<(), String> {
        match self.enclave(id, shared) {
            Some(cg) if cg.exists() && node_is_ours => kill_and_remove(cg.as_ref()),
            _ => Ok(()),
        }
    }

    /// Every enclave cgroup of this kind on the node, as a kind reports its
    /// leftovers ([`hobbes_kind::EnclaveDriver::leftovers`]).
    pub fn leftovers(&self) -> Vec<Box<dyn Leftover>> {
        self.existing_enclaves()
            .into_iter()
            .map(|(id, _, cg)| Box::new(CgroupLeftover { id, cg }) as Box<dyn Leftover>)
            .collect()
    }
}

/// How long removing an empty cgroup retries while the kernel still finishes
/// the exit of its last tasks (`DirOps::rmdir`).
const RMDIR_BUSY_WAIT: Duration = Duration::from_secs(2);

/// How long [`kill_and_remove`] waits for an enclave's processes to die.
pub const KILL_TIMEOUT: Duration = Duration::from_secs(5);

/// Kill every process in `cg` (waiting [`KILL_TIMEOUT`] at most) and remove
/// it: how every kind takes an enclave's cgroups off the node.
pub fn kill_and_remove(cg: &dyn EnclaveCgroup) -> std::result::Result<(), String> {
    cg.kill_all(KILL_TIMEOUT).map_err(|e| e.to_string())?;
    cg.remove().map_err(|e| e.to_string())
}

/// An enclave's cgroup found on the node.
struct CgroupLeftover {
    id: EnclaveId,
    cg: Box<dyn EnclaveCgroup>,
}

impl Leftover for CgroupLeftover {
    fn enclave(&self) -> EnclaveId {
        self.id
    }
    fn noun(&self) -> &str {
        "cgroup"
    }
    fn location(&self) -> String {
        self.cg.path().display().to_string()
    }
    fn pids(&self) -> Vec<u32> {
        self.cg.all_procs()
    }
    fn remove(&self) -> DriverResult<()> {
        self.cg.remove().map_err(|e| e.to_string())
    }
    fn kill_and_remove(&self) -> DriverResult<()> {
        kill_and_remove(self.cg.as_ref())
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
    fn host_keeps_the_base_minus_the_assignable_cores() {
        let all: Vec<CoreId> = (0..16).collect();
        assert_eq!(
            host_cpus(&all, &all, &[0]),
            vec![0],
            "whole node: as before"
        );
        let subset: Vec<CoreId> = (4..16).collect();
        assert_eq!(host_cpus(&all, &subset, &[4]), vec![0, 1, 2, 3, 4]);
        assert_eq!(host_cpus(&[0], &[0], &[0]), vec![0], "a one-core node");
        assert_eq!(host_cpus(&[2, 3], &[2, 3], &[2]), vec![2]);
        assert_eq!(host_cpus(&[5], &[4, 5], &[4]), vec![4], "never empty");
        assert_eq!(parse_cpu_list("0-2,5\n"), vec![0, 1, 2, 5]);
        assert_eq!(parse_cpu_list(""), Vec::<CoreId>::new());
    }

    #[test]
    fn unprivileged_has_no_cgroups() {
        assert!(Cgroups::detect(false).manager().is_none());
        assert_eq!(Cgroups::detect(false).mode(), CgroupMode::None);
        assert!(Cgroups::detect(false).enclave(1, false).is_none());
        assert!(Cgroups::detect(false).existing_enclaves().is_empty());
    }

    const HYBRID_MOUNTS: &str = "\
25 30 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
33 25 0:28 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
35 25 0:30 / /sys/fs/cgroup/cpuset rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,cpuset
36 25 0:31 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,memory
37 25 0:32 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup rw,cpu,cpuacct
";

    #[test]
    fn hybrid_node_drives_v1_from_the_daemons_own_cgroups() {
        let cgroup =
            "12:memory:/job7\n5:cpuset:/job7/hobbes/host\n4:cpu,cpuacct:/\n0::/init.scope\n";
        let f = parse_found(HYBRID_MOUNTS, cgroup);
        assert_eq!(f.v1_cpuset, Some("/sys/fs/cgroup/cpuset".into()));
        assert_eq!(f.v1_memory, Some("/sys/fs/cgroup/memory".into()));
        assert_eq!(f.v2, Some("/sys/fs/cgroup/unified".into()));
        assert_eq!(f.own_v2.as_deref(), Some("/init.scope"));
        let m = manager_for(&f, ENCLAVE_PREFIX).expect("v1");
        assert_eq!(m.mode(), CgroupMode::Legacy);
        let e = m.enclave(3, false);
        assert_eq!(
            e.path(),
            Path::new("/sys/fs/cgroup/cpuset/job7/hobbes/enclave-3")
        );
        assert_eq!(
            e.app_cgroup(),
            Path::new("/sys/fs/cgroup/memory/job7/hobbes/enclave-3")
        );
        assert_eq!(
            e.control_cgroup(),
            Path::new("/sys/fs/cgroup/memory/job7/hobbes")
        );
        assert_eq!(
            e.thread_cgroup(),
            Some(Path::new("/sys/fs/cgroup/cpuset/job7/hobbes/enclave-3"))
        );
    }

    #[test]
    fn unified_node_drives_v2_when_it_offers_cpuset_and_memory() {
        let root = tempfile::tempdir().unwrap();
        let mounts = format!(
            "33 25 0:28 / {} rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n",
            root.path().display()
        );
        let f = parse_found(&mounts, "0::/daemon.service\n");
        fs::write(root.path().join("cgroup.controllers"), "cpu io memory pids").unwrap();
        assert!(
            manager_for(&f, ENCLAVE_PREFIX).is_none(),
            "no cpuset controller: no cgroups"
        );
        fs::write(
            root.path().join("cgroup.controllers"),
            "cpuset cpu io memory pids",
        )
        .unwrap();
        let m = manager_for(&f, "lwk").expect("v2");
        assert_eq!(m.mode(), CgroupMode::Unified);
        let e = m.enclave(4, true);
        assert_eq!(
            e.path(),
            root.path().join("daemon.service/hobbes-shared/lwk-4")
        );
        assert_eq!(
            e.app_cgroup(),
            root.path().join("daemon.service/hobbes-shared/lwk-4/apps")
        );
        assert_eq!(
            e.control_cgroup(),
            root.path()
                .join("daemon.service/hobbes-shared/lwk-4/control")
        );
        assert!(e.thread_cgroup().is_none());
    }
}
