//! The pool: one sparse memfd per region holding the published copies of
//! pages, in page *slots*. Slots are handed out by an allocator of free
//! runs; freed runs are hole-punched, so the pool uses exactly the memory
//! of its live slots, and a free tail is cut off with `ftruncate`.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::os::fd::{AsFd, OwnedFd};

use nix::errno::Errno;

use crate::sys;

/// Slot allocator: free runs of slots below `end`, indexed by start and by
/// size. Allocations prefer one contiguous run, so that the pages of one
/// snapshot land next to each other and their extents coalesce.
#[derive(Debug, Default, Clone)]
pub(crate) struct SlotAlloc {
    by_start: BTreeMap<u64, u64>,
    by_size: BTreeSet<(u64, u64)>,
    end: u64,
    used: u64,
}

impl SlotAlloc {
    /// One past the highest slot ever needed now (the pool's size in slots).
    pub fn end(&self) -> u64 {
        self.end
    }

    /// Slots currently allocated.
    pub fn used(&self) -> u64 {
        self.used
    }

    fn free_total(&self) -> u64 {
        self.end - self.used
    }

    fn take(&mut self, start: u64, len: u64) {
        self.by_start.remove(&start);
        self.by_size.remove(&(len, start));
    }

    fn put(&mut self, start: u64, len: u64) {
        self.by_start.insert(start, len);
        self.by_size.insert((len, start));
    }

    /// `n` slots (n > 0) as runs `(first slot, slots)` in order of use:
    /// the smallest free run that fits; else, when enough is free in
    /// smaller runs, the largest of them (the pool never grows while it has
    /// room); else the free run at the end grown past it; else new slots at
    /// the end.
    pub fn alloc(&mut self, n: u64) -> Vec<(u64, u64)> {
        if n == 0 {
            return Vec::new();
        }
        let free = self.free_total();
        self.used += n;
        if let Some(&(len, start)) = self.by_size.range((n, 0)..).next() {
            self.take(start, len);
            if len > n {
                self.put(start + n, len - n);
            }
            return vec![(start, n)];
        }
        if free >= n {
            let mut out = Vec::new();
            let mut left = n;
            while left > 0 {
                let &(len, start) = self.by_size.iter().next_back().expect("enough free");
                self.take(start, len);
                let k = len.min(left);
                if len > k {
                    self.put(start + k, len - k);
                }
                out.push((start, k));
                left -= k;
            }
            out.sort_unstable();
            return out;
        }
        if let Some((&start, &len)) = self.by_start.iter().next_back() {
            if start + len == self.end {
                self.take(start, len);
                self.end = start + n;
                return vec![(start, n)];
            }
        }
        let start = self.end;
        self.end += n;
        vec![(start, n)]
    }

    /// Return `[start, start+len)` (allocated, len > 0); merges with free
    /// neighbours. False (and nothing changes) for a run that is not
    /// entirely allocated.
    pub fn free(&mut self, start: u64, len: u64) -> bool {
        let end = start + len;
        if len == 0 || end > self.end {
            return false;
        }
        let before = self
            .by_start
            .range(..end)
            .next_back()
            .map(|(s, l)| (*s, *l));
        if before.is_some_and(|(s, l)| s + l > start) {
            return false;
        }
        self.used -= len;
        let (mut s, mut e) = (start, end);
        if let Some((ps, pl)) = before {
            if ps + pl == start {
                self.take(ps, pl);
                s = ps;
            }
        }
        if let Some(&nl) = self.by_start.get(&end) {
            self.take(end, nl);
            e = end + nl;
        }
        self.put(s, e - s);
        true
    }

    /// Cut a free run touching the end; returns the new end if it moved.
    pub fn trim(&mut self) -> Option<u64> {
        let (&start, &len) = self.by_start.iter().next_back()?;
        if start + len != self.end {
            return None;
        }
        self.take(start, len);
        self.end = start;
        Some(start)
    }

    /// Free runs, for tests.
    #[cfg(test)]
    pub fn free_runs(&self) -> Vec<(u64, u64)> {
        self.by_start.iter().map(|(s, l)| (*s, *l)).collect()
    }
}

/// A region's pool memfd and its allocator.
pub(crate) struct Pool {
    fd: OwnedFd,
    slots: SlotAlloc,
    page: u64,
    /// Bytes the memfd is truncated to.
    size: u64,
}

impl Pool {
    pub fn new(region: &str) -> Result<Pool, (&'static str, Errno)> {
        let name = CString::new(format!("xasm-pool:{region}"))
            .map_err(|_| ("memfd_create", Errno::EINVAL))?;
        let fd = sys::memfd_create(&name).map_err(|e| ("memfd_create", e))?;
        Ok(Pool {
            fd,
            slots: SlotAlloc::default(),
            page: sys::page_size() as u64,
            size: 0,
        })
    }

    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// Allocate `n` slots, growing the file when needed.
    pub fn alloc(&mut self, n: u64) -> Result<Vec<(u64, u64)>, (&'static str, Errno)> {
        let runs = self.slots.alloc(n);
        let need = self.slots.end() * self.page;
        if need > self.size {
            if let Err(e) = sys::ftruncate(self.fd.as_fd(), need) {
                for (s, l) in &runs {
                    self.slots.free(*s, *l);
                }
                self.slots.trim();
                return Err(("ftruncate", e));
            }
            self.size = need;
        }
        Ok(runs)
    }

    /// Copy memory parts `(address, bytes)`, back to back, into the slots
    /// from `slot` on. The caller guarantees the parts are readable and
    /// quiescent.
    pub fn write(&self, slot: u64, parts: &[(usize, usize)]) -> Result<(), (&'static str, Errno)> {
        sys::pwritev_mem(self.fd.as_fd(), slot * self.page, parts).map_err(|e| ("pwritev", e))
    }

    /// Free slots: punch their memory, cut a free tail off the file.
    pub fn free(&mut self, start: u64, len: u64) -> Result<(), (&'static str, Errno)> {
        if !self.slots.free(start, len) {
            return Err(("free slots", Errno::EINVAL));
        }
        sys::punch_hole(self.fd.as_fd(), start * self.page, len * self.page)
            .map_err(|e| ("fallocate(PUNCH_HOLE)", e))?;
        if let Some(end) = self.slots.trim() {
            // Best effort: a longer file only costs address space.
            if sys::ftruncate(self.fd.as_fd(), end * self.page).is_ok() {
                self.size = end * self.page;
            }
        }
        Ok(())
    }

    /// (file size, resident bytes, allocated bytes).
    pub fn usage(&self) -> (u64, u64, u64) {
        let (size, resident) = sys::file_usage(self.fd.as_fd()).unwrap_or((self.size, 0));
        (size, resident, self.slots.used() * self.page)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Every slot below `end` is in exactly one of: allocated, a free run;
    /// free runs are disjoint, non-adjacent and indexed twice consistently.
    fn check(a: &SlotAlloc, allocated: &[(u64, u64)]) {
        let mut owner = vec![0u8; a.end() as usize];
        for (s, l) in allocated {
            for i in *s..s + l {
                assert_eq!(owner[i as usize], 0, "slot {i} allocated twice");
                owner[i as usize] = 1;
            }
        }
        let runs = a.free_runs();
        for w in runs.windows(2) {
            assert!(w[0].0 + w[0].1 < w[1].0, "free runs {w:?} overlap or touch");
        }
        for (s, l) in &runs {
            assert!(*l > 0);
            assert!(a.by_size.contains(&(*l, *s)));
            for i in *s..s + l {
                assert_eq!(owner[i as usize], 0, "slot {i} both free and allocated");
                owner[i as usize] = 2;
            }
        }
        assert_eq!(a.by_size.len(), runs.len());
        assert!(
            owner.iter().all(|o| *o != 0),
            "a slot below end is neither free nor allocated"
        );
        assert_eq!(a.used(), allocated.iter().map(|(_, l)| l).sum::<u64>());
    }

    #[test]
    fn prefers_one_run_and_reuses_freed_slots() {
        let mut a = SlotAlloc::default();
        assert_eq!(a.alloc(4), vec![(0, 4)]);
        assert_eq!(a.alloc(4), vec![(4, 4)]);
        assert!(a.free(0, 4));
        // Best fit reuses the hole.
        assert_eq!(a.alloc(3), vec![(0, 3)]);
        // Too big for the 1-slot hole: at the end.
        assert_eq!(a.alloc(2), vec![(8, 2)]);
        assert!(a.free(8, 2));
        assert_eq!(a.trim(), Some(8));
        // A free run at the end (slots 3..8, merged) grows.
        assert!(a.free(4, 4));
        assert_eq!(a.alloc(6), vec![(3, 6)]);
        assert_eq!(a.end(), 9);
        assert!(!a.free(4, 7), "past the end");
        assert!(a.free(3, 1));
        assert!(!a.free(3, 1), "already free");
    }

    #[test]
    fn uses_pieces_when_enough_is_free_in_holes() {
        let mut a = SlotAlloc::default();
        a.alloc(10);
        for s in [0, 3, 6] {
            assert!(a.free(s, 2));
        }
        assert_eq!(a.alloc(5), vec![(0, 1), (3, 2), (6, 2)]);
        assert_eq!(a.end(), 10);
    }

    proptest! {
        #[test]
        fn alloc_free_invariants(ops in proptest::collection::vec((any::<bool>(), 1u64..20, any::<prop::sample::Index>()), 1..200)) {
            let mut a = SlotAlloc::default();
            let mut allocated: Vec<(u64, u64)> = Vec::new();
            for (is_alloc, n, pick) in ops {
                if is_alloc || allocated.is_empty() {
                    let (end, before_free) = (a.end(), a.end() - a.used());
                    let runs = a.alloc(n);
                    prop_assert_eq!(runs.iter().map(|(_, l)| l).sum::<u64>(), n);
                    // Never grows the pool while enough is free.
                    if before_free >= n {
                        prop_assert_eq!(a.end(), end);
                    } else {
                        prop_assert!(a.end() <= end + n);
                    }
                    allocated.extend(runs);
                } else {
                    // Free a random part of a random allocated run.
                    let i = pick.index(allocated.len());
                    let (s, l) = allocated.swap_remove(i);
                    let k = 1 + (n - 1) % l;
                    prop_assert!(a.free(s, k));
                    if k < l {
                        allocated.push((s + k, l - k));
                    }
                    prop_assert!(!a.free(s, k), "double free refused");
                    a.trim();
                }
                check(&a, &allocated);
            }
        }
    }

    #[test]
    fn pool_punches_and_trims() {
        let mut p = Pool::new("unit").unwrap();
        let page = p.page;
        let runs = p.alloc(8).unwrap();
        assert_eq!(runs, vec![(0, 8)]);
        let data = vec![7u8; (8 * page) as usize];
        p.write(0, &[(data.as_ptr() as usize, data.len())]).unwrap();
        let (size, resident, allocated) = p.usage();
        assert_eq!((size, allocated), (8 * page, 8 * page));
        assert!(resident >= 8 * page);
        p.free(2, 2).unwrap();
        let (_, resident, _) = p.usage();
        assert!(resident <= 6 * page + page, "punched: {resident}");
        p.free(4, 4).unwrap();
        // Slots 2..8 are free: the file is cut to 2 slots.
        let (size, resident, allocated) = p.usage();
        assert_eq!((size, allocated), (2 * page, 2 * page));
        assert!(resident <= 3 * page);
        assert!(p.free(4, 1).is_err());
    }
}
