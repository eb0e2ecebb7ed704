#![deny(missing_docs)]

//! The `lwk` enclave kind: a lightweight kernel on KVM (the Kitten analog).
//!
//! An LWK enclave is one VM made by `lwk-vmm` in one host process, the
//! enclave's *monitor* (`leviathan lwk-monitor`, [`monitor::run`]), which is
//! also its control agent: it speaks the daemon's control protocol through
//! `hobbes-agent`, as the native kind's control process does, and runs apps
//! as guest programs instead of host processes.
//!
//! Isolation, privileged (see the crate's README.md):
//! * cores: the enclave's cores are exclusive (a `cpu_exclusive` cpuset
//!   `lwk-N` beside the native kind's `enclave-N`, under the same parents
//!   that confine the host's tasks, from `hobbes-cgroups`). Only the vCPU
//!   threads run there: on cgroup v1 the monitor puts one thread of its own
//!   into that cpuset (its `tasks` file) and starts every app from it, so
//!   every vCPU thread is born there, while the monitor's other threads (the
//!   daemon link, output forwarding, the system-call proxy) stay on the
//!   host's cores. cgroup v2 cannot split a process's threads across the
//!   partition that makes the cores exclusive: there the whole monitor runs
//!   on the enclave's cores and system calls exit to their vCPU's thread (no
//!   polling proxy), and the isolation record says so.
//! * memory: the monitor joins the enclave's memory cgroup while `lwk-vmm`
//!   makes and populates guest RAM, so the RAM is charged to the enclave's
//!   limit (the charge stays with the pages), then leaves it, so its own
//!   allocations never compete with the guest's. Guest RAM is the enclave's
//!   memory less a reserve ([`guest_ram_bytes`]) for what else the kernel
//!   charges while it is made.
//! * files: the monitor runs in a mount namespace of its own with the
//!   enclave's NIS replica bound over the primary's path, so forwarded file
//!   calls see the enclave's view.
//!
//! Unprivileged (no cgroups, no namespaces): the vCPU threads are pinned to
//! the enclave's cores by affinity only, which the record says.
//!
//! An LWK's cores and memory are fixed while it runs:
//! [`EnclaveDriver::set_cpus`] and [`EnclaveDriver::set_memory`] refuse.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use hobbes_cgroups::{mems_of, Cgroups, EnclaveCgroup};
use hobbes_kind::monitor::{kill_monitor, monitor_env, wait_ready};
use hobbes_kind::{
    format_cpu_list, DriverResult, EnclaveDriver, Leftover, NodeSetup, StartContext, Started,
};
use hobbes_proto::model::{
    CgroupMode, ControlEndpoint, CoreId, EnclaveKind, EnclaveRecord, IsolationRecord,
    KindIsolation, LwkIsolation, NisHeader,
};
use hobbes_sys::process as proc_sys;

pub mod monitor;
mod vmm;

/// The monitor, as messages name it.
const MONITOR: &str = "LWK monitor";

/// Prefix of an LWK enclave's cgroups: `lwk-N` (the native kind's are `enclave-N`).
pub const CGROUP_PREFIX: &str = "lwk";

/// How long a new monitor may take to make its VM (guest RAM is populated
/// whole at start: about a second per GiB here) before the start fails.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Guest RAM is the enclave's memory less this share (1/64, at least 32
/// MiB): the enclave's memory limit also holds what the kernel charges while
/// the monitor makes the VM (its own pages until it leaves the limit, KVM's
/// page tables), and populating guest RAM past the limit would have the OOM
/// killer end the enclave.
pub const RESERVE_MIN: u64 = 32 << 20;

/// The smallest guest RAM worth starting (the static binary, its stack and heap).
pub const GUEST_MIN: u64 = 16 << 20;

const TWO_MIB: u64 = 2 << 20;

/// Guest RAM for an enclave of `mem_bytes`: less the reserve (see
/// [`RESERVE_MIN`]), rounded down to 2 MiB pages.
pub fn guest_ram_bytes(mem_bytes: u64) -> DriverResult<u64> {
    let reserve = (mem_bytes / 64).max(RESERVE_MIN);
    let guest = mem_bytes.saturating_sub(reserve) & !(TWO_MIB - 1);
    if guest < GUEST_MIN {
        return Err(format!(
            "an lwk enclave needs more than {} MiB of memory (it has {} MiB; {} MiB of it is kept for the VM's own use)",
            (GUEST_MIN + RESERVE_MIN) >> 20,
            mem_bytes >> 20,
            reserve >> 20
        ));
    }
    Ok(guest)
}

/// The LWK kind's driver.
pub struct LwkKind {
    /// The node's cgroups, with LWK enclaves named `lwk-N` (none when unprivileged).
    cgroups: Cgroups,
    /// The `leviathan` executable, which doubles as the monitor.
    exe: PathBuf,
    privileged: bool,
    /// The host's cores, where the system-call proxy runs (from `setup`).
    host_cores: Mutex<Vec<CoreId>>,
    /// Where the monitor finds KVM (`/dev/kvm`; tests may point elsewhere).
    kvm: PathBuf,
}

impl LwkKind {
    /// The LWK kind of a daemon: cgroups when `privileged` (found in
    /// /proc/self/mountinfo), CPU affinity only otherwise.
    pub fn new(privileged: bool, exe: PathBuf) -> Self {
        LwkKind {
            cgroups: Cgroups::detect_with_prefix(privileged, CGROUP_PREFIX),
            exe,
            privileged,
            host_cores: Mutex::new(Vec::new()),
            kvm: PathBuf::from("/dev/kvm"),
        }
    }

    /// The monitor's command line (after the executable).
    fn monitor_args(&self, rec: &EnclaveRecord, ctx: &StartContext, plan: &Plan) -> Vec<String> {
        let mut argv = vec![
            "lwk-monitor".to_string(),
            "--enclave".into(),
            rec.id.to_string(),
            "--daemon-socket".into(),
            ctx.daemon_socket.display().to_string(),
            "--enclave-socket".into(),
            control_socket(ctx).display().to_string(),
            "--owner-uid".into(),
            rec.owner_uid.to_string(),
            "--owner-gid".into(),
            rec.owner_gid.to_string(),
            "--cores".into(),
            format_cpu_list(&ctx.cores),
            "--guest-mem-bytes".into(),
            plan.guest_bytes.to_string(),
        ];
        if !ctx.numa_nodes.is_empty() {
            argv.push("--numa-nodes".into());
            argv.push(format_cpu_list(&ctx.numa_nodes));
        }
        if let Some(dir) = &ctx.memory_dir {
            argv.push("--memory-dir".into());
            argv.push(dir.display().to_string());
        }
        if !plan.proxy_cores.is_empty() {
            argv.push("--proxy-cores".into());
            argv.push(format_cpu_list(&plan.proxy_cores));
        }
        if self.privileged {
            argv.push("--namespaces".into());
            argv.push("--nis-replica".into());
            argv.push(ctx.nis_replica.display().to_string());
            argv.push("--nis-mount".into());
            argv.push(ctx.nis_mount.display().to_string());
        }
        for (flag, path) in [
            ("--memory-cgroup", &plan.memory_cgroup),
            ("--control-cgroup", &plan.control_cgroup),
            ("--vcpu-cgroup", &plan.vcpu_cgroup),
        ] {
            if let Some(path) = path {
                argv.push(flag.into());
                argv.push(path.display().to_string());
            }
        }
        argv
    }

    /// Where the monitor's parts go, from the enclave's cgroups (if any).
    fn plan(&self, cg: Option<&dyn EnclaveCgroup>, guest_bytes: u64) -> Plan {
        let host_cores = self
            .host_cores
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some(cg) = cg else {
            // Affinity only: the monitor may run anywhere, its proxy on the host's cores.
            return Plan {
                guest_bytes,
                proxy_cores: host_cores,
                memory_cgroup: None,
                control_cgroup: None,
                vcpu_cgroup: None,
            };
        };
        let vcpu_cgroup = cg.thread_cgroup().map(Path::to_path_buf);
        Plan {
            guest_bytes,
            // Without a thread cgroup the monitor's threads all run on the
            // enclave's cores: a polling proxy there would take them from
            // the vCPUs.
            proxy_cores: if vcpu_cgroup.is_some() {
                host_cores
            } else {
                Vec::new()
            },
            memory_cgroup: Some(cg.app_cgroup().to_path_buf()),
            control_cgroup: Some(cg.control_cgroup().to_path_buf()),
            vcpu_cgroup,
        }
    }

    fn describe(&self, plan: &Plan) -> IsolationRecord {
        isolation(self.privileged, self.cgroups.mode(), plan)
    }
}

/// Where a monitor puts its parts (see the crate's documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Plan {
    guest_bytes: u64,
    proxy_cores: Vec<CoreId>,
    memory_cgroup: Option<PathBuf>,
    control_cgroup: Option<PathBuf>,
    vcpu_cgroup: Option<PathBuf>,
}

/// The monitor's enclave socket: `control.sock` in the enclave's directory
/// (the same place and protocol as a native control process's).
fn control_socket(ctx: &StartContext) -> PathBuf {
    ctx.enclave_dir.join("control.sock")
}

/// Describe what isolation was really applied.
fn isolation(privileged: bool, mode: CgroupMode, plan: &Plan) -> IsolationRecord {
    let detail = LwkIsolation {
        version: LwkIsolation::VERSION,
        exclusive_cores: plan.memory_cgroup.is_some(),
        cpuset: plan.memory_cgroup.is_some(),
        memory_limit: plan.memory_cgroup.is_some(),
        mount_namespace: privileged,
        syscall_proxy: !plan.proxy_cores.is_empty(),
    };
    let summary = if !privileged {
        "degraded (no root): vCPU threads pinned by CPU affinity only; other tasks may share these cores; no memory limit; the host's mount view".to_string()
    } else if plan.memory_cgroup.is_none() {
        "degraded (no cgroups found): vCPU threads pinned by CPU affinity only; no memory limit; own mount namespace".to_string()
    } else if plan.vcpu_cgroup.is_some() {
        let version = if mode == CgroupMode::Legacy {
            "cgroup v1"
        } else {
            "cgroup"
        };
        format!("exclusive cores: vCPU threads in a cpu_exclusive cpuset ({version}), monitor and system-call proxy on the host's cores; guest RAM under the memory limit; own mount namespace")
    } else {
        "exclusive cores: a cpuset partition (cgroup v2) that the monitor's threads share, so no polling system-call proxy; guest RAM under the memory limit; own mount namespace".to_string()
    };
    IsolationRecord {
        summary,
        detail: KindIsolation::Lwk(detail),
    }
}

impl EnclaveDriver for LwkKind {
    fn kind(&self) -> EnclaveKind {
        EnclaveKind::Lwk
    }

    fn describe_node(&self, header: &mut NisHeader) {
        header.cgroup_mode = self.cgroups.mode();
    }

    fn setup(&self, node: &NodeSetup) -> DriverResult<()> {
        *self.host_cores.lock().unwrap_or_else(|p| p.into_inner()) = node.host_cores.clone();
        // The node's parents and the host's confinement, shared with the
        // native kind: made here too when missing, so the LWK kind does not
        // depend on another kind being registered.
        self.cgroups.setup_node(node)?;
        Ok(())
    }

    fn teardown(&self) -> DriverResult<()> {
        self.cgroups.teardown_node()
    }

    fn leftovers(&self) -> Vec<Box<dyn Leftover>> {
        self.cgroups.leftovers()
    }

    fn clean_up(&self, rec: &EnclaveRecord, node_is_ours: bool) -> DriverResult<()> {
        kill_monitor(rec, MONITOR)?;
        self.cgroups.clean_up(rec.id, false, node_is_ours)
    }

    fn start(
        &self,
        rec: &EnclaveRecord,
        ctx: &StartContext,
        record: &dyn Fn(&Started) -> DriverResult<()>,
    ) -> DriverResult<Started> {
        if rec.shared || rec.host_ipc {
            // The spec's validation refuses both; a record that has them is a bug.
            return Err("an lwk enclave is never shared and has no IPC namespace".into());
        }
        check_kvm(&self.kvm)?;
        let guest_bytes = guest_ram_bytes(ctx.mem_bytes)?;
        let cg = self.cgroups.enclave(rec.id, false);
        if let Some(cg) = &cg {
            cg.create(&ctx.cores, &mems_of(&ctx.numa_nodes), ctx.mem_bytes)
                .map_err(|e| e.to_string())?;
        }
        let undo = |child: Option<&mut Child>| {
            if let Some(child) = child {
                let _ = child.kill();
                let _ = child.wait();
            }
            if let Some(cg) = &cg {
                let _ = cg.kill_all(Duration::from_secs(5));
                let _ = cg.remove();
            }
        };
        let plan = self.plan(cg.as_deref(), guest_bytes);
        let mut cmd = Command::new(&self.exe);
        cmd.args(self.monitor_args(rec, ctx, &plan))
            .env_clear()
            .envs(monitor_env(ctx))
            .stdin(Stdio::null())
            // The monitor's first line says whether its VM is made (see `wait_ready`).
            .stdout(Stdio::piped())
            // Its own session: a signal to the daemon's process group does
            // not reach it, and it outlives the daemon.
            .process_group(0);
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                undo(None);
                return Err(format!("cannot start the LWK monitor: {e}"));
            }
        };
        let pid = child.id();
        let started = Started {
            control_pid: pid,
            control_start_time: proc_sys::proc_start_time(pid),
            isolation: self.describe(&plan),
            control: ControlEndpoint::unix_socket(control_socket(ctx).display().to_string()),
        };
        if let Err(e) = record(&started) {
            undo(Some(&mut child));
            return Err(e);
        }
        if let Err(e) = wait_ready(&mut child, READY_TIMEOUT, MONITOR) {
            undo(Some(&mut child));
            return Err(e);
        }
        // The daemon reaps it (`reap_children`); dropping the handle does not wait.
        Ok(started)
    }

    fn set_cpus(&self, rec: &EnclaveRecord, _cores: &[CoreId]) -> DriverResult<()> {
        Err(format!(
            "an LWK enclave's cores are fixed while it runs (its vCPUs are pinned to them at start); destroy enclave {} and create it with the cores you want",
            rec.name
        ))
    }

    fn set_memory(
        &self,
        rec: &EnclaveRecord,
        _numa_nodes: &[u32],
        _bytes: u64,
    ) -> DriverResult<()> {
        Err(format!(
            "an LWK enclave's memory is fixed while it runs (its guest RAM is made and populated at start); destroy enclave {} and create it with the memory you want",
            rec.name
        ))
    }

    fn stop(&self, rec: &EnclaveRecord) -> DriverResult<()> {
        kill_monitor(rec, MONITOR)?;
        if let Some(cg) = self.cgroups.enclave(rec.id, false) {
            hobbes_cgroups::kill_and_remove(cg.as_ref())?;
        }
        Ok(())
    }

    fn is_alive(&self, rec: &EnclaveRecord) -> bool {
        rec.control_pid
            .is_some_and(|p| proc_sys::same_process_alive(p, rec.control_start_time))
    }
}

/// Refuse early, with the fix, on a node where KVM cannot be used.
fn check_kvm(path: &Path) -> DriverResult<()> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map(drop)
        .map_err(|e| {
            format!(
                "this node cannot run lwk enclaves: cannot open {}: {e} (load kvm_intel or kvm_amd, and run leviathan as root or in the kvm group)",
                path.display()
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_ram_keeps_a_reserve_and_whole_large_pages() {
        assert_eq!(guest_ram_bytes(1024 << 20).unwrap(), 992 << 20);
        // 1/64 above 2 GiB, rounded down to 2 MiB.
        assert_eq!(guest_ram_bytes(4096 << 20).unwrap(), 4032 << 20);
        assert_eq!(guest_ram_bytes(130 << 20).unwrap(), 98 << 20);
        let err = guest_ram_bytes(40 << 20).unwrap_err();
        assert!(err.contains("needs more than 48 MiB"), "{err}");
    }

    fn ctx() -> StartContext {
        StartContext {
            memory_dir: None,
            daemon_socket: "/state/control.sock".into(),
            cores: vec![2, 3],
            blocks: vec![0],
            mem_bytes: 1024 << 20,
            numa_nodes: vec![0],
            enclave_dir: "/state/enclaves/3".into(),
            nis_replica: "/state/enclaves/3/nis".into(),
            nis_mount: "/state/nis".into(),
            control_credential: "secret".into(),
        }
    }

    fn rec() -> EnclaveRecord {
        EnclaveRecord {
            id: 3,
            name: "sim".into(),
            kind: EnclaveKind::Lwk,
            state: hobbes_proto::model::EnclaveState::Starting,
            parent: 0,
            owner_uid: 1000,
            owner_gid: 100,
            shared: false,
            host_ipc: false,
            cores: vec![2, 3],
            mem_blocks: vec![0],
            mem_bytes: 1024 << 20,
            numa_nodes: vec![0],
            isolation: IsolationRecord::default(),
            control_pid: None,
            control_start_time: None,
            control: ControlEndpoint::None,
            nis_dir: "/state/nis".into(),
            created_ms: 0,
            last_heartbeat_ms: 0,
            crash_reason: None,
            vm: None,
            slurm: None,
            bound_to: None,
            step_cgroups: vec![],
            rev: 0,
        }
    }

    fn kind(privileged: bool) -> LwkKind {
        LwkKind {
            cgroups: Cgroups::default(),
            exe: "/bin/leviathan".into(),
            privileged,
            host_cores: Mutex::new(vec![0, 1]),
            kvm: "/dev/kvm".into(),
        }
    }

    #[test]
    fn on_cgroup_v1_only_vcpu_threads_go_to_the_enclave_cores() {
        let dir = tempfile::tempdir().unwrap();
        let v1 = hobbes_cgroups::v1::V1::new(dir.path().join("cpuset"), dir.path().join("memory"))
            .with_prefix(CGROUP_PREFIX);
        let cg = hobbes_cgroups::CgroupManager::enclave(&v1, 3, false);
        let k = kind(true);
        let plan = k.plan(Some(cg.as_ref()), 992 << 20);
        assert_eq!(plan.proxy_cores, vec![0, 1]);
        assert_eq!(
            plan.vcpu_cgroup,
            Some(dir.path().join("cpuset/hobbes/lwk-3"))
        );
        assert_eq!(
            plan.memory_cgroup,
            Some(dir.path().join("memory/hobbes/lwk-3"))
        );
        assert_eq!(plan.control_cgroup, Some(dir.path().join("memory/hobbes")));
        let argv = k.monitor_args(&rec(), &ctx(), &plan);
        let after = |flag: &str| argv[argv.iter().position(|a| a == flag).unwrap() + 1].clone();
        assert_eq!(argv[0], "lwk-monitor");
        assert_eq!(after("--cores"), "2-3");
        assert_eq!(after("--proxy-cores"), "0-1");
        assert_eq!(after("--guest-mem-bytes"), (992u64 << 20).to_string());
        assert_eq!(after("--enclave-socket"), "/state/enclaves/3/control.sock");
        assert_eq!(after("--nis-mount"), "/state/nis");
        assert!(argv.contains(&"--namespaces".to_string()));
        let iso = isolation(true, CgroupMode::Legacy, &plan);
        assert!(iso.exclusive_cores() && iso.confined());
        assert!(iso.lwk().unwrap().syscall_proxy);
        assert!(
            iso.summary
                .contains("monitor and system-call proxy on the host's cores"),
            "{}",
            iso.summary
        );
    }

    #[test]
    fn on_cgroup_v2_the_monitor_shares_the_cores_and_polls_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let v2 = hobbes_cgroups::v2::V2::new(dir.path().to_path_buf()).with_prefix(CGROUP_PREFIX);
        let cg = hobbes_cgroups::CgroupManager::enclave(&v2, 3, false);
        let plan = kind(true).plan(Some(cg.as_ref()), 992 << 20);
        assert!(plan.proxy_cores.is_empty() && plan.vcpu_cgroup.is_none());
        assert_eq!(
            plan.memory_cgroup,
            Some(dir.path().join("hobbes/lwk-3/apps"))
        );
        assert_eq!(
            plan.control_cgroup,
            Some(dir.path().join("hobbes/lwk-3/control"))
        );
        let argv = kind(true).monitor_args(&rec(), &ctx(), &plan);
        assert!(!argv.contains(&"--proxy-cores".to_string()));
        let iso = isolation(true, CgroupMode::Unified, &plan);
        assert!(iso.exclusive_cores() && !iso.lwk().unwrap().syscall_proxy);
        assert!(
            iso.summary.contains("no polling system-call proxy"),
            "{}",
            iso.summary
        );
    }

    #[test]
    fn unprivileged_it_pins_by_affinity_and_says_so() {
        let k = kind(false);
        let plan = k.plan(None, 992 << 20);
        assert_eq!(plan.proxy_cores, vec![0, 1]);
        let argv = k.monitor_args(&rec(), &ctx(), &plan);
        assert!(!argv.contains(&"--namespaces".to_string()));
        assert!(!argv.iter().any(|a| a.ends_with("-cgroup")));
        let iso = isolation(false, CgroupMode::None, &plan);
        assert!(iso.summary.starts_with("degraded (no root)"));
        assert!(!iso.exclusive_cores() && !iso.confined());
    }

    #[test]
    fn cores_and_memory_are_fixed_while_it_runs() {
        let k = kind(true);
        let e = k.set_cpus(&rec(), &[2]).unwrap_err();
        assert!(
            e.starts_with("an LWK enclave's cores are fixed while it runs"),
            "{e}"
        );
        let e = k.set_memory(&rec(), &[0], 2048 << 20).unwrap_err();
        assert!(
            e.starts_with("an LWK enclave's memory is fixed while it runs"),
            "{e}"
        );
    }

    #[test]
    fn a_node_without_kvm_is_refused_with_the_fix() {
        let e = check_kvm(Path::new("/nonexistent/kvm")).unwrap_err();
        assert!(
            e.contains("cannot run lwk enclaves") && e.contains("kvm_intel"),
            "{e}"
        );
    }
}
