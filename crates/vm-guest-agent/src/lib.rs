#![deny(missing_docs)]

//! The guest side of a VM enclave: `hobbes-guest-agent` is `/init` of the
//! guest's initramfs (PID 1) and the enclave's control agent inside the VM.
//!
//! It talks to the monitor on the host over one virtio-serial port
//! ([`vm_guest_proto::PORT_NAME`]) with the messages of `vm-guest-proto`.
//!
//! The modules, in the order a boot uses them:
//! * [`init`]: what only PID 1 does (early mounts, module loading, the console
//!   shell, power-off on a fatal error), behind [`init::run_as_init`];
//! * [`kernel`]: facts read from the kernel (command line, release, uptime)
//!   and the module load list;
//! * [`port`]: finding and opening the control port, the framed writer every
//!   thread shares, and the echo mode;
//! * [`agent`]: the request handling ([`agent::Agent`], host-testable with a
//!   fake [`agent::Guest`]) and the read loop;
//! * [`mounts`]: the mounts of `Setup` (the host's export and its binds);
//! * [`apps`]: launching apps, forwarding their output, reporting their exit
//!   after that output;
//! * [`reaper`]: the one thread that reaps every child (PID 1 adopts orphans);
//! * [`files`]: `ReadFile`/`WriteFile` under the caller's file-system identity.
//!
//! Everything that changes the machine (mounts, hostname, reboot) is reached
//! only from [`init::run_as_init`], which refuses to run unless the process is
//! PID 1, so the unit tests can drive the rest on a development host.

pub mod agent;
pub mod apps;
pub mod files;
pub mod init;
pub mod kernel;
pub mod mounts;
pub mod port;
pub mod reaper;

/// Print a line for people on the guest's console (`/dev/console`, the serial
/// console the host logs), prefixed with the agent's name. Falls back to
/// stderr where there is no console (unit tests on a host).
pub fn log(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let line = format!("hobbes-guest-agent: {args}\n");
    // Only the guest's init writes to /dev/console: on a development host
    // (unit tests) that would be the host's console.
    if std::process::id() == 1 {
        // O_NOCTTY: PID 1 is a session leader without a controlling terminal;
        // opening a terminal without it would make the console init's terminal.
        let console = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open("/dev/console");
        if let Ok(mut c) = console {
            let _ = c.write_all(line.as_bytes());
            return;
        }
    }
    let _ = std::io::stderr().write_all(line.as_bytes());
}

/// `log!("...", args)`: [`log()`] with `format!` arguments.
#[macro_export]
macro_rules! log {
    ($($arg:tt)*) => { $crate::log(format_args!($($arg)*)) };
}
