//! The LWK's system calls: what it serves itself, what it forwards to the
//! host, and what it refuses with `-ENOSYS`.
//!
//! Every call arrives with the app and thread it came from and the path it
//! took (the proxy thread, or the vCPU's own thread after an exit). Served:
//! memory (brk, mmap, munmap, mprotect, mremap, madvise), time (the host's
//! clocks through the vDSO: no host system call), identity, affinity, signal
//! bookkeeping, futexes on guest memory, threads. Forwarded: files and
//! descriptors, performed by the monitor with the app's file-system uid and
//! gid, in the monitor's mount view (the enclave's), against the app's own
//! descriptor table, after checking every guest pointer against the app's
//! address space ([`AddressSpace::pieces`]): a bad pointer is `EFAULT`.
//! A call that could block (a futex wait, a read) never runs on the proxy:
//! it is bounced back to the vCPU's own thread.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress};

use crate::app::{AppCore, AppState, GuestFd, Handling};
use crate::host;
use crate::layout::PAGE;
use crate::ram::GuestRam;
use crate::space::{AddressSpace, EFAULT, EINVAL};

const ENOSYS: i64 = -(libc::ENOSYS as i64);
const EBADF: i64 = -(libc::EBADF as i64);
const ENOTTY: i64 = -(libc::ENOTTY as i64);
const EPERM: i64 = -(libc::EPERM as i64);
const EMFILE: i64 = -(libc::EMFILE as i64);

/// The most descriptors an app may hold.
const MAX_FDS: i32 = 1024;
/// The longest path accepted.
const PATH_MAX: usize = 4096;
/// The most bytes one forwarded call stages in a host buffer.
const STAGE_MAX: u64 = 1 << 20;

/// Calls that always take the exit path: they may block, need the vCPU's
/// registers, or change the app's threads.
pub const EXIT_CALLS: &[u64] = &[
    0,   // read
    7,   // poll
    15,  // rt_sigreturn
    17,  // pread64
    19,  // readv
    23,  // select
    24,  // sched_yield: must yield the vCPU's own core
    34,  // pause
    35,  // nanosleep
    43,  // accept
    45,  // recvfrom
    47,  // recvmsg
    56,  // clone
    57,  // fork
    58,  // vfork
    59,  // execve
    60,  // exit
    61,  // wait4
    62,  // kill
    73,  // flock
    128, // rt_sigtimedwait
    130, // rt_sigsuspend
    158, // arch_prctl (all but ARCH_SET_FS, which the stub serves)
    200, // tkill
    230, // clock_nanosleep
    231, // exit_group
    232, // epoll_wait
    234, // tgkill
    247, // waitid
    270, // pselect6
    271, // ppoll
    281, // epoll_pwait
    288, // accept4
    295, // preadv
    309, // getcpu
    327, // preadv2
    435, // clone3
];

/// What a call leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Return this value to the app.
    Ret(i64),
    /// (Proxy only) it would block or needs the vCPU: run it on the vCPU's thread.
    Bounce,
    /// The calling thread ends (`exit`).
    ExitThread(i32),
    /// The app ends with this code (`exit_group`).
    ExitGroup(i32),
    /// The app ends by this signal's default action (`kill` of itself, `abort`).
    Signal(i32),
}

/// Who is calling.
pub struct Ctx<'a> {
    /// The enclave's guest RAM.
    pub ram: &'a GuestRam,
    /// The enclave's cores (the app sees them as CPUs 0..n).
    pub cores: &'a [u32],
    /// The app.
    pub app: &'a Arc<AppState>,
    /// The calling thread's guest tid.
    pub tid: u32,
    /// The index of the calling thread's core among the enclave's cores.
    pub cpu: u32,
    /// On the vCPU's own thread (may block), or on the proxy (must not).
    pub on_vcpu: bool,
}

impl Ctx<'_> {
    fn ret(&self, h: Handling, nr: u64, v: i64) -> Outcome {
        self.app.count(h, nr);
        Outcome::Ret(v)
    }

    fn served(&self, nr: u64, v: i64) -> Outcome {
        self.ret(Handling::Served, nr, v)
    }

    fn forwarded(&self, nr: u64, v: i64) -> Outcome {
        self.ret(Handling::Forwarded, nr, v)
    }

    fn core(&self) -> std::sync::MutexGuard<'_, AppCore> {
        self.app.core.lock().unwrap()
    }

    /// Run `f` with the app's address space.
    fn with_space<T>(&self, f: impl FnOnce(&mut AddressSpace) -> T) -> Result<T, i64> {
        let mut c = self.core();
        let s = c.space.as_mut().ok_or(EFAULT)?;
        Ok(f(s))
    }

    fn read_mem(&self, va: u64, len: usize) -> Result<Vec<u8>, i64> {
        let mut buf = vec![0u8; len];
        self.with_space(|s| s.read(self.ram, va, &mut buf))??;
        Ok(buf)
    }

    fn write_mem(&self, va: u64, buf: &[u8]) -> Result<(), i64> {
        self.with_space(|s| s.write(self.ram, va, buf))?
    }

    fn read_path(&self, va: u64) -> Result<PathBuf, i64> {
        use std::os::unix::ffi::OsStringExt;
        let bytes = self.with_space(|s| s.read_cstr(self.ram, va, PATH_MAX))??;
        Ok(PathBuf::from(std::ffi::OsString::from_vec(bytes)))
    }

    fn fd(&self, guest: u64) -> Result<Arc<OwnedFd>, i64> {
        let c = self.core();
        c.fds
            .get(&(guest as i32))
            .map(|g| g.fd.clone())
            .ok_or(EBADF)
    }

    /// The directory a `*at` call resolves against.
    fn dirfd(&self, guest: u64) -> Result<Arc<OwnedFd>, i64> {
        if guest as i32 == libc::AT_FDCWD {
            Ok(self.core().cwd.0.clone())
        } else {
            self.fd(guest)
        }
    }

    /// Install a host descriptor as the lowest free guest number >= `min`.
    fn install(&self, fd: Arc<OwnedFd>, cloexec: bool, min: i32) -> i64 {
        let mut c = self.core();
        let mut n = min.max(0);
        while c.fds.contains_key(&n) {
            n += 1;
        }
        if n >= MAX_FDS {
            return EMFILE;
        }
        c.fds.insert(n, GuestFd { fd, cloexec });
        n as i64
    }

    /// Act as the app's user for file access on this thread.
    fn as_user(&self) {
        thread_local! {
            static CURRENT: std::cell::Cell<Option<(u32, u32)>> = const { std::cell::Cell::new(None) };
        }
        let want = (self.app.uid, self.app.gid);
        CURRENT.with(|c| {
            if c.get() != Some(want) {
                let _ = host::set_fs_ids(want.0, want.1);
                c.set(Some(want));
            }
        });
    }
}

fn errno(e: rustix::io::Errno) -> i64 {
    -(e.raw_os_error() as i64)
}

fn res<T>(r: rustix::io::Result<T>, ok: impl FnOnce(T) -> i64) -> i64 {
    match r {
        Ok(v) => ok(v),
        Err(e) => errno(e),
    }
}

/// Handle one call. `clone` and `arch_prctl` are handled by the vCPU loop
/// (they need its registers); here they bounce.
pub fn dispatch(ctx: &Ctx<'_>, nr: u64, a: [u64; 6]) -> Outcome {
    match dispatch_inner(ctx, nr, a) {
        Some(o) => o,
        None => {
            ctx.app.count(Handling::Unsupported, nr);
            Outcome::Ret(ENOSYS)
        }
    }
}

fn dispatch_inner(ctx: &Ctx<'_>, nr: u64, a: [u64; 6]) -> Option<Outcome> {
    let ram = &ctx.ram;
    let o = match nr {
        // --- memory, served ---
        12 => ctx.served(nr, ctx.with_space(|s| s.brk(ram, a[0]) as i64).unwrap_or(0)),
        9 => ctx.served(nr, mmap(ctx, a)),
        11 => ctx.served(
            nr,
            ctx.with_space(|s| s.munmap(ram, a[0], a[1]))
                .unwrap_or(EFAULT),
        ),
        10 => ctx.served(
            nr,
            ctx.with_space(|s| s.mprotect(ram, a[0], a[1], a[2]))
                .unwrap_or(EFAULT),
        ),
        25 => ctx.served(nr, mremap(ctx, a)),
        28 => {
            // MADV_DONTNEED (4) and MADV_FREE (8) must read back as zero;
            // every other advice is a hint we may ignore.
            let v = if a[2] == 4 || a[2] == 8 {
                ctx.with_space(|s| s.dontneed(ram, a[0], a[1]))
                    .unwrap_or(EFAULT)
            } else {
                0
            };
            ctx.served(nr, v)
        }
        26 | 149 | 150 | 151 | 152 | 325 => ctx.served(nr, 0), // msync, mlock*, mlock2
        // --- identity, served ---
        39 | 111 | 121 | 124 => ctx.served(nr, ctx.app.pid as i64),
        186 => ctx.served(nr, ctx.tid as i64),
        102 | 107 => ctx.served(nr, ctx.app.uid as i64),
        104 | 108 => ctx.served(nr, ctx.app.gid as i64),
        118 | 120 => {
            let id = if nr == 118 { ctx.app.uid } else { ctx.app.gid };
            let mut v = Ok(());
            for p in &a[..3] {
                v = v.and_then(|()| ctx.write_mem(*p, &id.to_le_bytes()));
            }
            ctx.served(nr, v.map_or_else(|e| e, |()| 0))
        }
        218 => {
            ctx.core().clear_tid.insert(ctx.tid, a[0]);
            ctx.served(nr, ctx.tid as i64)
        }
        273 => ctx.served(nr, 0), // set_robust_list: the LWK has no robust-futex cleanup to do
        95 => {
            let mut c = ctx.core();
            let old = c.umask;
            c.umask = a[0] as u32 & 0o777;
            drop(c);
            ctx.served(nr, old as i64)
        }
        // --- affinity and scheduling, served ---
        204 => ctx.served(nr, getaffinity(ctx, a)),
        203 | 142 | 144 => ctx.served(nr, 0),
        143 => ctx.served(
            nr,
            ctx.write_mem(a[1], &0u32.to_le_bytes())
                .map_or_else(|e| e, |()| 0),
        ),
        145 => ctx.served(nr, 0), // SCHED_OTHER
        309 => {
            let mut v = Ok(());
            if a[0] != 0 {
                v = ctx.write_mem(a[0], &ctx.cpu.to_le_bytes());
            }
            if a[1] != 0 {
                v = v.and_then(|()| ctx.write_mem(a[1], &0u32.to_le_bytes()));
            }
            ctx.served(nr, v.map_or_else(|e| e, |()| 0))
        }
        24 => ctx.forwarded(nr, host::plain(libc::SYS_sched_yield, [0; 3])),
        // --- time, served from the host's clocks (vDSO) ---
        228 => ctx.served(nr, clock_gettime(ctx, a[0], a[1])),
        229 => {
            let v = if a[1] != 0 {
                ctx.write_mem(a[1], &timespec_bytes(0, 1))
                    .map_or_else(|e| e, |()| 0)
            } else {
                0
            };
            ctx.served(nr, v)
        }
        96 => ctx.served(nr, gettimeofday(ctx, a[0])),
        201 => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            if a[0] != 0 {
                if let Err(e) = ctx.write_mem(a[0], &now.to_le_bytes()) {
                    return Some(ctx.served(nr, e));
                }
            }
            ctx.served(nr, now)
        }
        35 | 230 => {
            if !ctx.on_vcpu {
                return Some(Outcome::Bounce);
            }
            ctx.forwarded(nr, sleep(ctx, nr, a))
        }
        // --- signals: recorded; signals take their default actions ---
        13 => ctx.served(nr, sigaction(ctx, a)),
        14 => {
            let v = if a[2] != 0 {
                ctx.write_mem(a[2], &0u64.to_le_bytes())
                    .map_or_else(|e| e, |()| 0)
            } else {
                0
            };
            ctx.served(nr, v)
        }
        131 => {
            let v = if a[1] != 0 {
                let mut old = [0u8; 24];
                old[8..12].copy_from_slice(&(libc::SS_DISABLE as u32).to_le_bytes());
                ctx.write_mem(a[1], &old).map_or_else(|e| e, |()| 0)
            } else {
                0
            };
            ctx.served(nr, v)
        }
        62 | 200 | 234 => {
            let (target, sig) = match nr {
                62 => (a[0] as i64, a[1] as i32),
                200 => (a[0] as i64, a[1] as i32),
                _ => (a[1] as i64, a[2] as i32),
            };
            return Some(signal_self(ctx, nr, target, sig));
        }
        // --- futexes on guest memory ---
        202 => return Some(futex(ctx, nr, a)),
        // --- the end ---
        60 => {
            ctx.app.count(Handling::Served, nr);
            Outcome::ExitThread(a[0] as i32 & 0xff)
        }
        231 => {
            ctx.app.count(Handling::Served, nr);
            Outcome::ExitGroup(a[0] as i32 & 0xff)
        }
        56 | 158 => Outcome::Bounce,
        // --- system information ---
        63 => ctx.forwarded(nr, uname(ctx, a[0])),
        99 => ctx.served(nr, sysinfo(ctx, a[0])),
        97 | 302 => ctx.served(nr, rlimit(ctx, nr, a)),
        318 => ctx.forwarded(nr, getrandom(ctx, a)),
        110 => ctx.forwarded(nr, host::plain(libc::SYS_getppid, [0; 3])),
        // --- files and descriptors, forwarded ---
        0 | 1 | 17 | 18 | 19 | 20 => {
            if matches!(nr, 0 | 17 | 19) && !ctx.on_vcpu {
                return Some(Outcome::Bounce);
            }
            ctx.as_user();
            ctx.forwarded(nr, rw(ctx, nr, a))
        }
        2 | 257 => {
            ctx.as_user();
            let [dir, path, flags, mode] = at_form(nr == 2, a);
            ctx.forwarded(nr, open(ctx, dir, path, flags, mode))
        }
        3 => {
            let removed = ctx.core().fds.remove(&(a[0] as i32));
            ctx.forwarded(nr, if removed.is_some() { 0 } else { EBADF })
        }
        4 | 6 | 5 | 262 => {
            ctx.as_user();
            ctx.forwarded(nr, stat(ctx, nr, a))
        }
        8 => ctx.forwarded(nr, lseek(ctx, a)),
        21 | 269 | 439 => {
            ctx.as_user();
            let (dir, path, mode, flags) = if nr == 21 {
                (libc::AT_FDCWD as i64 as u64, a[0], a[1], 0)
            } else {
                (a[0], a[1], a[2], if nr == 439 { a[3] } else { 0 })
            };
            ctx.forwarded(nr, access(ctx, dir, path, mode, flags))
        }
        32 => {
            let v = match ctx.fd(a[0]) {
                Ok(f) => ctx.install(f, false, 0),
                Err(e) => e,
            };
            ctx.forwarded(nr, v)
        }
        33 | 292 => ctx.forwarded(nr, dup2(ctx, a[0], a[1], nr == 292 && a[2] != 0)),
        72 => ctx.forwarded(nr, fcntl(ctx, a)),
        16 => ctx.forwarded(nr, ioctl(ctx, a)),
        217 => ctx.forwarded(nr, getdents(ctx, a)),
        79 => ctx.forwarded(nr, getcwd(ctx, a)),
        80 | 81 => {
            ctx.as_user();
            ctx.forwarded(nr, chdir(ctx, nr, a[0]))
        }
        89 | 267 => {
            ctx.as_user();
            let [dir, path, buf, len] = at_form(nr == 89, a);
            ctx.forwarded(nr, readlink(ctx, dir, path, buf, len))
        }
        83 | 258 | 84 | 87 | 263 | 82 | 264 | 316 => {
            ctx.as_user();
            ctx.forwarded(nr, path_op(ctx, nr, a))
        }
        74 | 75 | 77 => {
            let v = match ctx.fd(a[0]) {
                Ok(f) => match nr {
                    74 => res(rustix::fs::fsync(&*f), |()| 0),
                    75 => res(rustix::fs::fdatasync(&*f), |()| 0),
                    _ => res(rustix::fs::ftruncate(&*f, a[1]), |()| 0),
                },
                Err(e) => e,
            };
            ctx.forwarded(nr, v)
        }
        22 | 293 => ctx.forwarded(nr, pipe(ctx, a[0], if nr == 293 { a[1] } else { 0 })),
        7 => {
            if !ctx.on_vcpu {
                return Some(Outcome::Bounce);
            }
            ctx.forwarded(nr, poll(ctx, a))
        }
        221 => ctx.forwarded(nr, if ctx.fd(a[0]).is_ok() { 0 } else { EBADF }),
        _ => return None,
    };
    Some(o)
}

/// The arguments of a `*at` call (directory first): a legacy call's
/// (`open`, `readlink`, ...) with `AT_FDCWD` in front, or the `*at` call's own.
fn at_form(legacy: bool, a: [u64; 6]) -> [u64; 4] {
    if legacy {
        [libc::AT_FDCWD as i64 as u64, a[0], a[1], a[2]]
    } else {
        [a[0], a[1], a[2], a[3]]
    }
}

fn mmap(ctx: &Ctx<'_>, a: [u64; 6]) -> i64 {
    let (addr, len, prot, flags, fd, off) = (a[0], a[1], a[2], a[3] as i32, a[4] as i32, a[5]);
    let ram = &ctx.ram;
    let fixed = (flags & (libc::MAP_FIXED | libc::MAP_FIXED_NOREPLACE) != 0).then_some(addr);
    // As Linux: the offset is whole pages, and offset + length must not wrap.
    if !off.is_multiple_of(PAGE) {
        return EINVAL;
    }
    if off.checked_add(len).is_none() {
        return -(libc::EOVERFLOW as i64);
    }
    if flags & libc::MAP_ANONYMOUS != 0 {
        return ctx
            .with_space(|s| s.mmap(ram, fixed, len, prot != 0))
            .unwrap_or(EFAULT);
    }
    // A private file mapping is a copy of the file's bytes (no page cache
    // sharing in an LWK); shared file mappings cannot be given.
    if flags & libc::MAP_SHARED != 0 && flags & libc::MAP_PRIVATE == 0 {
        return -(libc::ENODEV as i64);
    }
    let f = match ctx.fd(fd as u64) {
        Ok(f) => f,
        Err(e) => return e,
    };
    let at = ctx
        .with_space(|s| s.mmap(ram, fixed, len, true))
        .unwrap_or(EFAULT);
    if at < 0 {
        return at;
    }
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(STAGE_MAX) as usize;
        let mut buf = vec![0u8; n];
        match rustix::io::pread(&*f, &mut buf[..], off + done) {
            Ok(0) => break,
            Ok(got) => {
                if let Err(e) = ctx.write_mem(at as u64 + done, &buf[..got]) {
                    let _ = ctx.with_space(|s| s.munmap(ram, at as u64, len));
                    return e;
                }
                done += got as u64;
            }
            Err(e) => {
                let _ = ctx.with_space(|s| s.munmap(ram, at as u64, len));
                return errno(e);
            }
        }
    }
    at
}

fn mremap(ctx: &Ctx<'_>, a: [u64; 6]) -> i64 {
    let (old, flags, new_at) = (a[0], a[3] as i32, a[4]);
    // Linux's order of checks: unknown flags, FIXED without MAYMOVE, an
    // unaligned address, then lengths rounded up to pages (a new length of
    // zero is invalid). The arguments come from the app: every sum is checked.
    let known = libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED | libc::MREMAP_DONTUNMAP;
    if flags & !known != 0
        || (flags & libc::MREMAP_MAYMOVE == 0 && flags & !libc::MREMAP_MAYMOVE != 0)
    {
        return EINVAL;
    }
    if !old.is_multiple_of(PAGE) {
        return EINVAL;
    }
    let page_up = |l: u64| l.checked_add(PAGE - 1).map(|l| l & !(PAGE - 1));
    let (Some(old_len), Some(new_len)) = (page_up(a[1]), page_up(a[2])) else {
        return EINVAL;
    };
    if new_len == 0 || old.checked_add(old_len).is_none() {
        return EINVAL;
    }
    if old_len > ctx.ram.size() || new_len > ctx.ram.size() {
        return -(libc::ENOMEM as i64);
    }
    // DONTUNMAP keeps the old range mapped, so it needs a move; an old length
    // of zero (duplicate a shared mapping) has nothing to give here.
    if flags & libc::MREMAP_DONTUNMAP != 0 && old_len != new_len || old_len == 0 {
        return EINVAL;
    }
    let ram = &ctx.ram;
    let fixed = (flags & libc::MREMAP_FIXED != 0).then_some(new_at);
    if let Some(to) = fixed {
        // The new range may not overlap the old one.
        let Some(to_end) = to.checked_add(new_len) else {
            return EINVAL;
        };
        if !to.is_multiple_of(PAGE) || (to < old + old_len && old < to_end) {
            return EINVAL;
        }
    }
    if fixed.is_none() && flags & libc::MREMAP_DONTUNMAP == 0 {
        if old_len == new_len {
            return old as i64;
        }
        if new_len < old_len {
            return ctx
                .with_space(|s| {
                    let r = s.munmap(ram, old + new_len, old_len - new_len);
                    if r < 0 {
                        r
                    } else {
                        old as i64
                    }
                })
                .unwrap_or(EFAULT);
        }
        if flags & libc::MREMAP_MAYMOVE == 0 {
            return -(libc::ENOMEM as i64);
        }
    }
    // Move: a new mapping, a copy of what fits, the old one given back
    // (kept, for DONTUNMAP).
    let kept = old_len.min(new_len);
    let data = match ctx.read_mem(old, kept as usize) {
        Ok(d) => d,
        Err(e) => return e,
    };
    let at = ctx
        .with_space(|s| s.mmap(ram, fixed, new_len, true))
        .unwrap_or(EFAULT);
    if at < 0 {
        return at;
    }
    if let Err(e) = ctx.write_mem(at as u64, &data) {
        return e;
    }
    if flags & libc::MREMAP_DONTUNMAP == 0 {
        let _ = ctx.with_space(|s| s.munmap(ram, old, old_len));
    }
    at
}

fn getaffinity(ctx: &Ctx<'_>, a: [u64; 6]) -> i64 {
    // The app sees the enclave's cores as CPUs 0..n: OpenMP and
    // std::thread::available_parallelism size themselves by this.
    let n = ctx.cores.len().min(1024);
    let bytes = n.div_ceil(64) * 8;
    if (a[1] as usize) < bytes {
        return EINVAL;
    }
    let mut mask = vec![0u8; bytes];
    for i in 0..n {
        mask[i / 8] |= 1 << (i % 8);
    }
    ctx.write_mem(a[2], &mask)
        .map_or_else(|e| e, |()| bytes as i64)
}

fn timespec_bytes(sec: i64, nsec: i64) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&sec.to_le_bytes());
    b[8..].copy_from_slice(&nsec.to_le_bytes());
    b
}

fn clock_gettime(ctx: &Ctx<'_>, clock: u64, out: u64) -> i64 {
    use rustix::time::ClockId;
    let id = match clock as i32 {
        libc::CLOCK_REALTIME => ClockId::Realtime,
        libc::CLOCK_MONOTONIC => ClockId::Monotonic,
        libc::CLOCK_PROCESS_CPUTIME_ID => ClockId::ProcessCPUTime,
        libc::CLOCK_THREAD_CPUTIME_ID => ClockId::ThreadCPUTime,
        libc::CLOCK_MONOTONIC_RAW => ClockId::MonotonicRaw,
        libc::CLOCK_REALTIME_COARSE => ClockId::RealtimeCoarse,
        libc::CLOCK_MONOTONIC_COARSE => ClockId::MonotonicCoarse,
        libc::CLOCK_BOOTTIME => ClockId::Boottime,
        _ => return EINVAL,
    };
    let t = rustix::time::clock_gettime(id);
    ctx.write_mem(out, &timespec_bytes(t.tv_sec, t.tv_nsec as i64))
        .map_or_else(|e| e, |()| 0)
}

fn gettimeofday(ctx: &Ctx<'_>, out: u64) -> i64 {
    if out == 0 {
        return 0;
    }
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Realtime);
    ctx.write_mem(out, &timespec_bytes(t.tv_sec, t.tv_nsec as i64 / 1000))
        .map_or_else(|e| e, |()| 0)
}

fn read_timespec(ctx: &Ctx<'_>, va: u64) -> Result<rustix::time::Timespec, i64> {
    let b = ctx.read_mem(va, 16)?;
    let sec = i64::from_le_bytes(b[..8].try_into().unwrap());
    let nsec = i64::from_le_bytes(b[8..].try_into().unwrap());
    if !(0..1_000_000_000).contains(&nsec) || sec < 0 {
        return Err(EINVAL);
    }
    Ok(rustix::time::Timespec {
        tv_sec: sec,
        tv_nsec: nsec as _,
    })
}

fn sleep(ctx: &Ctx<'_>, nr: u64, a: [u64; 6]) -> i64 {
    use rustix::thread::{ClockId, NanosleepRelativeResult};
    let (clock, flags, req, rem) = if nr == 35 {
        (libc::CLOCK_MONOTONIC, 0, a[0], a[1])
    } else {
        (a[0] as i32, a[1] as i32, a[2], a[3])
    };
    let t = match read_timespec(ctx, req) {
        Ok(t) => t,
        Err(e) => return e,
    };
    let id = match clock {
        libc::CLOCK_REALTIME => ClockId::Realtime,
        libc::CLOCK_MONOTONIC => ClockId::Monotonic,
        _ => return EINVAL,
    };
    if flags & libc::TIMER_ABSTIME != 0 {
        return res(rustix::thread::clock_nanosleep_absolute(id, &t), |()| 0);
    }
    match rustix::thread::clock_nanosleep_relative(id, &t) {
        NanosleepRelativeResult::Ok => 0,
        NanosleepRelativeResult::Interrupted(left) => {
            if rem != 0 {
                let _ = ctx.write_mem(rem, &timespec_bytes(left.tv_sec, left.tv_nsec));
            }
            -(libc::EINTR as i64)
        }
        NanosleepRelativeResult::Err(e) => errno(e),
    }
}

fn sigaction(ctx: &Ctx<'_>, a: [u64; 6]) -> i64 {
    let sig = a[0] as i32;
    if !(1..=64).contains(&sig) {
        return EINVAL;
    }
    if a[2] != 0 {
        let old = ctx.core().sigactions.get(&sig).copied().unwrap_or([0; 32]);
        if let Err(e) = ctx.write_mem(a[2], &old) {
            return e;
        }
    }
    if a[1] != 0 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            return EINVAL;
        }
        match ctx.read_mem(a[1], 32) {
            Ok(b) => {
                ctx.core().sigactions.insert(sig, b.try_into().unwrap());
            }
            Err(e) => return e,
        }
    }
    0
}

/// Signals whose default action is to ignore them.
fn ignored_by_default(sig: i32) -> bool {
    matches!(
        sig,
        libc::SIGCHLD | libc::SIGURG | libc::SIGWINCH | libc::SIGCONT
    )
}

fn signal_self(ctx: &Ctx<'_>, nr: u64, target: i64, sig: i32) -> Outcome {
    let ours = target == 0
        || target == ctx.app.pid as i64
        || (nr != 62 && ctx.core().threads.contains_key(&(target as u32)));
    if !ours {
        return ctx.served(nr, EPERM);
    }
    if !(0..=64).contains(&sig) {
        return ctx.served(nr, EINVAL);
    }
    if sig == 0 || ignored_by_default(sig) {
        return ctx.served(nr, 0);
    }
    ctx.app.count(Handling::Served, nr);
    Outcome::Signal(sig)
}

fn futex(ctx: &Ctx<'_>, nr: u64, a: [u64; 6]) -> Outcome {
    let op = a[1] as i32;
    let cmd = op & libc::FUTEX_CMD_MASK;
    let ram = &ctx.ram;
    let waits = matches!(
        cmd,
        libc::FUTEX_WAIT
            | libc::FUTEX_WAIT_BITSET
            | libc::FUTEX_LOCK_PI
            | libc::FUTEX_WAIT_REQUEUE_PI
    );
    if waits && !ctx.on_vcpu {
        return Outcome::Bounce;
    }
    let uaddr = match ctx.with_space(|s| s.host_u32(ram, a[0])) {
        Ok(Ok(h)) => h,
        Ok(Err(e)) | Err(e) => return ctx.served(nr, e),
    };
    let v = match cmd {
        libc::FUTEX_WAIT | libc::FUTEX_WAIT_BITSET => {
            let timeout = if a[3] != 0 {
                match read_timespec(ctx, a[3]) {
                    Ok(t) => Some(libc::timespec {
                        tv_sec: t.tv_sec,
                        tv_nsec: t.tv_nsec as _,
                    }),
                    Err(e) => return ctx.served(nr, e),
                }
            } else {
                None
            };
            host::futex(uaddr, op, a[2] as u32, timeout.as_ref(), 0, 0, a[5] as u32)
        }
        libc::FUTEX_WAKE | libc::FUTEX_WAKE_BITSET => {
            host::futex(uaddr, op, a[2] as u32, None, 0, 0, a[5] as u32)
        }
        libc::FUTEX_REQUEUE | libc::FUTEX_CMP_REQUEUE | libc::FUTEX_WAKE_OP => {
            let uaddr2 = match ctx.with_space(|s| s.host_u32(ram, a[4])) {
                Ok(Ok(h)) => h,
                Ok(Err(e)) | Err(e) => return ctx.served(nr, e),
            };
            host::futex(
                uaddr,
                op,
                a[2] as u32,
                None,
                a[3] as usize,
                uaddr2,
                a[5] as u32,
            )
        }
        _ => return ctx.ret(Handling::Unsupported, nr, ENOSYS),
    };
    ctx.served(nr, v)
}

fn uname(ctx: &Ctx<'_>, out: u64) -> i64 {
    let u = rustix::system::uname();
    let mut b = vec![0u8; 65 * 6];
    for (i, s) in [
        u.sysname(),
        u.nodename(),
        u.release(),
        u.version(),
        u.machine(),
        u.domainname(),
    ]
    .iter()
    .enumerate()
    {
        let bytes = s.to_bytes();
        let n = bytes.len().min(64);
        b[i * 65..i * 65 + n].copy_from_slice(&bytes[..n]);
    }
    ctx.write_mem(out, &b).map_or_else(|e| e, |()| 0)
}

fn sysinfo(ctx: &Ctx<'_>, out: u64) -> i64 {
    // The enclave's memory, not the host's: what a program sizing itself
    // by `sysinfo` (or `get_phys_pages`) must see.
    let mut b = vec![0u8; 112];
    let uptime = rustix::time::clock_gettime(rustix::time::ClockId::Boottime).tv_sec;
    b[0..8].copy_from_slice(&uptime.to_le_bytes());
    b[32..40].copy_from_slice(&ctx.ram.size().to_le_bytes());
    b[40..48].copy_from_slice(&ctx.ram.free_bytes().to_le_bytes());
    let procs = ctx.core().threads.len() as u16;
    b[80..82].copy_from_slice(&procs.to_le_bytes());
    b[104..108].copy_from_slice(&1u32.to_le_bytes()); // mem_unit
    ctx.write_mem(out, &b).map_or_else(|e| e, |()| 0)
}

fn rlimit(ctx: &Ctx<'_>, nr: u64, a: [u64; 6]) -> i64 {
    let (res_id, new, old) = if nr == 97 {
        (a[0] as i32, 0, a[1])
    } else {
        if a[0] != 0 && a[0] != ctx.app.pid as u64 {
            return -(libc::ESRCH as i64);
        }
        (a[1] as i32, a[2], a[3])
    };
    const INF: u64 = u64::MAX;
    let (cur, max) = match res_id as u32 {
        libc::RLIMIT_STACK => (crate::layout::STACK_SIZE, INF),
        libc::RLIMIT_NOFILE => (MAX_FDS as u64, MAX_FDS as u64),
        libc::RLIMIT_AS | libc::RLIMIT_DATA | libc::RLIMIT_RSS => (ctx.ram.size(), ctx.ram.size()),
        0..=15 => (INF, INF),
        _ => return EINVAL,
    };
    if old != 0 {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&cur.to_le_bytes());
        b[8..].copy_from_slice(&max.to_le_bytes());
        if let Err(e) = ctx.write_mem(old, &b) {
            return e;
        }
    }
    // Limits are the enclave's; setting them is accepted and has no effect.
    let _ = new;
    0
}

fn getrandom(ctx: &Ctx<'_>, a: [u64; 6]) -> i64 {
    let n = a[1].min(STAGE_MAX) as usize;
    let mut buf = vec![0u8; n];
    let flags = rustix::rand::GetRandomFlags::from_bits_truncate(a[2] as u32);
    match rustix::rand::getrandom(&mut buf[..], flags) {
        Ok(got) => ctx
            .write_mem(a[0], &buf[..got])
            .map_or_else(|e| e, |()| got as i64),
        Err(e) => errno(e),
    }
}

/// read, write, pread64, pwrite64, readv, writev: straight between the
/// host descriptor and guest RAM (vm-memory's volatile I/O), no staging.
fn rw(ctx: &Ctx<'_>, nr: u64, a: [u64; 6]) -> i64 {
    let f = match ctx.fd(a[0]) {
        Ok(f) => f,
        Err(e) => return e,
    };
    let iov: Vec<(u64, u64)> = match nr {
        19 | 20 => {
            let cnt = a[2];
            if cnt > 1024 {
                return EINVAL;
            }
            let raw = match ctx.read_mem(a[1], cnt as usize * 16) {
                Ok(r) => r,
                Err(e) => return e,
            };
            raw.chunks(16)
                .map(|c| {
                    (
                        u64::from_le_bytes(c[..8].try_into().unwrap()),
                        u64::from_le_bytes(c[8..].try_into().unwrap()),
                    )
                })
                .collect()
        }
        _ => vec![(a[1], a[2])],
    };
    let reading = matches!(nr, 0 | 17 | 19);
    let offset = matches!(nr, 17 | 18).then_some(a[3]);
    // A file offset is a signed 64-bit loff_t: a negative one is EINVAL (and
    // below 2^63 the running sum `off + total` cannot wrap).
    if offset.is_some_and(|off| off > i64::MAX as u64) {
        return EINVAL;
    }
    let mut total: i64 = 0;
    for (base, len) in iov {
        let pieces = match ctx.with_space(|s| s.pieces(base, len)) {
            Ok(Ok(p)) => p,
            Ok(Err(e)) | Err(e) => return if total > 0 { total } else { e },
        };
        for (gpa, n) in pieces {
            let r = match offset {
                Some(off) => positional(ctx, &f, reading, gpa, n, off + total as u64),
                None => {
                    let mut fd: BorrowedFd<'_> = f.as_fd();
                    let mem = ctx.ram.mem();
                    let r = if reading {
                        mem.read_volatile_from(GuestAddress(gpa), &mut fd, n)
                    } else {
                        mem.write_volatile_to(GuestAddress(gpa), &mut fd, n)
                    };
                    r.map(|n| n as i64).map_err(|e| match e {
                        vm_memory::GuestMemoryError::IOError(io) => {
                            -(io.raw_os_error().unwrap_or(libc::EIO) as i64)
                        }
                        _ => EFAULT,
                    })
                }
            };
            match r {
                Ok(got) => {
                    total += got;
                    if (got as usize) < n {
                        return total;
                    }
                }
                Err(e) => return if total > 0 { total } else { e },
            }
        }
    }
    total
}

fn positional(
    ctx: &Ctx<'_>,
    f: &OwnedFd,
    reading: bool,
    gpa: u64,
    n: usize,
    off: u64,
) -> Result<i64, i64> {
    let n = n.min(STAGE_MAX as usize);
    let mem = ctx.ram.mem();
    if reading {
        let mut buf = vec![0u8; n];
        let got = rustix::io::pread(f, &mut buf[..], off).map_err(errno)?;
        mem.write_slice(&buf[..got], GuestAddress(gpa))
            .map_err(|_| EFAULT)?;
        Ok(got as i64)
    } else {
        let mut buf = vec![0u8; n];
        mem.read_slice(&mut buf, GuestAddress(gpa))
            .map_err(|_| EFAULT)?;
        rustix::io::pwrite(f, &buf, off)
            .map(|n| n as i64)
            .map_err(errno)
    }
}

fn open(ctx: &Ctx<'_>, dir: u64, path: u64, flags: u64, mode: u64) -> i64 {
    let path = match ctx.read_path(path) {
        Ok(p) => p,
        Err(e) => return e,
    };
    let d = match ctx.dirfd(dir) {
        Ok(d) => d,
        Err(e) => return e,
    };
    let flags = flags as u32;
    let oflags = rustix::fs::OFlags::from_bits_retain(flags) | rustix::fs::OFlags::CLOEXEC;
    let umask = ctx.core().umask;
    let mode = rustix::fs::Mode::from_raw_mode(mode as u32 & !umask & 0o7777);
    match rustix::fs::openat(&*d, &path, oflags, mode) {
        Ok(fd) => ctx.install(Arc::new(fd), flags & libc::O_CLOEXEC as u32 != 0, 0),
        Err(e) => errno(e),
    }
}

fn stat_bytes(s: &rustix::fs::Stat) -> [u8; 144] {
    let mut b = [0u8; 144];
    let mut put =
        |off: usize, v: u64, w: usize| b[off..off + w].copy_from_slice(&v.to_le_bytes()[..w]);
    put(0, s.st_dev, 8);
    put(8, s.st_ino, 8);
    put(16, s.st_nlink, 8);
    put(24, s.st_mode as u64, 4);
    put(28, s.st_uid as u64, 4);
    put(32, s.st_gid as u64, 4);
    put(40, s.st_rdev, 8);
    put(48, s.st_size as u64, 8);
    put(56, s.st_blksize as u64, 8);
    put(64, s.st_blocks as u64, 8);
    put(72, s.st_atime as u64, 8);
    put(80, s.st_atime_nsec, 8);
    put(88, s.st_mtime as u64, 8);
    put(96, s.st_mtime_nsec, 8);
    put(104, s.st_ctime as u64, 8);
    put(112, s.st_ctime_nsec, 8);
    b
}

fn stat(ctx: &Ctx<'_>, nr: u64, a: [u64; 6]) -> i64 {
    use rustix::fs::AtFlags;
    let r = match nr {
        5 => match ctx.fd(a[0]) {
            Ok(f) => rustix::fs::fstat(&*f),
            Err(e) => return e,
        },
        4 | 6 | 262 => {
            let (dir, path, flags) = match nr {
                4 => (libc::AT_FDCWD as i64 as u64, a[0], 0),
                6 => (
                    libc::AT_FDCWD as i64 as u64,
                    a[0],
                    libc::AT_SYMLINK_NOFOLLOW as u64,
                ),
                _ => (a[0], a[1], a[3]),
            };
            let path = match ctx.read_path(path) {
                Ok(p) => p,
                Err(e) => return e,
            };
            let d = match ctx.dirfd(dir) {
                Ok(d) => d,
                Err(e) => return e,
            };
            rustix::fs::statat(&*d, &path, AtFlags::from_bits_truncate(flags as u32))
        }
        _ => return ENOSYS,
    };
    let out = if nr == 262 { a[2] } else { a[1] };
    match r {
        Ok(s) => ctx
            .write_mem(out, &stat_bytes(&s))
            .map_or_else(|e| e, |()| 0),
        Err(e) => errno(e),
    }
}

fn lseek(ctx: &Ctx<'_>, a: [u64; 6]) -> i64 {
    use rustix::fs::SeekFrom;
    let f = match ctx.fd(a[0]) {
        Ok(f) => f,
        Err(e) => return e,
    };
    let pos = match a[2] as i32 {
        libc::SEEK_SET => SeekFrom::Start(a[1]),
        libc::SEEK_CUR => SeekFrom::Current(a[1] as i64),
        libc::SEEK_END => SeekFrom::End(a[1] as i64),
        _ => return EINVAL,
    };
    res(rustix::fs::seek(&*f, pos), |p| p as i64)
}

fn access(ctx: &Ctx<'_>, dir: u64, path: u64, mode: u64, flags: u64) -> i64 {
    let path = match ctx.read_path(path) {
        Ok(p) => p,
        Err(e) => return e,
    };
    let d = match ctx.dirfd(dir) {
        Ok(d) => d,
        Err(e) => return e,
    };
    res(
        rustix::fs::accessat(
            &*d,
            &path,
            rustix::fs::Access::from_bits_truncate(mode as u32),
            rustix::fs::AtFlags::from_bits_truncate(flags as u32),
        ),
        |()| 0,
    )
}

fn dup2(ctx: &Ctx<'_>, old: u64, new: u64, cloexec: bool) -> i64 {
    let f = match ctx.fd(old) {
        Ok(f) => f,
        Err(e) => return e,
    };
    let new = new as i32;
    if !(0..MAX_FDS).contains(&new) {
        return EBADF;
    }
    ctx.core().fds.insert(new, GuestFd { fd: f, cloexec });
    new as i64
}

fn fcntl(ctx: &Ctx<'_>, a: [u64; 6]) -> i64 {
    let f = match ctx.fd(a[0]) {
        Ok(f) => f,
        Err(e) => return e,
    };
    match a[1] as i32 {
        libc::F_DUPFD => ctx.install(f, false, a[2] as i32),
        libc::F_DUPFD_CLOEXEC => ctx.install(f, true, a[2] as i32),
        libc::F_GETFD => {
            let c = ctx.core();
            c.fds
                .get(&(a[0] as i32))
                .map_or(EBADF, |g| i64::from(g.cloexec))
        }
        libc::F_SETFD => {
            let mut c = ctx.core();
            if let Some(g) = c.fds.get_mut(&(a[0] as i32)) {
                g.cloexec = a[2] & libc::FD_CLOEXEC as u64 != 0;
            }
            0
        }
        libc::F_GETFL => res(rustix::fs::fcntl_getfl(&*f), |fl| fl.bits() as i64),
        libc::F_SETFL => res(
            rustix::fs::fcntl_setfl(&*f, rustix::fs::OFlags::from_bits_retain(a[2] as u32)),
            |()| 0,
        ),
        _ => EINVAL,
    }
}

fn ioctl(ctx: &Ctx<'_>, a: [u64; 6]) -> i64 {
    let f = match ctx.fd(a[0]) {
        Ok(f) => f,
        Err(e) => return e,
    };
    let len = match a[1] {
        0x5401 => 60, // TCGETS
        0x5413 => 8,  // TIOCGWINSZ
        0x541b => 4,  // FIONREAD
        _ => return ENOTTY,
    };
    let mut buf = vec![0u8; len];
    let r = host::ioctl_buf(f.as_fd(), a[1], &mut buf);
    if r < 0 {
        return r;
    }
    ctx.write_mem(a[2], &buf).map_or_else(|e| e, |()| r)
}

fn getdents(ctx: &Ctx<'_>, a: [u64; 6]) -> i64 {
    let f = match ctx.fd(a[0]) {
        Ok(f) => f,
        Err(e) => return e,
    };
    let mut buf = vec![0u8; a[2].min(64 * 1024) as usize];
    let r = host::getdents64(f.as_fd(), &mut buf);
    if r <= 0 {
        return r;
    }
    ctx.write_mem(a[1], &buf[..r as usize])
        .map_or_else(|e| e, |()| r)
}

fn getcwd(ctx: &Ctx<'_>, a: [u64; 6]) -> i64 {
    use std::os::unix::ffi::OsStrExt;
    let mut path = ctx.core().cwd.1.as_os_str().as_bytes().to_vec();
    path.push(0);
    if (a[1] as usize) < path.len() {
        return -(libc::ERANGE as i64);
    }
    ctx.write_mem(a[0], &path)
        .map_or_else(|e| e, |()| path.len() as i64)
}

fn chdir(ctx: &Ctx<'_>, nr: u64, arg: u64) -> i64 {
    use rustix::fs::{Mode, OFlags};
    let (fd, path) = if nr == 80 {
        let path = match ctx.read_path(arg) {
            Ok(p) => p,
            Err(e) => return e,
        };
        let cwd = ctx.core().cwd.clone();
        let full = cwd.1.join(&path);
        match rustix::fs::openat(
            &*cwd.0,
            &path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => (Arc::new(fd), normalize(&full)),
            Err(e) => return errno(e),
        }
    } else {
        let f = match ctx.fd(arg) {
            Ok(f) => f,
            Err(e) => return e,
        };
        let link = std::fs::read_link(format!("/proc/self/fd/{}", {
            use std::os::fd::AsRawFd;
            f.as_raw_fd()
        }))
        .unwrap_or_default();
        (f, link)
    };
    ctx.core().cwd = (fd, path);
    0
}

/// `a/./b/../c` -> `a/c`, textually (for getcwd after a relative chdir).
fn normalize(p: &std::path::Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    out
}

fn readlink(ctx: &Ctx<'_>, dir: u64, path: u64, buf: u64, len: u64) -> i64 {
    use std::os::unix::ffi::OsStrExt;
    let p = match ctx.read_path(path) {
        Ok(p) => p,
        Err(e) => return e,
    };
    // The app's own executable, not the monitor's.
    let target: Vec<u8> = if p.as_os_str() == "/proc/self/exe" {
        ctx.app.program.as_os_str().as_bytes().to_vec()
    } else {
        let d = match ctx.dirfd(dir) {
            Ok(d) => d,
            Err(e) => return e,
        };
        match rustix::fs::readlinkat(&*d, &p, Vec::new()) {
            Ok(t) => t.into_bytes(),
            Err(e) => return errno(e),
        }
    };
    let n = target.len().min(len as usize);
    ctx.write_mem(buf, &target[..n])
        .map_or_else(|e| e, |()| n as i64)
}

fn path_op(ctx: &Ctx<'_>, nr: u64, a: [u64; 6]) -> i64 {
    use rustix::fs::{AtFlags, Mode};
    let cwd = libc::AT_FDCWD as i64 as u64;
    let two = |d1: u64, p1: u64, d2: u64, p2: u64| -> Result<_, i64> {
        Ok((
            ctx.dirfd(d1)?,
            ctx.read_path(p1)?,
            ctx.dirfd(d2)?,
            ctx.read_path(p2)?,
        ))
    };
    let one = |d: u64, p: u64| -> Result<_, i64> { Ok((ctx.dirfd(d)?, ctx.read_path(p)?)) };
    let umask = ctx.core().umask;
    let r: Result<i64, i64> = (|| match nr {
        83 | 258 => {
            let (d, p, m) = if nr == 83 {
                (cwd, a[0], a[1])
            } else {
                (a[0], a[1], a[2])
            };
            let (d, p) = one(d, p)?;
            Ok(res(
                rustix::fs::mkdirat(&*d, &p, Mode::from_raw_mode(m as u32 & !umask & 0o7777)),
                |()| 0,
            ))
        }
        84 | 87 | 263 => {
            let (d, p, f) = match nr {
                84 => (cwd, a[0], libc::AT_REMOVEDIR as u32),
                87 => (cwd, a[0], 0),
                _ => (a[0], a[1], a[2] as u32),
            };
            let (d, p) = one(d, p)?;
            Ok(res(
                rustix::fs::unlinkat(&*d, &p, AtFlags::from_bits_truncate(f)),
                |()| 0,
            ))
        }
        _ => {
            let (d1, p1, d2, p2) = if nr == 82 {
                (cwd, a[0], cwd, a[1])
            } else {
                (a[0], a[1], a[2], a[3])
            };
            if nr == 316 && a[4] != 0 {
                return Ok(EINVAL);
            }
            let (d1, p1, d2, p2) = two(d1, p1, d2, p2)?;
            Ok(res(rustix::fs::renameat(&*d1, &p1, &*d2, &p2), |()| 0))
        }
    })();
    r.unwrap_or_else(|e| e)
}

fn pipe(ctx: &Ctx<'_>, out: u64, flags: u64) -> i64 {
    let f = rustix::pipe::PipeFlags::from_bits_truncate(flags as u32)
        | rustix::pipe::PipeFlags::CLOEXEC;
    let (r, w) = match rustix::pipe::pipe_with(f) {
        Ok(p) => p,
        Err(e) => return errno(e),
    };
    let cloexec = flags & libc::O_CLOEXEC as u64 != 0;
    let rn = ctx.install(Arc::new(r), cloexec, 0);
    if rn < 0 {
        return rn;
    }
    let wn = ctx.install(Arc::new(w), cloexec, 0);
    if wn < 0 {
        ctx.core().fds.remove(&(rn as i32));
        return wn;
    }
    let mut b = [0u8; 8];
    b[..4].copy_from_slice(&(rn as i32).to_le_bytes());
    b[4..].copy_from_slice(&(wn as i32).to_le_bytes());
    ctx.write_mem(out, &b).map_or_else(|e| e, |()| 0)
}

fn poll(ctx: &Ctx<'_>, a: [u64; 6]) -> i64 {
    use rustix::event::{PollFd, PollFlags};
    let n = a[1] as usize;
    if n > MAX_FDS as usize {
        return EINVAL;
    }
    let raw = match ctx.read_mem(a[0], n * 8) {
        Ok(r) => r,
        Err(e) => return e,
    };
    let entries: Vec<(i32, i16)> = raw
        .chunks(8)
        .map(|c| {
            (
                i32::from_le_bytes(c[..4].try_into().unwrap()),
                i16::from_le_bytes(c[4..6].try_into().unwrap()),
            )
        })
        .collect();
    let fds: Vec<Option<Arc<OwnedFd>>> = entries
        .iter()
        .map(|(fd, _)| {
            if *fd < 0 {
                None
            } else {
                ctx.fd(*fd as u64).ok()
            }
        })
        .collect();
    // Closed guest descriptors report POLLNVAL without asking the host.
    let mut polled: Vec<PollFd<'_>> = Vec::new();
    let mut which = Vec::new();
    for (i, f) in fds.iter().enumerate() {
        if let Some(f) = f {
            polled.push(PollFd::new(
                &**f,
                PollFlags::from_bits_truncate(entries[i].1 as _),
            ));
            which.push(i);
        }
    }
    let timeout_ms = a[2] as i32;
    let ts = (timeout_ms >= 0).then(|| rustix::time::Timespec {
        tv_sec: (timeout_ms / 1000) as i64,
        tv_nsec: ((timeout_ms % 1000) as i64 * 1_000_000) as _,
    });
    let r = match rustix::event::poll(&mut polled, ts.as_ref()) {
        Ok(n) => n,
        Err(e) => return errno(e),
    };
    let mut revents = vec![0i16; n];
    for (k, &i) in which.iter().enumerate() {
        revents[i] = polled[k].revents().bits() as i16;
    }
    let mut ready = r as i64;
    for (i, f) in fds.iter().enumerate() {
        if f.is_none() && entries[i].0 >= 0 {
            revents[i] = libc::POLLNVAL;
            ready += 1;
        }
    }
    let mut out = raw;
    for (i, r) in revents.iter().enumerate() {
        out[i * 8 + 6..i * 8 + 8].copy_from_slice(&r.to_le_bytes());
    }
    ctx.write_mem(a[0], &out).map_or_else(|e| e, |()| ready)
}

/// Run system calls decoded from arbitrary bytes against an app with real
/// memory and descriptors but no VM, as the proxy would (never blocking):
/// the fuzz target `lwk_calls` drives this. Each 56-byte record is a call
/// number and six arguments; an argument with its top bit set points into
/// the app's memory at its low bits.
#[doc(hidden)]
pub fn fuzz_calls(data: &[u8]) {
    use std::os::fd::OwnedFd;
    let Ok(ram) = GuestRam::new(16 << 20, None, &[]) else {
        return;
    };
    let Ok(dir) = std::env::temp_dir()
        .join("lwk-fuzz")
        .canonicalize()
        .or_else(|_| {
            std::fs::create_dir_all(std::env::temp_dir().join("lwk-fuzz"))?;
            std::env::temp_dir().join("lwk-fuzz").canonicalize()
        })
    else {
        return;
    };
    let Ok(mut space) = AddressSpace::new(&ram) else {
        return;
    };
    let base = space.mmap(&ram, None, 4 << 20, true) as u64;
    let null = || -> Option<OwnedFd> { std::fs::File::open("/dev/null").ok().map(Into::into) };
    let (Some(a), Some(b), Some(c)) = (null(), null(), null()) else {
        return;
    };
    let Ok(d) = std::fs::File::open(&dir) else {
        return;
    };
    // As nobody: a fuzzed path cannot touch anything root owns.
    let app = Arc::new(AppState::new(
        1,
        "/prog".into(),
        65534,
        65534,
        space,
        [a, b, c],
        (d.into(), dir),
    ));
    let ctx = Ctx {
        ram: &ram,
        cores: &[1, 2],
        app: &app,
        tid: 1,
        cpu: 0,
        on_vcpu: false,
    };
    for rec in data.chunks_exact(56) {
        let word = |i: usize| u64::from_le_bytes(rec[i * 8..i * 8 + 8].try_into().unwrap());
        let nr = word(0) % 512;
        let mut a = [0u64; 6];
        for (i, v) in a.iter_mut().enumerate() {
            let w = word(i + 1);
            *v = if w >> 63 == 1 && w != u64::MAX {
                base + (w & ((4 << 20) - 1))
            } else {
                w
            };
        }
        let _ = dispatch(&ctx, nr, a);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_calls_are_known_and_sorted() {
        for w in EXIT_CALLS.windows(2) {
            assert!(w[0] < w[1]);
        }
        for nr in EXIT_CALLS {
            assert!(crate::sysnames::NAMES[*nr as usize].is_some(), "{nr}");
        }
    }

    use proptest::prelude::*;

    /// An app with memory and descriptors, without a VM: what the decoder
    /// of system-call arguments works on.
    fn app(ram: &GuestRam, cwd: &std::path::Path) -> (Arc<AppState>, u64) {
        let mut space = AddressSpace::new(ram).unwrap();
        let base = space.mmap(ram, None, 4 << 20, true) as u64;
        let null = || -> OwnedFd { std::fs::File::open("/dev/null").unwrap().into() };
        let dir: OwnedFd = std::fs::File::open(cwd).unwrap().into();
        let app = AppState::new(
            1,
            "/prog".into(),
            65534,
            65534,
            space,
            [null(), null(), null()],
            (dir, cwd.to_path_buf()),
        );
        (Arc::new(app), base)
    }

    /// Run `f` on a thread of its own and return what it returns (a panic
    /// there fails the test).
    fn on_own_thread<T: Send>(f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| s.spawn(f).join().unwrap())
    }

    fn arg() -> impl Strategy<Value = u64> {
        prop_oneof![
            0u64..4,
            any::<u64>(),
            (0u64..(4 << 20)).prop_map(|o| o | (1 << 63)), // marks "inside the app's memory"
            Just(u64::MAX),
            Just(libc::AT_FDCWD as i64 as u64),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]
        /// Any call with any arguments, as the proxy gets them: a result or a
        /// bounce, never a panic and never a block (the proxy must not block).
        #[test]
        fn arbitrary_calls_never_panic_or_block(
            calls in proptest::collection::vec((0u64..460, proptest::array::uniform6(arg())), 1..20)
        ) {
            let ram = GuestRam::new(16 << 20, None, &[]).unwrap();
            let dir = tempfile::tempdir().unwrap();
            let (app, base) = app(&ram, dir.path());
            // The calls act as the app's user (`as_user` sets the thread's
            // fsuid for good): on a thread of their own, so this one can
            // still remove the temporary directory.
            let blocked = on_own_thread(|| {
                let ctx = Ctx { ram: &ram, cores: &[1, 2], app: &app, tid: 1, cpu: 0, on_vcpu: false };
                for (nr, mut a) in calls {
                    for v in &mut a {
                        if *v >> 63 == 1 && *v != u64::MAX {
                            *v = base + (*v & !(1 << 63));
                        }
                    }
                    let started = std::time::Instant::now();
                    let _ = dispatch(&ctx, nr, a);
                    if started.elapsed() >= std::time::Duration::from_secs(2) {
                        return Some(nr);
                    }
                }
                None
            });
            prop_assert!(blocked.is_none(), "call {:?} blocked", blocked);
        }
    }

    /// Run `f` with a one-core app's context on a vCPU, as the app's user on
    /// a thread of its own (see arbitrary_calls...): `f` gets the context,
    /// the app, the guest RAM and the base of the app's 4 MiB mapping.
    fn as_app_on_vcpu(f: impl FnOnce(&Ctx<'_>, &AppState, &GuestRam, u64) + Send) {
        let ram = GuestRam::new(16 << 20, None, &[]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (app, base) = app(&ram, dir.path());
        on_own_thread(|| {
            let ctx = Ctx {
                ram: &ram,
                cores: &[1],
                app: &app,
                tid: 1,
                cpu: 0,
                on_vcpu: true,
            };
            f(&ctx, &app, &ram, base)
        });
    }

    #[test]
    fn bad_pointers_are_efault_and_fds_are_checked() {
        as_app_on_vcpu(|ctx, app, ram, base| {
            // write(1, unmapped, 8)
            assert_eq!(
                dispatch(ctx, 1, [1, 0x1000, 8, 0, 0, 0]),
                Outcome::Ret(EFAULT)
            );
            // write(77, ...): no such descriptor
            assert_eq!(
                dispatch(ctx, 1, [77, base, 8, 0, 0, 0]),
                Outcome::Ret(EBADF)
            );
            // openat(AT_FDCWD, unmapped path)
            let cwd = libc::AT_FDCWD as i64 as u64;
            assert_eq!(
                dispatch(ctx, 257, [cwd, 0x10, 0, 0, 0, 0]),
                Outcome::Ret(EFAULT)
            );
            // A path without its NUL inside the app's memory.
            let ram_ref = &ram;
            app.core
                .lock()
                .unwrap()
                .space
                .as_ref()
                .unwrap()
                .write(ram_ref, base, &[b'a'; 4096])
                .unwrap();
            assert!(
                matches!(dispatch(ctx, 257, [cwd, base, 0, 0, 0, 0]), Outcome::Ret(e) if e < 0)
            );
            // An unknown call is ENOSYS and counted as unsupported.
            assert_eq!(dispatch(ctx, 999, [0; 6]), Outcome::Ret(ENOSYS));
            let s = app.summary(&app.core.lock().unwrap());
            assert!(
                s.to_string()
                    .contains("unsupported (-ENOSYS): syscall_999 1"),
                "{s}"
            );
        });
    }

    /// mremap's arguments come from the app: the proptest above found an
    /// address near the top of the range whose sum with the new length
    /// wrapped (a panic in the proxy). Each is now checked as Linux checks it,
    /// and a move keeps the bytes.
    #[test]
    fn mremap_checks_its_arguments_and_moves_the_bytes() {
        as_app_on_vcpu(|ctx, app, ram, _| {
            let call = |a: [u64; 6]| match dispatch(ctx, 25, a) {
                Outcome::Ret(r) => r,
                o => panic!("mremap gave {o:?}"),
            };
            let may = libc::MREMAP_MAYMOVE as u64;
            let fixed = libc::MREMAP_FIXED as u64;
            let top = !(PAGE - 1); // the last page of the address range
                                   // The wrapping sums: shrinking at the top, and a top old range.
            assert_eq!(call([top, 3 * PAGE, PAGE, 0, 0, 0]), EINVAL);
            assert_eq!(call([top, u64::MAX, 1, may, 0, 0]), EINVAL);
            assert_eq!(call([PAGE + 1, PAGE, 2 * PAGE, may, 0, 0]), EINVAL);
            assert_eq!(call([PAGE, PAGE, 0, may, 0, 0]), EINVAL);
            assert_eq!(call([PAGE, PAGE, 2 * PAGE, 0x80, 0, 0]), EINVAL);
            assert_eq!(call([PAGE, PAGE, 2 * PAGE, fixed, 0, 0]), EINVAL);

            let space = |f: &mut dyn FnMut(&mut AddressSpace) -> i64| {
                f(app.core.lock().unwrap().space.as_mut().unwrap())
            };
            let at = space(&mut |s| s.mmap(ram, None, 2 * PAGE, true)) as u64;
            space(&mut |s| {
                s.write(ram, at + PAGE - 3, b"edge").unwrap();
                0
            });
            // Grow without MAYMOVE: no room in place here.
            assert_eq!(
                call([at, 2 * PAGE, 4 * PAGE, 0, 0, 0]),
                -(libc::ENOMEM as i64)
            );
            let moved = call([at, 2 * PAGE, 4 * PAGE, may, 0, 0]);
            assert!(moved > 0 && moved as u64 != at, "{moved:#x}");
            let mut b = [0u8; 4];
            space(&mut |s| {
                s.read(ram, moved as u64 + PAGE - 3, &mut b).unwrap();
                0
            });
            assert_eq!(&b, b"edge");
            // Shrinking in place keeps the address.
            assert_eq!(call([moved as u64, 4 * PAGE, PAGE, 0, 0, 0]), moved);
        });
    }

    #[test]
    fn paths_normalize_textually() {
        assert_eq!(
            normalize(std::path::Path::new("/a/./b/../c")),
            PathBuf::from("/a/c")
        );
        assert_eq!(
            normalize(std::path::Path::new("/../x")),
            PathBuf::from("/x")
        );
    }
}
