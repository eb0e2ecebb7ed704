//! Every `unsafe` of the plugin: the entry points `csrc/hobbes_spank.c`
//! calls (C strings and structs in, a return code and a message out), and the
//! system calls the relay makes.
//!
//! Each entry point returns 0 (done), 1 (done, `msg` holds a note) or -1
//! (failed, `msg` holds why); a panic is caught and reported as a failure,
//! never unwound into Slurm.

use std::ffi::{c_char, c_int, CStr};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use hobbes_proto::msg::Owner;
use hobbes_proto::slurm::{SlurmStep, SlurmTask, GROUPS_ENV};

use crate::plugin::{self, Outcome, StepInfo, TaskInfo};

/// `struct hobbes_step` of the shim.
#[repr(C)]
pub struct Step {
    job_id: u32,
    step_id: u32,
    has_het: u32,
    het_component: u32,
    local_tasks: u32,
    mem_mib: u64,
    node: *const c_char,
    uid: u32,
    gid: u32,
    has_groups: u32,
    groups: *const c_char,
    n_global_ids: u32,
    global_ids: *const u32,
    /// `S_STEP_ALLOC_CORES` ("0-3"), NULL when Slurm would not say.
    alloc_cores: *const c_char,
}

/// `struct hobbes_task` of the shim.
#[repr(C)]
pub struct Task {
    job_id: u32,
    step_id: u32,
    has_het: u32,
    het_component: u32,
    task_id: u32,
    local_id: u32,
    argc: c_int,
    argv: *const *const c_char,
    node: *const c_char,
}

/// Run `f`, write its message into `msg` (`len` bytes, NUL-terminated,
/// truncated) and return the shim's code.
///
/// # Safety
/// `msg` is null or points to `len` writable bytes.
unsafe fn answer(msg: *mut c_char, len: usize, f: impl FnOnce() -> Outcome) -> c_int {
    let (code, text) = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(None)) => (0, String::new()),
        Ok(Ok(Some(note))) => (1, note),
        Ok(Err(e)) => (-1, e),
        Err(_) => (-1, "internal error (a panic in the plugin)".to_string()),
    };
    if !msg.is_null() && len > 0 {
        let bytes = text.as_bytes();
        let n = bytes.len().min(len - 1);
        // SAFETY: the caller gives `len` writable bytes at `msg`; we write
        // `n + 1 <= len` of them, from a buffer that does not overlap it.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), msg.cast::<u8>(), n);
            *msg.add(n) = 0;
        }
    }
    code
}

/// A C string as a `String` (lossy); null: `None`.
///
/// # Safety
/// `p` is null or a NUL-terminated string alive for the call.
unsafe fn string(p: *const c_char) -> Option<String> {
    if p.is_null() {
        return None;
    }
    // SAFETY: non-null and NUL-terminated, per the caller.
    Some(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
}

/// `argc` C strings at `argv` (nulls skipped).
///
/// # Safety
/// `argv` is null or points to `argc` pointers, each null or a C string.
unsafe fn strings(argc: c_int, argv: *const *const c_char) -> Vec<String> {
    if argv.is_null() || argc <= 0 {
        return vec![];
    }
    (0..argc as usize)
        // SAFETY: `i < argc` indexes the caller's array; each entry is null or a C string.
        .filter_map(|i| unsafe { string(*argv.add(i)) })
        .collect()
}

/// `slurm_spank_init`: the plugin's arguments from plugstack.conf.
///
/// # Safety
/// `av` holds `ac` C strings; `msg` has `len` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn hobbes_rs_init(
    _remote: c_int,
    ac: c_int,
    av: *const *const c_char,
    msg: *mut c_char,
    len: usize,
) -> c_int {
    // SAFETY: per this function's contract.
    let args = unsafe { strings(ac, av) };
    // SAFETY: per this function's contract.
    unsafe { answer(msg, len, || plugin::init(&args)) }
}

/// The `--enclave` option's callback.
///
/// # Safety
/// `optarg` is null or a C string; `msg` has `len` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn hobbes_rs_option(
    optarg: *const c_char,
    _remote: c_int,
    msg: *mut c_char,
    len: usize,
) -> c_int {
    // SAFETY: per this function's contract.
    let spec = unsafe { string(optarg) };
    // SAFETY: per this function's contract.
    unsafe { answer(msg, len, || plugin::option(spec.as_deref())) }
}

/// `slurm_spank_init_post_opt`, remote: create the step's enclave.
///
/// # Safety
/// `step` points to a filled `struct hobbes_step`; `msg` has `len` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn hobbes_rs_step_begin(
    step: *const Step,
    msg: *mut c_char,
    len: usize,
) -> c_int {
    // SAFETY: the shim passes its own filled struct.
    let s = unsafe { &*step };
    let info = StepInfo {
        step: SlurmStep {
            job_id: s.job_id,
            step_id: s.step_id,
            het_component: (s.has_het != 0).then_some(s.het_component),
            // SAFETY: the shim's node buffer, NUL-terminated.
            node: unsafe { string(s.node) }.unwrap_or_default(),
        },
        local_tasks: s.local_tasks,
        mem_mib: s.mem_mib,
        stepd_pid: std::process::id(),
        owner: Owner {
            uid: s.uid,
            gid: s.gid,
        },
        groups: match s.has_groups {
            0 => None,
            // SAFETY: the shim's groups buffer, NUL-terminated.
            1 => Some(Ok(unsafe { string(s.groups) }.unwrap_or_default())),
            _ => Some(Err(format!(
                "{GROUPS_ENV} is too long (more than 16 KiB); name fewer applications"
            ))),
        },
        global_ids: if s.global_ids.is_null() || s.n_global_ids == 0 {
            vec![]
        } else {
            // SAFETY: the shim's array of `n_global_ids` task ids.
            unsafe { std::slice::from_raw_parts(s.global_ids, s.n_global_ids as usize) }.to_vec()
        },
        // SAFETY: Slurm's string, NUL-terminated, or NULL.
        step_cpus: unsafe { string(s.alloc_cores) }
            .and_then(|list| hobbes_proto::model::parse_id_list(&list).ok())
            .filter(|cpus| !cpus.is_empty()),
    };
    // SAFETY: per this function's contract.
    unsafe { answer(msg, len, || plugin::step_begin(&info)) }
}

/// `slurm_spank_task_init_privileged`: join the enclave; returns in the
/// task only (its parent becomes the relay).
///
/// # Safety
/// `task` points to a filled `struct hobbes_task`; `msg` has `len` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn hobbes_rs_task_join(
    task: *const Task,
    msg: *mut c_char,
    len: usize,
) -> c_int {
    // SAFETY: the shim passes its own filled struct.
    let t = unsafe { &*task };
    let info = TaskInfo {
        task: SlurmTask {
            job_id: t.job_id,
            step_id: t.step_id,
            het_component: (t.has_het != 0).then_some(t.het_component),
            task_id: t.task_id,
            local_id: t.local_id,
        },
        // SAFETY: Slurm's argv (S_JOB_ARGV): `argc` C strings.
        argv: unsafe { strings(t.argc, t.argv) },
        // SAFETY: the shim's node buffer, NUL-terminated.
        node: unsafe { string(t.node) }.unwrap_or_default(),
    };
    // SAFETY: per this function's contract.
    unsafe { answer(msg, len, || plugin::task_join(&info)) }
}

/// `slurm_spank_task_init`: fail the task (before exec, with the message
/// for its stderr) if its step's enclave or its join failed.
///
/// # Safety
/// `msg` has `len` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn hobbes_rs_task_check(msg: *mut c_char, len: usize) -> c_int {
    // SAFETY: per this function's contract.
    unsafe { answer(msg, len, plugin::task_check) }
}

/// `slurm_spank_task_post_fork`: place task process `pid` (global task id
/// `task_id`) in its enclave's cgroups.
///
/// # Safety
/// `msg` has `len` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn hobbes_rs_task_place(
    pid: u32,
    task_id: u32,
    msg: *mut c_char,
    len: usize,
) -> c_int {
    // SAFETY: per this function's contract.
    unsafe { answer(msg, len, || plugin::task_place(pid, task_id)) }
}

/// `slurm_spank_task_exit`: report task process `pid`'s wait status.
///
/// # Safety
/// `msg` has `len` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn hobbes_rs_task_exit(
    pid: u32,
    status: c_int,
    msg: *mut c_char,
    len: usize,
) -> c_int {
    // SAFETY: per this function's contract.
    unsafe { answer(msg, len, || plugin::task_exit(pid, status)) }
}

/// `slurm_spank_exit`, remote: destroy the step's enclave.
///
/// # Safety
/// `msg` has `len` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn hobbes_rs_step_end(msg: *mut c_char, len: usize) -> c_int {
    // SAFETY: per this function's contract.
    unsafe { answer(msg, len, plugin::step_end) }
}

/// `slurm_spank_job_epilog`: destroy what job `job_id` left on node `node`.
///
/// # Safety
/// `node` is a C string; `msg` has `len` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn hobbes_rs_job_epilog(
    job_id: u32,
    node: *const c_char,
    msg: *mut c_char,
    len: usize,
) -> c_int {
    // SAFETY: per this function's contract.
    let node = unsafe { string(node) }.unwrap_or_default();
    // SAFETY: per this function's contract.
    unsafe { answer(msg, len, || plugin::job_epilog(job_id, &node)) }
}

// ---- System calls of the relay (relay.rs) ----

fn check(r: c_int) -> io::Result<c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// `setns(2)`: enter the namespace `fd` names, of type `nstype` (`CLONE_NEW*`).
pub fn setns(fd: BorrowedFd<'_>, nstype: c_int) -> io::Result<()> {
    // SAFETY: setns takes a descriptor we hold open and a flag; it changes
    // only this process's namespaces.
    check(unsafe { libc::setns(fd.as_raw_fd(), nstype) }).map(drop)
}

/// A signal mask, as `sigprocmask` keeps it.
pub struct SignalMask(libc::sigset_t);

fn sigset_of(signals: &[c_int]) -> libc::sigset_t {
    // SAFETY: sigemptyset initializes the zeroed set; sigaddset with valid
    // signal numbers only writes into it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &s in signals {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Block `signals`; returns the mask before.
pub fn block_signals(signals: &[c_int]) -> io::Result<SignalMask> {
    let set = sigset_of(signals);
    // SAFETY: a zeroed sigset_t is a valid out-parameter for the old mask.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: both sets are valid; this changes the calling thread's mask only.
    check(unsafe { libc::sigprocmask(libc::SIG_BLOCK, &set, &mut old) })?;
    Ok(SignalMask(old))
}

/// Restore a mask [`block_signals`] returned.
pub fn set_signal_mask(mask: &SignalMask) {
    // SAFETY: a valid set; changes the calling thread's mask only.
    unsafe { libc::sigprocmask(libc::SIG_SETMASK, &mask.0, std::ptr::null_mut()) };
}

/// Which side of a fork we are on.
pub enum Forked {
    /// The parent, with the child's pid.
    Parent(libc::pid_t),
    /// The child.
    Child,
}

/// `fork(2)`.
pub fn fork() -> io::Result<Forked> {
    // SAFETY: the caller is a Slurm task process, which slurmstepd forked
    // and which runs one thread, so the child inherits no lock held by
    // another thread; the child returns to Slurm, which execs the program.
    match check(unsafe { libc::fork() })? {
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent(pid)),
    }
}

/// Close every descriptor from `first` on (`close_range(2)`, or one by one).
pub fn close_descriptors_from(first: u32) {
    // SAFETY: close_range takes plain integers and closes only descriptors;
    // the relay uses none of them afterwards.
    let r = unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, 0u32) };
    if r == 0 {
        return;
    }
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    for fd in fds.into_iter().filter(|&fd| fd >= first as i32) {
        // SAFETY: closing a descriptor nothing of ours uses any more (the
        // directory listing's own one is closed already: EBADF, harmless).
        unsafe { libc::close(fd) };
    }
}

/// Our parent's pid.
pub fn parent_pid() -> libc::pid_t {
    // SAFETY: getppid has no preconditions and cannot fail.
    unsafe { libc::getppid() }
}

/// Wait for one of `signals` (blocked); returns it and its sender's pid.
pub fn wait_signal(signals: &[c_int]) -> io::Result<(c_int, libc::pid_t)> {
    let set = sigset_of(signals);
    // SAFETY: a zeroed siginfo_t is a valid out-parameter.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid set and out-parameter.
    let sig = check(unsafe { libc::sigwaitinfo(&set, &mut info) })?;
    // SAFETY: sigwaitinfo filled `info`; si_pid reads the sender's pid
    // (meaningful for signals sent by kill; 0 for the kernel's).
    let sender = unsafe { info.si_pid() };
    Ok((sig, sender))
}

/// `waitpid(pid, WNOHANG)`: its wait status once it ended.
pub fn try_wait(pid: libc::pid_t) -> Option<c_int> {
    let mut status = 0;
    // SAFETY: waitpid writes the status into our variable.
    let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    (r == pid).then_some(status)
}

/// `kill(2)`.
pub fn kill(pid: libc::pid_t, sig: c_int) -> io::Result<()> {
    // SAFETY: kill takes plain integers.
    check(unsafe { libc::kill(pid, sig) }).map(drop)
}

/// End this process as wait status `status` says its child ended: exit with
/// the same code, or die of the same signal (default disposition, no core
/// dump; 128 + signal if it is one that does not kill).
pub fn end_as(status: c_int) -> ! {
    if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        let no_core = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        let set = sigset_of(&[sig]);
        // SAFETY: plain calls on this process: no core file, the signal's
        // default action, unblocked, then sent to ourselves.
        unsafe {
            libc::setrlimit(libc::RLIMIT_CORE, &no_core);
            libc::signal(sig, libc::SIG_DFL);
            libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            libc::kill(libc::getpid(), sig);
        }
        // SAFETY: _exit ends the process without running anything of ours.
        unsafe { libc::_exit(128 + sig) }
    }
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        1
    };
    // SAFETY: _exit ends the process without running anything of ours
    // (Slurm's atexit handlers belong to slurmstepd, not to this task).
    unsafe { libc::_exit(code) }
}

// ---- The symbols Slurm looks up (SPANK_PLUGIN(hobbes, 1) and the hooks) ----

/// `SPANK_PLUGIN(hobbes, 1)`: the plugin's name.
#[cfg(hobbes_spank_shim)]
#[no_mangle]
#[used]
pub static plugin_name: [u8; 7] = *b"hobbes\0";

/// `SPANK_PLUGIN(hobbes, 1)`: a SPANK plugin.
#[cfg(hobbes_spank_shim)]
#[no_mangle]
#[used]
pub static plugin_type: [u8; 6] = *b"spank\0";

/// `SPANK_PLUGIN(hobbes, 1)`: the Slurm version built against
/// (`SLURM_VERSION_NUMBER`, which Slurm checks when it loads the plugin).
#[cfg(hobbes_spank_shim)]
#[no_mangle]
#[used]
pub static plugin_version: u32 = slurm_version::SLURM_VERSION_NUMBER;

#[cfg(hobbes_spank_shim)]
mod slurm_version {
    include!(concat!(env!("OUT_DIR"), "/slurm_version.rs"));
}

/// Slurm's opaque `spank_t`.
#[cfg(hobbes_spank_shim)]
type Spank = *mut std::ffi::c_void;

#[cfg(hobbes_spank_shim)]
extern "C" {
    fn hobbes_shim_init(sp: Spank, ac: c_int, av: *mut *mut c_char) -> c_int;
    fn hobbes_shim_init_post_opt(sp: Spank, ac: c_int, av: *mut *mut c_char) -> c_int;
    fn hobbes_shim_task_init_privileged(sp: Spank, ac: c_int, av: *mut *mut c_char) -> c_int;
    fn hobbes_shim_task_init(sp: Spank, ac: c_int, av: *mut *mut c_char) -> c_int;
    fn hobbes_shim_task_post_fork(sp: Spank, ac: c_int, av: *mut *mut c_char) -> c_int;
    fn hobbes_shim_task_exit(sp: Spank, ac: c_int, av: *mut *mut c_char) -> c_int;
    fn hobbes_shim_exit(sp: Spank, ac: c_int, av: *mut *mut c_char) -> c_int;
    fn hobbes_shim_job_epilog(sp: Spank, ac: c_int, av: *mut *mut c_char) -> c_int;
}

/// Define each SPANK hook Slurm calls as a call of the shim's body.
macro_rules! hooks {
    ($($hook:ident => $shim:ident),* $(,)?) => {$(
        /// A SPANK hook (spank(8)); the body is the shim's.
        ///
        /// # Safety
        /// Called by Slurm with its handle and the plugin's arguments.
        #[cfg(hobbes_spank_shim)]
        #[no_mangle]
        pub unsafe extern "C" fn $hook(sp: Spank, ac: c_int, av: *mut *mut c_char) -> c_int {
            // SAFETY: Slurm's own arguments, passed on unchanged.
            unsafe { $shim(sp, ac, av) }
        }
    )*};
}

hooks! {
    slurm_spank_init => hobbes_shim_init,
    slurm_spank_init_post_opt => hobbes_shim_init_post_opt,
    slurm_spank_task_init_privileged => hobbes_shim_task_init_privileged,
    slurm_spank_task_init => hobbes_shim_task_init,
    slurm_spank_task_post_fork => hobbes_shim_task_post_fork,
    slurm_spank_task_exit => hobbes_shim_task_exit,
    slurm_spank_exit => hobbes_shim_exit,
    slurm_spank_job_epilog => hobbes_shim_job_epilog,
}
