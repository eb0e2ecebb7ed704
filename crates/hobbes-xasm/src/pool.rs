//! The pool: one sparse memfd per region holding the published copies of
//! pages, in page *slots*. Slots are handed out by an allocator of free
//! runs; freed runs are hole-punched, so the pool uses exactly the memory
//! of its live slots, and a free tail is cut off with `ftruncate`.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::mpsc;
use std::thread::JoinHandle;

use nix::errno::Errno;

use hobbes_sys::mem::Advice;
use hobbes_sys::{Mapping, MemfdFlags, Prot};

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

    /// `n` contiguous slots (n > 0): the smallest free run that fits, else
    /// the free run at the end grown past it, else new slots at the end.
    pub fn alloc_run(&mut self, n: u64) -> u64 {
        self.used += n;
        if let Some(&(len, start)) = self.by_size.range((n, 0)..).next() {
            self.take(start, len);
            if len > n {
                self.put(start + n, len - n);
            }
            return start;
        }
        if let Some((&start, &len)) = self.by_start.iter().next_back() {
            if start + len == self.end {
                self.take(start, len);
                self.end = start + n;
                return start;
            }
        }
        let start = self.end;
        self.end += n;
        start
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
    #[cfg(test)]
    pub fn trim(&mut self) -> Option<u64> {
        self.trim_to(0)
    }

    /// Cut a free run touching the end, but not below `floor`; returns the
    /// new end if it moved.
    pub fn trim_to(&mut self, floor: u64) -> Option<u64> {
        let (&start, &len) = self.by_start.iter().next_back()?;
        let cut = start.max(floor);
        if start + len != self.end || cut >= self.end {
            return None;
        }
        self.take(start, len);
        if cut > start {
            self.put(start, cut - start);
        }
        self.end = cut;
        Some(cut)
    }

    /// The free parts of `[start, start+len)`.
    pub fn free_parts(&self, start: u64, len: u64) -> Vec<(u64, u64)> {
        let end = start + len;
        let first = self
            .by_start
            .range(..=start)
            .next_back()
            .map(|(s, _)| *s)
            .unwrap_or(start);
        self.by_start
            .range(first..end)
            .filter_map(|(&s, &l)| {
                let (a, b) = (s.max(start), (s + l).min(end));
                (a < b).then(|| (a, b - a))
            })
            .collect()
    }

    /// Allocate exactly `[start, start+len)`, which must be free.
    pub fn take_range(&mut self, start: u64, len: u64) -> bool {
        let Some((&s, &l)) = self.by_start.range(..=start).next_back() else {
            return false;
        };
        if len == 0 || s + l < start + len {
            return false;
        }
        self.take(s, l);
        if start > s {
            self.put(s, start - s);
        }
        if s + l > start + len {
            self.put(start + len, s + l - start - len);
        }
        self.used += len;
        true
    }

    /// Free runs, for tests.
    #[cfg(test)]
    pub fn free_runs(&self) -> Vec<(u64, u64)> {
        self.by_start.iter().map(|(s, l)| (*s, *l)).collect()
    }
}

/// The 64-slot words of a bitset covering slots `[slot, slot+len)`, each
/// with the mask of those slots in it.
fn bit_words(slot: u64, len: u64) -> impl Iterator<Item = (usize, u64)> {
    let end = slot + len;
    let mut s = slot;
    std::iter::from_fn(move || {
        if s >= end {
            return None;
        }
        let (word, bit) = (s / 64, s % 64);
        let n = (64 - bit).min(end - s);
        let mask = if n == 64 {
            u64::MAX
        } else {
            ((1u64 << n) - 1) << bit
        };
        s += n;
        Some((word as usize, mask))
    })
}

/// Slots handed out by [`Pool::alloc`]: `[slot, slot+len)`, and what is
/// known of their pages (which decides how [`Pool::write`] copies).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Piece {
    pub slot: u64,
    pub len: u64,
    pub pages: Pages,
}

/// What is known of a piece's pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pages {
    /// They exist (kept slots, a frame): mapped in the window first if they
    /// are not, then a memcpy.
    Existing,
    /// New or punched: `pwrite` allocates them without zeroing them first
    /// (mapping them would).
    Fresh,
}

/// A region's pool memfd, its allocator, and the producer's read-write
/// window on it.
///
/// Freed slots are not punched at once: they are *kept* until the end of
/// the next snapshot, which reuses them first (overwriting pages that exist
/// costs a copy; a punched page must be allocated again). Whatever that
/// snapshot did not reuse is then handed to the [`Puncher`] thread, and its
/// slots return to the allocator once punched. So the pool holds the live
/// slots plus about the slots freed by the latest reclaim.
///
/// How a piece is written depends on its pages ([`Pages`]). Into pages
/// that exist the copy goes through the window, a memcpy; the pool knows
/// which slots' pages are mapped there (`mapped`), and maps the others
/// first, all of a piece in one `MADV_POPULATE_WRITE`, after which they
/// stay mapped for their next reuse. New or punched pages are written with
/// `pwrite`, which allocates them without zeroing them (mapping them
/// would). Measured at 10% of 1 GiB written in 64-page runs, per page: a
/// memcpy into pages not mapped took a fault each (1.7 µs), `pwrite` into
/// existing pages 1.3 µs, populate and memcpy about 1 µs, a memcpy into
/// mapped pages 0.8 µs.
pub(crate) struct Pool {
    fd: OwnedFd,
    slots: SlotAlloc,
    page: u64,
    /// Bytes the memfd is truncated to.
    size: u64,
    /// Free slots kept for reuse by the current snapshot.
    kept: BTreeMap<u64, u64>,
    /// Slots freed since: kept for the next one.
    kept_next: Vec<(u64, u64)>,
    /// `MAP_SHARED` read-write mapping of the pool from offset 0.
    window: Option<Mapping>,
    /// The region's length, which sizes the window.
    region_len: u64,
    /// Per slot, a bit: its page is mapped in the window (written through
    /// it since the window was mapped, and not punched since).
    mapped: Vec<u64>,
    /// Punches the slots a snapshot did not reuse, off its path.
    puncher: Option<Puncher>,
}

/// A thread punching holes in the pool file. `rotate` hands it the kept
/// slots a snapshot did not reuse, reserved in the allocator so that no
/// copy lands in them meanwhile; they are freed when it hands them back.
/// Punching is the kernel freeing the pages: after a snapshot that
/// compacted, 100,000 of them took up to 45 ms of the next snapshot.
struct Puncher {
    todo: Option<mpsc::Sender<Vec<(u64, u64)>>>,
    done: mpsc::Receiver<Punched>,
    thread: Option<JoinHandle<()>>,
    /// Batches handed out and not back yet.
    in_flight: usize,
}

/// Slot runs punched (or not: the first error).
type Punched = (Vec<(u64, u64)>, Option<Errno>);

impl Puncher {
    fn start(fd: OwnedFd, page: u64) -> std::io::Result<Puncher> {
        let (todo, jobs) = mpsc::channel::<Vec<(u64, u64)>>();
        let (finished, done) = mpsc::channel::<Punched>();
        let thread = std::thread::Builder::new()
            .name("xasm-punch".into())
            .spawn(move || {
                for batch in jobs {
                    let mut error = None;
                    for &(s, l) in &batch {
                        if let Err(e) = hobbes_sys::punch_hole(fd.as_fd(), s * page, l * page) {
                            error.get_or_insert(e);
                        }
                    }
                    if finished.send((batch, error)).is_err() {
                        return;
                    }
                }
            })?;
        Ok(Puncher {
            todo: Some(todo),
            done,
            thread: Some(thread),
            in_flight: 0,
        })
    }
}

impl Drop for Puncher {
    fn drop(&mut self) {
        // It finishes what it has, then sees the channel closed.
        self.todo = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Pool {
    /// A pool for the versions of a region of `region_len` bytes: a file in
    /// the daemon's huge-page tmpfs where the node has one (a first snapshot
    /// copies the whole region in, a huge page at a time), else a memfd.
    pub fn new(region: &str, region_len: u64) -> Result<Pool, (&'static str, Errno)> {
        let name = CString::new(format!("xasm-pool:{region}"))
            .map_err(|_| ("memfd_create", Errno::EINVAL))?;
        let fd = match hobbes_xemem::new_segment_file(&name, region_len as usize) {
            Ok((fd, _)) => fd,
            Err(_) => hobbes_sys::memfd_create(&name, MemfdFlags::empty())
                .map_err(|e| ("memfd_create", e))?,
        };
        Ok(Pool {
            fd,
            slots: SlotAlloc::default(),
            page: hobbes_sys::page_size() as u64,
            size: 0,
            kept: BTreeMap::new(),
            kept_next: Vec::new(),
            window: None,
            region_len,
            mapped: Vec::new(),
            puncher: None,
        })
    }

    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// Allocate `n` slots: kept slots first, then the allocator's; grows
    /// the file (and the window) when needed.
    pub fn alloc(&mut self, n: u64) -> Result<Vec<Piece>, (&'static str, Errno)> {
        let mut out = Vec::new();
        let mut left = n;
        while left > 0 {
            let Some((&s, &l)) = self.kept.iter().next() else {
                break;
            };
            self.kept.remove(&s);
            for (fs, fl) in self.slots.free_parts(s, l) {
                let k = fl.min(left);
                if k > 0 && self.slots.take_range(fs, k) {
                    out.push(Piece {
                        slot: fs,
                        len: k,
                        pages: Pages::Existing,
                    });
                    left -= k;
                }
                if fl > k {
                    self.kept.insert(fs + k, fl - k);
                }
            }
        }
        out.extend(self.slots.alloc(left).into_iter().map(|(slot, len)| Piece {
            slot,
            len,
            pages: Pages::Fresh,
        }));
        if let Err(e) = self.fit() {
            for p in &out {
                let _ = self.free(p.slot, p.len);
            }
            return Err(e);
        }
        Ok(out)
    }

    /// `n` contiguous slots (a frame), from the allocator (kept slots are
    /// scattered); grows the file (and the window) when needed.
    pub fn alloc_run(&mut self, n: u64) -> Result<Piece, (&'static str, Errno)> {
        let slot = self.slots.alloc_run(n);
        if let Err(e) = self.fit() {
            let _ = self.free(slot, n);
            return Err(e);
        }
        Ok(Piece {
            slot,
            len: n,
            pages: Pages::Fresh,
        })
    }

    /// Grow the file and the window to the allocator's end.
    fn fit(&mut self) -> Result<(), (&'static str, Errno)> {
        let need = self.slots.end() * self.page;
        if need > self.size {
            hobbes_sys::ftruncate(self.fd.as_fd(), need).map_err(|e| ("ftruncate", e))?;
            self.size = need;
        }
        if need as usize > self.window.as_ref().map_or(0, Mapping::len) {
            // Pages past the end of the file are never touched, so address
            // space is all a large window costs; a new one loses every page
            // mapped in the old (faults again), so make it rare: room for
            // four copies of the region (two frames per chunk and the
            // versions' pages), or twice what is needed now.
            let len = (need as usize * 2)
                .max(self.region_len as usize * 4)
                .max(16 << 20);
            let w = Mapping::shared(self.fd.as_fd(), len, 0, Prot::ReadWrite)
                .map_err(|e| ("mmap(pool)", e))?;
            self.window = Some(w);
            self.mapped.clear();
        }
        Ok(())
    }

    /// Copy `parts`, back to back, into `piece`'s slots.
    pub fn write(&mut self, piece: &Piece, parts: &[&[u8]]) -> Result<(), (&'static str, Errno)> {
        let at = piece.slot * self.page;
        let through_window = match piece.pages {
            Pages::Existing => {
                self.all_mapped(piece.slot, piece.len) || self.populate(piece.slot, piece.len)
            }
            Pages::Fresh => false,
        };
        if through_window {
            // `fit` made the window cover every allocated slot.
            let window = self.window.as_mut().ok_or(("pool window", Errno::EINVAL))?;
            let mut dst = &mut window.as_mut_slice()[at as usize..];
            for part in parts {
                let (head, rest) = dst.split_at_mut(part.len());
                head.copy_from_slice(part);
                dst = rest;
            }
            return Ok(());
        }
        // New pages, or the window could not map them: pwritev.
        hobbes_sys::pwrite_all_vectored(self.fd.as_fd(), at, parts).map_err(|e| ("pwritev", e))
    }

    /// Whether slots `[slot, slot+len)` are all mapped in the window.
    pub fn all_mapped(&self, slot: u64, len: u64) -> bool {
        bit_words(slot, len).all(|(w, mask)| self.mapped.get(w).is_some_and(|b| b & mask == mask))
    }

    /// Mark slots `[slot, slot+len)` mapped in the window or not.
    fn set_mapped(&mut self, slot: u64, len: u64, on: bool) {
        if on {
            let words = (slot + len).div_ceil(64) as usize;
            if self.mapped.len() < words {
                self.mapped.resize(words, 0);
            }
        }
        for (w, mask) in bit_words(slot, len) {
            if let Some(b) = self.mapped.get_mut(w) {
                if on {
                    *b |= mask;
                } else {
                    *b &= !mask;
                }
            }
        }
    }

    /// Map slots `[slot, slot+len)` into the window in one call; whether
    /// they are now.
    fn populate(&mut self, slot: u64, len: u64) -> bool {
        let Some(w) = &self.window else {
            return false;
        };
        let (at, n) = ((slot * self.page) as usize, (len * self.page) as usize);
        if at + n > w.len()
            || hobbes_sys::mem::advise(w.addr() + at, n, Advice::PopulateWrite).is_err()
        {
            return false;
        }
        self.set_mapped(slot, len, true);
        true
    }

    /// Map slots `[slot, slot+len)` (allocated) into the window now, in one
    /// call: copying into them later through the window then costs no
    /// fault per page, nor a mapping call per piece. Holds until the
    /// window is mapped anew or the slots are punched (`mapped`). Best
    /// effort: without it each piece is mapped as it is written.
    pub fn map_into_window(&mut self, slot: u64, len: u64) {
        if !self.all_mapped(slot, len) {
            self.populate(slot, len);
        }
    }

    /// Free slots (kept for reuse until the snapshot after next).
    pub fn free(&mut self, start: u64, len: u64) -> Result<(), (&'static str, Errno)> {
        if !self.slots.free(start, len) {
            return Err(("free slots", Errno::EINVAL));
        }
        self.kept_next.push((start, len));
        Ok(())
    }

    /// End of a snapshot: punch the kept slots it did not reuse, keep the
    /// ones freed meanwhile for the next, cut a free tail off the file.
    pub fn rotate(&mut self) -> Result<(), (&'static str, Errno)> {
        let mut result = self.take_punched(false);
        let mut batch = Vec::new();
        for (s, l) in std::mem::take(&mut self.kept) {
            for (fs, fl) in self.slots.free_parts(s, l) {
                // Punching unmaps the pages everywhere, the window too.
                self.set_mapped(fs, fl, false);
                if self.slots.take_range(fs, fl) {
                    batch.push((fs, fl));
                }
            }
        }
        if !batch.is_empty() {
            if let Err(e) = self.punch(batch) {
                result = Err(e);
            }
        }
        // Keep the slots freed meanwhile: the next snapshot reuses them.
        let floor = self.kept_next.iter().map(|(s, l)| s + l).max().unwrap_or(0);
        if let Some(end) = self.slots.trim_to(floor) {
            // Best effort: a longer file only costs address space.
            if hobbes_sys::ftruncate(self.fd.as_fd(), end * self.page).is_ok() {
                self.size = end * self.page;
                // The pages past the end are gone, from the window too.
                let bits = self.mapped.len() as u64 * 64;
                if bits > end {
                    self.set_mapped(end, bits - end, false);
                }
                self.mapped.truncate(end.div_ceil(64) as usize);
            }
        }
        let end = self.slots.end();
        for (s, l) in std::mem::take(&mut self.kept_next) {
            if s < end {
                self.kept.insert(s, l.min(end - s));
            }
        }
        result
    }

    /// Hand the reserved slot runs `batch` to the puncher (started at the
    /// first); punch them here if it cannot take them.
    fn punch(&mut self, batch: Vec<(u64, u64)>) -> Result<(), (&'static str, Errno)> {
        if self.puncher.is_none() {
            if let Ok(fd) = self.fd.try_clone() {
                self.puncher = Puncher::start(fd, self.page).ok();
            }
        }
        let batch = match self
            .puncher
            .as_mut()
            .and_then(|p| p.todo.as_ref().map(|t| (t, &mut p.in_flight)))
        {
            Some((todo, in_flight)) => match todo.send(batch) {
                Ok(()) => {
                    *in_flight += 1;
                    return Ok(());
                }
                Err(mpsc::SendError(batch)) => batch,
            },
            None => batch,
        };
        let mut result = Ok(());
        for (s, l) in batch {
            if let Err(e) = hobbes_sys::punch_hole(self.fd.as_fd(), s * self.page, l * self.page) {
                result = Err(("fallocate(PUNCH_HOLE)", e));
            }
            self.slots.free(s, l);
        }
        result
    }

    /// Free the slots the puncher has punched: those it handed back
    /// already, or (`wait`) all it was given.
    fn take_punched(&mut self, wait: bool) -> Result<(), (&'static str, Errno)> {
        let mut result = Ok(());
        let Some(p) = self.puncher.as_mut() else {
            return result;
        };
        while p.in_flight > 0 {
            let next = if wait {
                p.done.recv().ok()
            } else {
                p.done.try_recv().ok()
            };
            let Some((batch, error)) = next else {
                if wait {
                    // The thread is gone (it cannot be, short of a panic):
                    // its slots stay reserved, address space only.
                    p.in_flight = 0;
                }
                break;
            };
            p.in_flight -= 1;
            if let Some(e) = error {
                result = Err(("fallocate(PUNCH_HOLE)", e));
            }
            for (s, l) in batch {
                self.slots.free(s, l);
            }
        }
        result
    }

    /// Wait until every slot handed to the puncher is punched and free.
    #[cfg(test)]
    pub fn settle(&mut self) {
        let _ = self.take_punched(true);
    }

    /// (file size, resident bytes, allocated bytes, kept bytes).
    pub fn usage(&self) -> (u64, u64, u64, u64) {
        let (size, resident) = hobbes_sys::file_usage(self.fd.as_fd()).unwrap_or((self.size, 0));
        let kept: u64 = self
            .kept
            .values()
            .copied()
            .chain(self.kept_next.iter().map(|(_, l)| *l))
            .sum();
        (
            size,
            resident,
            self.slots.used() * self.page,
            kept * self.page,
        )
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
    fn alloc_run_is_one_contiguous_run() {
        let mut a = SlotAlloc::default();
        let runs = a.alloc(10);
        assert_eq!(runs, vec![(0, 10)]);
        assert!(a.free(2, 2) && a.free(6, 3));
        // Neither hole fits 4: the run comes from the end.
        assert_eq!(a.alloc_run(4), 10);
        assert_eq!(a.alloc_run(3), 6);
        check(&a, &[(0, 2), (4, 2), (6, 3), (9, 1), (10, 4)]);
        assert!(a.free(10, 4));
        // A free run at the end grows.
        assert_eq!(a.alloc_run(6), 10);
        assert_eq!(a.end(), 16);
    }

    #[test]
    fn take_range_and_free_parts() {
        let mut a = SlotAlloc::default();
        a.alloc(10);
        assert!(a.free(2, 6));
        assert_eq!(a.free_parts(0, 10), vec![(2, 6)]);
        assert_eq!(a.free_parts(3, 2), vec![(3, 2)]);
        assert!(a.take_range(4, 2));
        assert_eq!(a.free_runs(), vec![(2, 2), (6, 2)]);
        assert!(!a.take_range(3, 2), "slot 4 is taken");
        check(&a, &[(0, 2), (4, 2), (8, 2)]);
    }

    #[test]
    fn a_forked_child_drops_the_pool_without_waiting_for_the_puncher() {
        use nix::sys::wait::{waitpid, WaitStatus};
        use nix::unistd::ForkResult;
        let mut p = Pool::new("unit-fork", 0).unwrap();
        let piece = p.alloc(4).unwrap()[0];
        p.write(&piece, &[&vec![1u8; (4 * p.page) as usize]])
            .unwrap();
        p.free(piece.slot, 4).unwrap();
        // Kept through one rotation, handed to the puncher at the next.
        p.rotate().unwrap();
        p.rotate().unwrap();
        assert!(p.puncher.is_some());
        // SAFETY: the child only drops the pool (glibc's malloc is usable
        // after fork) and leaves with _exit, running nothing else.
        match unsafe { nix::unistd::fork() }.unwrap() {
            ForkResult::Child => {
                drop(p);
                // SAFETY: ends the child at once, as intended.
                unsafe { libc::_exit(0) }
            }
            ForkResult::Parent { child } => {
                // The child has the thread's handle but not the thread:
                // dropping the pool there joins it, which must not hang.
                use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
                use std::os::fd::AsFd;
                let pidfd = hobbes_sys::process::pidfd_open(child.as_raw() as u32).unwrap();
                let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
                let exited = poll(&mut fds, PollTimeout::from(20_000u16)).unwrap() == 1;
                if !exited {
                    let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
                }
                let status = waitpid(child, None).unwrap();
                assert!(exited, "the child hung dropping the pool");
                assert_eq!(status, WaitStatus::Exited(child, 0));
            }
        }
        p.settle();
    }

    #[test]
    fn pool_keeps_freed_slots_for_one_snapshot_then_punches() {
        let mut p = Pool::new("unit", 0).unwrap();
        let page = p.page;
        let runs = p.alloc(8).unwrap();
        assert_eq!(
            runs,
            vec![Piece {
                slot: 0,
                len: 8,
                pages: Pages::Fresh
            }]
        );
        let data = vec![7u8; (8 * page) as usize];
        p.write(&runs[0], &[&data]).unwrap();
        let (size, resident, allocated, kept) = p.usage();
        assert_eq!((size, allocated, kept), (8 * page, 8 * page, 0));
        assert!(resident >= 8 * page);
        // Freed: kept (still allocated) through the next rotation...
        p.free(2, 2).unwrap();
        p.rotate().unwrap();
        p.settle();
        let (_, resident, allocated, kept) = p.usage();
        assert_eq!((allocated, kept), (6 * page, 2 * page));
        assert!(resident >= 8 * page);
        // ...reused first.
        let again = p.alloc(1).unwrap();
        assert_eq!(
            again,
            vec![Piece {
                slot: 2,
                len: 1,
                pages: Pages::Existing
            }]
        );
        let one = vec![9u8; page as usize];
        p.write(&again[0], &[&one]).unwrap();
        let mut back = vec![0u8; page as usize];
        nix::sys::uio::pread(p.fd.as_fd(), &mut back, (2 * page) as i64).unwrap();
        assert_eq!(back, one);
        // Existing pages are written through the window: mapped there now
        // (the first eight, new, were written with pwrite).
        assert!(p.all_mapped(2, 1) && !p.all_mapped(0, 2));
        // The rest is punched at the next rotation, and no longer counts
        // as mapped.
        p.rotate().unwrap();
        p.settle();
        let (_, resident, allocated, kept) = p.usage();
        assert_eq!((allocated, kept), (7 * page, 0));
        assert!(resident <= 7 * page, "slot 3 punched: {resident}");
        assert!(p.all_mapped(2, 1) && !p.all_mapped(3, 1));
        // A free tail (slots 3..8) is cut off the file, once its kept
        // slots (4..8) were not reused and are punched (at the rotation
        // after they were handed to the puncher).
        p.free(4, 4).unwrap();
        p.rotate().unwrap();
        p.settle();
        assert_eq!(p.usage().0, 8 * page);
        p.rotate().unwrap();
        p.settle();
        assert_eq!(p.usage().0, 8 * page);
        p.rotate().unwrap();
        let (size, resident, allocated, _) = p.usage();
        assert_eq!((size, allocated), (3 * page, 3 * page));
        assert!(resident <= 3 * page);
        assert!(p.free(4, 1).is_err());
    }
}
