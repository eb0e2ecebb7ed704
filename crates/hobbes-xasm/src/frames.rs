//! Frames: whole-chunk copies of the region in the pool, kept after no
//! version uses them so that compaction can *refresh* them instead of
//! copying a chunk afresh.
//!
//! Compaction rewrites a 2 MiB chunk of the region into one contiguous run
//! of slots (one extent). Copied afresh that is 512 pages, however few were
//! written: with single pages written at random, keeping the extent count
//! bounded then costs most of the region every snapshot. But the run of
//! slots the chunk was compacted into *last time* holds the chunk as it was
//! then; once no live version uses it, bringing it up to date only needs the
//! pages written since. A frame is such a run: `len` slots holding chunk
//! `chunk` of the region as of version `content`.
//!
//! The ledger frees a frame's slots piece by piece as later versions
//! replace its pages and the versions that used them are reclaimed. While
//! frames are *held* those pieces stay allocated (the pool does not reuse
//! or punch them); when the last piece is freed the frame is *retired*:
//! intact, used by nobody, ready to be refreshed. At most
//! `RETIRED_PER_CHUNK` retired frames are kept per chunk (those with the
//! newest contents), and only for `RETIRED_TTL` snapshots. When frames are not held (the region is not
//! fragmented) freed pieces go back to the pool at once, as for any slot.

use std::collections::BTreeMap;

/// Snapshots a retired frame is kept without being refreshed.
pub(crate) const RETIRED_TTL: u64 = 32;
/// Retired frames kept per chunk. Refreshing every snapshot needs one;
/// the second serves the snapshots after a consumer let go of a version it
/// held (which pinned a frame of every chunk meanwhile), so that the next
/// hold finds a frame to refresh instead of copying each chunk afresh.
pub(crate) const RETIRED_PER_CHUNK: usize = 2;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Frame {
    chunk: u64,
    len: u64,
    /// The version whose contents the frame holds.
    content: u64,
    /// Pieces the ledger freed while the frame was held.
    freed: Vec<(u64, u64)>,
    freed_pages: u64,
    /// The version at which the frame retired (all pieces freed).
    retired_at: Option<u64>,
    /// Handed out for a refresh (`take_retired`), to be registered again
    /// where it is.
    taken: bool,
}

#[derive(Debug, Default)]
pub(crate) struct Frames {
    /// First slot -> frame; frames never overlap.
    by_slot: BTreeMap<u64, Frame>,
    /// Per chunk: its retired frames (at most `RETIRED_PER_CHUNK`), as
    /// (first slot, content version). An array by chunk, not a map: a
    /// snapshot asks about every chunk it writes, and with the caches cold
    /// each map lookup was a chain of misses.
    retired: Vec<[Option<(u64, u64)>; RETIRED_PER_CHUNK]>,
    holding: bool,
}

/// A retired frame handed out for a refresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Retired {
    pub slot: u64,
    pub len: u64,
    pub content: u64,
}

impl Frames {
    /// Slots `[slot, slot+len)` now hold chunk `chunk` as of `version`
    /// (written by a copy of the whole chunk, or a refresh).
    pub fn register(&mut self, slot: u64, len: u64, chunk: u64, version: u64) {
        let frame = Frame {
            chunk,
            len,
            content: version,
            freed: Vec::new(),
            freed_pages: 0,
            retired_at: None,
            taken: false,
        };
        // A refreshed frame is renewed where it is: one lookup, where
        // taking it out and putting it back cost two changes of the map.
        if let Some(f) = self.by_slot.get_mut(&slot) {
            if f.taken && f.len == len && f.chunk == chunk {
                *f = frame;
                return;
            }
        }
        debug_assert!(self.overlapping(slot, len).is_empty());
        self.by_slot.insert(slot, frame);
    }

    /// A frame handed out by `take_retired` that will not be registered
    /// again (its refresh failed): forget it. Its slots are the caller's.
    pub fn forget_taken(&mut self, slot: u64) {
        if self.by_slot.get(&slot).is_some_and(|f| f.taken) {
            self.by_slot.remove(&slot);
        }
    }

    /// Whether freed frame pieces are held (see the module comment).
    pub fn holding(&self) -> bool {
        self.holding
    }

    /// Start or stop holding. Stopping returns every held piece, to be
    /// freed in the pool, and forgets all frames.
    #[must_use]
    pub fn set_holding(&mut self, on: bool) -> Vec<(u64, u64)> {
        self.holding = on;
        if on {
            return Vec::new();
        }
        let mut out = Vec::new();
        for (_, f) in std::mem::take(&mut self.by_slot) {
            out.extend(f.freed);
        }
        self.retired
            .iter_mut()
            .for_each(|r| *r = [None; RETIRED_PER_CHUNK]);
        out.sort_unstable();
        out
    }

    /// First slots of the frames overlapping `[slot, slot+len)`.
    fn overlapping(&self, slot: u64, len: u64) -> Vec<u64> {
        let end = slot + len;
        // Frames do not overlap: only the last one starting before `slot`
        // can reach into the range, and every one starting inside it does.
        let before = self
            .by_slot
            .range(..slot)
            .next_back()
            .filter(|(s, f)| *s + f.len > slot)
            .map(|(s, _)| *s);
        before
            .into_iter()
            .chain(self.by_slot.range(slot..end).map(|(s, _)| *s))
            .collect()
    }

    /// Slot runs the ledger freed at version `now`: pieces of frames are
    /// held (when holding) and the rest returned, to be freed in the pool.
    /// A frame whose last piece this frees retires.
    #[must_use]
    pub fn absorb(&mut self, freed: &[(u64, u64)], now: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        for &(slot, len) in freed {
            let mut at = slot;
            let end = slot + len;
            for fs in self.overlapping(slot, len) {
                let Some(f) = self.by_slot.get_mut(&fs) else {
                    continue;
                };
                let (s, e) = (fs.max(at), (fs + f.len).min(end));
                if s > at {
                    out.push((at, s - at));
                }
                if self.holding {
                    f.freed.push((s, e - s));
                    f.freed_pages += e - s;
                    if f.freed_pages >= f.len {
                        out.extend(self.retire(fs, now));
                    }
                } else {
                    // Not holding: the frame is broken up like any run.
                    out.push((s, e - s));
                    if let Some(f) = self.by_slot.remove(&fs) {
                        out.extend(f.freed);
                    }
                }
                at = e;
            }
            if at < end {
                out.push((at, end - at));
            }
        }
        out.sort_unstable();
        out
    }

    /// Frame `fs` is wholly free: keep it among its chunk's retired frames
    /// (the newest contents win); returns what that pushes out.
    fn retire(&mut self, fs: u64, now: u64) -> Vec<(u64, u64)> {
        let Some(f) = self.by_slot.get_mut(&fs) else {
            return Vec::new();
        };
        f.retired_at = Some(now);
        let (chunk, content) = (f.chunk as usize, f.content);
        if self.retired.len() <= chunk {
            self.retired.resize(chunk + 1, [None; RETIRED_PER_CHUNK]);
        }
        let list = &mut self.retired[chunk];
        if let Some(free) = list.iter_mut().find(|r| r.is_none()) {
            *free = Some((fs, content));
            return Vec::new();
        }
        // Full: the oldest contents give way (this one, if it is older).
        let oldest = list
            .iter()
            .flatten()
            .copied()
            .chain([(fs, content)])
            .min_by_key(|&(_, c)| c)
            .map_or(fs, |(s, _)| s);
        if oldest != fs {
            let pushed_out = self.drop_frame(oldest);
            if let Some(free) = self.retired[chunk].iter_mut().find(|r| r.is_none()) {
                *free = Some((fs, content));
            }
            return pushed_out;
        }
        self.by_slot
            .remove(&fs)
            .map_or(Vec::new(), |f| vec![(fs, f.len)])
    }

    /// Forget a retired frame: its whole run goes back to the pool.
    fn drop_frame(&mut self, fs: u64) -> Vec<(u64, u64)> {
        match self.by_slot.remove(&fs) {
            Some(f) => {
                self.unlist(f.chunk, fs);
                vec![(fs, f.len)]
            }
            None => Vec::new(),
        }
    }

    /// Take retired frame `fs` off chunk `chunk`'s list.
    fn unlist(&mut self, chunk: u64, fs: u64) {
        if let Some(list) = self.retired.get_mut(chunk as usize) {
            for r in list.iter_mut() {
                if r.is_some_and(|(s, _)| s == fs) {
                    *r = None;
                }
            }
        }
    }

    /// The newest retired frame of chunk `chunk`: (first slot, content).
    fn newest_retired(&self, chunk: u64) -> Option<(u64, u64)> {
        self.retired
            .get(chunk as usize)?
            .iter()
            .flatten()
            .copied()
            .max_by_key(|&(_, content)| content)
    }

    /// The version whose contents chunk `chunk`'s newest retired frame
    /// holds.
    pub fn retired_content(&self, chunk: u64) -> Option<u64> {
        self.newest_retired(chunk).map(|(_, content)| content)
    }

    /// Hand out chunk `chunk`'s newest retired frame for a refresh: its
    /// slots stay allocated; register it again once refreshed.
    pub fn take_retired(&mut self, chunk: u64) -> Option<Retired> {
        let (fs, _) = self.newest_retired(chunk)?;
        self.unlist(chunk, fs);
        let f = self.by_slot.get_mut(&fs)?;
        // Its pieces are the refresh's now, not held ones.
        f.taken = true;
        f.retired_at = None;
        f.freed.clear();
        f.freed_pages = 0;
        Some(Retired {
            slot: fs,
            len: f.len,
            content: f.content,
        })
    }

    /// Release retired frames not refreshed within `RETIRED_TTL`
    /// snapshots; returns their runs, to be freed in the pool.
    #[must_use]
    pub fn expire(&mut self, now: u64) -> Vec<(u64, u64)> {
        let old: Vec<u64> = self
            .retired
            .iter()
            .flatten()
            .flatten()
            .map(|&(fs, _)| fs)
            .filter(|fs| {
                self.by_slot
                    .get(fs)
                    .and_then(|f| f.retired_at)
                    .is_some_and(|at| now.saturating_sub(at) > RETIRED_TTL)
            })
            .collect();
        let mut out = Vec::new();
        for fs in old {
            out.extend(self.drop_frame(fs));
        }
        out
    }

    /// Pages held in retired frames (pool memory kept for refreshes).
    pub fn retired_pages(&self) -> u64 {
        self.retired
            .iter()
            .flatten()
            .flatten()
            .filter_map(|(fs, _)| self.by_slot.get(fs))
            .map(|f| f.len)
            .sum()
    }

    /// Pages of live frames held after the ledger freed them.
    pub fn held_pages(&self) -> u64 {
        self.by_slot
            .values()
            .filter(|f| f.retired_at.is_none())
            .map(|f| f.freed_pages)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn slots(runs: &[(u64, u64)]) -> Vec<u64> {
        runs.iter().flat_map(|(s, l)| *s..s + l).collect()
    }

    #[test]
    fn a_frame_retires_when_its_last_piece_is_freed() {
        let mut f = Frames::default();
        let _ = f.set_holding(true);
        f.register(100, 8, 3, 5);
        assert_eq!(f.absorb(&[(98, 4)], 6), vec![(98, 2)]);
        assert_eq!(f.retired_content(3), None);
        assert_eq!(f.held_pages(), 2);
        assert_eq!(f.absorb(&[(102, 6), (108, 1)], 7), vec![(108, 1)]);
        assert_eq!(f.retired_content(3), Some(5));
        assert_eq!(f.retired_pages(), 8);
        let r = f.take_retired(3).unwrap();
        assert_eq!((r.slot, r.len, r.content), (100, 8, 5));
        assert_eq!(f.retired_pages(), 0);
    }

    #[test]
    fn the_newest_retired_frames_per_chunk() {
        let mut f = Frames::default();
        let _ = f.set_holding(true);
        f.register(0, 4, 1, 2);
        f.register(10, 4, 1, 7);
        f.register(20, 4, 1, 5);
        assert!(f.absorb(&[(10, 4)], 8).is_empty());
        assert!(f.absorb(&[(0, 4)], 9).is_empty());
        // A third pushes out the oldest contents (version 2).
        assert_eq!(f.absorb(&[(20, 4)], 9), vec![(0, 4)]);
        assert_eq!(f.retired_content(1), Some(7));
        assert_eq!(f.retired_pages(), 8);
        assert_eq!(f.expire(8 + RETIRED_TTL), Vec::<(u64, u64)>::new());
        assert_eq!(f.expire(9 + RETIRED_TTL), vec![(10, 4)]);
        assert_eq!(f.retired_content(1), Some(5));
        assert_eq!(f.take_retired(1).map(|r| r.slot), Some(20));
        assert_eq!(f.retired_content(1), None);
    }

    #[test]
    fn without_holding_frames_break_up_like_any_run() {
        let mut f = Frames::default();
        f.register(0, 4, 0, 1);
        assert_eq!(f.absorb(&[(1, 1)], 2), vec![(1, 1)]);
        assert_eq!(f.absorb(&[(0, 1), (2, 2)], 3), vec![(0, 1), (2, 2)]);
        assert_eq!(f.retired_content(0), None);
    }

    proptest! {
        /// Whatever is freed, registered, taken, expired or released: every
        /// freed slot is returned exactly once or held, a retired frame is
        /// wholly freed, and stopping holding returns exactly what is held.
        #[test]
        fn every_freed_slot_is_returned_once_or_held(
            ops in proptest::collection::vec((0u8..6, 0u64..8, 1u64..5), 1..120),
        ) {
            const LEN: u64 = 4;
            let mut f = Frames::default();
            let _ = f.set_holding(true);
            // Slot state: allocated by the test (a frame or not), freed.
            let mut allocated: BTreeSet<u64> = BTreeSet::new();
            let mut framed: BTreeSet<u64> = BTreeSet::new();
            let mut returned: BTreeSet<u64> = BTreeSet::new();
            let mut next = 0u64;
            let mut now = 1u64;
            for (op, chunk, n) in ops {
                now += 1;
                match op {
                    0 => {
                        f.register(next, LEN, chunk, now);
                        for s in next..next + LEN { allocated.insert(s); framed.insert(s); }
                        next += LEN;
                    }
                    1 => {
                        for s in next..next + n { allocated.insert(s); }
                        next += n;
                    }
                    2 | 3 => {
                        // Free up to n allocated slots (as the ledger would).
                        let pick: Vec<u64> = allocated.iter().copied().take(n as usize).collect();
                        let runs: Vec<(u64, u64)> = pick.iter().map(|s| (*s, 1)).collect();
                        for s in &pick { allocated.remove(s); }
                        for s in slots(&f.absorb(&runs, now)) {
                            prop_assert!(returned.insert(s), "slot {} returned twice", s);
                        }
                    }
                    4 => {
                        if let Some(r) = f.take_retired(chunk) {
                            for s in r.slot..r.slot + r.len {
                                prop_assert!(!allocated.contains(&s) && !returned.contains(&s));
                                allocated.insert(s);
                            }
                            f.register(r.slot, r.len, chunk, now);
                        }
                    }
                    _ => {
                        for s in slots(&f.expire(now)) {
                            prop_assert!(returned.insert(s), "slot {} returned twice", s);
                        }
                    }
                }
                // Every slot freed by the test and not returned is a frame's.
                for s in 0..next {
                    if !allocated.contains(&s) && !returned.contains(&s) {
                        prop_assert!(framed.contains(&s), "slot {} lost", s);
                    }
                }
            }
            for s in slots(&f.set_holding(false)) {
                prop_assert!(returned.insert(s), "slot {} returned twice", s);
            }
            for s in 0..next {
                prop_assert!(allocated.contains(&s) || returned.contains(&s), "slot {} kept after release", s);
            }
        }
    }
}
