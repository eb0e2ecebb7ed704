//! The attacher's side of a whole-address-space share: the connection to
//! the owner, attachments by owner address (cached), and the fault thread
//! that makes attachments follow the owner's address space.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use hobbes_proto::xpmem_as::{Control, Op, Reply, Request, MAX_MESSAGE, REPLY_HEADER_SIZE};
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{self as sock, AddressFamily, SockFlag, SockType, UnixAddr};

use super::sys::{self, Event, Uffd};
use crate::{Result, XememError};

/// Attacher-side counters (tests, benchmarks).
#[derive(Debug, Default)]
pub struct PeerStats {
    /// Attaches served from the cache.
    pub hits: AtomicU64,
    /// Attaches that asked the owner and mapped.
    pub misses: AtomicU64,
    /// Faults the fault thread resolved by asking the owner.
    pub faults: AtomicU64,
}

/// The process's attacher counters.
pub static STATS: PeerStats = PeerStats {
    hits: AtomicU64::new(0),
    misses: AtomicU64::new(0),
    faults: AtomicU64::new(0),
};

/// Unreferenced attachments kept mapped for a later attach of the same
/// range (the registration caches of MPI libraries expect re-attaching
/// to be cheap).
const IDLE_MAX: usize = 64;

/// A permit for a whole-address-space share: a connection to its owner,
/// authenticated with the control memfd the name server handed out.
pub struct Peer {
    id: u64,
    /// The connection and the process that made it: a `fork()` child
    /// connects again (it must not share its parent's stream).
    conn: Mutex<(OwnedFd, u32)>,
    /// Our duplicate of the control memfd, to authenticate again.
    control: OwnedFd,
    asfd: OwnedFd,
    write: bool,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer").field("id", &self.id).finish()
    }
}

fn owner_err(op: &'static str, r: Reply, start: usize, len: usize) -> XememError {
    match Errno::from_raw(r.status) {
        Errno::EFAULT => XememError::NotMapped {
            op,
            addr: r.addr as usize,
            start,
            len,
        },
        Errno::EINVAL => XememError::InvalidArgument {
            op,
            reason: format!("the owner refused {start:#x}+{len:#x}: {}", r.message),
        },
        Errno::EACCES => XememError::PermissionDenied {
            op,
            reason: format!("the owner refused: {}", r.message),
        },
        errno => XememError::Sys {
            op,
            call: "owner",
            errno,
        },
    }
}

impl Peer {
    /// Connect to the owner the control memfd names and authenticate.
    pub fn connect(control: &OwnedFd) -> Result<Peer> {
        const OP: &str = "xpmem_get";
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let (fd, asfd) = dial(OP, control)?;
        let write = sys::writable(asfd.as_fd()).map_err(XememError::sys(OP, "fcntl"))?;
        let control = control.try_clone().map_err(|e| XememError::Other {
            op: OP,
            reason: e.to_string(),
        })?;
        Ok(Peer {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            conn: Mutex::new((fd, std::process::id())),
            control,
            asfd,
            write,
        })
    }

    /// Ask the owner to make `[vaddr, vaddr+len)` part of its
    /// address-space file.
    pub fn ensure(&self, op: &'static str, vaddr: usize, len: usize) -> Result<()> {
        let req = Request {
            op: Op::Ensure,
            vaddr: vaddr as u64,
            len: len as u64,
        };
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let pid = std::process::id();
        if conn.1 != pid {
            *conn = (dial(op, &self.control)?.0, pid);
        }
        let (reply, _) = round_trip(&conn.0, &req, None).map_err(|e| XememError::Other {
            op,
            reason: format!("the owner of the whole-address-space share is gone: {e}"),
        })?;
        match reply.status {
            0 => Ok(()),
            _ => Err(owner_err(op, reply, vaddr, len)),
        }
    }
}

/// Connect to the owner the control memfd names, say hello with it, and
/// return the connection and the address-space file the owner sent.
fn dial(op: &'static str, control: &OwnedFd) -> Result<(OwnedFd, OwnedFd)> {
    let mut head = [0u8; hobbes_proto::xpmem_as::CONTROL_SIZE];
    nix::sys::uio::pread(control.as_fd(), &mut head, 0).map_err(XememError::sys(op, "pread"))?;
    let c = Control::decode(&head).map_err(|e| XememError::Other {
        op,
        reason: format!("bad whole-address-space share: {e}"),
    })?;
    let fd = sock::socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(XememError::sys(op, "socket"))?;
    let addr = UnixAddr::new_abstract(&c.socket).map_err(XememError::sys(op, "socket"))?;
    sock::connect(fd.as_raw_fd(), &addr).map_err(|e| XememError::Other {
        op,
        reason: format!(
            "the owner (pid {}) of the whole-address-space share does not answer: {e}",
            c.pid
        ),
    })?;
    let hello = Request {
        op: Op::Hello,
        vaddr: 0,
        len: 0,
    };
    let (reply, fds) = round_trip(&fd, &hello, Some(control.as_raw_fd()))
        .map_err(XememError::sys(op, "owner socket"))?;
    if reply.status != 0 {
        return Err(owner_err(op, reply, 0, 0));
    }
    let asfd = fds.into_iter().next().ok_or_else(|| XememError::Other {
        op,
        reason: "the owner sent no address-space file".into(),
    })?;
    Ok((fd, asfd))
}

/// Send one request (with a descriptor) and read its reply (with the
/// descriptors it carries).
fn round_trip(
    fd: &OwnedFd,
    req: &Request,
    pass: Option<RawFd>,
) -> std::result::Result<(Reply, Vec<OwnedFd>), Errno> {
    let bytes = req.encode();
    let iov = [std::io::IoSlice::new(&bytes)];
    let raw = pass.map(|f| [f]);
    let cmsg: Vec<sock::ControlMessage<'_>> = match &raw {
        Some(r) => vec![sock::ControlMessage::ScmRights(r)],
        None => Vec::new(),
    };
    loop {
        match sock::sendmsg::<()>(
            fd.as_raw_fd(),
            &iov,
            &cmsg,
            sock::MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            Ok(_) => break,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
    let mut buf = [0u8; REPLY_HEADER_SIZE + MAX_MESSAGE];
    let mut space = nix::cmsg_space!([RawFd; 2]);
    loop {
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let msg = match sock::recvmsg::<()>(
            fd.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            sock::MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(m) => m,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        };
        let mut fds = Vec::new();
        if let Ok(cmsgs) = msg.cmsgs() {
            for c in cmsgs {
                if let sock::ControlMessageOwned::ScmRights(raw) = c {
                    // SAFETY: SCM_RIGHTS just installed these descriptors in
                    // this process; we own them.
                    fds.extend(raw.into_iter().map(|f| unsafe { OwnedFd::from_raw_fd(f) }));
                }
            }
        }
        let n = msg.bytes;
        if n == 0 {
            return Err(Errno::ECONNRESET);
        }
        let reply = Reply::decode(&buf[..n]).map_err(|_| Errno::EPROTO)?;
        return Ok((reply, fds));
    }
}

/// One mapping of the address-space file in this process.
struct AsMap {
    base: usize,
    len: usize,
    /// The owner address it maps (= its file offset).
    vaddr: usize,
    peer: Arc<Peer>,
    refs: usize,
    /// Reusable by a later attach of the same range (false for fixed
    /// attachments and after the owner unmapped part of it).
    cached: bool,
}

#[derive(Default)]
struct Registry {
    /// By base address.
    maps: BTreeMap<usize, AsMap>,
    /// (peer, owner address, length) -> base, for cached mappings.
    by_key: HashMap<(u64, usize, usize), usize>,
    /// Cached mappings nobody holds, oldest first.
    idle: VecDeque<usize>,
}

static REGISTRY: Mutex<Option<Registry>> = Mutex::new(None);

fn with_registry<T>(f: impl FnOnce(&mut Registry) -> T) -> T {
    let mut g = REGISTRY.lock().unwrap_or_else(|p| p.into_inner());
    f(g.get_or_insert_with(Registry::default))
}

/// Map `[vaddr, vaddr+len)` of the owner (page-aligned), at `at` or where
/// the kernel chooses; a cached mapping of the same range when there is one.
///
/// # Safety
/// With `at`, the range there is the caller's to replace.
pub unsafe fn attach(
    peer: &Arc<Peer>,
    vaddr: usize,
    len: usize,
    at: Option<usize>,
) -> Result<usize> {
    const OP: &str = "xpmem_attach";
    // First: in a fork() child this forgets the parent's attachments.
    let uffd = fault_uffd();
    if at.is_none() {
        let hit = with_registry(|r| {
            let base = *r.by_key.get(&(peer.id, vaddr, len))?;
            let m = r.maps.get_mut(&base)?;
            m.refs += 1;
            if m.refs == 1 {
                r.idle.retain(|b| *b != base);
            }
            Some(base)
        });
        if let Some(base) = hit {
            STATS.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(base);
        }
    }
    STATS.misses.fetch_add(1, Ordering::Relaxed);
    peer.ensure(OP, vaddr, len)?;
    let base = match at {
        None => sys::map_shared(peer.asfd.as_fd(), len, vaddr as u64, peer.write)
            .map_err(XememError::sys(OP, "mmap"))?,
        Some(at) => {
            let perms = sys::Perms {
                read: true,
                write: peer.write,
                exec: false,
            };
            // SAFETY: our caller owns the range at `at`.
            unsafe { sys::map_shared_fixed(at, len, perms, peer.asfd.as_fd(), vaddr as u64) }
                .map_err(XememError::sys(OP, "mmap"))?;
            at
        }
    };
    // As XPMEM's (VM_DONTCOPY): a fork() child does not inherit it.
    sys::dont_fork(base, len);
    if let Some(uffd) = uffd {
        // SAFETY: our own new mapping; the fault thread resolves its faults.
        let _ = unsafe { uffd.register(base, len, sys::MODE_MISSING) };
    }
    with_registry(|r| {
        // A fixed mapping may have replaced cached ones.
        let stale: Vec<usize> = r
            .maps
            .range(..base + len)
            .filter(|(_, m)| m.base + m.len > base)
            .map(|(b, _)| *b)
            .collect();
        for b in stale {
            forget(r, b);
        }
        if at.is_none() {
            r.by_key.insert((peer.id, vaddr, len), base);
        }
        r.maps.insert(
            base,
            AsMap {
                base,
                len,
                vaddr,
                peer: peer.clone(),
                refs: 1,
                cached: at.is_none(),
            },
        );
    });
    Ok(base)
}

fn forget(r: &mut Registry, base: usize) -> Option<AsMap> {
    let m = r.maps.remove(&base)?;
    r.idle.retain(|b| *b != base);
    if r.by_key.get(&(m.peer.id, m.vaddr, m.len)) == Some(&base) {
        r.by_key.remove(&(m.peer.id, m.vaddr, m.len));
    }
    Some(m)
}

/// Detach the whole-address-space attachment containing `addr`: `None`
/// when there is none (the caller then looks at other attachments).
pub fn detach(addr: usize) -> Option<Result<()>> {
    let unmap = with_registry(|r| {
        let (&base, m) = r.maps.range_mut(..=addr).next_back()?;
        if addr >= m.base + m.len {
            return None;
        }
        m.refs = m.refs.saturating_sub(1);
        if m.refs > 0 {
            return Some(Vec::new());
        }
        if m.cached {
            r.idle.push_back(base);
            let mut out = Vec::new();
            while r.idle.len() > IDLE_MAX {
                let old = r.idle.pop_front().expect("non-empty");
                out.extend(forget(r, old).map(|m| (m.base, m.len)));
            }
            return Some(out);
        }
        Some(
            forget(r, base)
                .map(|m| (m.base, m.len))
                .into_iter()
                .collect(),
        )
    })?;
    for (base, len) in unmap {
        // SAFETY: a mapping `attach` made and no attachment refers to any
        // more (its count dropped to zero).
        if let Err(e) = unsafe { sys::unmap(base, len) } {
            return Some(Err(XememError::sys("xpmem_detach", "munmap")(e)));
        }
    }
    Some(Ok(()))
}

// ---------------------------------------------------------- fault thread

/// The process's userfaultfd for attachments, with its thread; `None`
/// where userfaultfd is not allowed (attachments then read zeros, not the
/// old contents, after the owner unmapped them: docs/xemem.md). A `fork()`
/// child opens its own (a userfaultfd acts on the address space that
/// opened it) and forgets its parent's attachments (not inherited).
fn fault_uffd() -> Option<Arc<Uffd>> {
    static UFFD: Mutex<Option<(Option<Arc<Uffd>>, u32)>> = Mutex::new(None);
    let pid = std::process::id();
    let mut slot = UFFD.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((uffd, owner)) = slot.as_ref() {
        if *owner == pid {
            return uffd.clone();
        }
        // A fork() child: its parent's attachments are not mapped here.
        with_registry(|r| *r = Registry::default());
    }
    let uffd = Uffd::open_for_kernel_faults(0)
        .ok()
        .map(Arc::new)
        .and_then(|u| {
            let for_thread = u.clone();
            std::thread::Builder::new()
                .name("xpmem-faults".into())
                .spawn(move || fault_loop(&for_thread))
                .ok()
                .map(|_| u)
        });
    *slot = Some((uffd.clone(), pid));
    uffd
}

fn fault_loop(uffd: &Uffd) {
    loop {
        let mut fds = [PollFd::new(uffd.as_fd(), PollFlags::POLLIN)];
        match nix::poll::poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => return,
        }
        let Ok(events) = uffd.read_events() else {
            continue;
        };
        for e in events {
            if let Event::Fault { addr, .. } = e {
                resolve(uffd, addr as usize);
            }
        }
    }
}

/// A thread touched a page of an attachment that is not in the file (the
/// owner unmapped it, maybe mapped something new there): have the owner
/// convert what it has there now and let the thread go on; when the owner
/// has nothing there, make the page inaccessible (the thread gets SIGSEGV,
/// where XPMEM gives SIGBUS) rather than let it read zeros.
fn resolve(uffd: &Uffd, addr: usize) {
    const OP: &str = "xpmem fault";
    let page = hobbes_sys::page_size();
    let at = addr & !(page - 1);
    let found = with_registry(|r| {
        let (_, m) = r.maps.range(..=at).next_back()?;
        (at < m.base + m.len).then(|| (m.peer.clone(), m.base, m.len, m.vaddr))
    });
    let Some((peer, base, len, vaddr)) = found else {
        let _ = uffd.wake(at, page);
        return;
    };
    STATS.faults.fetch_add(1, Ordering::Relaxed);
    let owner_at = vaddr + (at - base);
    let ok = peer.ensure(OP, vaddr, len).is_ok() || peer.ensure(OP, owner_at, page).is_ok();
    if !ok {
        // SAFETY: a page of our own attachment, which the owner no longer
        // backs: made inaccessible so the faulting thread cannot go on
        // with wrong contents.
        let _ = unsafe { sys::map_none_fixed(at, page) };
        with_registry(|r| {
            if let Some(m) = r.maps.get_mut(&base) {
                m.cached = false;
                let key = (m.peer.id, m.vaddr, m.len);
                if r.by_key.get(&key) == Some(&base) {
                    r.by_key.remove(&key);
                }
            }
        });
    }
    let _ = uffd.wake(at, page);
}
