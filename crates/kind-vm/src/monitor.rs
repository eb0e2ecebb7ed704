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

use std::io::{Read, Seek, SeekFrom};
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hobbes_kind::monitor::{parse_cpu_list, say, stdout_to_null, CpuList};
use vm_guest_proto::Bind;

use crate::console::Console;
use crate::guest::{handshake, GuestLink};
use crate::qemu::{spawn_confined, Accel, QemuConfig, CONSOLE_FD, GUEST_FD, QMP_FD};
use crate::qmp::Qmp;
use crate::runner::VmRunner;

/// How long the guest agent may stay silent (it beats every second) before
/// the guest is declared hung.
pub const GUEST_SILENCE: Duration = Duration::from_secs(60);

/// How long the guest may take to boot to its agent's `ready`.
pub const BOOT_TIMEOUT: Duration = crate::READY_TIMEOUT;

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

/// A share from `--share`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Share {
    path: String,
    writable: bool,
}

fn parse_share(s: &str) -> anyhow::Result<Share> {
    let (path, writable) = match s.rsplit_once(':') {
        Some((p, "rw")) => (p, true),
        Some((p, "ro")) => (p, false),
        _ => anyhow::bail!("--share {s:?}: expected PATH:ro or PATH:rw"),
    };
    if !path.starts_with('/') || path.split('/').any(|c| c == "..") {
        anyhow::bail!("--share {s:?}: the path must be absolute, without \"..\"");
    }
    Ok(Share {
        path: path.to_string(),
        writable,
    })
}

/// The binds the guest makes: the host's `/usr` read-only, then each share at its path.
fn guest_binds(shares: &[Share]) -> Vec<Bind> {
    let mut binds = vec![Bind {
        source: "usr".into(),
        target: "/usr".into(),
        writable: false,
    }];
    for s in shares {
        binds.push(Bind {
            source: s
                .path
                .trim_start_matches('/')
                .trim_end_matches('/')
                .to_string(),
            target: s.path.trim_end_matches('/').to_string(),
            writable: s.writable,
        });
    }
    binds
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

/// A child that is killed and reaped if start-up fails half-way.
struct KillOnDrop(Option<Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
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
    let _virtiofsd = if args.host_files {
        Some(KillOnDrop(Some(start_virtiofsd(args, &shares)?)))
    } else {
        None
    };
    let (qmp_ours, qmp_theirs) = UnixStream::pair()?;
    let (console_ours, console_theirs) = UnixStream::pair()?;
    let (mut guest_ours, guest_theirs) = UnixStream::pair()?;
    let config = QemuConfig {
        name: format!("hobbes-{}", args.name),
        accel: args.accel,
        vcpus: args.cores.0.len(),
        guest_bytes: args.guest_mem_bytes,
        numa_nodes: args.numa_nodes.as_ref().map_or(Vec::new(), |n| n.0.clone()),
        kernel: args.kernel.clone(),
        initrd: args.initrd.clone(),
        cmdline: args.cmdline.clone(),
        console_log: args.enclave_dir.join("console.log"),
        virtiofs_socket: args
            .host_files
            .then(|| args.enclave_dir.join("virtiofs.sock")),
    };
    let qemu_bin = crate::qemu::qemu_binary();
    let mut cmd = Command::new(&qemu_bin);
    cmd.args(config.args());
    let qemu = spawn_confined(
        cmd,
        &args.qemu_cgroups,
        &args.enclave_dir.join("qemu.log"),
        vec![
            (OwnedFd::from(qmp_theirs), QMP_FD),
            (OwnedFd::from(console_theirs), CONSOLE_FD),
            (OwnedFd::from(guest_theirs), GUEST_FD),
        ],
    )
    .map_err(|e| {
        anyhow::anyhow!(
            "cannot start {} (install qemu-system-x86: scripts/deps.sh): {e}",
            qemu_bin.display()
        )
    })?;
    let qemu_pid = qemu.id();
    let mut qemu = KillOnDrop(Some(qemu));
    let mut qmp =
        Qmp::connect(qmp_ours).map_err(|e| anyhow::anyhow!("{e}{}", qemu_log_tail(args)))?;
    pin_vcpus(&mut qmp, &args.cores.0)?;
    let console = Console::start(console_ours)?;
    let binds = if args.host_files {
        guest_binds(&shares)
    } else {
        Vec::new()
    };
    let info = handshake(
        &mut guest_ours,
        &args.name,
        args.host_files,
        binds,
        BOOT_TIMEOUT,
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    tracing::info!(kernel = %info.kernel, uptime_ms = info.ready_uptime_ms, "guest ready");
    let link = GuestLink::new(guest_ours.try_clone()?)?;
    std::thread::Builder::new()
        .name("guest-link".into())
        .spawn({
            let link = link.clone();
            move || link.serve(guest_ours)
        })?;
    let stopping = Arc::new(AtomicBool::new(false));
    let stop = {
        let stopping = stopping.clone();
        Box::new(move || {
            stopping.store(true, Ordering::SeqCst);
            let _ = hobbes_sys::process::kill(qemu_pid, libc::SIGKILL);
        })
    };
    let runner = Arc::new(VmRunner::new(link.clone(), console, stop));
    let agent = args.agent.start(credential, runner.clone())?;
    let handle = agent.handle();
    let _ = runner.agent.set(handle.clone());
    // From here QEMU's end is the enclave's end: a thread waits for it.
    let child = qemu.0.take().expect("QEMU handle");
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
    std::thread::Builder::new().name("guest-watchdog".into()).spawn({
        let stop_qemu = move || {
            stopping.store(true, Ordering::SeqCst);
            let _ = hobbes_sys::process::kill(qemu_pid, libc::SIGKILL);
        };
        move || loop {
            std::thread::sleep(Duration::from_secs(1));
            let silent = link.silent_for();
            if silent > GUEST_SILENCE {
                stop_qemu();
                handle.fatal(&format!(
                    "the guest agent was silent for {} s (the guest hung; see console.log); the VM was killed",
                    silent.as_secs()
                ));
            }
        }
    })?;
    // virtiofsd lives on, with QEMU, until the monitor ends.
    std::mem::forget(_virtiofsd);
    Ok(agent)
}

/// Pin vCPU *i* to core *i* (QEMU makes one vCPU per core).
fn pin_vcpus(qmp: &mut Qmp, cores: &[u32]) -> anyhow::Result<()> {
    let threads = qmp.vcpu_threads().map_err(|e| anyhow::anyhow!("{e}"))?;
    for (i, tid) in threads.iter().enumerate() {
        let core = cores[i % cores.len()];
        let mut set = nix::sched::CpuSet::new();
        set.set(core as usize)?;
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(*tid as i32), &set).map_err(
            |e| anyhow::anyhow!("cannot pin vCPU {i} (thread {tid}) to core {core}: {e}"),
        )?;
    }
    Ok(())
}

/// The virtiofsd binary: `HOBBES_VIRTIOFSD`, else Debian 12's (QEMU's C
/// daemon) or the Rust one newer distributions ship.
fn virtiofsd_binary() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("HOBBES_VIRTIOFSD") {
        return Ok(PathBuf::from(p));
    }
    ["/usr/lib/qemu/virtiofsd", "/usr/libexec/virtiofsd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "no virtiofsd (/usr/lib/qemu/virtiofsd): install qemu-system-x86 (scripts/deps.sh)"
            )
        })
}

/// Build the export tree in a mount namespace of our own and start
/// virtiofsd on it, in the enclave's cgroups.
fn start_virtiofsd(args: &MonitorArgs, shares: &[Share]) -> anyhow::Result<Child> {
    use nix::mount::{mount, MsFlags};
    let bin = virtiofsd_binary()?;
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
        .map_err(|e| anyhow::anyhow!("cannot make a mount namespace: {e}"))?;
    hobbes_agent::mounts::make_private()?;
    let export = args.enclave_dir.join("export");
    std::fs::create_dir_all(&export)?;
    mount(
        Some("hobbes-export"),
        &export,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755,size=1m"),
    )
    .map_err(|e| anyhow::anyhow!("cannot mount the export tree at {}: {e}", export.display()))?;
    let bind = |source: &Path, rel: &str, writable: bool| -> anyhow::Result<()> {
        let target = export.join(rel);
        std::fs::create_dir_all(&target)?;
        mount(
            Some(source),
            &target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(|e| anyhow::anyhow!("cannot share {}: {e}", source.display()))?;
        let mut flags =
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
        if !writable {
            flags |= MsFlags::MS_RDONLY;
        }
        mount(None::<&str>, &target, None::<&str>, flags, None::<&str>).map_err(|e| {
            anyhow::anyhow!(
                "cannot make the share of {} read-only: {e}",
                source.display()
            )
        })
    };
    bind(Path::new("/usr"), "usr", false)?;
    for s in shares {
        bind(
            Path::new(&s.path),
            s.path.trim_start_matches('/').trim_end_matches('/'),
            s.writable,
        )?;
    }
    let socket = args.enclave_dir.join("virtiofs.sock");
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket)
        .map_err(|e| anyhow::anyhow!("cannot bind {}: {e}", socket.display()))?;
    const LISTEN_FD: i32 = 3;
    let mut cmd = Command::new(&bin);
    cmd.arg(format!("--fd={LISTEN_FD}"))
        .arg("-o")
        .arg(format!("source={}", export.display()))
        .args(["-o", "cache=auto", "-o", "announce_submounts"]);
    spawn_confined(
        cmd,
        &args.qemu_cgroups,
        &args.enclave_dir.join("virtiofsd.log"),
        vec![(OwnedFd::from(listener), LISTEN_FD)],
    )
    .map_err(|e| anyhow::anyhow!("cannot start {}: {e}", bin.display()))
}

/// The last lines of qemu.log, for an error message.
fn qemu_log_tail(args: &MonitorArgs) -> String {
    let text = std::fs::read_to_string(args.enclave_dir.join("qemu.log")).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(3).collect();
    if tail.is_empty() {
        String::new()
    } else {
        format!(
            " (qemu.log: {})",
            tail.into_iter().rev().collect::<Vec<_>>().join("; ")
        )
    }
}

/// Why QEMU ended, for the enclave's crash reason: a guest kernel panic
/// (found in the console log), a signal, a power-off, or an exit code.
fn why_qemu_ended(status: std::process::ExitStatus, console_log: &Path) -> String {
    if let Some(panic) = panic_line(console_log) {
        return format!("the guest kernel panicked: {panic}");
    }
    if let Some(sig) = status.signal() {
        let name = nix::sys::signal::Signal::try_from(sig)
            .map(|s| s.as_str().to_string())
            .unwrap_or_else(|_| sig.to_string());
        return format!("QEMU was killed by {name}");
    }
    match status.code() {
        Some(0) => "the guest powered off (its init ended, or it was shut down from inside)".into(),
        Some(code) => {
            format!("QEMU exited with code {code} (see qemu.log in the enclave's directory)")
        }
        None => "QEMU ended".into(),
    }
}

/// The kernel's panic message in the last 64 KiB of the console log.
fn panic_line(console_log: &Path) -> Option<String> {
    let mut f = std::fs::File::open(console_log).ok()?;
    let len = f.metadata().ok()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(64 << 10))).ok()?;
    let mut tail = Vec::new();
    f.read_to_end(&mut tail).ok()?;
    let text = String::from_utf8_lossy(&tail);
    let line = text
        .lines()
        .rev()
        .find(|l| l.contains("Kernel panic - not syncing"))?;
    let msg = line.split("Kernel panic - not syncing").nth(1)?;
    Some(msg.trim_start_matches([':', ' ']).trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_parse_and_become_binds_at_their_paths() {
        assert_eq!(
            parse_share("/home/u/run:rw").unwrap(),
            Share {
                path: "/home/u/run".into(),
                writable: true
            }
        );
        assert!(parse_share("/data").is_err());
        assert!(parse_share("rel:ro").is_err());
        let binds = guest_binds(&[parse_share("/data/:ro").unwrap()]);
        assert_eq!(binds[0].target, "/usr");
        assert_eq!(binds[1].source, "data");
        assert_eq!(binds[1].target, "/data");
        for b in &binds {
            vm_guest_proto::check_bind(b).unwrap();
        }
    }

    #[test]
    fn qemus_end_is_explained() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        std::fs::write(&log, "[    1.0] ok\n").unwrap();
        let killed = std::process::ExitStatus::from_raw(9);
        assert_eq!(why_qemu_ended(killed, &log), "QEMU was killed by SIGKILL");
        let clean = std::process::ExitStatus::from_raw(0);
        assert!(why_qemu_ended(clean, &log).starts_with("the guest powered off"));
        std::fs::write(
            &log,
            "[    2.1] sysrq: Trigger a crash\n[    2.1] Kernel panic - not syncing: sysrq triggered crash\n[    2.2] Rebooting in 1 seconds..\n",
        )
        .unwrap();
        assert_eq!(
            why_qemu_ended(clean, &log),
            "the guest kernel panicked: sysrq triggered crash"
        );
    }
}
