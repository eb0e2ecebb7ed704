//! A composite (read-only, versioned) segment through libxemem's calls, as a
//! C consumer of an XASM version uses them (the seeds' Figure 4, unchanged).

#[path = "../../hobbes-xemem/tests/support/mod.rs"]
mod support;

use std::ffi::CString;
use std::os::fd::{AsFd, OwnedFd};

use hobbes_xemem::composite::{write_table, Extent};
use hobbes_xemem::MakeOptions;
use support::daemon::{Daemon, HOBBES_VARS};
use xemem::{XememAddr, XEMEM_RDONLY, XEMEM_RDWR};

fn page() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .unwrap_or(4096) as u64
}

fn memfd(name: &str) -> OwnedFd {
    nix::sys::memfd::memfd_create(name, nix::sys::memfd::MFdFlags::MFD_CLOEXEC).unwrap()
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

#[test]
fn composite_versions_through_the_c_abi() {
    let Some(daemon) = Daemon::start("composite_versions_through_the_c_abi") else {
        return;
    };
    for var in HOBBES_VARS {
        std::env::remove_var(var);
    }
    for (k, v) in daemon.env() {
        std::env::set_var(k, v);
    }
    let p = page();
    // Pool slot 0 holds 7s, slot 1 holds 9s; the version shows slot 1 first.
    let pool = memfd("capi-pool");
    for (slot, v) in [(0u64, 7u8), (1, 9)] {
        nix::sys::uio::pwrite(&pool, &vec![v; p as usize], (slot * p) as i64).unwrap();
    }
    let table = memfd("capi-table");
    let extents = [
        Extent {
            seg_offset: 0,
            pool_offset: p,
            len: p,
        },
        Extent {
            seg_offset: p,
            pool_offset: 0,
            len: p,
        },
    ];
    write_table(table.as_fd(), p as u32, 2 * p, &extents).unwrap();
    let opts = MakeOptions {
        name: Some("capi@1".into()),
        ..Default::default()
    };
    let made = hobbes_xemem::make_composite(&table, &pool, 2 * p, &opts).unwrap();

    let name = CString::new("capi@1").unwrap();
    // SAFETY: a NUL-terminated name that outlives the call.
    let segid = unsafe { xemem::xemem_lookup_segid(name.as_ptr().cast_mut()) };
    assert_eq!(segid, made);
    assert_eq!(xemem::xemem_get(segid, XEMEM_RDWR), -1);
    assert_eq!(errno(), libc::EACCES);
    let apid = xemem::xemem_get(segid, XEMEM_RDONLY);
    assert!(apid > 0, "xemem_get: errno {}", errno());
    let addr = XememAddr { apid, offset: 0 };
    // SAFETY: NULL: the kernel picks the address, nothing is replaced.
    let at = unsafe { xemem::xemem_attach(addr, 2 * p as usize, std::ptr::null_mut()) };
    assert_ne!(at as usize, usize::MAX, "xemem_attach: errno {}", errno());
    let read = |i: u64| {
        // SAFETY: the attachment is mapped readable for 2 pages.
        unsafe { at.cast::<u8>().add(i as usize).read_volatile() }
    };
    assert_eq!(
        (read(0), read(p - 1), read(p), read(2 * p - 1)),
        (9, 9, 7, 7)
    );
    assert_eq!(xemem::xemem_release(apid), 0);
    assert_eq!(read(p), 7, "attachments outlive the permit");
    assert_eq!(xemem::xemem_detach(at), 0);
    hobbes_xemem::remove(segid).unwrap();
}
