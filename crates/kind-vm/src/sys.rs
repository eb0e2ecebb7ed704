//! The one place this crate talks to the kernel unsafely: starting a child
//! (QEMU, virtiofsd) that joins the enclave's cgroups, dies with the
//! monitor, and finds its channels at fixed descriptor numbers.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// Start a child (`cmd`) that joins `cgroups` (each path's `cgroup.procs`)
/// before it runs, dies with the monitor's main thread (its parent-death
/// signal; call this from that thread), and logs to `log`. Each of `fds` is
/// placed at its target number in the child.
pub fn spawn_confined(
    mut cmd: Command,
    cgroups: &[PathBuf],
    log: &Path,
    fds: Vec<(OwnedFd, RawFd)>,
) -> std::io::Result<Child> {
    let procs: Vec<CString> = cgroups
        .iter()
        .map(|c| CString::new(c.join("cgroup.procs").as_os_str().as_encoded_bytes()))
        .collect::<Result<_, _>>()
        .map_err(|_| std::io::Error::other("a cgroup path has a NUL byte"))?;
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let err = out.try_clone()?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    if fds.len() > 8 {
        return Err(std::io::Error::other("more than 8 inherited descriptors"));
    }
    let moves: Vec<(RawFd, RawFd)> = fds.iter().map(|(f, t)| (f.as_raw_fd(), *t)).collect();
    // Far above any target, so no dup2 below clobbers a source still to move.
    const SCRATCH: RawFd = 64;
    // SAFETY: the closure runs in the forked child before exec and calls only
    // async-signal-safe functions (prctl, open, write, close, dup2, fcntl) on
    // memory prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            for path in &procs {
                let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // "0": the writing process itself.
                let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                let e = std::io::Error::last_os_error();
                libc::close(fd);
                if n != 1 {
                    return Err(e);
                }
            }
            let mut high = [0 as RawFd; 8];
            for (i, (fd, _)) in moves.iter().enumerate().take(high.len()) {
                high[i] = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, SCRATCH);
                if high[i] < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for (i, (_, target)) in moves.iter().enumerate().take(high.len()) {
                // dup2 clears FD_CLOEXEC on the target; the scratch copy
                // closes at exec.
                if libc::dup2(high[i], *target) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd.spawn();
    // Our copies of the child's ends close here: it holds the only ones.
    drop(fds);
    child
}
