//! The XEMEM name server in the daemon, driven through the raw client API:
//! descriptors handed out, permissions, read-only grants, removal, owner exit,
//! signals, and a daemon restart with live segments.

mod common;

use std::num::NonZeroUsize;
use std::os::fd::{AsFd, OwnedFd};
use std::ptr::NonNull;
use std::time::Duration;

use common::*;
use hobbes_client::proto::model::{Access, PageKind, SegId};
use hobbes_client::proto::msg::{ErrorCode, XememMake};
use hobbes_client::{Client, NisReader};
use nix::sys::memfd::{memfd_create, MFdFlags};
use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};

const LEN: usize = 4 * 4096;

fn memfd_with(byte: u8) -> OwnedFd {
    let fd = memfd_create("xemem-test", MFdFlags::MFD_CLOEXEC).unwrap();
    nix::unistd::ftruncate(&fd, LEN as i64).unwrap();
    nix::sys::uio::pwrite(&fd, &vec![byte; LEN], 0).unwrap();
    fd
}

fn make(c: &mut Client, fd: &OwnedFd, name: &str, mode: u32, event: Option<&OwnedFd>) -> SegId {
    use std::os::fd::AsRawFd;
    let req = XememMake {
        size: LEN as u64,
        offset: 0,
        name: Some(name.into()),
        segid: None,
        mode,
        page_kind: PageKind::Base,
        signalled: event.is_some(),
        owner_fd: fd.as_raw_fd(),
        owner_event_fd: event.map(|e| e.as_raw_fd()),
        owner_addr: 0,
        composite: None,
        retire: Vec::new(),
    };
    c.xemem_make(req, fd.as_fd(), event.map(|e| e.as_fd()))
        .unwrap()
        .segid
}

/// Map a granted descriptor; returns the first byte seen and whether a writable mapping worked.
fn map_and_poke(fd: &OwnedFd, write: Option<u8>) -> (u8, nix::Result<()>) {
    let len = NonZeroUsize::new(LEN).unwrap();
    // SAFETY: a fresh shared mapping of a descriptor we hold, unmapped below.
    let ro = unsafe { mmap(None, len, ProtFlags::PROT_READ, MapFlags::MAP_SHARED, fd, 0) }.unwrap();
    // SAFETY: the mapping is LEN readable bytes.
    let first = unsafe { *ro.cast::<u8>().as_ptr() };
    // SAFETY: as above.
    unsafe { munmap(ro, LEN) }.unwrap();
    // SAFETY: a fresh shared mapping, which the kernel must refuse for a read-only grant.
    let rw = unsafe {
        mmap(
            None,
            len,
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
            MapFlags::MAP_SHARED,
            fd,
            0,
        )
    };
    let result = rw.map(|p: NonNull<std::ffi::c_void>| {
        if let Some(b) = write {
            // SAFETY: a writable shared mapping of LEN bytes.
            unsafe { std::ptr::write_bytes(p.cast::<u8>().as_ptr(), b, LEN) };
        }
        // SAFETY: unmapping what we mapped.
        unsafe { munmap(p, LEN) }.unwrap();
    });
    (first, result)
}

fn first_byte(fd: &OwnedFd) -> u8 {
    let mut b = [0u8; 1];
    nix::sys::uio::pread(fd, &mut b, 0).unwrap();
    b[0]
}

#[test]
fn grants_hand_out_the_segment_read_write_or_read_only() {
    let t = "grants_hand_out_the_segment_read_write_or_read_only";
    if !require_root(t) {
        return;
    }
    let d = Daemon::start(&[]);
    let mut c = d.client();
    let owner_fd = memfd_with(0x11);
    let segid = make(&mut c, &owner_fd, "grid", 0o600, None);
    assert!(segid > 0);

    let (rec, fd, ev) = c.xemem_get(segid, Access::ReadWrite).unwrap();
    assert_eq!(
        (rec.size, rec.name.as_deref(), ev.is_none()),
        (LEN as u64, Some("grid"), true)
    );
    let (first, rw) = map_and_poke(&fd, Some(0x22));
    assert_eq!(first, 0x11, "the requester sees the owner's memory");
    assert!(rw.is_ok());
    assert_eq!(
        first_byte(&owner_fd),
        0x22,
        "and the owner sees the requester's writes: no copy"
    );

    let (_, ro_fd, _) = c.xemem_get(segid, Access::ReadOnly).unwrap();
    let (first, rw) = map_and_poke(&ro_fd, None);
    assert_eq!(first, 0x22);
    assert_eq!(
        rw.unwrap_err(),
        nix::errno::Errno::EACCES,
        "a read-only grant cannot be mapped writable"
    );

    // Name lookup, directly and through the daemon.
    let nis = NisReader::open(d.nis_dir()).unwrap();
    assert_eq!(nis.segment_by_name("grid").unwrap().unwrap().segid, segid);
    assert_eq!(c.xemem_lookup("grid").unwrap().segid, segid);
    let list = c.xemem_list().unwrap();
    assert_eq!(list.len(), 1);

    // Bad input changes nothing.
    assert_eq!(
        c.xemem_get(999, Access::ReadOnly).unwrap_err().code(),
        Some(ErrorCode::NotFound)
    );
    let other = memfd_with(0);
    use std::os::fd::AsRawFd;
    let dup = XememMake {
        size: LEN as u64,
        offset: 0,
        name: Some("grid".into()),
        segid: None,
        mode: 0o600,
        page_kind: PageKind::Base,
        signalled: false,
        owner_fd: other.as_raw_fd(),
        owner_event_fd: None,
        owner_addr: 0,
        composite: None,
        retire: Vec::new(),
    };
    assert_eq!(
        c.xemem_make(dup.clone(), other.as_fd(), None)
            .unwrap_err()
            .code(),
        Some(ErrorCode::Conflict),
        "name taken"
    );
    let big = XememMake {
        size: LEN as u64 * 2,
        offset: 0,
        name: None,
        ..dup.clone()
    };
    assert_eq!(
        c.xemem_make(big, other.as_fd(), None).unwrap_err().code(),
        Some(ErrorCode::InvalidSpec),
        "larger than its memfd"
    );
    // A range of the memfd: page-aligned and inside it, or refused by name.
    for (offset, size, why) in [
        (100, 4096, "not a multiple of the page size"),
        (4096, LEN as u64, "runs past its memfd"),
    ] {
        let range = XememMake {
            offset,
            size,
            name: None,
            ..dup.clone()
        };
        let e = c.xemem_make(range, other.as_fd(), None).unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::InvalidSpec), "{e}");
        assert!(e.to_string().contains(why), "{e}");
    }
    let (pipe_r, _pipe_w) = nix::unistd::pipe().unwrap();
    let notmemfd = XememMake {
        name: None,
        ..dup.clone()
    };
    assert_eq!(
        c.xemem_make(notmemfd, pipe_r.as_fd(), None)
            .unwrap_err()
            .code(),
        Some(ErrorCode::InvalidSpec),
        "not a memfd"
    );
    let taken = XememMake {
        name: None,
        segid: Some(segid),
        ..dup
    };
    assert_eq!(
        c.xemem_make(taken, other.as_fd(), None).unwrap_err().code(),
        Some(ErrorCode::Conflict),
        "segid taken"
    );
    assert_eq!(c.xemem_list().unwrap().len(), 1);

    c.xemem_remove(segid).unwrap();
    assert_eq!(
        c.xemem_get(segid, Access::ReadOnly).unwrap_err().code(),
        Some(ErrorCode::NotFound)
    );
    assert!(nis.segment_by_name("grid").unwrap().is_none());
    // Existing mappings outlive the segment: the memory is still there.
    let (first, _) = map_and_poke(&fd, None);
    assert_eq!(first, 0x22);
}

#[test]
fn make_get_remove_cycles_leak_no_descriptors() {
    let t = "make_get_remove_cycles_leak_no_descriptors";
    if !require_root(t) {
        return;
    }
    let d = Daemon::start(&[]);
    let mut c = d.client();
    let fds = || {
        std::fs::read_dir(format!("/proc/{}/fd", d.pid()))
            .unwrap()
            .count()
    };
    let nis = NisReader::open(d.nis_dir()).unwrap();
    // Warm up (lazily opened files), then measure.
    let warm = memfd_with(0);
    let s = make(&mut c, &warm, "warm", 0o600, None);
    c.xemem_remove(s).unwrap();
    let before = fds();
    for i in 0..20 {
        let fd = memfd_with(i as u8);
        let ev: OwnedFd =
            nix::sys::eventfd::EventFd::from_flags(nix::sys::eventfd::EfdFlags::EFD_CLOEXEC)
                .unwrap()
                .into();
        let segid = make(&mut c, &fd, &format!("cycle{i}"), 0o600, Some(&ev));
        let _grant = c.xemem_get(segid, Access::ReadOnly).unwrap();
        let _grant = c.xemem_get(segid, Access::ReadWrite).unwrap();
        c.xemem_remove(segid).unwrap();
    }
    let after = fds();
    // Unrelated descriptors (a client connection closing) may go; none may stay behind.
    assert!(
        after <= before,
        "the name server holds no descriptor of a removed segment: {before} before, {after} after"
    );
    assert!(nis.segments().unwrap().is_empty(), "and no record");
}

#[test]
fn signals_wake_the_segment_eventfd() {
    let t = "signals_wake_the_segment_eventfd";
    if !require_root(t) {
        return;
    }
    let d = Daemon::start(&[]);
    let mut c = d.client();
    let fd = memfd_with(0);
    let ev: OwnedFd = nix::sys::eventfd::EventFd::from_flags(
        nix::sys::eventfd::EfdFlags::EFD_CLOEXEC | nix::sys::eventfd::EfdFlags::EFD_SEMAPHORE,
    )
    .unwrap()
    .into();
    let segid = make(&mut c, &fd, "bell", 0o600, Some(&ev));
    let (_, _, granted_ev) = c.xemem_get(segid, Access::ReadOnly).unwrap();
    let granted_ev = granted_ev.expect("signalled segments come with their eventfd");
    c.xemem_signal(segid).unwrap();
    let mut buf = [0u8; 8];
    nix::unistd::read(&granted_ev, &mut buf).unwrap();
    assert_eq!(
        u64::from_ne_bytes(buf),
        1,
        "one signal, consumed by one ack"
    );
    let plain = memfd_with(0);
    let quiet = make(&mut c, &plain, "quiet", 0o600, None);
    assert_eq!(
        c.xemem_signal(quiet).unwrap_err().code(),
        Some(ErrorCode::InvalidSpec)
    );
}

/// Re-executed as `nobody`: tries to get a root-owned segment.
#[test]
fn helper_get_as_other_user() {
    let Ok(segid) = std::env::var("HOBBES_TEST_SEGID") else {
        return;
    };
    let segid: SegId = segid.parse().unwrap();
    let mut c = Client::connect(std::env::var("HOBBES_SOCKET").unwrap()).unwrap();
    let expect_ro = std::env::var("HOBBES_TEST_EXPECT_RO").unwrap() == "yes";
    let ro = c.xemem_get(segid, Access::ReadOnly);
    assert_eq!(ro.is_ok(), expect_ro, "{:?}", ro.as_ref().err());
    if !expect_ro {
        assert_eq!(ro.unwrap_err().code(), Some(ErrorCode::PermissionDenied));
    }
    let rw = c.xemem_get(segid, Access::ReadWrite).unwrap_err();
    assert_eq!(rw.code(), Some(ErrorCode::PermissionDenied), "{rw}");
    assert_eq!(
        c.xemem_remove(segid).unwrap_err().code(),
        Some(ErrorCode::PermissionDenied)
    );
    println!("HELPER-OK");
}

#[test]
fn permissions_follow_the_permit_mode() {
    let t = "permissions_follow_the_permit_mode";
    if !require_root(t) {
        return;
    }
    let d = Daemon::start(&[]);
    let mut c = d.client();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(d.state_dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let private = memfd_with(1);
    let shared = memfd_with(2);
    for (segid, expect_ro) in [
        (make(&mut c, &private, "private", 0o600, None), "no"),
        (make(&mut c, &shared, "readable", 0o644, None), "yes"),
    ] {
        use std::os::unix::process::CommandExt;
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "helper_get_as_other_user",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("HOBBES_TEST_SEGID", segid.to_string())
            .env("HOBBES_TEST_EXPECT_RO", expect_ro)
            .env("HOBBES_SOCKET", d.socket())
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("HELPER-OK"),
            "segment {segid}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Re-executed by the owner-exit test: makes a segment and exits.
#[test]
fn helper_make_and_exit() {
    let Ok(sock) = std::env::var("HOBBES_TEST_MAKE_AND_EXIT") else {
        return;
    };
    let mut c = Client::connect(sock).unwrap();
    let fd = memfd_with(7);
    let segid = make(&mut c, &fd, "ephemeral", 0o600, None);
    println!("SEGID {segid}");
}

#[test]
fn owner_exit_removes_its_segments_and_restart_recovers_live_ones() {
    let t = "owner_exit_removes_its_segments_and_restart_recovers_live_ones";
    if !require_root(t) {
        return;
    }
    let mut d = Daemon::start(&[]);
    let nis = NisReader::open(d.nis_dir()).unwrap();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "helper_make_and_exit",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("HOBBES_TEST_MAKE_AND_EXIT", d.socket())
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("SEGID"),
        "{out:?}"
    );
    wait_for(
        "the exited owner's segment to go",
        Duration::from_secs(5),
        || {
            nis.segment_by_name("ephemeral")
                .unwrap()
                .is_none()
                .then_some(())
        },
    );

    // This test process owns a live segment across a daemon kill -9 + restart.
    let mut c = d.client();
    let fd = memfd_with(0x5a);
    let segid = make(&mut c, &fd, "durable", 0o600, None);
    d.kill9();
    d.spawn();
    let mut c = d.client();
    let (rec, granted, _) = c
        .xemem_get(segid, Access::ReadWrite)
        .expect("segment recovered from its live owner");
    assert_eq!(rec.name.as_deref(), Some("durable"));
    let (first, _) = map_and_poke(&granted, Some(0x6b));
    assert_eq!(first, 0x5a);
    assert_eq!(
        first_byte(&fd),
        0x6b,
        "the recovered grant is the owner's memory"
    );
}

#[test]
fn a_make_retires_segments_all_or_nothing() {
    let t = "a_make_retires_segments_all_or_nothing";
    if !require_root(t) {
        return;
    }
    use std::os::fd::AsRawFd;
    let d = Daemon::start(&[]);
    let mut c = d.client();
    let (fa, fb, fc) = (memfd_with(1), memfd_with(2), memfd_with(3));
    let a = make(&mut c, &fa, "v@1", 0o600, None);
    let b = make(&mut c, &fb, "v@2", 0o600, None);
    let req = |fd: &OwnedFd, name: &str, retire: Vec<SegId>| XememMake {
        size: LEN as u64,
        offset: 0,
        name: Some(name.into()),
        segid: None,
        mode: 0o600,
        page_kind: PageKind::Base,
        signalled: false,
        owner_fd: fd.as_raw_fd(),
        owner_event_fd: None,
        owner_addr: 0,
        composite: None,
        retire,
    };
    // An unknown segid in the list refuses the whole make: nothing removed.
    let e = c
        .xemem_make(req(&fc, "v@3", vec![a, 999_999]), fc.as_fd(), None)
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NotFound), "{e}");
    assert!(e.to_string().contains("999999"), "{e}");
    let too_many = (1..=65).collect::<Vec<SegId>>();
    let e = c
        .xemem_make(req(&fc, "v@3", too_many), fc.as_fd(), None)
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidSpec), "{e}");
    assert_eq!(c.xemem_list().unwrap().len(), 2);
    // Retiring one: made and removed in one request; a retired name is free.
    let v3 = c
        .xemem_make(req(&fc, "v@1", vec![a]), fc.as_fd(), None)
        .unwrap()
        .segid;
    let names: Vec<(SegId, Option<String>)> = c
        .xemem_list()
        .unwrap()
        .into_iter()
        .map(|s| (s.record.segid, s.record.name))
        .collect();
    assert_eq!(
        names,
        vec![(b, Some("v@2".into())), (v3, Some("v@1".into()))]
    );
    assert_eq!(
        c.xemem_get(a, Access::ReadOnly).unwrap_err().code(),
        Some(ErrorCode::NotFound)
    );
}
