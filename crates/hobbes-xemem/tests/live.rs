//! XEMEM between host processes through a real name server: this test
//! process exports memory (in place) and `xemem-probe` processes attach it.
//!
//! One test function: the library's state (its connection, registries) is
//! process-global and follows `HOBBES_STATE_DIR`, so one daemon serves every
//! scenario, in order.

mod support;

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Output};
use std::time::Duration;

use hobbes_xemem::{Access, Grant, MakeOptions, PageKind, Segment};
use support::daemon::{run_with_timeout, Daemon};

const PROBE: &str = env!("CARGO_BIN_EXE_xemem-probe");
const LIMIT: Duration = Duration::from_secs(30);

fn page() -> usize {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .unwrap_or(4096) as usize
}

struct Env<'a> {
    daemon: &'a Daemon,
}

impl Env<'_> {
    fn probe(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(PROBE);
        cmd.args(args);
        self.daemon.configure(&mut cmd);
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        run_with_timeout(&mut self.probe(args), LIMIT)
    }

    /// Run a probe that must succeed; returns its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "xemem-probe {args:?}: {}\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// Private anonymous memory, as an application would have it.
fn private_pages(n: usize, fill: u8) -> (*mut u8, usize) {
    let len = n * page();
    // SAFETY: a fresh anonymous mapping at an address the kernel picks.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    let p = p.cast::<u8>();
    // SAFETY: just mapped read-write for len bytes.
    unsafe { p.write_bytes(fill, len) };
    (p, len)
}

fn bytes(p: *const u8, len: usize) -> Vec<u8> {
    // SAFETY: callers pass ranges mapped readable for len bytes; volatile
    // because other processes write them.
    (0..len)
        .map(|i| unsafe { p.add(i).read_volatile() })
        .collect()
}

fn set(p: *mut u8, len: usize, v: u8) {
    for i in 0..len {
        // SAFETY: callers pass ranges mapped writable for len bytes.
        unsafe { p.add(i).write_volatile(v) };
    }
}

fn all(v: &[u8], want: u8) -> bool {
    v.iter().all(|b| *b == want)
}

#[test]
fn xemem_between_host_processes() {
    let Some(daemon) = Daemon::start("xemem_between_host_processes") else {
        return;
    };
    for var in support::daemon::HOBBES_VARS {
        std::env::remove_var(var);
    }
    std::env::set_var("HOBBES_STATE_DIR", daemon.state_dir());
    let env = Env { daemon: &daemon };
    let pg = page();

    // In place: 4 pages of MAP_PRIVATE|MAP_ANONYMOUS memory.
    let (mem, len) = private_pages(4, 0x11);
    let opts = MakeOptions {
        name: Some("t-inplace".into()),
        mode: 0o644,
        ..Default::default()
    };
    // SAFETY: the test's own private pages, which no other thread uses.
    let segid = unsafe { hobbes_xemem::make(mem, len, &opts) }.expect("make in place");
    assert!(segid > 0);
    assert!(
        all(&bytes(mem, len), 0x11),
        "contents kept by the conversion"
    );
    // The attacher sees the owner's bytes and its writes come back.
    env.ok(&[
        "attach",
        "--name",
        "t-inplace",
        "--expect",
        "17",
        "--increment",
    ]);
    assert!(all(&bytes(mem, len), 0x12), "the attacher's increments");
    set(mem, len, 0x30);
    env.ok(&["attach", "--segid", &segid.to_string(), "--expect", "48"]);

    // Lookup (NIS, daemon) and list.
    assert_eq!(hobbes_xemem::lookup("t-inplace").unwrap(), Some(segid));
    assert_eq!(
        hobbes_xemem::lookup_via_daemon("t-inplace").unwrap(),
        Some(segid)
    );
    assert_eq!(hobbes_xemem::lookup("t-none").unwrap(), None);
    assert_eq!(hobbes_xemem::lookup_via_daemon("t-none").unwrap(), None);
    let listed = hobbes_xemem::list().unwrap();
    let rec = &listed
        .iter()
        .find(|s| s.record.segid == segid)
        .expect("listed")
        .record;
    assert_eq!(rec.name.as_deref(), Some("t-inplace"));
    assert_eq!(rec.size, len as u64);
    assert_eq!(rec.page_kind, PageKind::Base);
    assert_eq!(rec.mode, 0o644);
    let json = env.ok(&["list"]);
    assert!(json.contains("\"t-inplace\""), "{json}");

    // A name or segid already taken.
    let (other, olen) = private_pages(1, 0);
    // SAFETY: the test's own private page, which no other thread uses.
    let e = unsafe { hobbes_xemem::make(other, olen, &opts) }.unwrap_err();
    assert_eq!(e.errno(), libc::EEXIST, "{e}");
    let want = MakeOptions {
        segid: Some(segid),
        ..Default::default()
    };
    // SAFETY: as above.
    let e = unsafe { hobbes_xemem::make(other, olen, &want) }.unwrap_err();
    assert_eq!(e.errno(), libc::EEXIST, "{e}");

    // Read-only: reading works, a write faults.
    env.ok(&["attach", "--name", "t-inplace", "--ro", "--expect", "48"]);
    let out = env.run(&["attach", "--name", "t-inplace", "--ro", "--write", "1"]);
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGSEGV),
        "write to a read-only attachment: {:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        all(&bytes(mem, len), 0x30),
        "the read-only write changed nothing"
    );

    // Two attachers at once, both counted by list.
    let mut a = env.probe(&[
        "attach",
        "--name",
        "t-inplace",
        "--expect",
        "48",
        "--hold-ms",
        "1500",
    ]);
    let mut b = env.probe(&[
        "attach",
        "--name",
        "t-inplace",
        "--expect",
        "48",
        "--hold-ms",
        "1500",
    ]);
    for c in [&mut a, &mut b] {
        c.stdout(std::process::Stdio::piped());
    }
    let (a, b) = (a.spawn().unwrap(), b.spawn().unwrap());
    let mut seen = 0;
    for _ in 0..100 {
        seen = hobbes_xemem::list()
            .unwrap()
            .iter()
            .find(|s| s.record.segid == segid)
            .map_or(0, |s| s.attachers.len());
        if seen == 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(seen, 2, "two attaching processes");
    for c in [a, b] {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "{:?}", out);
    }

    // A second segment, independent of the first.
    let (mem2, len2) = private_pages(2, 0x22);
    // SAFETY: the test's own private pages, which no other thread uses.
    let seg2 = unsafe {
        hobbes_xemem::make(
            mem2,
            len2,
            &MakeOptions {
                name: Some("t-second".into()),
                ..Default::default()
            },
        )
    }
    .unwrap();
    assert_ne!(seg2, segid);
    env.ok(&[
        "attach", "--name", "t-second", "--expect", "34", "--write", "35",
    ]);
    assert!(all(&bytes(mem2, len2), 35));
    assert!(all(&bytes(mem, len), 0x30));

    // Attach at an offset: one page, then bytes inside a page (XPMEM rounds).
    env.ok(&[
        "attach",
        "--name",
        "t-inplace",
        "--offset",
        &pg.to_string(),
        "--size",
        &pg.to_string(),
        "--write",
        "68",
    ]);
    let now = bytes(mem, len);
    assert!(all(&now[..pg], 0x30) && all(&now[pg..2 * pg], 68) && all(&now[2 * pg..], 0x30));
    let off = 2 * pg + 100;
    env.ok(&[
        "attach",
        "--name",
        "t-inplace",
        "--offset",
        &off.to_string(),
        "--size",
        "10",
        "--expect",
        "48",
        "--write",
        "85",
    ]);
    let now = bytes(mem, len);
    assert!(all(&now[off..off + 10], 85));
    assert!(all(&now[2 * pg..off], 0x30) && all(&now[off + 10..3 * pg], 0x30));

    detach_and_release_orders(segid, mem);

    // Signals: an attacher signals, the owner waits (and consumes it).
    let (mem3, len3) = private_pages(1, 0);
    // SAFETY: the test's own private page, which no other thread uses.
    let seg3 = unsafe {
        hobbes_xemem::make(
            mem3,
            len3,
            &MakeOptions {
                name: Some("t-signal".into()),
                signalled: true,
                ..Default::default()
            },
        )
    }
    .unwrap();
    assert!(hobbes_xemem::signal_fd(seg3).unwrap() >= 0);
    assert!(!hobbes_xemem::wait(seg3, Some(Duration::from_millis(10))).unwrap());
    env.ok(&["attach", "--name", "t-signal", "--write", "9", "--signal"]);
    assert!(hobbes_xemem::wait(seg3, Some(LIMIT)).unwrap());
    assert!(all(&bytes(mem3, len3), 9));
    hobbes_xemem::signal(seg3).unwrap();
    assert!(hobbes_xemem::wait(seg3, Some(Duration::ZERO)).unwrap());
    let e = hobbes_xemem::wait(segid, Some(Duration::ZERO)).unwrap_err();
    assert_eq!(e.errno(), libc::EINVAL, "not signalled: {e}");

    // The probe as owner: it waits for our signal and checks our writes.
    owner_probe(&env, false);
    owner_probe(&env, true);

    alloc_path(&env);

    // Remove: gone from lookups; the memory stays ours and mapped.
    for s in [segid, seg2, seg3] {
        hobbes_xemem::remove(s).unwrap();
    }
    assert_eq!(hobbes_xemem::lookup("t-inplace").unwrap(), None);
    assert_eq!(
        hobbes_xemem::get(segid, Access::ReadOnly)
            .unwrap_err()
            .errno(),
        libc::ENOENT
    );
    assert_eq!(
        hobbes_xemem::remove(segid).unwrap_err().errno(),
        libc::ENOENT
    );
    set(mem, len, 1);
    assert!(all(&bytes(mem, len), 1));
    let out = env.run(&["attach", "--name", "t-inplace", "--retry-ms", "0"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("error: "));
}

/// Detach and release in every order, in this process (an owner may attach
/// its own segment too).
fn detach_and_release_orders(segid: i64, mem: *mut u8) {
    let pg = page();
    // Detach, then release.
    let apid = hobbes_xemem::get(segid, Access::ReadWrite).unwrap();
    let p = hobbes_xemem::attach(apid, 0, pg).unwrap();
    assert_ne!(p, mem, "a second mapping of the same memory");
    assert_eq!(bytes(p, 1), bytes(mem, 1));
    hobbes_xemem::detach(p).unwrap();
    hobbes_xemem::release(apid).unwrap();
    assert_eq!(
        hobbes_xemem::release(apid).unwrap_err().errno(),
        libc::ENOENT
    );
    assert_eq!(hobbes_xemem::detach(p).unwrap_err().errno(), libc::EINVAL);

    // Release first: the attachments stay valid until detached.
    let apid = hobbes_xemem::get(segid, Access::ReadWrite).unwrap();
    let p1 = hobbes_xemem::attach(apid, 0, pg).unwrap();
    let p2 = hobbes_xemem::attach(apid, pg as u64, pg).unwrap();
    hobbes_xemem::release(apid).unwrap();
    assert_eq!(
        hobbes_xemem::attach(apid, 0, pg).unwrap_err().errno(),
        libc::ENOENT
    );
    set(p2, 1, 0x61);
    // SAFETY: mem is the owner's 4-page mapping.
    assert_eq!(bytes(unsafe { mem.add(pg) }, 1), [0x61]);
    hobbes_xemem::detach(p2).unwrap();
    // Detach by an address inside the attachment.
    // SAFETY: p1 maps one page.
    hobbes_xemem::detach(unsafe { p1.add(10) }).unwrap();

    // A fixed address, and bounds.
    let apid = hobbes_xemem::get(segid, Access::ReadOnly).unwrap();
    let (spot, _) = private_pages(1, 0);
    // SAFETY: `spot` is the test's own private page, no longer used as such.
    let p = unsafe { hobbes_xemem::attach_at(apid, 0, pg, spot) }.unwrap();
    assert_eq!(p, spot);
    assert_eq!(bytes(p, 1), bytes(mem, 1));
    hobbes_xemem::detach(p).unwrap();
    let e = hobbes_xemem::attach(apid, 0, 5 * pg).unwrap_err();
    assert_eq!(e.errno(), libc::EINVAL, "{e}");
    hobbes_xemem::release(apid).unwrap();

    // The wrappers, dropped in both orders.
    let grant = Grant::get(segid, Access::ReadOnly).unwrap();
    let att = grant.attach(0, pg).unwrap();
    assert!(att.read_only());
    assert_eq!(att.len(), pg);
    drop(grant);
    assert_eq!(bytes(att.as_ptr(), 1), bytes(mem, 1));
    drop(att);
    let grant = Grant::get(segid, Access::ReadWrite).unwrap();
    let att = grant.attach(0, pg).unwrap();
    assert!(!att.read_only());
    drop(att);
    drop(grant);
}

/// `xemem-probe make` owns the segment; we attach, write and signal.
fn owner_probe(env: &Env<'_>, alloc: bool) {
    let name = if alloc { "t-owner-alloc" } else { "t-owner" };
    let mut args = vec!["make", "--name", name, "--size", "16384", "--fill", "7"];
    args.extend(["--wait-signal", "--check", "8"]);
    if alloc {
        args.push("--alloc");
    }
    let owner = env
        .probe(&args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    env.ok(&[
        "attach",
        "--name",
        name,
        "--expect",
        "7",
        "--increment",
        "--signal",
    ]);
    let out = owner.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.starts_with("SEGID "), "{stdout}");
    assert!(stdout.contains("CHECK OK"), "{stdout}");
    assert_eq!(hobbes_xemem::lookup(name).unwrap(), None, "removed at exit");
}

/// The allocator: shared memory from the start, rounded up, page kind recorded.
fn alloc_path(env: &Env<'_>) {
    let seg = Segment::alloc(
        3 * page() + 1,
        &MakeOptions {
            name: Some("t-alloc".into()),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(seg.len() >= 4 * page() && seg.len().is_multiple_of(page()));
    let rec = hobbes_xemem::list()
        .unwrap()
        .into_iter()
        .find(|s| s.record.segid == seg.segid())
        .unwrap()
        .record;
    assert_eq!(rec.page_kind, seg.page_kind());
    assert_eq!(rec.size, seg.len() as u64);
    env.ok(&[
        "attach", "--name", "t-alloc", "--expect", "0", "--write", "102",
    ]);
    assert!(all(&bytes(seg.as_ptr(), seg.len()), 102));
    // Making exactly the allocated range again shares the same memory.
    // SAFETY: the segment's memory, ours while `seg` lives; no other thread uses it.
    let again =
        unsafe { hobbes_xemem::make(seg.as_ptr(), seg.len(), &MakeOptions::default()) }.unwrap();
    env.ok(&["attach", "--segid", &again.to_string(), "--expect", "102"]);
    hobbes_xemem::remove(again).unwrap();
    let segid = seg.segid();
    drop(seg);
    assert_eq!(
        hobbes_xemem::get(segid, Access::ReadOnly)
            .unwrap_err()
            .errno(),
        libc::ENOENT
    );
}
