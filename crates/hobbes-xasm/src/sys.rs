//! What stays XASM's own: the process-wide SIGSEGV handler of the
//! mprotect mechanism, the cycle counter, and descriptor counts. The
//! memfd, mapping, futex and userfaultfd wrappers come from `hobbes-sys`.

use std::ffi::{c_int, c_void};
use std::sync::OnceLock;

use nix::errno::Errno;

fn check(r: c_int) -> Result<c_int, Errno> {
    if r < 0 {
        Err(Errno::last())
    } else {
        Ok(r)
    }
}

/// How many descriptors this process has open (for leak checks).
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

// -------------------------------------------------------------- SIGSEGV

/// The handler that was installed before ours (chained to for faults that
/// are not ours).
static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();

/// Install the process-wide SIGSEGV handler (once; later calls do nothing).
/// Write faults on pages [`crate::track::on_write_fault`] claims are
/// resolved there; everything else goes to the previous handler.
pub fn install_segv_handler() -> Result<(), Errno> {
    static INSTALLED: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let mut done = INSTALLED.lock().unwrap_or_else(|p| p.into_inner());
    if *done {
        return Ok(());
    }
    // SAFETY: zeroed sigaction structures are valid (empty masks, no flags).
    let mut new: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    new.sa_sigaction = segv_handler as *const () as usize;
    new.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_RESTART;
    // SAFETY: sigemptyset on our own structure.
    unsafe { libc::sigemptyset(&mut new.sa_mask) };
    // Record the old handler before ours can run: query first, then install.
    // SAFETY: querying with a NULL new action changes nothing.
    check(unsafe { libc::sigaction(libc::SIGSEGV, std::ptr::null(), &mut old) })?;
    let _ = PREVIOUS.set(old);
    // SAFETY: installs a handler that only uses async-signal-safe operations
    // (atomics, mprotect, sigaction, raise) and chains to `old`.
    check(unsafe { libc::sigaction(libc::SIGSEGV, &new, std::ptr::null_mut()) })?;
    *done = true;
    Ok(())
}

/// `si_code` of a fault on a mapped page without the needed permission.
const SEGV_ACCERR: c_int = 2;

extern "C" fn segv_handler(sig: c_int, info: *mut libc::siginfo_t, ctx: *mut c_void) {
    // SAFETY: for an SA_SIGINFO handler the kernel passes a valid siginfo.
    let (addr, code) = unsafe { ((*info).si_addr() as usize, (*info).si_code) };
    if code == SEGV_ACCERR && crate::track::on_write_fault(addr) {
        return;
    }
    chain(sig, info, ctx, code);
}

/// Hand a fault that is not ours to the previous handler, or to the default
/// action (termination, with a core dump where enabled).
fn chain(sig: c_int, info: *mut libc::siginfo_t, ctx: *mut c_void, code: c_int) {
    let prev = PREVIOUS.get();
    let action = prev.map(|p| p.sa_sigaction).unwrap_or(libc::SIG_DFL);
    if action == libc::SIG_DFL || action == libc::SIG_IGN {
        // SAFETY: zeroed is SIG_DFL with an empty mask.
        let dfl: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: restoring the default action; async-signal-safe.
        unsafe { libc::sigaction(libc::SIGSEGV, &dfl, std::ptr::null_mut()) };
        if code <= 0 {
            // Sent by kill(): it does not repeat on return, so raise it again.
            // SAFETY: raise is async-signal-safe.
            unsafe { libc::raise(sig) };
        }
        // A fault repeats on return and now takes the default action.
        return;
    }
    let flags = prev.map(|p| p.sa_flags).unwrap_or(0);
    if flags & libc::SA_SIGINFO != 0 {
        // SAFETY: the previous SA_SIGINFO handler has this signature; we
        // pass the kernel's own arguments.
        let f: extern "C" fn(c_int, *mut libc::siginfo_t, *mut c_void) =
            unsafe { std::mem::transmute(action) };
        f(sig, info, ctx);
    } else {
        // SAFETY: a plain handler takes the signal number only.
        let f: extern "C" fn(c_int) = unsafe { std::mem::transmute(action) };
        f(sig);
    }
}

/// Read the cycle counter (x86-64 `rdtsc`; 0 elsewhere).
pub fn cycles() -> u64 {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: rdtsc has no preconditions on x86-64.
    return unsafe { core::arch::x86_64::_rdtsc() };
    #[cfg(not(target_arch = "x86_64"))]
    return 0;
}

/// The global pid of this process (its pid in the initial namespace when
/// visible, else the namespace's pid).
pub fn pid() -> u32 {
    std::process::id()
}
