//! Composite (read-only, versioned) XEMEM segments through a real name
//! server: this test process is the producer (pool and table memfds written
//! by hand) and a consumer (hobbes_xemem); `xemem-probe` processes are a
//! consumer that dies holding a version and a producer that dies.
//!
//! One test function: hobbes_xemem's state is process-global and follows
//! `HOBBES_STATE_DIR`, so one daemon serves every scenario, in order.

mod common;

use std::os::fd::{AsFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use hobbes_client::proto::model::Access;
use hobbes_client::proto::model::PageKind;
use hobbes_client::proto::msg::{ErrorCode, XememComposite, XememMake};
use hobbes_xemem::composite::{mark_retired, read_table, write_table, Extent};
use hobbes_xemem::{Attachment, Grant, MakeOptions, SegId, XememError};
use nix::fcntl::{Flock, FlockArg};

const LIMIT: Duration = Duration::from_secs(15);

fn page() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .unwrap_or(4096) as u64
}

fn memfd(name: &str) -> OwnedFd {
    nix::sys::memfd::memfd_create(name, nix::sys::memfd::MFdFlags::MFD_CLOEXEC).unwrap()
}

fn pwrite(fd: &OwnedFd, bytes: &[u8], at: u64) {
    assert_eq!(
        nix::sys::uio::pwrite(fd, bytes, at as i64).unwrap(),
        bytes.len()
    );
}

/// A pool whose page i is filled with `fills[i]`.
fn pool(fills: &[u8]) -> OwnedFd {
    let fd = memfd("test-pool");
    for (i, f) in fills.iter().enumerate() {
        pwrite(&fd, &vec![*f; page() as usize], i as u64 * page());
    }
    fd
}

/// Extents mapping segment page i to pool page `slots[i]` (coalesced).
fn extents(slots: &[u64]) -> Vec<Extent> {
    let p = page();
    let mut out: Vec<Extent> = Vec::new();
    for (i, s) in slots.iter().enumerate() {
        match out.last_mut() {
            Some(e) if e.pool_offset + e.len == s * p => e.len += p,
            _ => out.push(Extent {
                seg_offset: i as u64 * p,
                pool_offset: s * p,
                len: p,
            }),
        }
    }
    out
}

fn table(slots: &[u64]) -> OwnedFd {
    let fd = memfd("test-table");
    write_table(
        fd.as_fd(),
        page() as u32,
        slots.len() as u64 * page(),
        &extents(slots),
    )
    .unwrap();
    fd
}

/// A table encoded without any checks (to feed the validators).
fn raw_table(count: u64, size: u64, pool_size: u64, extents: &[(u64, u64, u64)]) -> OwnedFd {
    let mut b = Vec::new();
    b.extend_from_slice(b"XEMEMEXT");
    b.extend_from_slice(&1u32.to_le_bytes());
    b.extend_from_slice(&(page() as u32).to_le_bytes());
    b.extend_from_slice(&count.to_le_bytes());
    b.extend_from_slice(&size.to_le_bytes());
    b.extend_from_slice(&pool_size.to_le_bytes());
    b.resize(64, 0);
    for (s, p, l) in extents {
        for v in [s, p, l] {
            b.extend_from_slice(&v.to_le_bytes());
        }
    }
    let fd = memfd("test-raw-table");
    pwrite(&fd, &b, 0);
    fd
}

fn opts(name: &str) -> MakeOptions {
    MakeOptions {
        name: Some(name.into()),
        mode: 0o644,
        ..Default::default()
    }
}

/// The `len` bytes at `p`.
///
/// # Safety
///
/// `[p, p+len)` is mapped readable (an attachment of this process).
unsafe fn read(p: *const u8, len: usize) -> Vec<u8> {
    (0..len)
        // SAFETY: in bounds of a readable mapping (our caller's contract).
        .map(|i| unsafe { p.add(i).read_volatile() })
        .collect()
}

/// One byte per page of the first `len` bytes of `a` (after checking each
/// page is uniform).
fn pages_in(a: &Attachment, len: usize) -> Vec<u8> {
    assert!(
        len <= a.len(),
        "{len} bytes of a {}-byte attachment",
        a.len()
    );
    // SAFETY: an attachment is mapped readable for its length while it lives.
    unsafe { pages_of(a.as_ptr(), len) }
}

/// One byte per page of all of `a`.
fn pages(a: &Attachment) -> Vec<u8> {
    pages_in(a, a.len())
}

/// One byte per page of the `len` bytes at `p` (after checking each page
/// is uniform).
///
/// # Safety
///
/// As for [`read`].
unsafe fn pages_of(p: *const u8, len: usize) -> Vec<u8> {
    // SAFETY: our caller's contract.
    let bytes = unsafe { read(p, len) };
    bytes
        .chunks(page() as usize)
        .map(|c| {
            assert!(c.iter().all(|b| *b == c[0]), "page not uniform: {c:?}");
            c[0]
        })
        .collect()
}

/// Would the producer be allowed to reclaim: is `flock(LOCK_EX|LOCK_NB)` on
/// its own description of the table free? (Released again at once.)
fn reclaimable(table: &OwnedFd) -> bool {
    match Flock::lock(table.try_clone().unwrap(), FlockArg::LockExclusiveNonblock) {
        Ok(lock) => {
            drop(lock);
            true
        }
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => false,
        Err((_, e)) => panic!("flock: {e}"),
    }
}

/// Wait until no hold is left. Not instantaneous: the name server sends
/// each grant a descriptor of a fresh open file description and closes its
/// own copy just after; the lock goes with the description's last close.
fn released(table: &OwnedFd, what: &str) {
    wait_for(what, LIMIT, || reclaimable(table).then_some(()));
}

fn holds_of(segid: SegId) -> (u32, Vec<u32>) {
    let s = hobbes_xemem::list()
        .unwrap()
        .into_iter()
        .find(|s| s.record.segid == segid)
        .expect("segment listed");
    (s.attachments, s.attachers)
}

/// `xemem-probe`, built by the workspace next to `leviathan`.
fn probe(test: &str) -> Option<String> {
    workspace_bin(test, "hobbes-xemem", "xemem-probe")
}

/// A child process killed (and reaped) when dropped, also when a test fails.
struct Kid(Child);

impl Kid {
    fn spawn(d: &Daemon, probe: &str, args: &[&str]) -> Kid {
        let mut cmd = Command::new(probe);
        cmd.args(args)
            .env_remove("HOBBES_SOCKET")
            .env_remove("HOBBES_NIS")
            .env("HOBBES_STATE_DIR", d.state_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        Kid(cmd.spawn().expect("spawn xemem-probe"))
    }

    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Kid {
    fn drop(&mut self) {
        self.kill();
    }
}

fn lookup(name: &str) -> Option<SegId> {
    hobbes_xemem::lookup(name).unwrap()
}

#[test]
fn composite_segments() {
    let t = "composite_segments";
    let Some(probe) = probe(t) else {
        return;
    };
    // XEMEM needs nothing privileged: no cgroups, no node lock.
    let mut d = Daemon::start(&["--unprivileged"]);
    for var in [
        "HOBBES_SOCKET",
        "HOBBES_NIS",
        "HOBBES_ENCLAVE_ID",
        "HOBBES_APP_ID",
    ] {
        std::env::remove_var(var);
    }
    std::env::set_var("HOBBES_STATE_DIR", d.state_dir());

    // A pool of 4 slots; version 1 = slots 0,1,2; version 2 rewrote page 1
    // into slot 3 and shares slots 0 and 2 with version 1.
    let pool = pool(&[0xa0, 0xa1, 0xa2, 0xa3]);
    let (t1, t2) = (table(&[0, 1, 2]), table(&[0, 3, 2]));
    assert_eq!(read_table(t2.as_fd()).unwrap().1.len(), 3);
    let size = 3 * page();
    let v1 = hobbes_xemem::make_composite(&t1, &pool, size, &opts("field@1")).unwrap();
    // Version 2 also has a signal channel (a third descriptor).
    let signalled = MakeOptions {
        signalled: true,
        ..opts("field@2")
    };
    let v2 = hobbes_xemem::make_composite(&t2, &pool, size, &signalled).unwrap();
    assert_eq!((lookup("field@1"), lookup("field@2")), (Some(v1), Some(v2)));

    versions_read_right(v1, v2, &pool);
    holds(&d, &probe, v1, &t1);
    malformed_tables_are_refused(&pool);
    owner_exit(&d, &probe);
    retired(v1, &t1);
    restart(&mut d, v2, &t2);
    assert!(hobbes_xemem::list().unwrap().is_empty());
}

fn versions_read_right(v1: SegId, v2: SegId, pool: &OwnedFd) {
    let p = page() as usize;
    let g1 = Grant::get(v1, Access::ReadOnly).unwrap();
    let g2 = Grant::get(v2, Access::ReadOnly).unwrap();
    let a1 = g1.attach(0, 3 * p).unwrap();
    let a2 = g2.attach(0, 3 * p).unwrap();
    assert!(a1.read_only() && a2.read_only());
    assert_eq!(pages(&a1), [0xa0, 0xa1, 0xa2]);
    assert_eq!(pages(&a2), [0xa0, 0xa3, 0xa2]);
    // Shared slots are the same memory: no copies anywhere.
    pwrite(pool, &vec![0x55; p], 0);
    assert_eq!(pages_in(&a1, p), [0x55]);
    assert_eq!(pages_in(&a2, p), [0x55]);
    pwrite(pool, &vec![0xa0; p], 0);
    // Partial attachments map the intersecting parts of the extents.
    let mid = g2.attach(p as u64, p).unwrap();
    assert_eq!(pages_in(&mid, p), [0xa3]);
    let tail = g2.attach(p as u64, 2 * p).unwrap();
    assert_eq!(pages_in(&tail, 2 * p), [0xa3, 0xa2]);
    let inner = hobbes_xemem::attach(g2.apid(), p as u64 + 5, 10).unwrap();
    assert_eq!(inner as usize % p, 5);
    // SAFETY: `inner` is an attachment of 10 bytes, still mapped.
    assert_eq!(unsafe { read(inner, 10) }, [0xa3; 10]);
    hobbes_xemem::detach(inner).unwrap();
    // At a fixed address: the range is replaced (here another attachment's).
    let over = hobbes_xemem::attach(g2.apid(), 0, 3 * p).unwrap();
    // SAFETY: `over` is this test's own attachment of 3 pages, unused from
    // here on: the fixed attachment replaces it.
    let fixed = unsafe { hobbes_xemem::attach_at(g1.apid(), 0, 3 * p, over) }.unwrap();
    assert_eq!(fixed, over);
    // SAFETY: `fixed` is an attachment of 3 pages, still mapped.
    assert_eq!(unsafe { pages_of(fixed, 3 * p) }, [0xa0, 0xa1, 0xa2]);
    hobbes_xemem::detach(fixed).unwrap();
    assert!(hobbes_xemem::detach(over).is_err(), "one attachment there");
    let e = g2.attach(2 * p as u64, 2 * p).unwrap_err();
    assert_eq!(e.errno(), libc::EINVAL, "{e}");
    // Read-write access is refused, with the reason.
    let e = Grant::get(v2, Access::ReadWrite).unwrap_err();
    assert_eq!(e.errno(), libc::EACCES, "{e}");
    assert!(e.to_string().contains("composite"), "{e}");
    // The raw client sees both descriptors; its two-descriptor get refuses.
    let mut c = hobbes_client::Client::connect_default().unwrap();
    let g = c.xemem_get_grant(v2, Access::ReadOnly).unwrap();
    assert!(g.pool.is_some() && g.eventfd.is_some());
    assert_eq!(g.record.composite.unwrap().extents, 3);
    assert!(c.xemem_get(v2, Access::ReadOnly).is_err());
    assert_eq!(
        c.xemem_get_grant(v2, Access::ReadWrite).unwrap_err().code(),
        Some(ErrorCode::PermissionDenied)
    );
    let list = hobbes_xemem::list().unwrap();
    let rec = |id| list.iter().find(|s| s.record.segid == id).unwrap();
    assert_eq!(rec(v1).record.composite.unwrap().extents, 1);
    assert_eq!(rec(v2).record.composite.unwrap().extents, 3);
    assert_eq!(rec(v2).record.size, 3 * page());
}

fn holds(d: &Daemon, probe: &str, v1: SegId, t1: &OwnedFd) {
    let p = page() as usize;
    released(t1, "no holds yet");
    // A grant holds; its attachment keeps holding after release; detach ends it.
    let g = Grant::get(v1, Access::ReadOnly).unwrap();
    assert!(!reclaimable(t1));
    let a = g.attach(0, p).unwrap();
    drop(g);
    assert!(!reclaimable(t1), "the attachment holds after release");
    assert_eq!(pages_in(&a, p), [0xa0]);
    drop(a);
    released(t1, "release + detach drop the hold");
    // The same through the plain calls, detach first.
    let apid = hobbes_xemem::get(v1, Access::ReadOnly).unwrap();
    let at = hobbes_xemem::attach(apid, 0, p).unwrap();
    hobbes_xemem::detach(at).unwrap();
    assert!(!reclaimable(t1), "the grant still holds");
    hobbes_xemem::release(apid).unwrap();
    released(t1, "the hold to go");
    // While the producer holds it exclusively (reclaiming), gets fail.
    let lock = Flock::lock(t1.try_clone().unwrap(), FlockArg::LockExclusiveNonblock).unwrap();
    let e = Grant::get(v1, Access::ReadOnly).unwrap_err();
    assert!(matches!(e, XememError::NotFound { .. }), "{e}");
    assert!(e.to_string().contains("reclaimed"), "{e}");
    drop(lock);
    drop(Grant::get(v1, Access::ReadOnly).unwrap());
    // A consumer in another process dies holding the version.
    let mut kid = Kid::spawn(
        d,
        probe,
        &["attach", "--name", "field@1", "--ro", "--hold-ms", "60000"],
    );
    let pid = kid.0.id();
    wait_for("the consumer's hold", LIMIT, || {
        let (n, pids) = holds_of(v1);
        (n == 1 && pids == [pid]).then_some(())
    });
    assert!(!reclaimable(t1));
    kid.kill();
    wait_for("the dead consumer's hold to go", LIMIT, || {
        reclaimable(t1).then_some(())
    });
    assert_eq!(holds_of(v1), (0, vec![]));
}

fn malformed_tables_are_refused(pool: &OwnedFd) {
    let p = page();
    let before = hobbes_xemem::list().unwrap().len();
    let mut c = hobbes_client::Client::connect_default().unwrap();
    let bad_magic = table(&[0, 1]);
    pwrite(&bad_magic, b"NOTATABL", 0);
    let cases: Vec<(&str, OwnedFd, u64, &str)> = vec![
        ("magic", bad_magic, 2 * p, "magic"),
        (
            "gap",
            raw_table(2, 3 * p, 2 * p, &[(0, 0, p), (2 * p, p, p)]),
            3 * p,
            "expected 0x1000",
        ),
        (
            "out of pool",
            table(&[0, 9]),
            2 * p,
            "the table's extents need",
        ),
        (
            "huge count",
            raw_table(1 << 40, p, p, &[(0, 0, p)]),
            p,
            "extent count",
        ),
        (
            "size",
            table(&[0, 1]),
            3 * p,
            "differs from its table's size",
        ),
    ];
    for (what, t, size, says) in &cases {
        let e = hobbes_xemem::make_composite(t, pool, *size, &opts("bad@1")).unwrap_err();
        assert_eq!(e.errno(), libc::EINVAL, "{what}: {e}");
        assert!(e.to_string().contains(says), "{what}: {e}");
        // The name server checks too (a client that skips the library's checks).
        let make = XememMake {
            size: *size,
            offset: 0,
            name: Some("bad@1".into()),
            segid: None,
            mode: 0o644,
            page_kind: PageKind::Base,
            signalled: false,
            owner_fd: 0,
            owner_event_fd: None,
            owner_addr: 0,
            composite: Some(XememComposite { pool_owner_fd: 0 }),
            retire: Vec::new(),
        };
        let e = c
            .xemem_make_composite(make, t.as_fd(), pool.as_fd(), None)
            .unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::InvalidSpec), "{what}: {e}");
        let says = if *what == "out of pool" {
            "its table needs"
        } else {
            says
        };
        assert!(e.to_string().contains(says), "{what}: {e}");
    }
    // Descriptors that are not memfds, and a plain make without its pool.
    let (pipe_r, _pipe_w) = nix::unistd::pipe().unwrap();
    let make = XememMake {
        size: 2 * p,
        offset: 0,
        name: None,
        segid: None,
        mode: 0o644,
        page_kind: PageKind::Base,
        signalled: false,
        owner_fd: 0,
        owner_event_fd: None,
        owner_addr: 0,
        composite: Some(XememComposite { pool_owner_fd: 0 }),
        retire: Vec::new(),
    };
    let good = table(&[0, 1]);
    let e = c
        .xemem_make_composite(make.clone(), good.as_fd(), pipe_r.as_fd(), None)
        .unwrap_err();
    assert!(
        e.to_string().contains("pool descriptor is not a memfd"),
        "{e}"
    );
    let e = c
        .xemem_make_composite(make.clone(), pipe_r.as_fd(), pool.as_fd(), None)
        .unwrap_err();
    assert!(
        e.to_string().contains("table descriptor is not a memfd"),
        "{e}"
    );
    let e = c.xemem_make(make, good.as_fd(), None).unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::BadRequest), "{e}");
    assert_eq!(hobbes_xemem::list().unwrap().len(), before, "nothing made");
    assert_eq!(lookup("bad@1"), None);

    // A table the producer corrupts after make: get refuses it and keeps
    // no hold.
    let t3 = table(&[1, 0]);
    let v3 = hobbes_xemem::make_composite(&t3, pool, 2 * p, &opts("field@3")).unwrap();
    pwrite(&t3, &(p + 1).to_le_bytes(), 64 + 8);
    let e = Grant::get(v3, Access::ReadOnly).unwrap_err();
    assert_eq!(e.errno(), libc::EINVAL, "{e}");
    assert!(e.to_string().contains("not aligned"), "{e}");
    released(&t3, "a refused get holds nothing");
    pwrite(&t3, &p.to_le_bytes(), 64 + 8);
    let g = Grant::get(v3, Access::ReadOnly).unwrap();
    let a = g.attach(0, 2 * p as usize).unwrap();
    assert_eq!(pages(&a), [0xa1, 0xa0]);
    drop((a, g));
    hobbes_xemem::remove(v3).unwrap();
}

fn owner_exit(d: &Daemon, probe: &str) {
    let p = page() as usize;
    let kid = Kid::spawn(
        d,
        probe,
        &[
            "composite",
            "--name",
            "other@1",
            "--pages",
            "4",
            "--fill",
            "48",
            "--hold-ms",
            "60000",
        ],
    );
    let segid = wait_for("the probe's composite segment", LIMIT, || lookup("other@1"));
    let g = Grant::get(segid, Access::ReadOnly).unwrap();
    let a = g.attach(0, 4 * p).unwrap();
    // Segment page i is the probe's pool page 3 - i, filled with 48 + (3 - i).
    assert_eq!(pages(&a), [51, 50, 49, 48]);
    drop(kid);
    wait_for("the dead owner's segment to go", LIMIT, || {
        lookup("other@1").is_none().then_some(())
    });
    assert_eq!(pages(&a), [51, 50, 49, 48], "still valid");
    drop((a, g));
}

fn retired(v1: SegId, t1: &OwnedFd) {
    let p = page() as usize;
    let g = Grant::get(v1, Access::ReadOnly).unwrap();
    let a = g.attach(0, 3 * p).unwrap();
    drop(g);
    mark_retired(t1.as_fd()).unwrap();
    let e = Grant::get(v1, Access::ReadOnly).unwrap_err();
    assert_eq!(e.errno(), libc::ENOENT, "{e}");
    assert!(
        e.to_string().contains("field@1") && e.to_string().contains("reclaimed"),
        "{e}"
    );
    hobbes_xemem::remove(v1).unwrap();
    assert_eq!(lookup("field@1"), None);
    assert_eq!(pages(&a), [0xa0, 0xa1, 0xa2], "still valid");
}

fn restart(d: &mut Daemon, v2: SegId, t2: &OwnedFd) {
    let p = page() as usize;
    let before = Grant::get(v2, Access::ReadOnly)
        .unwrap()
        .attach(0, 3 * p)
        .unwrap();
    d.kill9();
    d.spawn();
    // The new daemon took both descriptors back from this process.
    let g = Grant::get(v2, Access::ReadOnly).unwrap();
    let a = g.attach(0, 3 * p).unwrap();
    assert_eq!(pages(&a), [0xa0, 0xa3, 0xa2]);
    assert_eq!(pages(&before), [0xa0, 0xa3, 0xa2]);
    assert_eq!(
        Grant::get(v2, Access::ReadWrite).unwrap_err().errno(),
        libc::EACCES
    );
    assert!(!reclaimable(t2));
    drop((a, g, before));
    released(t2, "the hold to go");
    assert!(d.log().contains("segment recovered from its owner"));
    // The eventfd came back too: the name server signals it.
    let mut c = hobbes_client::Client::connect_default().unwrap();
    c.xemem_signal(v2).unwrap();
    assert!(hobbes_xemem::wait(v2, Some(LIMIT)).unwrap());
    hobbes_xemem::remove(v2).unwrap();
    assert_eq!(lookup("field@2"), None);
}
