//! Dirty-page tracking: which pages of a region were written since the
//! last snapshot. Two mechanisms, chosen at run time:
//!
//! * `scan` (Linux 6.7+): userfaultfd asynchronous write-protection
//!   (`UFFD_FEATURE_WP_ASYNC`): the kernel clears a page's write-protect bit
//!   on the first write, with no handler thread and no signal; at snapshot
//!   time `PAGEMAP_SCAN(PAGE_IS_WRITTEN)` lists the written pages and
//!   write-protects them again in the same page-table walk.
//! * `mprotect` (any kernel): the region is made read-only at snapshot time;
//!   the first write to a page raises SIGSEGV, whose handler marks the page
//!   in an atomic bitmap and makes that page writable again.

use std::fmt;
use std::os::fd::{AsFd, OwnedFd};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::OnceLock;

use nix::errno::Errno;

use hobbes_sys::mem::{self as mm, Mapping, Prot};
use hobbes_sys::uffd::{
    self, PageRegion, Userfaultfd, PAGE_IS_WRITTEN, PM_SCAN_CHECK_WPASYNC, PM_SCAN_WP_MATCHING,
    UFFD_FEATURE_WP_ASYNC, UFFD_FEATURE_WP_UNPOPULATED,
};

use crate::sys;

/// Environment variable forcing a mechanism: `scan` or `mprotect`.
pub const MECHANISM_ENV: &str = "HOBBES_XASM_MECHANISM";

/// How written pages are found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mechanism {
    /// userfaultfd `WP_ASYNC` + `PAGEMAP_SCAN` (Linux 6.7+).
    Scan,
    /// `mprotect` + SIGSEGV handler (portable fallback).
    Mprotect,
}

impl Mechanism {
    /// The code stored in the channel header.
    pub(crate) fn code(self) -> u32 {
        match self {
            Mechanism::Scan => 1,
            Mechanism::Mprotect => 2,
        }
    }

    pub(crate) fn from_code(code: u32) -> Option<Mechanism> {
        match code {
            1 => Some(Mechanism::Scan),
            2 => Some(Mechanism::Mprotect),
            _ => None,
        }
    }
}

impl fmt::Display for Mechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mechanism::Scan => "scan",
            Mechanism::Mprotect => "mprotect",
        })
    }
}

impl FromStr for Mechanism {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "scan" => Ok(Mechanism::Scan),
            "mprotect" => Ok(Mechanism::Mprotect),
            other => Err(format!(
                "unknown XASM mechanism {other:?}: use \"scan\" or \"mprotect\""
            )),
        }
    }
}

/// The mechanism named by `HOBBES_XASM_MECHANISM`, if set (an error names a
/// bad value).
pub(crate) fn env_mechanism() -> Result<Option<Mechanism>, String> {
    match std::env::var(MECHANISM_ENV) {
        Ok(v) if v.trim().is_empty() => Ok(None),
        Ok(v) => v
            .parse()
            .map(Some)
            .map_err(|e| format!("{MECHANISM_ENV}: {e}")),
        Err(_) => Ok(None),
    }
}

/// The mechanism new regions use by default: the one `HOBBES_XASM_MECHANISM`
/// names when set (a bad value is ignored here; creating a region reports
/// it), else `scan` when this kernel supports it, else `mprotect`.
pub fn best_mechanism() -> Mechanism {
    match env_mechanism() {
        Ok(Some(m)) => m,
        _ if mechanism_available(Mechanism::Scan) => Mechanism::Scan,
        _ => Mechanism::Mprotect,
    }
}

/// Whether `m` works in this process (probed once: for `scan` the
/// userfaultfd features and a tiny `PAGEMAP_SCAN`).
pub fn mechanism_available(m: Mechanism) -> bool {
    match m {
        Mechanism::Scan => scan_probe().is_ok(),
        Mechanism::Mprotect => true,
    }
}

/// Why `scan` is not available, if it is not.
pub fn scan_unavailable_reason() -> Option<String> {
    scan_probe().as_ref().err().cloned()
}

fn scan_probe() -> &'static Result<(), String> {
    static PROBE: OnceLock<Result<(), String>> = OnceLock::new();
    PROBE.get_or_init(|| {
        let features = Userfaultfd::open(0)
            .map_err(|e| format!("userfaultfd(UFFD_USER_MODE_ONLY): {e}"))?
            .features();
        let need = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED;
        if features & need != need {
            return Err(format!(
                "the kernel's userfaultfd lacks WP_ASYNC/WP_UNPOPULATED (features {features:#x}; Linux 6.7+ has them)"
            ));
        }
        // A real round: 4 pages, write two, the scan must find exactly them.
        let page = hobbes_sys::page_size();
        let mut mem =
            Mapping::anon_noreserve(4 * page, None).map_err(|e| format!("mmap: {e}"))?;
        let result = (|| {
            // SAFETY: our own private anonymous mapping, which outlives `t`.
            let mut t = unsafe { ScanTracker::new(mem.addr(), 4 * page) }
                .map_err(|(call, e)| format!("{call}: {e}"))?;
            mem.as_mut_slice()[page] = 1;
            mem.as_mut_slice()[3 * page] = 1;
            let first = t.collect().map_err(|(call, e)| format!("{call}: {e}"))?;
            let second = t.collect().map_err(|(call, e)| format!("{call}: {e}"))?;
            if first != [(1, 1), (3, 1)] || !second.is_empty() {
                return Err(format!(
                    "PAGEMAP_SCAN reported {first:?} then {second:?}, expected [(1, 1), (3, 1)] then []"
                ));
            }
            Ok(())
        })();
        drop(mem);
        result
    })
}

/// A failed system call: (call, errno).
pub(crate) type SysError = (&'static str, Errno);

/// Pages written since the previous collection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Dirty {
    /// Every page (the mprotect fallback ran out of mappings).
    All,
    /// Sorted, disjoint, non-adjacent runs: (first page, pages).
    Runs(Vec<(u64, u64)>),
}

/// Tracks one region `[addr, addr+len)`.
pub(crate) enum Tracker {
    Scan(ScanTracker),
    Mprotect(MprotectTracker),
}

impl Tracker {
    /// Start tracking: from now on every write is recorded.
    ///
    /// # Safety
    /// `[addr, addr+len)` is page-aligned, mapped read-write private
    /// anonymous memory of this process that stays mapped until the
    /// tracker is dropped (its protection is changed meanwhile).
    pub unsafe fn new(m: Mechanism, addr: usize, len: usize) -> Result<Tracker, SysError> {
        // SAFETY: per this function's contract, passed on.
        Ok(unsafe {
            match m {
                Mechanism::Scan => Tracker::Scan(ScanTracker::new(addr, len)?),
                Mechanism::Mprotect => Tracker::Mprotect(MprotectTracker::new(addr, len)?),
            }
        })
    }

    /// The pages written since the last call (or since `new`), and re-arm:
    /// later writes are recorded for the next call. No thread may write
    /// the region during the call.
    pub fn collect(&mut self) -> Result<Dirty, SysError> {
        match self {
            Tracker::Scan(t) => t.collect().map(Dirty::Runs),
            Tracker::Mprotect(t) => t.collect(),
        }
    }
}

/// Append page run `(p, n)` to sorted `runs`, merging with the last one.
fn push_run(runs: &mut Vec<(u64, u64)>, p: u64, n: u64) {
    if let Some(last) = runs.last_mut() {
        if last.0 + last.1 == p {
            last.1 += n;
            return;
        }
    }
    runs.push((p, n));
}

// ------------------------------------------------------------------ scan

pub(crate) struct ScanTracker {
    uffd: Userfaultfd,
    pagemap: OwnedFd,
    addr: usize,
    len: usize,
    page: usize,
    buf: Vec<PageRegion>,
}

impl ScanTracker {
    /// # Safety
    /// As for [`Tracker::new`].
    pub unsafe fn new(addr: usize, len: usize) -> Result<ScanTracker, SysError> {
        let want = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED;
        let uffd = Userfaultfd::open(want).map_err(|e| ("userfaultfd", e))?;
        if uffd.features() & want != want {
            return Err(("UFFDIO_API", Errno::ENOTSUP));
        }
        // SAFETY: the range is ours until the tracker drops (this
        // function's contract); WP_ASYNC resolves write faults itself.
        unsafe { uffd.register_wp(addr, len) }.map_err(|e| ("UFFDIO_REGISTER", e))?;
        // SAFETY: as above; the range was just registered.
        unsafe { uffd.writeprotect(addr, len, true) }.map_err(|e| ("UFFDIO_WRITEPROTECT", e))?;
        let pagemap = std::fs::File::open("/proc/self/pagemap")
            .map_err(|e| ("open(/proc/self/pagemap)", io_errno(&e)))?;
        Ok(ScanTracker {
            uffd,
            pagemap: pagemap.into(),
            addr,
            len,
            page: hobbes_sys::page_size(),
            buf: vec![PageRegion::default(); 4096],
        })
    }

    /// Written pages as runs; they are write-protected again by the same
    /// walk (`PM_SCAN_WP_MATCHING`).
    fn collect(&mut self) -> Result<Vec<(u64, u64)>, SysError> {
        let end = self.addr + self.len;
        let mut at = self.addr;
        let mut runs = Vec::new();
        while at < end {
            let (n, walk_end) = uffd::pagemap_scan(
                self.pagemap.as_fd(),
                at,
                end,
                &mut self.buf,
                PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
                PAGE_IS_WRITTEN,
                PAGE_IS_WRITTEN,
            )
            .map_err(|e| ("ioctl(PAGEMAP_SCAN)", e))?;
            for r in &self.buf[..n] {
                let first = (r.start as usize - self.addr) / self.page;
                let pages = (r.end - r.start) as usize / self.page;
                push_run(&mut runs, first as u64, pages as u64);
            }
            let walk_end = walk_end as usize;
            if walk_end <= at {
                // No progress (should not happen): do not spin.
                return Err(("ioctl(PAGEMAP_SCAN)", Errno::EIO));
            }
            at = walk_end;
        }
        Ok(runs)
    }
}

impl Drop for ScanTracker {
    fn drop(&mut self) {
        // Leave the memory as it was: no write-protect bits, not registered.
        // SAFETY: the range `new` registered, still ours (its contract).
        let _ = unsafe { self.uffd.writeprotect(self.addr, self.len, false) };
        let _ = self.uffd.unregister(self.addr, self.len);
    }
}

fn io_errno(e: &std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

// -------------------------------------------------------------- mprotect

/// Most regions the mprotect mechanism tracks at once in a process (the
/// signal handler scans a fixed table: no allocation, no locks).
pub const MPROTECT_MAX_REGIONS: usize = 64;

const FREE: u8 = 0;
const SETUP: u8 = 1;
const ACTIVE: u8 = 2;

/// One tracked region, read by the signal handler with atomics only.
struct Slot {
    state: AtomicU8,
    start: AtomicUsize,
    len: AtomicUsize,
    page: AtomicUsize,
    /// Address of the bitmap (`AtomicU64` words, one bit per page), a
    /// private mapping owned by the tracker.
    bitmap: AtomicUsize,
    /// Set when a page could not be made writable alone (out of mappings):
    /// the whole region was made writable and counts as written.
    all_dirty: AtomicBool,
    /// Handlers currently inside this slot (removal waits for zero).
    users: AtomicUsize,
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY_SLOT: Slot = Slot {
    state: AtomicU8::new(FREE),
    start: AtomicUsize::new(0),
    len: AtomicUsize::new(0),
    page: AtomicUsize::new(4096),
    bitmap: AtomicUsize::new(0),
    all_dirty: AtomicBool::new(false),
    users: AtomicUsize::new(0),
};

static SLOTS: [Slot; MPROTECT_MAX_REGIONS] = [EMPTY_SLOT; MPROTECT_MAX_REGIONS];

/// Called by the SIGSEGV handler for a permission fault at `addr`: if it
/// lies in a tracked region, mark its page written and make it writable;
/// true when the fault is resolved. Async-signal-safe: atomics and
/// mprotect only.
pub(crate) fn on_write_fault(addr: usize) -> bool {
    for slot in SLOTS.iter() {
        if slot.state.load(Ordering::Acquire) != ACTIVE {
            continue;
        }
        let start = slot.start.load(Ordering::Acquire);
        let len = slot.len.load(Ordering::Acquire);
        if addr < start || addr >= start + len {
            continue;
        }
        slot.users.fetch_add(1, Ordering::AcqRel);
        // Re-check under the users count: removal waits for it to drop.
        let resolved = slot.state.load(Ordering::Acquire) == ACTIVE
            && slot.start.load(Ordering::Acquire) == start
            && mark_and_unprotect(slot, start, len, addr);
        slot.users.fetch_sub(1, Ordering::AcqRel);
        return resolved;
    }
    false
}

fn mark_and_unprotect(slot: &Slot, start: usize, len: usize, addr: usize) -> bool {
    let page = slot.page.load(Ordering::Relaxed);
    let index = (addr - start) / page;
    let word = slot.bitmap.load(Ordering::Acquire) + (index / 64) * 8;
    // SAFETY: the slot's bitmap (one bit per page of the region, so word
    // `index / 64` is inside it) stays mapped while the slot is ACTIVE or
    // has users (`Drop for MprotectTracker` waits for both); it is only
    // accessed through atomics.
    let word = unsafe { AtomicU64::from_ptr(word as *mut u64) };
    word.fetch_or(1 << (index % 64), Ordering::AcqRel);
    // SAFETY: a page of a tracked region (ours per `Tracker::new`), made
    // writable again: that invalidates no reference.
    if unsafe { mm::mprotect(start + index * page, page, Prot::ReadWrite) }.is_ok() {
        return true;
    }
    // Out of mappings (vm.max_map_count): make the whole region writable,
    // which merges it back into one mapping; the next snapshot copies all.
    slot.all_dirty.store(true, Ordering::Release);
    // SAFETY: as above, for the whole region.
    unsafe { mm::mprotect(start, len, Prot::ReadWrite) }.is_ok()
}

pub(crate) struct MprotectTracker {
    slot: usize,
    addr: usize,
    len: usize,
    page: usize,
    /// One bit per page (`AtomicU64` words), read by the signal handler;
    /// `None` only while dropping.
    bitmap: Option<Mapping>,
}

impl MprotectTracker {
    /// # Safety
    /// As for [`Tracker::new`].
    pub unsafe fn new(addr: usize, len: usize) -> Result<MprotectTracker, SysError> {
        sys::install_segv_handler().map_err(|e| ("sigaction(SIGSEGV)", e))?;
        let page = hobbes_sys::page_size();
        let pages = len.div_ceil(page);
        let bitmap_len = (pages.div_ceil(64) * 8).next_multiple_of(page);
        let slot = SLOTS
            .iter()
            .position(|s| {
                s.state
                    .compare_exchange(FREE, SETUP, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            })
            .ok_or(("mprotect tracking slot", Errno::ENOSPC))?;
        let s = &SLOTS[slot];
        let bitmap = match Mapping::anon_noreserve(bitmap_len, None) {
            Ok(b) => b,
            Err(e) => {
                s.state.store(FREE, Ordering::Release);
                return Err(("mmap(bitmap)", e));
            }
        };
        s.start.store(addr, Ordering::Release);
        s.len.store(len, Ordering::Release);
        s.page.store(page, Ordering::Release);
        s.bitmap.store(bitmap.addr(), Ordering::Release);
        s.all_dirty.store(false, Ordering::Release);
        s.state.store(ACTIVE, Ordering::Release);
        let t = MprotectTracker {
            slot,
            addr,
            len,
            page,
            bitmap: Some(bitmap),
        };
        // Pages split off by the handler must be able to merge back at the
        // next snapshot: the kernel merges neighbouring mappings only when
        // they share their anon_vma, which a never-written mapping does not
        // have yet (each piece would get its own at its first write).
        // SAFETY: the first byte of the region, ours (this function's
        // contract) and not written by anyone else now; volatile so the
        // store of the unchanged value is kept.
        unsafe {
            let p = addr as *mut u8;
            p.write_volatile(p.read_volatile());
        }
        // SAFETY: the region is ours; writes to it fault and are resolved
        // by the handler, which makes the page writable again.
        unsafe { mm::mprotect(addr, len, Prot::Read) }.map_err(|e| ("mprotect(PROT_READ)", e))?;
        Ok(t)
    }

    fn collect(&mut self) -> Result<Dirty, SysError> {
        let s = &SLOTS[self.slot];
        // Re-protect first: a write before this point is in the bitmap, a
        // write after it faults and lands in the next collection.
        // SAFETY: as in `new`.
        unsafe { mm::mprotect(self.addr, self.len, Prot::Read) }.map_err(|e| {
            // Keep what was written: the next collection copies everything.
            s.all_dirty.store(true, Ordering::Release);
            ("mprotect(PROT_READ)", e)
        })?;
        let all = s.all_dirty.swap(false, Ordering::AcqRel);
        let pages = (self.len / self.page) as u64;
        let mut runs = Vec::new();
        let Some(bitmap) = &self.bitmap else {
            return Err(("mprotect bitmap", Errno::EBADF));
        };
        let words = bitmap.as_ptr().cast::<u64>();
        for w in 0..pages.div_ceil(64) {
            // SAFETY: word `w` is inside our bitmap mapping (one bit per
            // page), page aligned, only ever accessed through atomics.
            let word = unsafe { AtomicU64::from_ptr(words.add(w as usize).cast_mut()) };
            let mut bits = word.swap(0, Ordering::AcqRel);
            while bits != 0 {
                let b = bits.trailing_zeros() as u64;
                bits &= bits - 1;
                let p = w * 64 + b;
                if p < pages {
                    push_run(&mut runs, p, 1);
                }
            }
        }
        Ok(if all { Dirty::All } else { Dirty::Runs(runs) })
    }
}

impl Drop for MprotectTracker {
    fn drop(&mut self) {
        // Writable again first, so no new fault needs this slot.
        // SAFETY: the region is ours until the tracker is gone.
        let _ = unsafe { mm::mprotect(self.addr, self.len, Prot::ReadWrite) };
        let s = &SLOTS[self.slot];
        s.state.store(SETUP, Ordering::Release);
        while s.users.load(Ordering::Acquire) != 0 {
            std::hint::spin_loop();
        }
        s.bitmap.store(0, Ordering::Release);
        drop(self.bitmap.take());
        s.state.store(FREE, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(mem: &mut Mapping, page: usize, pages: &[u64]) {
        for p in pages {
            let at = *p as usize * page;
            mem.as_mut_slice()[at..at + page].fill((*p % 251) as u8 + 1);
        }
    }

    /// Mappings of /proc/self/maps inside `[addr, addr+len)`.
    fn mappings_in(addr: usize, len: usize) -> usize {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        maps.lines()
            .filter_map(|l| l.split_whitespace().next()?.split_once('-'))
            .filter_map(|(a, b)| {
                Some((
                    usize::from_str_radix(a, 16).ok()?,
                    usize::from_str_radix(b, 16).ok()?,
                ))
            })
            .filter(|(s, e)| *s < addr + len && addr < *e)
            .count()
    }

    fn runs_of(pages: &[u64]) -> Vec<(u64, u64)> {
        let mut sorted = pages.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let mut runs = Vec::new();
        for p in sorted {
            push_run(&mut runs, p, 1);
        }
        runs
    }

    fn finds_exactly_the_written_pages(m: Mechanism) {
        let page = hobbes_sys::page_size();
        let pages = 300;
        let mut mem = Mapping::anon_noreserve(pages * page, None).unwrap();
        mem.advise(mm::Advice::NoHugePage).unwrap();
        let addr = mem.addr();
        // SAFETY: our own private anonymous mapping, which outlives `t`.
        let mut t = unsafe { Tracker::new(m, addr, pages * page) }.unwrap();
        assert_eq!(t.collect().unwrap(), Dirty::Runs(vec![]));
        for set in [
            vec![0u64, 1, 2, 70, 299],
            vec![],
            vec![5, 64, 63, 65, 200, 201, 150],
            (0..300).collect(),
            vec![299],
        ] {
            write(&mut mem, page, &set);
            // Reads do not count.
            std::hint::black_box(mem.as_slice()[10 * page]);
            assert_eq!(
                t.collect().unwrap(),
                Dirty::Runs(runs_of(&set)),
                "{m}: {set:?}"
            );
            // Between snapshots the region is one mapping again.
            assert_eq!(mappings_in(addr, pages * page), 1, "{m}: after {set:?}");
        }
        drop(t);
        // Writable and untracked afterwards.
        write(&mut mem, page, &[7]);
    }

    #[test]
    fn mprotect_finds_exactly_the_written_pages() {
        finds_exactly_the_written_pages(Mechanism::Mprotect);
    }

    #[test]
    fn scan_finds_exactly_the_written_pages() {
        if !mechanism_available(Mechanism::Scan) {
            println!(
                "SKIP scan_finds_exactly_the_written_pages: {}",
                scan_unavailable_reason().unwrap_or_default()
            );
            return;
        }
        finds_exactly_the_written_pages(Mechanism::Scan);
    }

    #[test]
    fn scan_handles_more_runs_than_its_buffer() {
        if !mechanism_available(Mechanism::Scan) {
            return;
        }
        let page = hobbes_sys::page_size();
        let pages = 4096u64;
        let mut mem = Mapping::anon_noreserve(pages as usize * page, None).unwrap();
        mem.advise(mm::Advice::NoHugePage).unwrap();
        // SAFETY: our own private anonymous mapping, which outlives `t`.
        let mut t = unsafe { Tracker::new(Mechanism::Scan, mem.addr(), mem.len()) }.unwrap();
        let every_other: Vec<u64> = (0..pages).step_by(2).collect();
        write(&mut mem, page, &every_other);
        assert_eq!(t.collect().unwrap(), Dirty::Runs(runs_of(&every_other)));
        drop(t);
    }

    #[test]
    fn mechanism_names() {
        assert_eq!("scan".parse::<Mechanism>().unwrap(), Mechanism::Scan);
        assert_eq!(
            " MPROTECT ".parse::<Mechanism>().unwrap(),
            Mechanism::Mprotect
        );
        assert!("redirect"
            .parse::<Mechanism>()
            .unwrap_err()
            .contains("redirect"));
        assert_eq!(Mechanism::Scan.to_string(), "scan");
        for m in [Mechanism::Scan, Mechanism::Mprotect] {
            assert_eq!(Mechanism::from_code(m.code()), Some(m));
        }
        assert!(mechanism_available(Mechanism::Mprotect));
    }
}
