//! The extent table of the latest version: which pool slots hold each page
//! of the region, as coalesced runs (adjacent pages in adjacent slots are
//! one extent). Version N's table is version N-1's with the pages written
//! in between redirected to their new slots.

use std::collections::BTreeMap;

use hobbes_xemem::composite::Extent;

/// Region pages per compaction chunk: 2 MiB of 4 KiB pages.
pub(crate) const CHUNK_BYTES: u64 = 2 << 20;

/// A chunk a snapshot's writes touch ([`ExtentMap::touched_chunks`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Touched {
    pub chunk: u64,
    /// Extents touching it now.
    pub before: isize,
    /// Extents touching it with its written pages copied where they are
    /// (into fresh slots of their own).
    pub after: isize,
    /// Pages written.
    pub written: u64,
}

/// `redirect_many` rebuilds the map when it has at least one run per this
/// many extents; fewer runs are redirected one by one.
const REBUILD_RATIO: usize = 16;

#[derive(Debug, Clone, Default)]
pub(crate) struct ExtentMap {
    /// First page -> (first slot, pages).
    map: BTreeMap<u64, (u64, u64)>,
}

impl ExtentMap {
    /// Number of extents.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Pages `[page, page+n)` now live in slots `[slot, slot+n)`. The slot
    /// runs they were in before are appended to `replaced`.
    pub fn redirect(&mut self, page: u64, n: u64, slot: u64, replaced: &mut Vec<(u64, u64)>) {
        if n == 0 {
            return;
        }
        let end = page + n;
        self.split_at(page);
        self.split_at(end);
        let inner: Vec<u64> = self.map.range(page..end).map(|(k, _)| *k).collect();
        for k in inner {
            if let Some(old) = self.map.remove(&k) {
                replaced.push(old);
            }
        }
        let (mut start, mut run) = (page, (slot, n));
        if let Some(&(rs, rn)) = self.map.get(&end) {
            if rs == slot + n {
                self.map.remove(&end);
                run.1 += rn;
            }
        }
        if let Some((&ls, &(lslot, ln))) = self.map.range(..page).next_back() {
            if ls + ln == page && lslot + ln == slot {
                start = ls;
                run = (lslot, ln + run.1);
            }
        }
        self.map.insert(start, run);
    }

    /// [`redirect`](Self::redirect) for many disjoint runs at once, sorted
    /// by page: `(page, pages, slot)` each. With many runs against the
    /// table's size (a snapshot that rewrites every chunk it wrote), one
    /// pass rebuilding the map costs its size plus the runs, where a
    /// redirect each costs several lookups, each a chain of cache misses by
    /// the time a snapshot comes. The slot runs replaced are appended to
    /// `replaced`, in page order.
    pub fn redirect_many(&mut self, runs: &[(u64, u64, u64)], replaced: &mut Vec<(u64, u64)>) {
        debug_assert!(runs.windows(2).all(|w| w[0].0 + w[0].1 <= w[1].0));
        if runs.len() * REBUILD_RATIO < self.map.len() || self.map.is_empty() {
            for &(page, n, slot) in runs {
                self.redirect(page, n, slot, replaced);
            }
            return;
        }
        let old = std::mem::take(&mut self.map);
        let mut out: Vec<(u64, (u64, u64))> = Vec::with_capacity(old.len() + 2 * runs.len());
        // Append an extent, coalescing it with the last one where it
        // continues it (same as `redirect` does with its neighbours).
        let emit = |out: &mut Vec<(u64, (u64, u64))>, page: u64, slot: u64, n: u64| {
            if n == 0 {
                return;
            }
            if let Some((lp, (ls, ln))) = out.last_mut() {
                if *lp + *ln == page && *ls + *ln == slot {
                    *ln += n;
                    return;
                }
            }
            out.push((page, (slot, n)));
        };
        let mut next = 0;
        for (s, (slot, n)) in old {
            let end = s + n;
            let mut at = s;
            while at < end {
                while next < runs.len() && runs[next].0 + runs[next].1 <= at {
                    next += 1;
                }
                match runs.get(next) {
                    Some(&(rp, rn, rs)) if rp < end && rn > 0 => {
                        if rp > at {
                            emit(&mut out, at, slot + (at - s), rp - at);
                            at = rp;
                        }
                        // The run's new extent, once, where it starts (it
                        // may reach over several old extents).
                        if at == rp {
                            emit(&mut out, rp, rs, rn);
                        }
                        let stop = end.min(rp + rn);
                        replaced.push((slot + (at - s), stop - at));
                        at = stop;
                    }
                    _ => {
                        emit(&mut out, at, slot + (at - s), end - at);
                        at = end;
                    }
                }
            }
        }
        self.map = out.into_iter().collect();
    }

    /// Make `page` the first page of an extent (if inside one).
    fn split_at(&mut self, page: u64) {
        if let Some((&s, &(slot, n))) = self.map.range(..page).next_back() {
            if s + n > page {
                let head = page - s;
                self.map.insert(s, (slot, head));
                self.map.insert(page, (slot + head, n - head));
            }
        }
    }

    /// The slot holding `page`.
    #[cfg(test)]
    pub fn slot_of(&self, page: u64) -> Option<u64> {
        let (&s, &(slot, n)) = self.map.range(..=page).next_back()?;
        (page < s + n).then_some(slot + (page - s))
    }

    /// The table as byte extents for `page_size` pages, clipped to the
    /// first `pages` pages.
    pub fn table(&self, page_size: u64, pages: u64) -> Vec<Extent> {
        self.map
            .range(..pages)
            .map(|(&s, &(slot, n))| Extent {
                seg_offset: s * page_size,
                pool_offset: slot * page_size,
                len: n.min(pages - s) * page_size,
            })
            .collect()
    }

    /// How many extents touch each chunk of `chunk` pages (an extent
    /// across a chunk boundary counts for both).
    pub fn chunk_counts(&self, chunk: u64) -> BTreeMap<u64, usize> {
        let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
        for (&s, &(_, n)) in &self.map {
            for c in s / chunk..=(s + n - 1) / chunk {
                *counts.entry(c).or_default() += 1;
            }
        }
        counts
    }

    /// How many extents touch pages `[page, page+n)`.
    #[cfg(test)]
    pub fn extents_in(&self, page: u64, n: u64) -> usize {
        if n == 0 {
            return 0;
        }
        let before = match self.map.range(..page).next_back() {
            Some((&s, &(_, len))) => (s + len > page) as usize,
            None => 0,
        };
        before + self.map.range(page..page + n).count()
    }

    /// How the extent count changes if pages `[page, page+n)` move to
    /// fresh slots of their own: the extents they overlap give way to a
    /// head piece, the run and a tail piece. Coalescing with a neighbour
    /// (rare for fresh slots) is not counted, so this is an upper bound;
    /// for disjoint, non-adjacent runs the deltas add up.
    #[cfg(test)]
    pub fn redirect_delta(&self, page: u64, n: u64) -> isize {
        if n == 0 {
            return 0;
        }
        let end = page + n;
        let first = self.map.range(..=page).next_back();
        let mut overlapped = self.map.range(page + 1..end).count();
        let mut head = false;
        if let Some((&s, &(_, len))) = first {
            if s + len > page {
                overlapped += 1;
                head = s < page;
            }
        }
        let tail = match self.map.range(..end).next_back() {
            Some((&s, &(_, len))) => s + len > end,
            None => false,
        };
        1 + head as isize + tail as isize - overlapped as isize
    }

    /// The chunks (of `chunk` pages) that `runs` (sorted, disjoint) write,
    /// in order: `before` as [`extents_in`](Self::extents_in), `after` plus
    /// each run's [`redirect_delta`](Self::redirect_delta). One walk over
    /// the table alongside the runs, where those lookups took several cold
    /// misses per run.
    pub fn touched_chunks(&self, runs: &[(u64, u64)], chunk: u64) -> Vec<Touched> {
        // The table as (start, end), in order; `at` the first extent not
        // wholly before the current point.
        let table: Vec<(u64, u64)> = self.map.iter().map(|(&s, &(_, n))| (s, s + n)).collect();
        let mut out: Vec<Touched> = Vec::new();
        let mut at = 0;
        // Extents touching [p, e) from index `from`: (count, first, last).
        let overlapping = |from: usize, p: u64, e: u64| {
            let mut i = from;
            while i < table.len() && table[i].1 <= p {
                i += 1;
            }
            let first = i;
            while i < table.len() && table[i].0 < e {
                i += 1;
            }
            (first, i)
        };
        for &(p, n) in runs {
            let mut cp = p;
            let end = p + n;
            while cp < end {
                let c = cp / chunk;
                let ce = end.min((c + 1) * chunk);
                if out.last().is_none_or(|t| t.chunk != c) {
                    let (first, stop) = overlapping(at, c * chunk, (c + 1) * chunk);
                    at = first;
                    let before = (stop - first) as isize;
                    out.push(Touched {
                        chunk: c,
                        before,
                        after: before,
                        written: 0,
                    });
                }
                let (first, stop) = overlapping(at, cp, ce);
                at = first;
                let delta = if stop == first {
                    1
                } else {
                    let head = table[first].0 < cp;
                    let tail = table[stop - 1].1 > ce;
                    1 + head as isize + tail as isize - (stop - first) as isize
                };
                if let Some(t) = out.last_mut() {
                    t.after += delta;
                    t.written += ce - cp;
                }
                cp = ce;
            }
        }
        out
    }

    /// Check the map covers `[0, pages)` exactly (tests).
    #[cfg(test)]
    pub fn covers(&self, pages: u64) -> bool {
        let mut at = 0;
        for (&s, &(_, n)) in &self.map {
            if s != at || n == 0 {
                return false;
            }
            at += n;
        }
        at == pages
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn redirect_splits_and_coalesces() {
        let mut m = ExtentMap::default();
        let mut old = Vec::new();
        m.redirect(0, 10, 100, &mut old);
        assert!(old.is_empty());
        assert_eq!(m.len(), 1);
        m.redirect(3, 2, 500, &mut old);
        assert_eq!(old, vec![(103, 2)]);
        assert_eq!(m.len(), 3);
        assert_eq!(m.slot_of(3), Some(500));
        assert_eq!(m.slot_of(5), Some(105));
        // Pages 5.. into slots 502..: joins page 3-4's run on the left.
        old.clear();
        m.redirect(5, 5, 502, &mut old);
        assert_eq!(old, vec![(105, 5)]);
        assert_eq!(m.len(), 2);
        assert!(m.covers(10));
        // Back into the original slots: coalesces on both sides.
        m.redirect(3, 7, 103, &mut old);
        assert_eq!(m.len(), 1);
        assert_eq!(
            m.table(4096, 10),
            vec![Extent {
                seg_offset: 0,
                pool_offset: 100 * 4096,
                len: 10 * 4096
            }]
        );
        assert_eq!(
            m.table(4096, 4),
            vec![Extent {
                seg_offset: 0,
                pool_offset: 100 * 4096,
                len: 4 * 4096
            }]
        );
    }

    #[test]
    fn chunk_counts_count_extents_across_edges_twice() {
        let mut m = ExtentMap::default();
        let mut old = Vec::new();
        m.redirect(0, 64, 0, &mut old);
        for (i, p) in (16..32).step_by(2).enumerate() {
            m.redirect(p, 1, 1000 + 2 * i as u64, &mut old);
        }
        m.redirect(50, 1, 2000, &mut old);
        let counts = m.chunk_counts(16);
        // Chunk 0: the head extent (which reaches into chunk 1).
        assert_eq!(counts.get(&0), Some(&1));
        assert_eq!(counts.get(&1), Some(&16));
        assert_eq!(counts.get(&3), Some(&3));
    }

    /// A map of `pages` pages written whole, then `writes` (a place and a
    /// length each) into fresh slots, sometimes with a gap between them;
    /// and the next free slot.
    fn fragmented(pages: u64, writes: &[(prop::sample::Index, u64)]) -> (ExtentMap, u64) {
        let mut m = ExtentMap::default();
        let mut old = Vec::new();
        m.redirect(0, pages, 0, &mut old);
        let mut next_slot = pages;
        for (at, n) in writes {
            let p = at.index(pages as usize) as u64;
            let n = (*n).min(pages - p);
            m.redirect(p, n, next_slot, &mut old);
            next_slot += n + (n % 3);
        }
        (m, next_slot)
    }

    proptest! {
        /// `touched_chunks` counts what `extents_in` and `redirect_delta`
        /// count one by one.
        #[test]
        fn touched_chunks_is_extents_in_plus_deltas(
            pages in 1u64..400,
            before in proptest::collection::vec((any::<prop::sample::Index>(), 1u64..30), 0..40),
            written in proptest::collection::vec((any::<prop::sample::Index>(), 1u64..40), 0..30),
            chunk in 1u64..80,
        ) {
            let (m, _) = fragmented(pages, &before);
            // Sorted, disjoint, not touching runs.
            let mut bits = vec![false; pages as usize];
            for (at, n) in written {
                let p = at.index(pages as usize) as u64;
                let n = n.min(pages - p);
                bits[p as usize..(p + n) as usize].iter_mut().for_each(|b| *b = true);
            }
            let mut runs = Vec::new();
            let mut i = 0;
            while i < bits.len() {
                if !bits[i] { i += 1; continue; }
                let s = i;
                while i < bits.len() && bits[i] { i += 1; }
                runs.push((s as u64, (i - s) as u64));
            }
            let mut want: Vec<Touched> = Vec::new();
            for &(p, n) in &runs {
                let mut cp = p;
                while cp < p + n {
                    let c = cp / chunk;
                    let ce = (p + n).min((c + 1) * chunk);
                    if want.last().is_none_or(|t| t.chunk != c) {
                        let len = chunk.min(pages - c * chunk);
                        let e = m.extents_in(c * chunk, len) as isize;
                        want.push(Touched { chunk: c, before: e, after: e, written: 0 });
                    }
                    let t = want.last_mut().unwrap();
                    t.after += m.redirect_delta(cp, ce - cp);
                    t.written += ce - cp;
                    cp = ce;
                }
            }
            prop_assert_eq!(m.touched_chunks(&runs, chunk), want);
        }

        /// `redirect_many` leaves the same map as one `redirect` per run,
        /// and replaces the same slots, whether it rebuilds or not.
        #[test]
        fn redirect_many_is_redirect_one_by_one(
            pages in 1u64..300,
            before in proptest::collection::vec((any::<prop::sample::Index>(), 1u64..30), 0..40),
            batch in proptest::collection::vec((any::<prop::sample::Index>(), 1u64..40), 0..40),
        ) {
            let (mut m, next_slot) = fragmented(pages, &before);
            // Disjoint sorted runs, every other one into the slots right
            // after the last one's, so that they coalesce.
            let mut runs: Vec<(u64, u64, u64)> = Vec::new();
            let mut bits = vec![false; pages as usize];
            for (at, n) in batch {
                let p = at.index(pages as usize) as u64;
                let n = n.min(pages - p);
                if bits[p as usize..(p + n) as usize].iter().any(|b| *b) {
                    continue;
                }
                bits[p as usize..(p + n) as usize].iter_mut().for_each(|b| *b = true);
                runs.push((p, n, 0));
            }
            runs.sort_unstable();
            let mut slot = next_slot;
            for (i, r) in runs.iter_mut().enumerate() {
                r.2 = slot;
                slot += r.1 + (i as u64 % 2);
            }
            let mut one = m.clone();
            let mut want = Vec::new();
            for &(p, n, s) in &runs {
                one.redirect(p, n, s, &mut want);
            }
            let mut got = Vec::new();
            m.redirect_many(&runs, &mut got);
            prop_assert_eq!(m.table(1, pages), one.table(1, pages));
            let slots = |v: &[(u64, u64)]| {
                let mut s: Vec<u64> = v.iter().flat_map(|(a, l)| *a..a + l).collect();
                s.sort_unstable();
                s
            };
            prop_assert_eq!(slots(&got), slots(&want));
        }

        /// After any sequence of redirects the map covers the region, is
        /// coalesced, and maps every page to the slot of its latest write.
        #[test]
        fn every_page_maps_to_its_latest_slot(
            pages in 1u64..200,
            writes in proptest::collection::vec((any::<prop::sample::Index>(), 1u64..20), 0..60),
        ) {
            let mut m = ExtentMap::default();
            let mut want: Vec<u64> = (0..pages).collect();
            let mut old = Vec::new();
            m.redirect(0, pages, 0, &mut old);
            let mut next_slot = pages;
            for (at, n) in writes {
                let p = at.index(pages as usize) as u64;
                let n = n.min(pages - p);
                old.clear();
                m.redirect(p, n, next_slot, &mut old);
                // The replaced slots are exactly the ones those pages had.
                let mut replaced: Vec<u64> = old.iter().flat_map(|(s, l)| *s..s + l).collect();
                replaced.sort_unstable();
                let mut had: Vec<u64> = want[p as usize..(p + n) as usize].to_vec();
                had.sort_unstable();
                prop_assert_eq!(replaced, had);
                for i in 0..n {
                    want[(p + i) as usize] = next_slot + i;
                }
                // Sometimes leave a gap so slots are not always adjacent.
                next_slot += n + (n % 3);
                prop_assert!(m.covers(pages));
                for (page, slot) in want.iter().enumerate() {
                    prop_assert_eq!(m.slot_of(page as u64), Some(*slot));
                }
                // Coalesced: no two neighbouring extents continue each other.
                let t = m.table(1, pages);
                for w in t.windows(2) {
                    prop_assert!(w[0].pool_offset + w[0].len != w[1].pool_offset);
                }
            }
        }

        /// `extents_in` counts the extents a range touches.
        #[test]
        fn extents_in_counts_the_extents_a_range_touches(
            pages in 2u64..100,
            writes in proptest::collection::vec((any::<prop::sample::Index>(), 1u64..10), 0..20),
            probe in (any::<prop::sample::Index>(), 1u64..50),
        ) {
            let mut m = ExtentMap::default();
            let mut old = Vec::new();
            m.redirect(0, pages, 0, &mut old);
            let mut next = 10 * pages;
            for (at, n) in writes {
                let p = at.index(pages as usize) as u64;
                let n = n.min(pages - p);
                m.redirect(p, n, next, &mut old);
                next += n + 1;
            }
            let p = probe.0.index(pages as usize) as u64;
            let n = probe.1.min(pages - p);
            let want = m
                .table(1, pages)
                .iter()
                .filter(|e| e.seg_offset < p + n && e.seg_offset + e.len > p)
                .count();
            prop_assert_eq!(m.extents_in(p, n), want);
        }

        /// The predicted change of the extent count is exact for runs moved
        /// to fresh, far away slots, one at a time or as disjoint batches.
        #[test]
        fn redirect_delta_predicts_the_extent_count(
            pages in 1u64..200,
            writes in proptest::collection::vec((any::<prop::sample::Index>(), 1u64..20), 0..40),
        ) {
            let mut m = ExtentMap::default();
            let mut old = Vec::new();
            m.redirect(0, pages, 0, &mut old);
            let mut next_slot = 10 * pages;
            for (at, n) in writes {
                let p = at.index(pages as usize) as u64;
                let n = n.min(pages - p);
                let want = m.len() as isize + m.redirect_delta(p, n);
                m.redirect(p, n, next_slot, &mut old);
                next_slot += n + 1;
                prop_assert_eq!(m.len() as isize, want);
            }
        }
    }
}
