//! What only the guest's init (PID 1) does: the boot sequence
//! ([`run_as_init`]), the console shell, the heartbeat, and power-off.
//!
//! PID 1 must never exit (the kernel panics); a fatal error is printed on the
//! console and the VM powered off, so the host sees its QEMU end.

use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_guest_proto::{FromGuest, HEARTBEAT_INTERVAL_MS, PORT_NAME, VERSION};

use crate::agent::{self, Agent, Out, SystemGuest};
use crate::kernel;
use crate::mounts;
use crate::port::{self, PortWriter};
use crate::reaper::Reaper;

/// The search path of the console shell.
pub const GUEST_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The serial console the interactive shell runs on.
pub const CONSOLE_TTY: &str = "/dev/ttyS0";

/// How long to wait for the control port after loading the modules.
pub const PORT_TIMEOUT: Duration = Duration::from_secs(20);

/// Boot the guest and serve the host for ever. Refuses (exits) unless this
/// process is PID 1: everything after this point changes the machine.
pub fn run_as_init() -> ! {
    if std::process::id() != 1 {
        eprintln!(
            "hobbes-guest-agent: this is the init of a VM enclave's guest (PID 1 of its \
             initramfs, built by scripts/vm-image.sh); it does not run on a host"
        );
        std::process::exit(2);
    }
    match std::panic::catch_unwind(boot) {
        Ok(Err(e)) => fatal(&e),
        Err(_) => fatal("the agent panicked (the message is above)"),
    }
}

/// The boot sequence; returns only with a fatal error.
fn boot() -> Result<std::convert::Infallible, String> {
    for warning in mounts::mount_early()? {
        crate::log!("{warning}");
    }
    // Before any child exists: PID 1 reaps every process of the guest.
    Reaper::global();
    // Not fatal: a module may be built into another kernel; a missing port
    // is caught below with a clearer message.
    if let Err(e) = kernel::load_modules(Path::new(kernel::MODULES_DIR)) {
        crate::log!("{e}");
    }
    std::thread::Builder::new()
        .name("console".into())
        .spawn(console_shell)
        .map_err(|e| format!("cannot start the console shell's thread: {e}"))?;

    let (dev, mut port) = port::open_port(PORT_NAME, PORT_TIMEOUT)?;
    if kernel::echo_mode(&kernel::cmdline()) {
        crate::log!("echo mode on {}", dev.display());
        port::echo(&mut port);
    }
    let writer = port
        .try_clone()
        .map_err(|e| format!("cannot duplicate the control port {}: {e}", dev.display()))?;
    let out: Out = Arc::new(PortWriter::new(writer));
    out.send(&FromGuest::Hello {
        version: VERSION,
        kernel: kernel::release(),
        uptime_ms: kernel::uptime_ms(),
    });
    let mut agent = Agent::new(SystemGuest::new(out.clone()), out.clone());
    agent::serve(&mut agent, &mut port, || start_heartbeat(out.clone()))
}

/// Print `error`, power off, and never return.
fn fatal(error: &str) -> ! {
    crate::log!("fatal: {error}");
    power_off("fatal error");
    // Powering off failed: PID 1 still must not exit.
    loop {
        std::thread::park();
    }
}

/// Flush the file systems and power the VM off. Returns only if that is
/// impossible: not PID 1 (a development host), or reboot(2) failed.
pub fn power_off(reason: &str) {
    if std::process::id() != 1 {
        crate::log!("not PID 1, so not powering off ({reason})");
        return;
    }
    crate::log!("powering off: {reason}");
    nix::unistd::sync();
    // SAFETY: reboot(2) takes a plain command number and touches no memory
    // of ours; on success it does not return.
    let rc = unsafe { libc::reboot(libc::RB_POWER_OFF) };
    if rc != 0 {
        crate::log!("cannot power off: {}", std::io::Error::last_os_error());
    }
}

/// Send a heartbeat every [`HEARTBEAT_INTERVAL_MS`] from a thread of its
/// own, whatever the request loop is doing.
fn start_heartbeat(out: Out) {
    let spawned = std::thread::Builder::new()
        .name("heartbeat".into())
        .spawn(move || {
            let mut seq = 0u64;
            loop {
                std::thread::sleep(Duration::from_millis(HEARTBEAT_INTERVAL_MS));
                seq += 1;
                out.send(&FromGuest::Heartbeat { seq });
            }
        });
    if let Err(e) = spawned {
        crate::log!("cannot start the heartbeat thread: {e}");
    }
}

/// An interactive `/bin/sh` on [`CONSOLE_TTY`], started again whenever it
/// exits (at most once a second, should it die at once).
fn console_shell() {
    loop {
        let started = Instant::now();
        match spawn_shell() {
            Ok(ended) => {
                let _ = ended.recv();
            }
            Err(e) => crate::log!("cannot start the console shell on {CONSOLE_TTY}: {e}"),
        }
        if started.elapsed() < Duration::from_secs(1) {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

/// Start the shell in a session of its own with the console as its
/// controlling terminal (job control and ^C work); the receiver hears its end.
fn spawn_shell() -> std::io::Result<mpsc::Receiver<hobbes_proto::model::ExitStatus>> {
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(CONSOLE_TTY)?;
    let mut cmd = Command::new("/bin/sh");
    cmd.env_clear()
        .env("TERM", "vt100")
        .env("PATH", GUEST_PATH)
        .env("HOME", "/root")
        .current_dir("/root")
        .stdin(tty.try_clone()?)
        .stdout(tty.try_clone()?)
        .stderr(tty);
    // SAFETY: the closure runs in the forked child before exec and makes only
    // two async-signal-safe system calls on the child's own state: a new
    // session, then the terminal already on fd 0 as its controlling terminal.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (tx, rx) = mpsc::channel();
    Reaper::global().spawn(&mut cmd, move |status| {
        let _ = tx.send(status);
    })?;
    Ok(rx)
}
