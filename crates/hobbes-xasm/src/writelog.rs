//! The write log: per chunk of the region, which pages the latest
//! snapshots found written, so that refreshing a frame (see `frames`)
//! costs the pages written since the frame's version, not a scan of the
//! chunk.
//!
//! A per-page stamp array answers the same question, but every query reads
//! the chunk's 512 stamps (4 KiB), cold by the time the next snapshot comes:
//! with 1% of a 1 GiB region written, the planning and the refreshes read
//! the whole 2 MiB array twice, 0.8 ms of a 9 ms snapshot. The log holds the
//! written runs themselves, a few per chunk per snapshot.
//!
//! Each chunk keeps at most as many runs as it has pages (at least
//! `MIN_RUNS_PER_CHUNK`), 16 bytes each: a few bytes per region page for
//! scattered writes, 16 at worst (every page a run of its own in each
//! version logged), where the stamps took 8. Past that, the oldest
//! versions' runs are dropped and the chunk's *horizon* rises to the newest
//! version dropped. A question reaching back before the horizon is answered
//! "the whole chunk", which is always a correct (if dearer) refresh.

/// Runs kept per chunk, at least, before the oldest versions' are dropped
/// (else as many as the chunk has pages). With 10% of its pages written at
/// random a 512-page chunk gets about 50 runs per snapshot, and frames are
/// refreshed from two versions back, more while a consumer holds one: a
/// log that did not reach back that far would make each refresh a copy of
/// the whole chunk.
const MIN_RUNS_PER_CHUNK: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Logged {
    version: u64,
    /// First page, relative to the chunk.
    start: u32,
    len: u32,
}

#[derive(Debug, Clone, Default)]
struct ChunkLog {
    /// Versions up to this one are no longer logged.
    horizon: u64,
    /// Oldest first (versions never decrease).
    runs: Vec<Logged>,
}

/// Pages written per chunk, by version (see the module docs).
#[derive(Debug, Clone)]
pub(crate) struct WriteLog {
    chunk_pages: u64,
    /// Runs kept per chunk before the oldest versions' are dropped.
    max_runs: usize,
    pages: u64,
    chunks: Vec<ChunkLog>,
}

impl WriteLog {
    /// A log for a region of `pages` pages in chunks of `chunk_pages`, as
    /// if everything was written at version 0.
    pub fn new(pages: u64, chunk_pages: u64) -> WriteLog {
        let chunk_pages = chunk_pages.max(1);
        WriteLog {
            chunk_pages,
            max_runs: (chunk_pages as usize).max(MIN_RUNS_PER_CHUNK),
            pages,
            chunks: vec![ChunkLog::default(); pages.div_ceil(chunk_pages) as usize],
        }
    }

    /// Pages in chunk `c` (the last one may be short).
    fn chunk_len(&self, c: u64) -> u64 {
        self.chunk_pages
            .min(self.pages.saturating_sub(c * self.chunk_pages))
    }

    /// Version `version` (no older than any recorded before) found region
    /// pages `[p, p+n)` written.
    pub fn record(&mut self, version: u64, p: u64, n: u64) {
        let end = (p + n).min(self.pages);
        let mut at = p;
        while at < end {
            let c = at / self.chunk_pages;
            let base = c * self.chunk_pages;
            let stop = end.min(base + self.chunk_pages);
            let log = &mut self.chunks[c as usize];
            debug_assert!(log.runs.last().is_none_or(|r| r.version <= version));
            log.runs.push(Logged {
                version,
                start: (at - base) as u32,
                len: (stop - at) as u32,
            });
            if log.runs.len() > self.max_runs {
                // Drop whole versions, down to half, so that this happens
                // once every many snapshots.
                let cut = log.runs[log.runs.len() - self.max_runs / 2 - 1].version;
                log.runs.retain(|r| r.version > cut);
                log.horizon = log.horizon.max(cut);
            }
            at = stop;
        }
    }

    /// The pages of chunk `c` written after version `since`, as sorted,
    /// disjoint runs `(first page in the chunk, pages)`; the whole chunk when
    /// the log no longer reaches back that far.
    pub fn runs_since(&self, c: u64, since: u64) -> Vec<(u64, u64)> {
        match self.pages_since(c, since) {
            Since::Whole(n) => vec![(0, n)],
            Since::Bits(bits) => bit_runs(&bits),
            Since::Runs(runs) => merge(runs),
        }
    }

    /// The runs of chunk `c` logged after version `since`, as a bitmap of
    /// its pages where it has at most `BITMAP_PAGES` (no sorting: with 10%
    /// of the pages written a refresh merges about a hundred runs).
    fn pages_since(&self, c: u64, since: u64) -> Since<'_> {
        let Some(log) = self.chunks.get(c as usize) else {
            return Since::Runs(&[]);
        };
        if since < log.horizon {
            return Since::Whole(self.chunk_len(c));
        }
        // From the newest back: a refresh asks about the last two or three
        // versions, a few runs at the end of a log of hundreds (a binary
        // search over it was a chain of cache misses).
        let first = log.runs.len()
            - log
                .runs
                .iter()
                .rev()
                .take_while(|r| r.version > since)
                .count();
        let runs = &log.runs[first..];
        if self.chunk_pages > BITMAP_PAGES as u64 {
            return Since::Runs(runs);
        }
        let mut bits = [0u64; BITMAP_PAGES / 64];
        for r in runs {
            let (mut at, end) = (r.start as usize, (r.start + r.len) as usize);
            while at < end {
                let (word, bit) = (at / 64, at % 64);
                let n = (64 - bit).min(end - at);
                bits[word] |= if n == 64 {
                    u64::MAX
                } else {
                    ((1u64 << n) - 1) << bit
                };
                at += n;
            }
        }
        Since::Bits(bits)
    }

    /// How many pages of chunk `c` were written after version `since` (the
    /// whole chunk when the log no longer reaches back that far).
    pub fn count_since(&self, c: u64, since: u64) -> u64 {
        match self.chunks.get(c as usize) {
            // Runs of one version are disjoint: no merging needed.
            Some(log)
                if since >= log.horizon
                    && log.runs.last().is_none_or(|r| r.version <= since + 1) =>
            {
                log.runs
                    .iter()
                    .rev()
                    .take_while(|r| r.version > since)
                    .map(|r| r.len as u64)
                    .sum()
            }
            Some(_) => match self.pages_since(c, since) {
                Since::Whole(n) => n,
                Since::Bits(bits) => bits.iter().map(|w| w.count_ones() as u64).sum(),
                Since::Runs(runs) => merge(runs).iter().map(|(_, n)| n).sum(),
            },
            None => 0,
        }
    }
}

/// Chunks of at most this many pages (2 MiB of 4 KiB pages) are merged
/// in a bitmap.
const BITMAP_PAGES: usize = 512;

/// The pages of a chunk written after some version.
enum Since<'a> {
    /// The log does not reach back that far: the whole chunk, of so many
    /// pages.
    Whole(u64),
    /// As a bitmap of the chunk's pages.
    Bits([u64; BITMAP_PAGES / 64]),
    /// As the runs logged (a chunk too large for the bitmap).
    Runs(&'a [Logged]),
}

/// The runs of set bits, as (first, count).
fn bit_runs(bits: &[u64]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (i, &word) in bits.iter().enumerate() {
        let mut w = word;
        while w != 0 {
            let start = w.trailing_zeros() as u64;
            let len = (w >> start).trailing_ones() as u64;
            let first = i as u64 * 64 + start;
            match out.last_mut() {
                Some(last) if last.0 + last.1 == first => last.1 += len,
                _ => out.push((first, len)),
            }
            w = if start + len >= 64 {
                0
            } else {
                w & !(((1u64 << len) - 1) << start)
            };
        }
    }
    out
}

/// Logged runs (possibly overlapping) as sorted, disjoint runs.
fn merge(runs: &[Logged]) -> Vec<(u64, u64)> {
    let mut spans: Vec<(u64, u64)> = runs
        .iter()
        .map(|r| (r.start as u64, (r.start + r.len) as u64))
        .collect();
    spans.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(spans.len());
    for (s, e) in spans {
        match merged.last_mut() {
            Some(last) if s <= last.0 + last.1 => {
                last.1 = last.1.max(e - last.0);
            }
            _ => merged.push((s, e - s)),
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The model: the version that last wrote each page.
    fn stamps_since(stamps: &[u64], c: u64, chunk: u64, since: u64) -> Vec<bool> {
        let base = (c * chunk) as usize;
        let end = (base + chunk as usize).min(stamps.len());
        stamps[base..end].iter().map(|&v| v > since).collect()
    }

    fn as_bits(runs: &[(u64, u64)], len: usize) -> Vec<bool> {
        let mut bits = vec![false; len];
        for &(s, n) in runs {
            for b in &mut bits[s as usize..(s + n) as usize] {
                *b = true;
            }
        }
        bits
    }

    #[test]
    fn runs_are_split_at_chunks_and_merged_across_versions() {
        let mut log = WriteLog::new(20, 8);
        log.record(1, 6, 4); // chunk 0: 6..8, chunk 1: 0..2
        log.record(2, 7, 1);
        log.record(2, 9, 3); // chunk 1: 1..4
        assert_eq!(log.runs_since(0, 0), vec![(6, 2)]);
        assert_eq!(log.runs_since(1, 0), vec![(0, 4)]);
        assert_eq!(log.runs_since(1, 1), vec![(1, 3)]);
        assert_eq!(log.count_since(1, 0), 4);
        assert_eq!(log.count_since(1, 1), 3);
        assert_eq!(log.count_since(2, 0), 0);
        // The short last chunk.
        log.record(3, 16, 10);
        assert_eq!(log.runs_since(2, 2), vec![(0, 4)]);
    }

    #[test]
    fn a_question_before_the_horizon_is_the_whole_chunk() {
        let mut log = WriteLog::new(1024, 512);
        let last = 512 + 1;
        for v in 1..=last {
            log.record(v, v % 500, 1);
        }
        assert!(log.chunks[0].horizon > 0);
        assert_eq!(log.runs_since(0, 0), vec![(0, 512)]);
        assert_eq!(log.count_since(0, 0), 512);
        // The newest half is still there.
        assert_eq!(log.count_since(0, last - 200), 200);
        assert_eq!(log.count_since(0, last - 1), 1);
    }

    #[test]
    fn a_densely_written_chunk_still_reaches_two_versions_back() {
        // 10% of a 512-page chunk written as single pages: 51 runs a version.
        let mut log = WriteLog::new(512, 512);
        for v in 1..=40u64 {
            for i in 0..51 {
                log.record(v, (i * 10 + v) % 510, 1);
            }
            if v > 2 {
                assert!(log.count_since(0, v - 2) <= 102, "version {v}");
            }
        }
    }

    proptest! {
        /// Against a per-page stamp array: the same pages, for every chunk
        /// and every version asked about, or the whole chunk once the log
        /// no longer reaches back.
        #[test]
        fn matches_a_stamp_per_page(
            writes in proptest::collection::vec(
                proptest::collection::vec((0u64..300, 1u64..40), 0..12), 1..60),
            chunk in prop_oneof![1u64..100, 513u64..700],
        ) {
            let pages = 300;
            let mut log = WriteLog::new(pages, chunk);
            let mut stamps = vec![0u64; pages as usize];
            for (i, runs) in writes.iter().enumerate() {
                let version = i as u64 + 1;
                // A snapshot's runs are disjoint and sorted.
                let mut bits = vec![false; pages as usize];
                for &(p, n) in runs {
                    for b in &mut bits[p as usize..(p + n).min(pages) as usize] {
                        *b = true;
                    }
                }
                let mut p = 0;
                while p < pages as usize {
                    if !bits[p] { p += 1; continue; }
                    let s = p;
                    while p < pages as usize && bits[p] { p += 1; }
                    log.record(version, s as u64, (p - s) as u64);
                    for st in &mut stamps[s..p] { *st = version; }
                }
                for c in 0..pages.div_ceil(chunk) {
                    for since in 0..=version {
                        let want = stamps_since(&stamps, c, chunk, since);
                        let runs = log.runs_since(c, since);
                        let got = as_bits(&runs, want.len());
                        let count = log.count_since(c, since);
                        if since < log.chunks[c as usize].horizon {
                            prop_assert!(got.iter().all(|&b| b));
                            prop_assert_eq!(count, want.len() as u64);
                        } else {
                            prop_assert_eq!(&got, &want, "chunk {} since {}", c, since);
                            prop_assert_eq!(count, want.iter().filter(|&&b| b).count() as u64);
                            // Sorted, disjoint, not touching.
                            for w in runs.windows(2) {
                                prop_assert!(w[0].0 + w[0].1 < w[1].0);
                            }
                        }
                    }
                }
            }
        }
    }
}
