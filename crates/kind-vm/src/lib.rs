#![deny(missing_docs)]

//! The `vm` enclave kind: a Linux virtual machine under QEMU (the Palacios
//! analog), for parts of a workflow that need an OS/R stack other than the
//! host's.
//!
//! A VM enclave is one QEMU process started by the enclave's *monitor*
//! (`leviathan vm-monitor`, [`monitor::run`]), which is also its control
//! agent: it speaks the daemon's control protocol through `hobbes-agent`,
//! and runs apps by asking the guest agent (`hobbes-guest-agent`, the
//! guest's init) over a virtio-serial port (`vm-guest-proto`).
//!
//! What the guest runs: the node's image (`scripts/vm-image.sh`: Debian's
//! cloud kernel and an initramfs whose init is the guest agent), or a kernel,
//! initramfs and command line of the spec's own. What it sees of the host
//! (privileged daemons only): the host's `/usr` read-only, so a dynamically
//! linked program built on the host runs in the guest, and the spec's shares,
//! each at its host path, through one `virtiofsd` per VM.
//!
//! Isolation, privileged: the enclave's cores are exclusive (a
//! `cpu_exclusive` cpuset `vm-N` beside the other kinds', from
//! `hobbes-cgroups`), QEMU and virtiofsd run in it and under its memory limit
//! (guest RAM is a shareable memfd, charged there, bound to the enclave's
//! NUMA nodes), and each vCPU thread is pinned to one of the cores; the
//! monitor stays on the host's cores. Unprivileged: vCPU threads pinned by
//! affinity only, no memory limit, and nothing of the host shared.
//!
//! Accelerator: KVM where the CPU has hardware virtualization (vmx/svm) and
//! `/dev/kvm` opens, QEMU's TCG emulation otherwise ([`choose_accel`]),
//! recorded in the enclave's isolation and shown by `hobbes`. A VM's cores
//! and memory are fixed while it runs.

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
    KindIsolation, NisHeader, VmIsolation,
};
use hobbes_proto::spec::{VmAccel, VmSpec};
use hobbes_sys::process as proc_sys;

pub mod console;
pub mod guest;
pub mod monitor;
mod qemu;
mod qmp;
mod runner;
mod sys;
pub mod vm;

pub use qemu::Accel;

/// The monitor, as messages name it.
const MONITOR: &str = "VM monitor";

/// Prefix of a VM enclave's cgroups: `vm-N`.
pub const CGROUP_PREFIX: &str = "vm";

/// How long a new VM may take to boot to its agent's `ready` before the
/// start fails (TCG boots in seconds; a loaded 2-core node, much slower).
pub const READY_TIMEOUT: Duration = Duration::from_secs(180);

/// Where the node's guest image is, unless `HOBBES_VM_IMAGE` says otherwise
/// (made by `scripts/vm-image.sh`).
pub const DEFAULT_IMAGE_DIR: &str = "/var/cache/hobbes/vm-image";

/// Environment variable naming the image directory.
pub const IMAGE_ENV: &str = "HOBBES_VM_IMAGE";

/// The base kernel command line: the serial console, and a panicking guest
/// kernel resets at once (and QEMU, run with `-no-reboot`, exits, so the
/// monitor learns of it).
pub const BASE_CMDLINE: &str = "console=ttyS0 panic=-1 quiet";

/// The smallest guest RAM worth booting (the kernel, the initramfs unpacked, apps).
pub const GUEST_MIN: u64 = 128 << 20;

/// What QEMU itself needs beside guest RAM (TCG's 64 MiB translation cache,
/// its heap, the virtiofs daemon): at least this, or 1/8 of the enclave's
/// memory if more.
pub const QEMU_RESERVE_MIN: u64 = 192 << 20;

const TWO_MIB: u64 = 2 << 20;

/// Guest RAM for an enclave of `mem_bytes`: the rest after QEMU's own
/// memory, in whole 2 MiB pages, or why there is too little.
pub fn guest_ram_bytes(mem_bytes: u64) -> DriverResult<u64> {
    let reserve = (mem_bytes / 8).max(QEMU_RESERVE_MIN);
    let guest = mem_bytes.saturating_sub(reserve) & !(TWO_MIB - 1);
    if guest < GUEST_MIN {
        return Err(format!(
            "a vm enclave needs at least {} MiB of memory ({} MiB for the guest, {} MiB for QEMU itself); it was given {} MiB",
            (GUEST_MIN + QEMU_RESERVE_MIN) >> 20,
            GUEST_MIN >> 20,
            QEMU_RESERVE_MIN >> 20,
            mem_bytes >> 20
        ));
    }
    Ok(guest)
}

/// Whether this node's CPU offers hardware virtualization to KVM: `vmx` or
/// `svm` among `/proc/cpuinfo`'s flags.
fn cpu_virtualizes(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
}

/// The accelerator for `asked`, on a node whose `/proc/cpuinfo` is `cpuinfo`
/// and whose `/dev/kvm` opens or not. `auto` takes KVM only where the CPU
/// virtualizes: a `/dev/kvm` without vmx/svm (a nested, software KVM such as
/// PVM) cannot run a stock guest kernel.
pub fn choose_accel(asked: VmAccel, cpuinfo: &str, kvm_opens: bool) -> DriverResult<Accel> {
    let hardware = cpu_virtualizes(cpuinfo);
    match asked {
        VmAccel::Tcg => Ok(Accel::Tcg),
        VmAccel::Auto if hardware && kvm_opens => Ok(Accel::Kvm),
        VmAccel::Auto => Ok(Accel::Tcg),
        VmAccel::Kvm if !hardware => Err(
            "this node cannot run VMs on KVM: its CPU shows no hardware virtualization (no vmx or svm flag in /proc/cpuinfo; a nested, software /dev/kvm cannot run a stock guest kernel); ask for <accel>tcg</accel> or auto (--accel)"
                .into(),
        ),
        VmAccel::Kvm if !kvm_opens => Err(
            "this node cannot run VMs on KVM: /dev/kvm does not open (load kvm_intel or kvm_amd, and run leviathan as root or in the kvm group); ask for <accel>tcg</accel> or auto (--accel)"
                .into(),
        ),
        VmAccel::Kvm => Ok(Accel::Kvm),
    }
}

fn kvm_opens() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// The kernel and initramfs a VM boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootFiles {
    /// The guest kernel.
    pub kernel: PathBuf,
    /// The initramfs.
    pub initrd: PathBuf,
}

/// The files `vm` boots: its own where the spec names them, the image's
/// otherwise; each must exist and be readable by the enclave's owner (the
/// monitor reads them as root, and an initramfs is readable in the guest).
fn boot_files(image_dir: &Path, vm: &VmSpec, uid: u32, gid: u32) -> DriverResult<BootFiles> {
    let from_image = |name: &str| -> DriverResult<PathBuf> {
        let path = image_dir.join(name);
        if !path.is_file() {
            return Err(format!(
                "no VM image at {} ({name} is missing): build it with scripts/vm-image.sh, or give <kernel> and <initrd> (--kernel, --initrd)",
                image_dir.display()
            ));
        }
        Ok(path)
    };
    let chosen = |own: &Option<String>, name: &str, what: &str| -> DriverResult<PathBuf> {
        let Some(own) = own else {
            return from_image(name);
        };
        // The owner's permission, not ours: a user may not boot (and so read
        // in the guest) a file they cannot read on the host.
        hobbes_sys::creds::with_fs_identity(uid, gid, || {
            std::fs::File::open(own)
                .map(drop)
                .map_err(|e| format!("cannot use {own} as the guest's {what}: {e}"))
        })?;
        Ok(PathBuf::from(own))
    };
    Ok(BootFiles {
        kernel: chosen(&vm.kernel, "vmlinuz", "kernel")?,
        initrd: chosen(&vm.initrd, "initrd.img", "initramfs")?,
    })
}

/// Check the spec's shares. Each must be a directory. For an owner that is
/// not root, also: a directory the owner owns (the guest's root reads and
/// writes a share with the rights of `virtiofsd`, root on the host, whatever
/// the files' modes), and a writable one only on a file system mounted
/// `nosuid,nodev` (the guest's root could otherwise leave a set-uid-root
/// program or a device node there for the owner to use on the host).
fn check_shares(vm: &VmSpec, uid: u32) -> DriverResult<()> {
    use std::os::unix::fs::MetadataExt;
    for share in &vm.shares {
        let meta = std::fs::metadata(&share.path)
            .map_err(|e| format!("cannot share {}: {e}", share.path))?;
        if !meta.is_dir() {
            return Err(format!("cannot share {}: not a directory", share.path));
        }
        if uid == 0 {
            continue;
        }
        if meta.uid() != uid {
            return Err(format!(
                "cannot share {}: it belongs to uid {}, not to you (uid {uid}); the guest's root could read and write everything under it",
                share.path,
                meta.uid()
            ));
        }
        if share.writable {
            let flags = nix::sys::statvfs::statvfs(share.path.as_str())
                .map_err(|e| format!("cannot share {}: {e}", share.path))?
                .flags();
            use nix::sys::statvfs::FsFlags;
            if !flags.contains(FsFlags::ST_NOSUID | FsFlags::ST_NODEV) {
                return Err(format!(
                    "cannot share {} writable: its file system is not mounted nosuid,nodev, and the guest's root could leave set-uid programs or device nodes there; share it read-only, or use a directory on a nosuid,nodev file system",
                    share.path
                ));
            }
        }
    }
    Ok(())
}

/// How this node runs VMs, for `hobbes status`: the accelerator (TCG said
/// loudly) and the image.
fn node_support(accel: Accel, image_dir: &Path) -> String {
    let accel = match accel {
        Accel::Kvm => "on KVM".to_string(),
        Accel::Tcg => "on TCG emulation: this CPU has no hardware virtualization (vmx/svm), so guest code runs translated, many times slower than on KVM".to_string(),
    };
    let image = std::fs::read_to_string(image_dir.join("image.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok());
    let image = match image {
        Some(v) => format!(
            "image {} (kernel {})",
            image_dir.display(),
            v["kernel_release"].as_str().unwrap_or("?")
        ),
        None => format!(
            "no image in {} (build it with scripts/vm-image.sh)",
            image_dir.display()
        ),
    };
    format!("{accel}; {image}")
}

/// The VM kind's driver.
pub struct VmKind {
    /// The node's cgroups, with VM enclaves named `vm-N` (none when unprivileged).
    cgroups: Cgroups,
    /// The `leviathan` executable, which doubles as the monitor.
    exe: PathBuf,
    privileged: bool,
    /// The node's guest image.
    image_dir: PathBuf,
    /// The host's cores (from `setup`).
    host_cores: Mutex<Vec<CoreId>>,
}

impl VmKind {
    /// The VM kind of a daemon: cgroups when `privileged`, CPU affinity only
    /// otherwise; the image from `HOBBES_VM_IMAGE` or [`DEFAULT_IMAGE_DIR`].
    pub fn new(privileged: bool, exe: PathBuf) -> Self {
        let image_dir = std::env::var_os(IMAGE_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_IMAGE_DIR));
        VmKind {
            cgroups: Cgroups::detect_with_prefix(privileged, CGROUP_PREFIX),
            exe,
            privileged,
            image_dir,
            host_cores: Mutex::new(Vec::new()),
        }
    }

    /// The monitor's command line (after the executable).
    fn monitor_args(
        &self,
        rec: &EnclaveRecord,
        ctx: &StartContext,
        plan: &Plan,
        vm: &VmSpec,
    ) -> Vec<String> {
        let mut argv = vec![
            "vm-monitor".to_string(),
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
            "--name".into(),
            rec.name.clone(),
            "--enclave-dir".into(),
            ctx.enclave_dir.display().to_string(),
            "--cores".into(),
            format_cpu_list(&ctx.cores),
            "--guest-mem-bytes".into(),
            plan.guest_bytes.to_string(),
            "--accel".into(),
            plan.accel.as_str().into(),
            "--kernel".into(),
            plan.boot.kernel.display().to_string(),
            "--initrd".into(),
            plan.boot.initrd.display().to_string(),
            "--cmdline".into(),
            match &vm.cmdline {
                Some(extra) if !extra.is_empty() => format!("{BASE_CMDLINE} {extra}"),
                _ => BASE_CMDLINE.to_string(),
            },
        ];
        if !ctx.numa_nodes.is_empty() {
            argv.push("--numa-nodes".into());
            argv.push(format_cpu_list(&ctx.numa_nodes));
        }
        if self.privileged {
            argv.push("--host-files".into());
            for share in &vm.shares {
                argv.push("--share".into());
                argv.push(if share.writable {
                    format!("{}:rw", share.path)
                } else {
                    format!("{}:ro", share.path)
                });
            }
        }
        for path in &plan.qemu_cgroups {
            argv.push("--qemu-cgroup".into());
            argv.push(path.display().to_string());
        }
        argv
    }

    fn describe(&self, plan: &Plan) -> IsolationRecord {
        isolation(self.privileged, self.cgroups.mode(), plan)
    }
}

/// How a VM is started (see the crate's documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Plan {
    guest_bytes: u64,
    accel: Accel,
    boot: BootFiles,
    /// The cgroups QEMU and virtiofsd join (their `cgroup.procs`): the
    /// enclave's cpuset and memory limit.
    qemu_cgroups: Vec<PathBuf>,
}

/// The cgroups QEMU joins: on v1 the enclave's memory cgroup and its cpuset
/// (the thread cgroup takes whole processes too), on v2 the enclave's `apps`
/// cgroup (the partition's cpuset and the memory limit).
fn qemu_cgroups(cg: Option<&dyn EnclaveCgroup>) -> Vec<PathBuf> {
    let Some(cg) = cg else {
        return Vec::new();
    };
    let mut paths = vec![cg.app_cgroup().to_path_buf()];
    if let Some(cpuset) = cg.thread_cgroup() {
        paths.push(cpuset.to_path_buf());
    }
    paths
}

/// The monitor's enclave socket: `control.sock` in the enclave's directory.
fn control_socket(ctx: &StartContext) -> PathBuf {
    ctx.enclave_dir.join("control.sock")
}

/// Describe what isolation was really applied.
fn isolation(privileged: bool, mode: CgroupMode, plan: &Plan) -> IsolationRecord {
    let confined = !plan.qemu_cgroups.is_empty();
    let detail = VmIsolation {
        version: VmIsolation::VERSION,
        accelerator: plan.accel.as_str().into(),
        exclusive_cores: confined,
        cpuset: confined,
        memory_limit: confined,
        host_files: privileged,
    };
    let accel = match plan.accel {
        Accel::Kvm => "KVM".to_string(),
        Accel::Tcg => "TCG emulation (no hardware virtualization here: guest code runs translated, many times slower than on KVM)".to_string(),
    };
    let summary = if !privileged {
        format!("degraded (no root): vCPU threads pinned by CPU affinity only; other tasks may share these cores; no memory limit; no host files in the guest; {accel}")
    } else if !confined {
        format!("degraded (no cgroups found): vCPU threads pinned by CPU affinity only; no memory limit; host /usr read-only in the guest; {accel}")
    } else {
        let version = if mode == CgroupMode::Legacy {
            "cgroup v1"
        } else {
            "cgroup v2"
        };
        format!("exclusive cores: QEMU in a cpu_exclusive cpuset ({version}), one vCPU thread pinned per core; guest RAM under the memory limit; host /usr read-only in the guest; {accel}")
    };
    IsolationRecord {
        summary,
        detail: KindIsolation::Vm(detail),
    }
}

impl EnclaveDriver for VmKind {
    fn kind(&self) -> EnclaveKind {
        EnclaveKind::Vm
    }

    fn describe_node(&self, header: &mut NisHeader) {
        header.cgroup_mode = self.cgroups.mode();
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let accel = choose_accel(VmAccel::Auto, &cpuinfo, kvm_opens()).unwrap_or(Accel::Tcg);
        header.vm_support = Some(node_support(accel, &self.image_dir));
    }

    fn setup(&self, node: &NodeSetup) -> DriverResult<()> {
        *self.host_cores.lock().unwrap_or_else(|p| p.into_inner()) = node.host_cores.clone();
        // The node's parents and the host's confinement, shared with the
        // other kinds: made here too when missing.
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
            return Err("a vm enclave is never shared and has no IPC namespace".into());
        }
        let vm = rec.vm.clone().unwrap_or_default();
        vm.validate()?;
        let guest_bytes = guest_ram_bytes(ctx.mem_bytes)?;
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let accel = choose_accel(vm.accel, &cpuinfo, kvm_opens())?;
        let boot = boot_files(&self.image_dir, &vm, rec.owner_uid, rec.owner_gid)?;
        if self.privileged {
            check_shares(&vm, rec.owner_uid)?;
        } else if !vm.shares.is_empty() {
            return Err(
                "shares need a privileged leviathan (root runs virtiofsd); this one runs without root"
                    .into(),
            );
        }
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
        let plan = Plan {
            guest_bytes,
            accel,
            boot,
            qemu_cgroups: qemu_cgroups(cg.as_deref()),
        };
        let mut cmd = Command::new(&self.exe);
        cmd.args(self.monitor_args(rec, ctx, &plan, &vm))
            .env_clear()
            .envs(monitor_env(ctx))
            .stdin(Stdio::null())
            // The monitor's first line says whether the guest is up.
            .stdout(Stdio::piped())
            // Its own session: a signal to the daemon's process group does
            // not reach it, and it outlives the daemon.
            .process_group(0);
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                undo(None);
                return Err(format!("cannot start the VM monitor: {e}"));
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
            "a VM enclave's cores are fixed while it runs (one vCPU per core, pinned at boot); destroy enclave {} and create it with the cores you want",
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
            "a VM enclave's memory is fixed while it runs (its guest RAM is sized at boot); destroy enclave {} and create it with the memory you want",
            rec.name
        ))
    }

    fn stop(&self, rec: &EnclaveRecord) -> DriverResult<()> {
        // QEMU and virtiofsd die with the monitor (their parent-death signal);
        // the cgroup's kill catches anything that escaped it.
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

#[cfg(test)]
mod tests {
    use super::*;
    use hobbes_proto::spec::VmShare;

    #[test]
    fn guest_ram_leaves_qemu_its_share() {
        assert_eq!(guest_ram_bytes(1024 << 20).unwrap(), 832 << 20);
        assert_eq!(guest_ram_bytes(4096 << 20).unwrap(), 3584 << 20);
        assert_eq!(guest_ram_bytes(320 << 20).unwrap(), 128 << 20);
        let e = guest_ram_bytes(256 << 20).unwrap_err();
        assert!(e.contains("needs at least 320 MiB"), "{e}");
    }

    #[test]
    fn the_accelerator_is_kvm_only_where_the_cpu_virtualizes() {
        let vmx = "processor : 0\nflags : fpu vme vmx sse\n";
        let pvm = "processor : 0\nflags : fpu vme hypervisor sse\n";
        assert_eq!(choose_accel(VmAccel::Auto, vmx, true), Ok(Accel::Kvm));
        assert_eq!(choose_accel(VmAccel::Auto, vmx, false), Ok(Accel::Tcg));
        assert_eq!(choose_accel(VmAccel::Auto, pvm, true), Ok(Accel::Tcg));
        assert_eq!(choose_accel(VmAccel::Tcg, vmx, true), Ok(Accel::Tcg));
        let e = choose_accel(VmAccel::Kvm, pvm, true).unwrap_err();
        assert!(e.contains("no hardware virtualization"), "{e}");
        let e = choose_accel(VmAccel::Kvm, vmx, false).unwrap_err();
        assert!(e.contains("/dev/kvm does not open"), "{e}");
    }

    #[test]
    fn boot_files_come_from_the_image_or_the_spec_and_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let e = boot_files(dir.path(), &VmSpec::default(), 0, 0).unwrap_err();
        assert!(
            e.contains("no VM image at") && e.contains("scripts/vm-image.sh"),
            "{e}"
        );
        std::fs::write(dir.path().join("vmlinuz"), b"k").unwrap();
        std::fs::write(dir.path().join("initrd.img"), b"i").unwrap();
        let b = boot_files(dir.path(), &VmSpec::default(), 0, 0).unwrap();
        assert_eq!(b.kernel, dir.path().join("vmlinuz"));
        let own = VmSpec {
            kernel: Some("/nonexistent/vmlinuz".into()),
            ..Default::default()
        };
        let e = boot_files(dir.path(), &own, 0, 0).unwrap_err();
        assert!(
            e.contains("cannot use /nonexistent/vmlinuz as the guest's kernel"),
            "{e}"
        );
    }

    #[test]
    fn shares_must_be_directories_a_non_root_owner_owns() {
        let dir = tempfile::tempdir().unwrap();
        let share = |path: &Path| VmSpec {
            shares: vec![VmShare {
                path: path.display().to_string(),
                writable: false,
            }],
            ..Default::default()
        };
        assert!(check_shares(&share(dir.path()), 0).is_ok());
        let e = check_shares(&share(dir.path()), 4242).unwrap_err();
        assert!(e.contains("belongs to uid"), "{e}");
        // Writable for a non-root owner: only on a nosuid,nodev file system.
        // (As root, the test gives directories to a made-up owner.)
        if nix::unistd::geteuid().is_root() {
            let nosuid_nodev = |p: &Path| {
                nix::sys::statvfs::statvfs(p).unwrap().flags().contains(
                    nix::sys::statvfs::FsFlags::ST_NOSUID | nix::sys::statvfs::FsFlags::ST_NODEV,
                )
            };
            let owner = 4242;
            for base in ["/tmp", "/dev/shm"] {
                let dir = tempfile::tempdir_in(base).unwrap();
                std::os::unix::fs::chown(dir.path(), Some(owner), Some(owner)).unwrap();
                let writable = VmSpec {
                    shares: vec![VmShare {
                        path: dir.path().display().to_string(),
                        writable: true,
                    }],
                    ..Default::default()
                };
                let r = check_shares(&writable, owner);
                if nosuid_nodev(dir.path()) {
                    assert!(r.is_ok(), "{base}: {r:?}");
                } else {
                    assert!(
                        r.unwrap_err().contains("not mounted nosuid,nodev"),
                        "{base}"
                    );
                }
                let mut read_only = writable.clone();
                read_only.shares[0].writable = false;
                assert!(check_shares(&read_only, owner).is_ok(), "{base}");
            }
        }
        let e = check_shares(&share(Path::new("/nonexistent")), 0).unwrap_err();
        assert!(e.starts_with("cannot share /nonexistent"), "{e}");
    }

    #[test]
    fn the_node_says_how_it_runs_vms() {
        let dir = tempfile::tempdir().unwrap();
        let s = node_support(Accel::Tcg, dir.path());
        assert!(s.starts_with("on TCG emulation"), "{s}");
        assert!(s.contains("scripts/vm-image.sh"), "{s}");
        std::fs::write(
            dir.path().join("image.json"),
            r#"{"kernel_release": "6.1.0-57-cloud-amd64"}"#,
        )
        .unwrap();
        let s = node_support(Accel::Kvm, dir.path());
        assert!(
            s.starts_with("on KVM; image") && s.contains("kernel 6.1.0-57-cloud-amd64"),
            "{s}"
        );
    }

    #[test]
    fn the_isolation_record_says_which_accelerator() {
        let plan = Plan {
            guest_bytes: 832 << 20,
            accel: Accel::Tcg,
            boot: BootFiles {
                kernel: "/k".into(),
                initrd: "/i".into(),
            },
            qemu_cgroups: vec!["/sys/fs/cgroup/memory/hobbes/vm-3".into()],
        };
        let iso = isolation(true, CgroupMode::Legacy, &plan);
        assert_eq!(iso.vm().unwrap().accelerator, "tcg");
        assert!(iso.exclusive_cores());
        assert!(iso.summary.contains("TCG emulation"), "{}", iso.summary);
        let iso = isolation(
            false,
            CgroupMode::None,
            &Plan {
                qemu_cgroups: vec![],
                ..plan
            },
        );
        assert!(iso.summary.starts_with("degraded (no root)"));
        assert!(!iso.vm().unwrap().host_files);
    }
}
