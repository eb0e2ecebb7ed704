//! The VM monitor: `leviathan vm-monitor`, one per VM enclave, started by
//! [`crate::VmKind`]. It runs the enclave's QEMU (and its virtiofsd) and is
//! the enclave's control agent: the daemon link, heartbeats, the app table
//! and output forwarding come from `hobbes-agent`; apps run in the guest,
//! through the guest agent ([`crate::runner::VmRunner`]).
//!
//! Start-up, in order (a failure is reported on stdout as `error: <why>`,
//! which the driver turns into the failed creation's message):
//! 1. take the credential out of the environment (before any thread);
//! 2. with `--host-files`: a mount namespace of its own, where the export
//!    tree is built (`<enclave dir>/export`: a tmpfs with the host's `/usr`
//!    bound read-only under `usr/` and each share under its own path), and a
//!    virtiofsd serving it;
//! 3. QEMU, in the enclave's cgroups (`--qemu-cgroup`), with its QMP monitor,
//!    serial console and guest port on socket pairs it inherits;
//! 4. each vCPU thread pinned to one of the enclave's cores (QMP);
//! 5. the guest handshake (hello, setup, ready): the guest is up;
//! 6. bind the enclave socket, print `ready`, attach to the daemon.
//!
//! From then on a thread waits for QEMU: its end (killed, the guest kernel
//! panicked, the guest powered off) is reported to the daemon as the
//! enclave's crash, with the reason, and the monitor exits. A guest that
//! stays silent for [`GUEST_SILENCE`] is treated the same way.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hobbes_kind::monitor::{parse_cpu_list, say, stdout_to_null, CpuList};

use crate::qemu::Accel;
use crate::runner::VmRunner;
use crate::vm::{parse_share, why_qemu_ended, Vm, VmConfig};

/// How long the guest agent may stay silent (it beats every second) before
/// the guest is declared hung.
pub const GUEST_SILENCE: Duration = Duration::from_secs(60);

/// How long the guest may take to boot to its agent's `ready`: less than
/// the driver waits for the monitor, so the monitor's message (naming what
/// the guest did) is the one the user sees.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(crate::READY_TIMEOUT.as_secs() - 30);

/// How the driver starts the monitor (`leviathan vm-monitor ...`).
#[derive(Debug, Clone, clap::Args)]
pub struct MonitorArgs {
    /// What every control agent takes (enclave, sockets, owner).
    #[command(flatten)]
    pub agent: hobbes_agent::AgentArgs,
    /// The enclave's name (QEMU's name, the guest's hostname).
    #[arg(long)]
    pub name: String,
    /// The enclave's directory: console.log, qemu.log, the export tree.
    #[arg(long)]
    pub enclave_dir: PathBuf,
    /// The enclave's cores ("2-3"): one vCPU pinned to each.
    #[arg(long, value_parser = parse_cpu_list)]
    pub cores: CpuList,
    /// Guest RAM, in bytes.
    #[arg(long)]
    pub guest_mem_bytes: u64,
    /// The enclave's NUMA nodes ("0"): guest RAM is bound to them.
    #[arg(long, value_parser = parse_cpu_list)]
    pub numa_nodes: Option<CpuList>,
    /// kvm or tcg (the driver chose).
    #[arg(long, value_parser = Accel::parse)]
    pub accel: Accel,
    /// The guest kernel.
    #[arg(long)]
    pub kernel: PathBuf,
    /// The initramfs.
    #[arg(long)]
    pub initrd: PathBuf,
    /// The kernel command line.
    #[arg(long)]
    pub cmdline: String,
    /// Share the host's /usr (read-only) and the shares through virtiofsd
    /// (needs root).
    #[arg(long)]
    pub host_files: bool,
    /// A host directory for the guest, `PATH:ro` or `PATH:rw` (repeatable).
    #[arg(long = "share", requires = "host_files")]
    pub shares: Vec<String>,
    /// A cgroup QEMU and virtiofsd join (repeatable).
    #[arg(long = "qemu-cgroup")]
    pub qemu_cgroups: Vec<PathBuf>,
}

/// The body of `leviathan vm-monitor`: start the VM (see the module's
/// documentation for the order), say `ready` on stdout, then run the agent
/// for ever. Returns an error only when start-up fails (after saying why on
/// stdout) or the daemon is unreachable at the first attempt.
pub fn run(args: MonitorArgs) -> anyhow::Result<()> {
    // Before any thread starts: no later copy of our environment has it.
    let credential = hobbes_agent::take_credential(hobbes_kind::CONTROL_CREDENTIAL_ENV);
    let agent = match prepare(&args, credential) {
        Ok(agent) => agent,
        Err(e) => {
            say(&format!("error: {e:#}"));
            return Err(e);
        }
    };
    say("ready");
    stdout_to_null();
    agent.run()
}

/// Steps 2-6 of start-up.
fn prepare(
    args: &MonitorArgs,
    credential: hobbes_proto::control::Credential,
) -> anyhow::Result<hobbes_agent::Agent> {
    let shares = args
        .shares
        .iter()
        .map(|s| parse_share(s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut vm = Vm::start(&VmConfig {
        name: args.name.clone(),
        dir: args.enclave_dir.clone(),
        cores: args.cores.0.clone(),
        guest_bytes: args.guest_mem_bytes,
        numa_nodes: args.numa_nodes.as_ref().map_or(Vec::new(), |n| n.0.clone()),
        accel: args.accel,
        kernel: args.kernel.clone(),
        initrd: args.initrd.clone(),
        cmdline: args.cmdline.clone(),
        host_files: args.host_files,
        shares,
        cgroups: args.qemu_cgroups.clone(),
        boot_timeout: BOOT_TIMEOUT,
        echo: false,
    })?;
    tracing::info!(kernel = %vm.info.kernel, uptime_ms = vm.info.ready_uptime_ms, "guest ready");
    vm.serve_link()?;
    let qemu_pid = vm.qemu_pid;
    let stopping = Arc::new(AtomicBool::new(false));
    let stop_qemu = {
        let stopping = stopping.clone();
        move || {
            stopping.store(true, Ordering::SeqCst);
            let _ = hobbes_sys::process::kill(qemu_pid, libc::SIGKILL);
        }
    };
    let runner = Arc::new(VmRunner::new(
        vm.link.clone(),
        vm.console.clone(),
        Box::new(stop_qemu.clone()),
    ));
    let agent = args.agent.start(credential, runner.clone())?;
    let handle = agent.handle();
    let _ = runner.agent.set(handle.clone());
    // From here QEMU's end is the enclave's end: a thread waits for it.
    let child = vm.qemu.take().expect("QEMU handle");
    let console_log = args.enclave_dir.join("console.log");
    std::thread::Builder::new()
        .name("qemu-wait".into())
        .spawn({
            let (stopping, handle) = (stopping.clone(), handle.clone());
            move || {
                let mut child = child;
                let status = child.wait();
                if stopping.load(Ordering::SeqCst) {
                    return;
                }
                let reason = match status {
                    Ok(status) => why_qemu_ended(status, &console_log),
                    Err(e) => format!("cannot wait for QEMU: {e}"),
                };
                handle.fatal(&reason);
            }
        })?;
    let link = vm.link.clone();
    std::thread::Builder::new().name("guest-watchdog".into()).spawn(move || loop {
        std::thread::sleep(Duration::from_secs(1));
        let silent = link.silent_for();
        if silent > GUEST_SILENCE {
            stop_qemu();
            handle.fatal(&format!(
                "the guest agent was silent for {} s (the guest hung; see console.log); the VM was killed",
                silent.as_secs()
            ));
        }
    })?;
    // virtiofsd lives on, with QEMU, until the monitor ends (its
    // parent-death signal ends it then).
    if let Some(v) = vm.virtiofsd.take() {
        std::mem::forget(v);
    }
    std::mem::forget(vm);
    Ok(agent)
}
