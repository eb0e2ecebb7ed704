//! The owner's side of a whole-address-space share: the service thread
//! that converts ranges on demand into the address-space file (offset =
//! address), follows unmaps with hole punches, and privatizes everything
//! around `fork()`. docs/xemem.md, "Whole-address-space shares".

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

use hobbes_proto::xpmem_as::{Control, Op, Reply, Request, REQUEST_SIZE};
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{self as sock, AddressFamily, SockFlag, SockType, UnixAddr};

use super::sys::{self, Event, Perms, Uffd};
use crate::maps;

/// Size of the address-space file: past the highest user address of
/// 5-level paging (2^56), so every address is an offset.
pub const AS_FILE_SIZE: u64 = 1 << 57;

/// Counters for tests and benchmarks.
#[derive(Debug, Default)]
pub struct OwnerStats {
    /// Ensure requests served.
    pub ensures: AtomicU64,
    /// Bytes copied into the address-space file.
    pub converted: AtomicU64,
    /// Bytes punched out of it after unmaps.
    pub punched: AtomicU64,
}

/// What the process shares: one per process (every whole-address-space
/// make of the process uses it).
pub struct Owner {
    /// The process that runs the service thread.
    pub pid: u32,
    /// The control memfd: the capability the name server hands out.
    pub control: OwnedFd,
    control_id: (u64, u64),
    /// The address-space file.
    asfd: OwnedFd,
    as_dev: (u32, u32),
    as_ino: u64,
    /// Fork: `want_frozen` asked by the prepare handler, `frozen` granted.
    fork: Mutex<ForkState>,
    fork_cv: Condvar,
    wake: OwnedFd,
    /// Counters.
    pub stats: OwnerStats,
}

#[derive(Default)]
struct ForkState {
    want_frozen: bool,
    frozen: bool,
}

static OWNER: Mutex<Option<Arc<Owner>>> = Mutex::new(None);

/// This process's owner side, started on first use (a `fork()` child
/// starts its own).
pub fn get_or_start() -> Result<Arc<Owner>, String> {
    let mut slot = OWNER.lock().unwrap_or_else(|p| p.into_inner());
    let pid = std::process::id();
    if let Some(o) = slot.as_ref().filter(|o| o.pid == pid) {
        return Ok(o.clone());
    }
    let (owner, service) = start(pid)?;
    let owner = Arc::new(owner);
    let for_thread = owner.clone();
    std::thread::Builder::new()
        .name("xpmem-owner".into())
        .spawn(move || service.run(&for_thread))
        .map_err(|e| format!("cannot start the owner thread: {e}"))?;
    register_atfork();
    keep_malloc_memory_mapped();
    *slot = Some(owner.clone());
    Ok(owner)
}

/// Set by a program that wants glibc's default `free` (memory given back to
/// the kernel) even with a whole-address-space share: see below.
const MALLOC_TRIM_ENV: &str = "HOBBES_XPMEM_MALLOC_TRIM";

/// glibc's `free` gives large chunks (and the heap's top) back to the kernel
/// with `munmap`, `brk` or `madvise`. The service thread learns of such an
/// unmap from userfaultfd only after the unmapping thread has moved on (an
/// unmap event completes when it is read), and punches the pages out of the
/// address-space file a few microseconds later. An attacher that reads
/// through a cached attachment with no round trip to us in between (UCX's
/// registration cache, told of the new buffer through shared memory) could
/// read the freed buffer's old pages in that window where the program
/// already wrote new ones. So once this process shares its whole address
/// space, malloc keeps its memory mapped and reuses it in place, as UCX's and
/// Open MPI's own memory hooks make it do: no chunk gets its own mapping
/// (`M_MMAP_MAX` 0: large ones come from the heaps) and heaps are never
/// trimmed (`M_TRIM_THRESHOLD` -1). A buffer freed and allocated again is then
/// the same pages, which attachers see as they are. The cost: the process
/// does not give freed memory back to the kernel. `HOBBES_XPMEM_MALLOC_TRIM=1`
/// keeps glibc's defaults (and the window). docs/xemem.md, "Whole-address-space shares".
fn keep_malloc_memory_mapped() {
    if std::env::var_os(MALLOC_TRIM_ENV).is_some_and(|v| v == "1") {
        return;
    }
    // SAFETY: mallopt only sets glibc's allocator parameters; it is
    // thread-safe and changes no memory already handed out.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, -1);
    }
}

/// The running owner side of this process, if any.
pub fn current() -> Option<Arc<Owner>> {
    let slot = OWNER.lock().unwrap_or_else(|p| p.into_inner());
    slot.as_ref()
        .filter(|o| o.pid == std::process::id())
        .cloned()
}

fn major_minor(dev: u64) -> (u32, u32) {
    (libc::major(dev), libc::minor(dev))
}

/// Make the files, the socket and the userfaultfds.
fn start(pid: u32) -> Result<(Owner, Service), String> {
    fn sys_err(what: &'static str) -> impl Fn(Errno) -> String {
        move |e| format!("{what}: {e}")
    }
    let (asfd, _) = crate::files::new_file(c"xpmem-as", usize::MAX)
        .map_err(sys_err("memfd_create (address-space file)"))?;
    hobbes_sys::ftruncate(asfd.as_fd(), AS_FILE_SIZE).map_err(sys_err("ftruncate"))?;
    let (dev, as_ino) = sys::dev_ino(asfd.as_fd()).map_err(sys_err("fstat"))?;
    let control = hobbes_sys::memfd_create(c"xpmem-control", hobbes_sys::MemfdFlags::empty())
        .map_err(sys_err("memfd_create (control)"))?;
    hobbes_sys::ftruncate(control.as_fd(), hobbes_sys::page_size() as u64)
        .map_err(sys_err("ftruncate"))?;
    let control_id = sys::dev_ino(control.as_fd()).map_err(sys_err("fstat"))?;
    let listener = sock::socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(sys_err("socket"))?;
    let mut name = Vec::new();
    for attempt in 0..8u32 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let candidate = format!("hobbes-xpmem/{pid}/{nanos:x}{attempt}").into_bytes();
        let addr = UnixAddr::new_abstract(&candidate).map_err(sys_err("socket name"))?;
        match sock::bind(listener.as_raw_fd(), &addr) {
            Ok(()) => {
                name = candidate;
                break;
            }
            Err(Errno::EADDRINUSE) => continue,
            Err(e) => return Err(format!("bind: {e}")),
        }
    }
    if name.is_empty() {
        return Err("bind: no free socket name".into());
    }
    sock::listen(&listener, sock::Backlog::new(64).expect("valid backlog"))
        .map_err(sys_err("listen"))?;
    let header = Control { pid, socket: name }
        .encode()
        .ok_or("socket name too long")?;
    nix::sys::uio::pwrite(control.as_fd(), &header, 0).map_err(sys_err("pwrite"))?;
    let ev = Uffd::open_for_kernel_faults(sys::FEATURE_EVENT_UNMAP | sys::FEATURE_EVENT_REMAP)
        .map_err(sys_err("userfaultfd"))?;
    // Freezing ranges during a conversion is best effort: without it, a
    // write racing the conversion can be lost (docs/xemem.md).
    let wp = Uffd::open_for_kernel_faults(sys::FEATURE_WP_UNPOPULATED | sys::FEATURE_WP_SHMEM).ok();
    let wake = crate::sys::eventfd().map_err(sys_err("eventfd"))?;
    let owner = Owner {
        pid,
        control,
        control_id,
        asfd,
        as_dev: major_minor(dev),
        as_ino,
        fork: Mutex::new(ForkState::default()),
        fork_cv: Condvar::new(),
        wake,
        stats: OwnerStats::default(),
    };
    Ok((
        owner,
        Service {
            listener,
            ev,
            wp,
            conns: HashMap::new(),
            moved: Vec::new(),
        },
    ))
}

/// One authenticated (or not yet) attacher connection.
struct Conn {
    fd: OwnedFd,
    /// None until a good hello; then whether it may write.
    access: Option<bool>,
}

/// What only the service thread touches.
struct Service {
    listener: OwnedFd,
    /// Converted ranges are registered here (MISSING) for unmap events.
    ev: Uffd,
    /// Ranges being converted are write-protected here.
    wp: Option<Uffd>,
    conns: HashMap<i32, Conn>,
    /// Converted ranges the owner moved with `mremap` and that wait to be
    /// converted again at their new address: (old address = file offset,
    /// new address, length). Unmap events never punch their old offsets.
    moved: Vec<(u64, u64, u64)>,
}

/// An owner-side failure, for the reply.
struct Refusal {
    errno: Errno,
    addr: u64,
    message: String,
}

fn refusal(errno: Errno, addr: u64, message: impl Into<String>) -> Refusal {
    Refusal {
        errno,
        addr,
        message: message.into(),
    }
}

impl Service {
    fn run(mut self, owner: &Owner) {
        loop {
            self.drain_events(owner);
            let frozen = owner.fork.lock().unwrap_or_else(|p| p.into_inner()).frozen;
            let mut fds = vec![
                PollFd::new(self.listener.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.ev.as_fd(), PollFlags::POLLIN),
                PollFd::new(owner.wake.as_fd(), PollFlags::POLLIN),
            ];
            if let Some(wp) = &self.wp {
                fds.push(PollFd::new(wp.as_fd(), PollFlags::POLLIN));
            }
            let fixed = fds.len();
            let keys: Vec<i32> = match frozen {
                // Requests wait while a fork is under way.
                true => Vec::new(),
                false => self.conns.keys().copied().collect(),
            };
            for k in &keys {
                let fd = self.conns[k].fd.as_fd();
                fds.push(PollFd::new(fd, PollFlags::POLLIN));
            }
            match nix::poll::poll(&mut fds, PollTimeout::NONE) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(_) => return,
            }
            let ready = |p: &PollFd| p.revents().is_some_and(|r| !r.is_empty());
            let accept = ready(&fds[0]);
            let wake = ready(&fds[2]);
            let conns_ready: Vec<i32> = keys
                .iter()
                .zip(&fds[fixed..])
                .filter(|(_, p)| ready(p))
                .map(|(k, _)| *k)
                .collect();
            drop(fds);
            if wake {
                let _ = crate::sys::eventfd_ack(owner.wake.as_fd());
                self.fork_step(owner);
            }
            if accept {
                if let Ok(fd) = sock::accept4(self.listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
                    // SAFETY: accept4 just returned this descriptor; we own it.
                    let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
                    self.conns.insert(fd.as_raw_fd(), Conn { fd, access: None });
                }
            }
            for k in conns_ready {
                // Events first: an unmap read after a conversion of the
                // same range would punch the new contents.
                self.drain_events(owner);
                if !self.serve(owner, k) {
                    self.conns.remove(&k);
                }
            }
        }
    }

    /// Read and handle every queued userfaultfd event, then convert again
    /// the ranges the owner moved.
    fn drain_events(&mut self, owner: &Owner) {
        loop {
            let mut any = false;
            if let Ok(events) = self.ev.read_events() {
                for e in events {
                    any = true;
                    self.owner_event(owner, e);
                }
            }
            if let Some(wp) = &self.wp {
                if let Ok(events) = wp.read_events() {
                    for e in events {
                        any = true;
                        if let Event::Fault { addr, .. } = e {
                            // A writer that hit a range after its conversion
                            // finished; it retries on the new mapping.
                            let page = hobbes_sys::page_size() as u64;
                            let _ = wp.wake((addr & !(page - 1)) as usize, page as usize);
                        }
                    }
                }
            }
            if !any {
                break;
            }
        }
        for (from, to, len) in std::mem::take(&mut self.moved) {
            // Its pages now live at `to` under offset `from`: copy them to
            // offset `to` and map that, then punch `from` (ensure does both).
            let _ = self.ensure(owner, to, len);
            self.punch_orphans(owner, &[(from, from + len)]);
        }
    }

    fn owner_event(&mut self, owner: &Owner, e: Event) {
        let page = hobbes_sys::page_size() as u64;
        match e {
            Event::Unmap { start, end } => {
                // At once, before anything else: until the hole is punched
                // an attacher still reads the unmapped pages. Offsets the
                // owner moved elsewhere (mremap) are kept.
                let mut holes = vec![(start, end)];
                for &(from, _, len) in &self.moved {
                    holes = subtract(holes, (from, from + len));
                }
                for (a, b) in holes {
                    if hobbes_sys::punch_hole(owner.asfd.as_fd(), a, b - a).is_ok() {
                        owner.stats.punched.fetch_add(b - a, Ordering::Relaxed);
                    }
                }
            }
            Event::Remap { from, to, len } => self.moved.push((from, to, len)),
            Event::Fault { addr, .. } => {
                // A hole in converted memory (not expected): give it a
                // zero page and let the thread go on.
                let at = addr & !(page - 1);
                let _ = rustix::fs::fallocate(
                    owner.asfd.as_fd(),
                    rustix::fs::FallocateFlags::empty(),
                    at,
                    page,
                );
                let _ = self.ev.wake(at as usize, page as usize);
            }
            Event::Other(_) => {}
        }
    }

    /// Serve one datagram on connection `k`; false when it is to be closed.
    fn serve(&mut self, owner: &Owner, k: i32) -> bool {
        let mut buf = [0u8; REQUEST_SIZE + 1];
        let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 2]);
        let (n, fds) = {
            let conn = &self.conns[&k];
            let mut iov = [std::io::IoSliceMut::new(&mut buf)];
            let msg = match sock::recvmsg::<()>(
                conn.fd.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                sock::MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Ok(m) => m,
                Err(Errno::EINTR) | Err(Errno::EAGAIN) => return true,
                Err(_) => return false,
            };
            let mut fds = Vec::new();
            if let Ok(cmsgs) = msg.cmsgs() {
                for c in cmsgs {
                    if let sock::ControlMessageOwned::ScmRights(raw) = c {
                        for fd in raw {
                            // SAFETY: SCM_RIGHTS just installed these
                            // descriptors in this process; we own them.
                            fds.push(unsafe {
                                <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd)
                            });
                        }
                    }
                }
            }
            (msg.bytes, fds)
        };
        if n == 0 {
            return false;
        }
        let req = match Request::decode(&buf[..n]) {
            Ok(r) => r,
            Err(e) => {
                // A malformed request: say why, then hang up.
                let _ = self.reply(k, &error_reply(Op::Ensure, Errno::EINVAL, 0, e.0), None);
                return false;
            }
        };
        match req.op {
            Op::Hello => {
                let result = self.hello(owner, k, fds);
                match result {
                    Ok(asfd) => self.reply(k, &Reply::ok(Op::Hello), Some(asfd.as_fd())),
                    Err(r) => {
                        let _ = self.reply(k, &error_reply(Op::Hello, r.errno, 0, r.message), None);
                        false
                    }
                }
            }
            Op::Ensure => {
                if self.conns[&k].access.is_none() {
                    let _ = self.reply(
                        k,
                        &error_reply(Op::Ensure, Errno::EACCES, 0, "ensure before hello".into()),
                        None,
                    );
                    return false;
                }
                owner.stats.ensures.fetch_add(1, Ordering::Relaxed);
                let reply = match self.ensure(owner, req.vaddr, req.len) {
                    Ok(()) => Reply::ok(Op::Ensure),
                    Err(r) => error_reply(Op::Ensure, r.errno, r.addr, r.message),
                };
                self.reply(k, &reply, None)
            }
        }
    }

    fn reply(&self, k: i32, reply: &Reply, fd: Option<BorrowedFd<'_>>) -> bool {
        let bytes = reply.encode();
        let iov = [std::io::IoSlice::new(&bytes)];
        let raw = fd.map(|f| [f.as_raw_fd()]);
        let cmsg: Vec<sock::ControlMessage<'_>> = match &raw {
            Some(r) => vec![sock::ControlMessage::ScmRights(r)],
            None => Vec::new(),
        };
        sock::sendmsg::<()>(
            self.conns[&k].fd.as_raw_fd(),
            &iov,
            &cmsg,
            sock::MsgFlags::MSG_NOSIGNAL,
            None,
        )
        .is_ok()
    }

    /// Check the capability (the control memfd, as the name server handed
    /// it out) and answer with the address-space file, read-only when it is.
    fn hello(&mut self, owner: &Owner, k: i32, fds: Vec<OwnedFd>) -> Result<OwnedFd, Refusal> {
        let [control] = <[OwnedFd; 1]>::try_from(fds).map_err(|fds| {
            refusal(
                Errno::EINVAL,
                0,
                format!("hello carries {} descriptors, expected 1", fds.len()),
            )
        })?;
        let id = sys::dev_ino(control.as_fd()).map_err(|e| refusal(e, 0, "fstat"))?;
        if id != owner.control_id {
            return Err(refusal(
                Errno::EACCES,
                0,
                "the descriptor is not this share's (get the segment from the name server)",
            ));
        }
        let write = sys::writable(control.as_fd()).map_err(|e| refusal(e, 0, "fcntl"))?;
        let asfd = match write {
            true => owner
                .asfd
                .try_clone()
                .map_err(|_| refusal(Errno::EMFILE, 0, "dup"))?,
            false => sys::reopen_read_only(owner.asfd.as_fd())
                .map_err(|e| refusal(e, 0, format!("reopen read-only: {e}")))?,
        };
        if let Some(c) = self.conns.get_mut(&k) {
            c.access = Some(write);
        }
        Ok(asfd)
    }

    /// Make `[vaddr, vaddr+len)` part of the address-space file.
    fn ensure(&mut self, owner: &Owner, vaddr: u64, len: u64) -> Result<(), Refusal> {
        let page = hobbes_sys::page_size() as u64;
        if !vaddr.is_multiple_of(page) || !len.is_multiple_of(page) || vaddr + len > AS_FILE_SIZE {
            return Err(refusal(
                Errno::EINVAL,
                0,
                format!("range {vaddr:#x}+{len:#x} is not page-aligned user memory"),
            ));
        }
        let (start, end) = (vaddr as usize, (vaddr + len) as usize);
        let maps = maps::current().map_err(|e| refusal(Errno::EIO, 0, format!("maps: {e}")))?;
        let mut at = start;
        let mut todo = Vec::new();
        for m in maps.iter().filter(|m| m.end > start && m.start < end) {
            if m.start > at {
                break;
            }
            let (from, to) = (at, m.end.min(end));
            at = to;
            if self.is_as(owner, m) && m.offset + (from - m.start) as u64 == from as u64 {
                continue; // already converted
            }
            if !m.readable || m.path.starts_with("[v") {
                return Err(refusal(
                    Errno::EFAULT,
                    from as u64,
                    format!(
                        "{from:#x} is not exportable ({}{})",
                        if m.readable { "" } else { "not readable" },
                        m.path
                    ),
                ));
            }
            if m.shared && !self.is_as(owner, m) {
                return Err(refusal(
                    Errno::EINVAL,
                    from as u64,
                    format!(
                        "{from:#x} is a shared mapping of {:?}: export it with xpmem_make",
                        m.path
                    ),
                ));
            }
            todo.push((from, to, m.clone()));
        }
        if at < end {
            return Err(refusal(
                Errno::EFAULT,
                at as u64,
                format!("{at:#x} is not mapped in the owner"),
            ));
        }
        let mut orphans = Vec::new();
        for (from, to, m) in todo {
            self.convert(owner, from, to, &m)?;
            if self.is_as(owner, &m) {
                let off = m.offset + (from - m.start) as u64;
                orphans.push((off, off + (to - from) as u64));
            }
        }
        self.punch_orphans(owner, &orphans);
        Ok(())
    }

    fn is_as(&self, owner: &Owner, m: &maps::Mapping) -> bool {
        m.shared && m.inode == owner.as_ino && m.dev == owner.as_dev
    }

    /// Convert `[from, to)` (inside mapping `m`) in place: write-protect it
    /// where the kernel can (anonymous and shared memory), copy it to the
    /// address-space file at offset = address, map the file over it, wake
    /// the writers that waited.
    fn convert(
        &mut self,
        owner: &Owner,
        from: usize,
        to: usize,
        m: &maps::Mapping,
    ) -> Result<(), Refusal> {
        let len = to - from;
        let anon = m.inode == 0 || self.is_as(owner, m);
        if self.is_as(owner, m) {
            // Moved memory is still registered here: replacing it must not
            // raise an unmap event this thread would wait on itself.
            let _ = self.ev.unregister(from, len);
        }
        let frozen = match (&self.wp, anon) {
            (Some(wp), true) => freeze(wp, from, len),
            _ => false,
        };
        let thaw = |svc: &Service| {
            if let (true, Some(wp)) = (frozen, &svc.wp) {
                // SAFETY: the range we froze above, in our own process.
                let _ = unsafe { wp.writeprotect(from, len, false) };
                let _ = wp.unregister(from, len);
            }
        };
        if let Err(e) = sys::pwrite_memory(owner.asfd.as_fd(), from, len, from as u64) {
            thaw(self);
            return Err(refusal(
                e,
                from as u64,
                format!("copying {from:#x}+{len:#x}: {e}"),
            ));
        }
        let perms = Perms {
            read: m.readable,
            write: m.writable,
            exec: m.executable,
        };
        // SAFETY: the owner's memory, replaced by a shared mapping of a file
        // holding the same bytes at the same address; writers were blocked
        // by the write-protection (or, for private file mappings, are the
        // window docs/xemem.md names).
        let mapped =
            unsafe { sys::map_shared_fixed(from, len, perms, owner.asfd.as_fd(), from as u64) };
        if let Err(e) = mapped {
            thaw(self);
            return Err(refusal(e, from as u64, format!("mmap(MAP_FIXED): {e}")));
        }
        // SAFETY: our own new mapping; its only faults would be holes, which
        // `drain_events` fills.
        let _ = unsafe { self.ev.register(from, len, sys::MODE_MISSING) };
        if let (true, Some(wp)) = (frozen, &self.wp) {
            // The writers retry, on the new mapping.
            let _ = wp.wake(from, len);
        }
        owner
            .stats
            .converted
            .fetch_add(len as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Punch out of the address-space file the parts of `ranges` (file
    /// offsets) that no mapping of the owner shows any more: the owner
    /// unmapped them, so attachers must fault instead of reading them.
    fn punch_orphans(&self, owner: &Owner, ranges: &[(u64, u64)]) {
        if ranges.is_empty() {
            return;
        }
        let Ok(maps) = maps::current() else { return };
        let live: Vec<(u64, u64)> = maps
            .iter()
            .filter(|m| self.is_as(owner, m))
            .map(|m| (m.offset, m.offset + (m.end - m.start) as u64))
            .collect();
        for &(a, b) in ranges {
            let mut holes = vec![(a, b)];
            for &live in &live {
                holes = subtract(holes, live);
            }
            for (ha, hb) in holes {
                if hobbes_sys::punch_hole(owner.asfd.as_fd(), ha, hb - ha).is_ok() {
                    owner.stats.punched.fetch_add(hb - ha, Ordering::Relaxed);
                }
            }
        }
    }

    /// A fork's prepare handler asked to freeze (privatize everything), or
    /// its parent handler to thaw.
    fn fork_step(&mut self, owner: &Owner) {
        let want = owner
            .fork
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .want_frozen;
        if want {
            self.privatize_all(owner);
        }
        let mut st = owner.fork.lock().unwrap_or_else(|p| p.into_inner());
        st.frozen = want;
        owner.fork_cv.notify_all();
    }

    /// Turn every converted range back into private memory (same address,
    /// same contents), so that a `fork()` child gets a copy of it. Writers
    /// are write-protected during each copy; attachers fault afterwards and
    /// have the ranges converted again once the fork is done.
    fn privatize_all(&mut self, owner: &Owner) {
        let Ok(maps) = maps::current() else { return };
        let mut orphans = Vec::new();
        for m in maps.iter().filter(|m| self.is_as(owner, m) && m.readable) {
            let len = m.end - m.start;
            let _ = self.ev.unregister(m.start, len);
            let frozen = self.wp.as_ref().is_some_and(|wp| freeze(wp, m.start, len));
            let perms = Perms {
                read: m.readable,
                write: m.writable,
                exec: m.executable,
            };
            // SAFETY: the owner's converted memory, readable; writers are
            // blocked by the write-protection during the copy.
            let _ = unsafe { sys::privatize(m.start, len, perms) };
            if let (true, Some(wp)) = (frozen, &self.wp) {
                let _ = wp.wake(m.start, len);
            }
            orphans.push((m.offset, m.offset + len as u64));
        }
        self.punch_orphans(owner, &orphans);
    }
}

/// `ranges` without `cut` (half-open ranges).
fn subtract(ranges: Vec<(u64, u64)>, cut: (u64, u64)) -> Vec<(u64, u64)> {
    let (ca, cb) = cut;
    let mut out = Vec::new();
    for (a, b) in ranges {
        if ca >= b || cb <= a {
            out.push((a, b));
            continue;
        }
        if a < ca {
            out.push((a, ca));
        }
        if cb < b {
            out.push((cb, b));
        }
    }
    out
}

/// Register and write-protect `[from, from+len)`; false where the kernel
/// cannot (the caller then converts without a freeze).
fn freeze(wp: &Uffd, from: usize, len: usize) -> bool {
    // SAFETY: the owner's own memory; the service thread resolves the
    // faults (it wakes the range when the conversion is done).
    if unsafe { wp.register(from, len, sys::MODE_WP) }.is_err() {
        return false;
    }
    // SAFETY: as above.
    if unsafe { wp.writeprotect(from, len, true) }.is_err() {
        let _ = wp.unregister(from, len);
        return false;
    }
    true
}

fn error_reply(op: Op, errno: Errno, addr: u64, message: String) -> Reply {
    Reply {
        op,
        status: errno as i32,
        addr,
        message,
    }
}

// ------------------------------------------------------------------ fork

static ATFORK: OnceLock<()> = OnceLock::new();

fn register_atfork() {
    ATFORK.get_or_init(|| {
        // SAFETY: the handlers are plain `extern "C"` functions that stay
        // valid for the life of the process (this library is never unloaded
        // while it runs threads).
        unsafe { libc::pthread_atfork(Some(before_fork), Some(after_fork_parent), None) };
    });
}

/// Ask the service thread to privatize every converted range and wait for
/// it: the child then gets copies, as it would without the share.
extern "C" fn before_fork() {
    let Some(owner) = current() else { return };
    let mut st = owner.fork.lock().unwrap_or_else(|p| p.into_inner());
    st.want_frozen = true;
    let _ = crate::sys::eventfd_signal(owner.wake.as_fd());
    while !st.frozen {
        st = owner.fork_cv.wait(st).unwrap_or_else(|p| p.into_inner());
    }
}

/// Let the service thread convert again.
extern "C" fn after_fork_parent() {
    let Some(owner) = current() else { return };
    let mut st = owner.fork.lock().unwrap_or_else(|p| p.into_inner());
    st.want_frozen = false;
    let _ = crate::sys::eventfd_signal(owner.wake.as_fd());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subtract_cuts_ranges() {
        let r = vec![(0x1000, 0x5000), (0x8000, 0x9000)];
        assert_eq!(
            subtract(r.clone(), (0x2000, 0x3000)),
            [(0x1000, 0x2000), (0x3000, 0x5000), (0x8000, 0x9000)]
        );
        assert_eq!(subtract(r.clone(), (0, 0x10000)), []);
        assert_eq!(subtract(r.clone(), (0x5000, 0x8000)), r);
        assert_eq!(
            subtract(r, (0x4000, 0x8800)),
            [(0x1000, 0x4000), (0x8800, 0x9000)]
        );
    }
}
