//! The few host system calls the monitor makes that have no safe wrapper:
//! futexes on guest memory, kicking a vCPU thread out of `KVM_RUN`,
//! per-thread credentials, and calls whose results are raw kernel structs.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::Once;

/// The signal that kicks a vCPU thread out of `KVM_RUN` or a blocking call.
pub fn kick_signal() -> i32 {
    libc::SIGRTMIN() + 5
}

extern "C" fn on_kick(_: libc::c_int) {}

/// Install the (empty) handler of the kick signal once per process, without
/// `SA_RESTART`, so it interrupts `KVM_RUN` and blocking calls with `EINTR`.
pub fn install_kick_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: a zeroed sigaction is valid; the handler is an extern "C"
        // function that does nothing (async-signal-safe); we replace the
        // disposition of a real-time signal no other part of the process uses.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_kick as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            sa.sa_flags = 0;
            libc::sigaction(kick_signal(), &sa, std::ptr::null_mut());
        }
    });
}

/// This thread's kernel id.
pub fn gettid() -> i32 {
    rustix::thread::gettid().as_raw_nonzero().get()
}

/// Send the kick signal to thread `tid` of this process.
pub fn kick(tid: i32) {
    // SAFETY: tgkill with our own pid and a tid of ours; a stale tid gets
    // ESRCH, which is fine (that thread is gone).
    unsafe {
        libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, kick_signal());
    }
}

/// `futex(2)` on a word of guest RAM, all arguments already translated to
/// host addresses (`uaddr`, `uaddr2`) and host memory (`timeout`).
pub fn futex(
    uaddr: usize,
    op: i32,
    val: u32,
    timeout: Option<&libc::timespec>,
    val2: usize,
    uaddr2: usize,
    val3: u32,
) -> i64 {
    let t = timeout.map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // For the requeue/wake-op operations the 4th argument is a count (val2),
    // not a timeout.
    let arg4: usize = if timeout.is_some() { t as usize } else { val2 };
    // SAFETY: `uaddr`/`uaddr2` are host addresses of aligned u32 words inside
    // guest RAM, which stays mapped while the LWK lives (checked by
    // AddressSpace::host_u32); `timeout` points to a local value.
    let r = unsafe { libc::syscall(libc::SYS_futex, uaddr, op, val, arg4, uaddr2, val3) };
    if r < 0 {
        -(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EINVAL) as i64)
    } else {
        r
    }
}

/// Set this thread's file-system uid and gid (the credentials the kernel
/// checks file access with), so forwarded calls act as the app's user;
/// returns the previous ones. Per thread: the raw system calls, not glibc's
/// process-wide wrappers.
pub fn set_fs_ids(uid: u32, gid: u32) -> (u32, u32) {
    // SAFETY: setfsgid/setfsuid take integers, change only this thread, and
    // return the previous id.
    unsafe {
        let old_gid = libc::syscall(libc::SYS_setfsgid, gid) as u32;
        let old_uid = libc::syscall(libc::SYS_setfsuid, uid) as u32;
        (old_uid, old_gid)
    }
}

/// `getdents64` into `buf`.
pub fn getdents64(fd: BorrowedFd<'_>, buf: &mut [u8]) -> i64 {
    // SAFETY: `buf` is our own writable buffer of the length passed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_getdents64,
            fd.as_raw_fd(),
            buf.as_mut_ptr(),
            buf.len(),
        )
    };
    ret(r)
}

/// An `ioctl` whose argument is a buffer of `buf.len()` bytes (TCGETS,
/// TIOCGWINSZ, FIONREAD), or an integer when `buf` is empty.
pub fn ioctl_buf(fd: BorrowedFd<'_>, request: u64, buf: &mut [u8]) -> i64 {
    // SAFETY: the requests we forward (see calls.rs) read or write at most
    // `buf.len()` bytes at the pointer: TCGETS 60, TIOCGWINSZ 8, FIONREAD 4.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), request as _, buf.as_mut_ptr()) };
    ret(r as i64)
}

/// A raw system call with integer-only arguments (no pointers), for calls
/// forwarded as they are (getppid, sched_yield, umask, ...).
pub fn plain(nr: i64, a: [u64; 3]) -> i64 {
    // SAFETY: callers pass only calls whose arguments are integers, never
    // pointers (see `calls::PLAIN`).
    let r = unsafe { libc::syscall(nr, a[0], a[1], a[2]) };
    ret(r)
}

fn ret(r: i64) -> i64 {
    if r < 0 {
        -(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EINVAL) as i64)
    } else {
        r
    }
}

/// Bind this thread's memory policy to NUMA `nodes` (`MPOL_BIND`), so the
/// pages it allocates next come from them; `Ok(false)` when `nodes` is
/// empty (nothing to bind).
pub fn bind_memory(nodes: &[u32]) -> std::io::Result<bool> {
    if nodes.is_empty() {
        return Ok(false);
    }
    let max = *nodes.iter().max().unwrap_or(&0) as usize + 1;
    let mut mask = vec![0u64; max.div_ceil(64)];
    for n in nodes {
        mask[*n as usize / 64] |= 1 << (n % 64);
    }
    const MPOL_BIND: i32 = 2;
    // SAFETY: `mask` is our own buffer of `mask.len() * 64` bits; the kernel
    // reads `maxnode` bits of it (one more than the highest node).
    let r = unsafe {
        libc::syscall(
            libc::SYS_set_mempolicy,
            MPOL_BIND,
            mask.as_ptr(),
            (mask.len() * 64) as u64,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(true)
}

/// Back to the default memory policy (after [`bind_memory`]).
pub fn unbind_memory() {
    const MPOL_DEFAULT: i32 = 0;
    // SAFETY: MPOL_DEFAULT takes no node mask.
    unsafe {
        libc::syscall(
            libc::SYS_set_mempolicy,
            MPOL_DEFAULT,
            std::ptr::null::<u64>(),
            0u64,
        );
    }
}

/// Run this thread only when its cores have nothing else to run
/// (`SCHED_IDLE`): for background work such as zeroing freed memory.
pub fn make_idle_priority() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param on our stack; pid 0 is the
    // calling thread, whose policy alone changes.
    unsafe {
        libc::sched_setscheduler(0, libc::SCHED_IDLE, &param);
    }
}
