//! The native kind's syscalls: cloning a control process into new
//! namespaces, held before `execve` until its cgroups are set. All `unsafe`
//! in this crate lives here, one small block per call.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::process::Command;

use nix::sched::CloneFlags;

use hobbes_proto::model::CoreId;
use hobbes_sys::process::{pidfd_open, set_affinity};

/// A child created in new namespaces, stopped before `execve` until [`Held::release`].
pub struct Held {
    pub pid: u32,
    go: OwnedFd,
}

impl Held {
    /// Let the child exec (after the caller put it in its cgroups).
    pub fn release(self) -> io::Result<()> {
        nix::unistd::write(&self.go, b"g").map_err(io::Error::from)?;
        Ok(())
    }
}

/// Everything the child needs, built before `clone` so the child never allocates
/// (another thread may hold the allocator's lock at the time of the clone).
struct ExecImage {
    path: CString,
    // Owned strings the pointer arrays below point into.
    _argv: Vec<CString>,
    _envp: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    envp_ptrs: Vec<*const libc::c_char>,
}

impl ExecImage {
    fn new(path: &OsStr, argv: &[String], env: &[(String, String)]) -> io::Result<Self> {
        let cstr = |b: &[u8]| {
            CString::new(b).map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidInput, "NUL byte in exec argument")
            })
        };
        let path = cstr(path.as_bytes())?;
        let argv = argv
            .iter()
            .map(|a| cstr(a.as_bytes()))
            .collect::<io::Result<Vec<_>>>()?;
        let envp = env
            .iter()
            .map(|(k, v)| cstr(format!("{k}={v}").as_bytes()))
            .collect::<io::Result<Vec<_>>>()?;
        let mut argv_ptrs: Vec<_> = argv.iter().map(|a| a.as_ptr()).collect();
        argv_ptrs.push(std::ptr::null());
        let mut envp_ptrs: Vec<_> = envp.iter().map(|a| a.as_ptr()).collect();
        envp_ptrs.push(std::ptr::null());
        Ok(ExecImage {
            path,
            _argv: argv,
            _envp: envp,
            argv_ptrs,
            envp_ptrs,
        })
    }
}

/// Clone a child into new PID, mount, UTS and (unless `new_ipc` is false) IPC namespaces. The child waits
/// on a pipe, then resets its signal mask and execs `path` with `argv`/`env`.
/// It is pid 1 of its PID namespace.
///
/// The child never outlives the daemon before its `exec`: it is a fork of a
/// multi-threaded daemon and inherits every descriptor (the state directory's
/// lock, the node lock socket, other children's go pipes), so a child stranded
/// by a `kill -9` of the daemon would hold the node. Therefore, before waiting,
/// the child
/// - asks for `SIGKILL` when the thread that cloned it dies (`PR_SET_PDEATHSIG`),
/// - closes every descriptor but stdio, its go pipe's read end and a pidfd of
///   the daemon (so it holds no lock and no pipe's write end, its own included),
/// - waits for either the go byte or the daemon's exit (the pidfd), which also
///   covers a daemon that died before `PR_SET_PDEATHSIG` took effect.
///
/// Once released it clears the death signal: the control process must outlive
/// the client thread that created its enclave.
pub fn spawn_in_new_namespaces(
    path: &OsStr,
    argv: &[String],
    env: &[(String, String)],
    new_ipc: bool,
) -> io::Result<Held> {
    let image = ExecImage::new(path, argv, env)?;
    let (go_read, go_write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)?;
    let daemon = pidfd_open(std::process::id())?;
    let keep = KeptFds::new(go_read.as_raw_fd(), daemon.as_raw_fd());
    let mut stack = vec![0u8; 256 * 1024];
    let mut flags = CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS;
    if new_ipc {
        flags |= CloneFlags::CLONE_NEWIPC;
    }
    let child = Box::new(|| -> isize {
        // Only async-signal-safe calls from here on: prctl, close_range, poll,
        // read, sigprocmask, execve, _exit.
        // SAFETY: PR_SET_PDEATHSIG takes a signal number and no pointers.
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
        keep.close_all_others();
        if !keep.wait_for_go() {
            // The daemon gave up on us (closed the pipe) or died: do not run.
            // SAFETY: _exit is always safe to call.
            unsafe { libc::_exit(120) };
        }
        // SAFETY: as above; 0 clears the death signal.
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, 0, 0, 0, 0) };
        // SAFETY: an empty, zero-initialised sigset is valid for SIG_SETMASK; the
        // daemon blocks signals it handles on a thread, and the child must not inherit that.
        unsafe {
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            libc::execve(
                image.path.as_ptr(),
                image.argv_ptrs.as_ptr(),
                image.envp_ptrs.as_ptr(),
            );
            libc::_exit(127)
        }
    });
    // SAFETY: the child runs only the closure above, which performs only
    // async-signal-safe calls on memory prepared before the clone; the stack
    // outlives the call (without CLONE_VM the child has its own copy).
    let pid = unsafe { nix::sched::clone(child, &mut stack, flags, Some(libc::SIGCHLD)) }
        .map_err(io::Error::from)?;
    drop(go_read);
    drop(daemon);
    Ok(Held {
        pid: pid.as_raw() as u32,
        go: go_write,
    })
}

/// The two descriptors a held child keeps: its go pipe and the daemon's pidfd.
#[derive(Clone, Copy)]
struct KeptFds {
    go: i32,
    daemon: i32,
}

impl KeptFds {
    fn new(go: i32, daemon: i32) -> Self {
        KeptFds { go, daemon }
    }

    /// Close every descriptor above stdio except the two kept (async-signal-safe).
    fn close_all_others(self) {
        let (lo, hi) = (
            self.go.min(self.daemon) as u32,
            self.go.max(self.daemon) as u32,
        );
        for (first, last) in [
            (3, lo.wrapping_sub(1)),
            (lo + 1, hi - 1),
            (hi + 1, u32::MAX),
        ] {
            if first <= last && first >= 3 {
                // SAFETY: close_range takes two integers and flags; it only closes
                // descriptors of this (child) process, none of which Rust code owns
                // after the clone.
                unsafe { libc::syscall(libc::SYS_close_range, first, last, 0) };
            }
        }
    }

    /// Block until the daemon says go (true), or hangs up or dies (false).
    fn wait_for_go(self) -> bool {
        let mut fds = [
            libc::pollfd {
                fd: self.go,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.daemon,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        loop {
            // SAFETY: poll reads and writes the two-element array on our stack.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
            if n < 0 {
                if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                return false;
            }
            if fds[1].revents != 0 {
                return false; // the daemon exited
            }
            if fds[0].revents != 0 {
                let mut byte = 0u8;
                // SAFETY: reading one byte into a valid stack buffer from an fd we own.
                let r = unsafe { libc::read(self.go, (&mut byte as *mut u8).cast(), 1) };
                return r == 1;
            }
        }
    }
}

/// Make `cmd`'s child pin itself to `cores` before it execs.
pub fn pin_before_exec(cmd: &mut Command, cores: Vec<CoreId>) {
    // SAFETY: the closure runs between fork and exec and only calls
    // sched_setaffinity, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || set_affinity(0, &cores));
    }
}
