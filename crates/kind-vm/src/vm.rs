//! One VM: its virtiofsd, its QEMU and the guest handshake, up to a guest
//! whose agent is ready ([`Vm::start`]). The monitor runs one per enclave;
//! `hobbes-bench vm` boots one without a daemon (the raw baseline), and so
//! does the cgroup-v2 smoke run (`examples/vm-run.rs`).

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::Duration;

use vm_guest_proto::Bind;

use crate::console::Console;
use crate::guest::{handshake, GuestInfo, GuestLink};
use crate::qemu::{Accel, QemuConfig, CONSOLE_FD, GUEST_FD, QMP_FD};
use crate::qmp::Qmp;
use crate::sys::spawn_confined;

/// A host directory shared with the guest (`--share PATH:ro|rw`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    /// Absolute host path; the guest sees it at the same path.
    pub path: String,
    /// The guest may write it.
    pub writable: bool,
}

/// Parse `PATH:ro` or `PATH:rw`.
pub fn parse_share(s: &str) -> anyhow::Result<Share> {
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
pub fn guest_binds(shares: &[Share]) -> Vec<Bind> {
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

/// What one VM runs, where, and what it sees of the host.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// QEMU's name is `hobbes-<name>`; the guest's hostname is `name`.
    pub name: String,
    /// Its working directory: console.log, qemu.log, virtiofsd.log, the
    /// export tree and virtiofsd's socket.
    pub dir: PathBuf,
    /// Host cores: one vCPU pinned to each.
    pub cores: Vec<u32>,
    /// Guest RAM, bytes (a multiple of 2 MiB).
    pub guest_bytes: u64,
    /// Host NUMA nodes guest RAM is bound to (none: no policy).
    pub numa_nodes: Vec<u32>,
    /// The accelerator.
    pub accel: Accel,
    /// Guest kernel.
    pub kernel: PathBuf,
    /// Initramfs.
    pub initrd: PathBuf,
    /// Kernel command line.
    pub cmdline: String,
    /// Share the host's /usr (read-only) and `shares` through virtiofsd
    /// (root only). Building the export tree unshares the calling thread's
    /// mount namespace.
    pub host_files: bool,
    /// Host directories for the guest.
    pub shares: Vec<Share>,
    /// Cgroups QEMU and virtiofsd join (their `cgroup.procs`).
    pub cgroups: Vec<PathBuf>,
    /// How long the guest may take to boot to its agent's `ready`.
    pub boot_timeout: Duration,
    /// The guest agent runs its echo mode (`hobbes.echo=1` on the command
    /// line: every byte on the port comes back, no protocol): no handshake;
    /// the channel is [`Vm::guest_reader`]. For the benchmark's floor.
    pub echo: bool,
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

/// A running VM whose guest agent is ready.
pub struct Vm {
    /// QEMU (killed when the `Vm` drops, unless taken out).
    pub qemu: Option<Child>,
    /// QEMU's pid.
    pub qemu_pid: u32,
    /// virtiofsd, when host files are shared (killed when the `Vm` drops).
    pub virtiofsd: Option<Child>,
    /// The guest agent's link; start its reader with [`GuestLink::serve`]
    /// on [`Vm::guest_reader`].
    pub link: Arc<GuestLink>,
    /// The reading half of the guest channel.
    pub guest_reader: Option<UnixStream>,
    /// The serial console.
    pub console: Arc<Console>,
    /// What the guest said at start-up.
    pub info: GuestInfo,
    /// The export tree's mount (in the starting thread's mount namespace).
    export: Option<PathBuf>,
}

impl Drop for Vm {
    fn drop(&mut self) {
        for child in [self.qemu.take(), self.virtiofsd.take()]
            .into_iter()
            .flatten()
        {
            drop(KillOnDrop(Some(child)));
        }
        // The export tree is mounted in the namespace of the thread that
        // started the VM (usually the one dropping it): unmounted, its
        // directory can be removed with the VM's.
        if let Some(export) = self.export.take() {
            let _ = nix::mount::umount2(&export, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

impl Vm {
    /// Start the VM of `cfg` and wait for its guest agent: virtiofsd (with
    /// host files), QEMU in `cfg.cgroups` with its channels on inherited
    /// socket pairs, each vCPU thread pinned to its core, then the guest
    /// handshake. Call it from a thread that outlives the VM: QEMU and
    /// virtiofsd die with it (their parent-death signal).
    pub fn start(cfg: &VmConfig) -> anyhow::Result<Vm> {
        let virtiofsd = if cfg.host_files {
            Some(KillOnDrop(Some(start_virtiofsd(cfg)?)))
        } else {
            None
        };
        let (qmp_ours, qmp_theirs) = UnixStream::pair()?;
        let (console_ours, console_theirs) = UnixStream::pair()?;
        let (mut guest_ours, guest_theirs) = UnixStream::pair()?;
        let config = QemuConfig {
            name: format!("hobbes-{}", cfg.name),
            accel: cfg.accel,
            vcpus: cfg.cores.len(),
            guest_bytes: cfg.guest_bytes,
            numa_nodes: cfg.numa_nodes.clone(),
            kernel: cfg.kernel.clone(),
            initrd: cfg.initrd.clone(),
            cmdline: cfg.cmdline.clone(),
            console_log: cfg.dir.join("console.log"),
            virtiofs_socket: cfg.host_files.then(|| cfg.dir.join("virtiofs.sock")),
        };
        let qemu_bin = crate::qemu::qemu_binary();
        let mut cmd = Command::new(&qemu_bin);
        cmd.args(config.args());
        let qemu = spawn_confined(
            cmd,
            &cfg.cgroups,
            &cfg.dir.join("qemu.log"),
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
        let mut qmp = Qmp::connect(qmp_ours)
            .map_err(|e| anyhow::anyhow!("{e}{}", qemu_log_tail(&cfg.dir)))?;
        pin_vcpus(&mut qmp, &cfg.cores)?;
        let console = Console::start(console_ours)?;
        let binds = if cfg.host_files {
            guest_binds(&cfg.shares)
        } else {
            Vec::new()
        };
        let info = if cfg.echo {
            GuestInfo {
                kernel: String::new(),
                ready_uptime_ms: 0,
            }
        } else {
            handshake(
                &mut guest_ours,
                &cfg.name,
                cfg.host_files,
                binds,
                cfg.boot_timeout,
            )
            .map_err(|e| anyhow::anyhow!("{e}{}", console_tail(&cfg.dir)))?
        };
        let link = GuestLink::new(guest_ours.try_clone()?)?;
        Ok(Vm {
            qemu: qemu.0.take(),
            qemu_pid,
            virtiofsd: virtiofsd.and_then(|mut v| v.0.take()),
            link,
            guest_reader: Some(guest_ours),
            console,
            info,
            export: cfg.host_files.then(|| cfg.dir.join("export")),
        })
    }

    /// Run `argv` in the guest as root (after [`Vm::serve_link`]), its
    /// output copied to `stdout` and `stderr`, and wait for its end. `app`
    /// names it on the link (unique per VM).
    pub fn run(
        &self,
        app: u64,
        argv: &[String],
        cwd: Option<&str>,
        stdout: impl Write + Send + 'static,
        stderr: impl Write + Send + 'static,
    ) -> anyhow::Result<hobbes_proto::model::ExitStatus> {
        let (out_r, out_w) = nix::unistd::pipe()?;
        let (err_r, err_w) = nix::unistd::pipe()?;
        let copy = |from: OwnedFd, mut to: Box<dyn Write + Send>| {
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut std::fs::File::from(from), &mut to);
                let _ = to.flush();
            })
        };
        let copiers = [copy(out_r, Box::new(stdout)), copy(err_r, Box::new(stderr))];
        let (reporter, ended) = hobbes_agent::testing::reporter(app);
        self.link
            .launch(
                vm_guest_proto::GuestLaunch {
                    app,
                    argv: argv.to_vec(),
                    env: vec![(
                        "PATH".into(),
                        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
                    )],
                    cwd: cwd.map(str::to_string),
                    uid: 0,
                    gid: 0,
                },
                std::fs::File::from(out_w),
                std::fs::File::from(err_w),
                reporter,
            )
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let (status, _) = ended
            .recv()
            .map_err(|_| anyhow::anyhow!("the guest ended before the program did"))?;
        for c in copiers {
            let _ = c.join();
        }
        Ok(status)
    }

    /// Start the link's reader thread (once).
    pub fn serve_link(&mut self) -> std::io::Result<()> {
        if let Some(reader) = self.guest_reader.take() {
            let link = self.link.clone();
            std::thread::Builder::new()
                .name("guest-link".into())
                .spawn(move || link.serve(reader))?;
        }
        Ok(())
    }
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
fn start_virtiofsd(cfg: &VmConfig) -> anyhow::Result<Child> {
    let shares = &cfg.shares;
    use nix::mount::{mount, MsFlags};
    let bin = virtiofsd_binary()?;
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
        .map_err(|e| anyhow::anyhow!("cannot make a mount namespace: {e}"))?;
    hobbes_agent::mounts::make_private()?;
    let export = cfg.dir.join("export");
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
    let socket = cfg.dir.join("virtiofs.sock");
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
        &cfg.cgroups,
        &cfg.dir.join("virtiofsd.log"),
        vec![(OwnedFd::from(listener), LISTEN_FD)],
    )
    .map_err(|e| anyhow::anyhow!("cannot start {}: {e}", bin.display()))
}

/// The guest console's last lines, for a boot error (the enclave's
/// directory, and its console.log, go when a failed creation is rolled back).
fn console_tail(dir: &Path) -> String {
    let text = std::fs::read_to_string(dir.join("console.log")).unwrap_or_default();
    let tail: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .rev()
        .take(3)
        .collect();
    if tail.is_empty() {
        " (the guest printed nothing on its console)".into()
    } else {
        format!(
            "; the console's last lines: {}",
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        )
    }
}

/// The last lines of qemu.log, for an error message.
fn qemu_log_tail(dir: &Path) -> String {
    let text = std::fs::read_to_string(dir.join("qemu.log")).unwrap_or_default();
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
pub fn why_qemu_ended(status: std::process::ExitStatus, console_log: &Path) -> String {
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
