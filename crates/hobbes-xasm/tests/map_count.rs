//! The mprotect mechanism out of mappings: when making one written page
//! writable again would exceed `vm.max_map_count` (mprotect fails with
//! ENOMEM), the handler makes the whole region writable and the next
//! snapshot copies all of it: slower, still correct.
//!
//! This process (not the machine: the sysctl is left alone) is brought
//! near its mapping limit with PROT_NONE/PROT_READ stripes, so this test
//! runs alone in its own test binary.

#[path = "../../hobbes-xemem/tests/support/mod.rs"]
mod support;

use hobbes_xasm::{diag, Consumer, Mechanism, Producer, RegionOptions};
use support::daemon::Daemon;

const PAGE: usize = 4096;

/// Stripes of alternating protections: `vmas` more mappings in this process.
struct Stripes {
    base: *mut libc::c_void,
    len: usize,
}

impl Stripes {
    fn new(vmas: usize) -> Stripes {
        let pages = vmas + 2;
        let len = pages * PAGE;
        // SAFETY: a fresh PROT_NONE reservation at an address the kernel picks.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED);
        for i in (1..pages - 1).step_by(2) {
            // SAFETY: a page of our own reservation; nothing refers to it.
            let r = unsafe {
                libc::mprotect(
                    base.cast::<u8>().add(i * PAGE).cast(),
                    PAGE,
                    libc::PROT_READ,
                )
            };
            if r != 0 {
                break;
            }
        }
        Stripes { base, len }
    }
}

impl Drop for Stripes {
    fn drop(&mut self) {
        // SAFETY: our own reservation, unused by anything else.
        unsafe { libc::munmap(self.base, self.len) };
    }
}

#[test]
fn mprotect_out_of_mappings_copies_everything() {
    let Some(daemon) = Daemon::start("mprotect_out_of_mappings_copies_everything") else {
        return;
    };
    for var in support::daemon::HOBBES_VARS {
        std::env::remove_var(var);
    }
    std::env::set_var("HOBBES_STATE_DIR", daemon.state_dir());
    let n = 512;
    let opts = RegionOptions {
        mechanism: Some(Mechanism::Mprotect),
        ..RegionOptions::named("t-mapcount")
    };
    let mut p = Producer::create(n * PAGE, &opts).unwrap();
    p.as_mut_slice().fill(1);
    assert_eq!(p.snapshot().unwrap().copied_pages, n as u64);

    let limit: usize = std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let headroom = 40;
    let stripes = Stripes::new(limit.saturating_sub(diag::mappings() + headroom));
    let near = diag::mappings();
    assert!(
        near + 2 * headroom > limit,
        "{near} mappings, limit {limit}"
    );
    // Every other page: each write would split off two more mappings.
    for i in (0..n).step_by(2) {
        p.as_mut_slice()[i * PAGE] = 2;
    }
    let info = p.snapshot().unwrap();
    assert_eq!(
        (info.dirty_pages, info.copied_pages),
        (n as u64, n as u64),
        "out of mappings, the whole region counts as written: {info:?}"
    );
    drop(stripes);

    let c = Consumer::open("t-mapcount").unwrap();
    let s = c.attach(info.version).unwrap();
    for i in 0..n {
        let want = if i % 2 == 0 { 2 } else { 1 };
        assert_eq!(s.as_slice()[i * PAGE], want, "page {i}");
        assert_eq!(s.as_slice()[i * PAGE + 1], 1, "page {i}");
    }
    // With mappings to spare, tracking is per page again.
    p.as_mut_slice()[5 * PAGE] = 3;
    let info = p.snapshot().unwrap();
    assert_eq!((info.dirty_pages, info.copied_pages), (1, 1));
}
