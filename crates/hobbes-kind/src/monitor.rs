//! What the kinds whose control agent is a *monitor* process share (the LWK
//! kind's `leviathan lwk-monitor`, the VM kind's `leviathan vm-monitor`):
//! the driver starts the monitor, reads its one readiness line, and kills
//! it at the end; the monitor takes CPU lists as arguments and says `ready`
//! or `error: <why>` on its stdout.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsFd;
use std::process::Child;
use std::time::{Duration, Instant};

use hobbes_proto::model::{CoreId, EnclaveRecord};
use hobbes_sys::process as proc_sys;

use crate::{DriverResult, StartContext, CONTROL_CREDENTIAL_ENV};

/// A CPU (or NUMA node) list as one command-line argument ("2-3,7").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuList(pub Vec<CoreId>);

/// Parse a CPU list ("0-3,8"), for clap's `value_parser`.
pub fn parse_cpu_list(s: &str) -> Result<CpuList, String> {
    let mut out = Vec::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let parse = |v: &str| {
            v.trim()
                .parse::<CoreId>()
                .map_err(|_| format!("{s:?} is not a CPU list (\"0-3,8\")"))
        };
        let (a, b) = (parse(a)?, parse(b)?);
        if a > b {
            return Err(format!("{s:?} is not a CPU list: {a}-{b} runs backwards"));
        }
        out.extend(a..=b);
    }
    if out.is_empty() {
        return Err("an empty CPU list".into());
    }
    Ok(CpuList(out))
}

/// A monitor's environment: its credential, and what helps diagnose it.
pub fn monitor_env(ctx: &StartContext) -> Vec<(String, String)> {
    let mut env = vec![(
        CONTROL_CREDENTIAL_ENV.to_string(),
        ctx.control_credential.clone(),
    )];
    // HOBBES_QEMU and HOBBES_VIRTIOFSD choose the VM kind's programs.
    for key in [
        "PATH",
        "HOBBES_LOG",
        "RUST_BACKTRACE",
        "HOBBES_QEMU",
        "HOBBES_VIRTIOFSD",
    ] {
        if let Ok(v) = std::env::var(key) {
            env.push((key.to_string(), v));
        }
    }
    env
}

/// Kill the recorded monitor of `rec` (if it still runs) and wait until it
/// is gone: what it holds (a VM, its RAM, its cores) goes with it. `what`
/// names it in messages ("LWK monitor").
pub fn kill_monitor(rec: &EnclaveRecord, what: &str) -> DriverResult<()> {
    let Some(pid) = rec
        .control_pid
        .filter(|p| proc_sys::same_process_alive(*p, rec.control_start_time))
    else {
        return Ok(());
    };
    let _ = proc_sys::kill(pid, libc::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(5);
    while proc_sys::same_process_alive(pid, rec.control_start_time) {
        if Instant::now() > deadline {
            return Err(format!(
                "the {what} of enclave {} (pid {pid}) survived SIGKILL",
                rec.name
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

/// Wait for a monitor's first line on its stdout: `ready` once it is about
/// to attach, or `error: <why>`. A monitor that exits or says nothing
/// within `timeout` failed too. `what` names it in messages ("VM monitor").
pub fn wait_ready(child: &mut Child, timeout: Duration, what: &str) -> DriverResult<()> {
    let Some(out) = child.stdout.take() else {
        return Err(format!("the {what} has no stdout"));
    };
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "the {what} was not ready within {timeout:?} (see leviathan's log)"
            ));
        }
        let mut fds = [nix::poll::PollFd::new(
            out.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        match nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms)) {
            Ok(0) => continue,
            Ok(_) => break,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(format!("cannot wait for the {what}: {e}")),
        }
    }
    // Readable: a whole line follows at once (one small write), or EOF.
    let mut line = String::new();
    let _ = BufReader::new(out).read_line(&mut line);
    parse_ready(line.trim_end(), what)
}

/// A monitor's readiness line, as [`wait_ready`] reads it.
pub fn parse_ready(line: &str, what: &str) -> DriverResult<()> {
    match line {
        "ready" => Ok(()),
        "" => Err(format!(
            "the {what} exited before it was ready (see leviathan's log)"
        )),
        other => Err(other.strip_prefix("error: ").unwrap_or(other).to_string()),
    }
}

/// Tell the driver how start-up went: one line on stdout (`ready`, or
/// `error: <why>` on one line).
pub fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", line.replace('\n', "; "));
    let _ = out.flush();
}

/// After `ready`: nothing else goes to stdout, whose reader (the driver in
/// the daemon that started us) is gone, perhaps with the daemon.
pub fn stdout_to_null() {
    if let Ok(null) = std::fs::File::options().write(true).open("/dev/null") {
        let _ = nix::unistd::dup2_stdout(&null);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("2-3,7").unwrap().0, vec![2, 3, 7]);
        assert_eq!(parse_cpu_list("1").unwrap().0, vec![1]);
        assert!(parse_cpu_list("").is_err());
        assert!(parse_cpu_list("3-1").is_err());
        assert!(parse_cpu_list("x").is_err());
    }

    #[test]
    fn readiness_lines() {
        assert_eq!(parse_ready("ready", "LWK monitor"), Ok(()));
        assert_eq!(
            parse_ready(
                "error: cannot make the LWK: KVM: no /dev/kvm",
                "LWK monitor"
            ),
            Err("cannot make the LWK: KVM: no /dev/kvm".into())
        );
        assert!(parse_ready("", "VM monitor")
            .unwrap_err()
            .contains("the VM monitor exited before"));
    }
}
