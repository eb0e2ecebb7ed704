//! The producer: a region of working memory, its dirty tracker, its pool,
//! its published versions and its channel.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::ffi::CString;
use std::marker::PhantomData;
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use hobbes_sys::mem::{self as mm, Advice, Mapping};
use hobbes_sys::MemfdFlags;
use hobbes_xemem::composite::{self, Extent};
use hobbes_xemem::{MakeOptions, SegId};

use crate::channel::ChannelWriter;
use crate::error::{Result, XasmError};
use crate::extents::{ExtentMap, Touched, CHUNK_BYTES};
use crate::frames::{Frames, Retired};
use crate::ledger::Ledger;
use crate::pool::{Pages, Piece, Pool};
use crate::track::{self, Dirty, Mechanism, Tracker};
use crate::writelog::WriteLog;

/// Default number of newest versions kept (K).
pub const DEFAULT_KEEP: usize = 2;
/// Default bound on a version's extents (and so on an attachment's mappings).
pub const DEFAULT_MAX_EXTENTS: usize = 4096;
/// Longest region name (versions are named `<name>@<N>`).
pub const MAX_NAME_LEN: usize = 100;
/// A written chunk is refreshed from its retired frame (instead of having
/// its written pages copied where they are) when that copies at most this
/// many extra pages per extent it saves. Scattered single pages need about
/// one (the pages written since the frame's version: about the previous
/// snapshot's, against two extents per page written); runs of 64 pages
/// need 32 or more and stay where they are. Refreshing every snapshot costs
/// about two copies per written page, where letting a chunk fragment and
/// refreshing it later costs three (its pages are copied once more in
/// between).
const REFRESH_COPIES_PER_EXTENT: isize = 8;
/// A frame is mapped whole into the producer's window of the pool at the
/// first refresh that copies at least this many pages into it.
const MAP_FRAME_AT_COPIES: u64 = 8;
/// Snapshots in a row without rewriting chunks after which a region stops
/// holding frames (see `tend_frames`).
const CALM_SNAPSHOTS: u64 = 8;
/// Default permission bits of a region's segments.
const DEFAULT_MODE: u32 = 0o600;

/// How to create a region.
#[derive(Debug, Clone)]
pub struct RegionOptions {
    /// Node-wide unique name: the channel segment is `name`, version N is
    /// the segment `name@N`. 1-100 characters, no spaces, no `@`.
    pub name: String,
    /// Permission bits of the channel and version segments, like a file's
    /// (0 means 0o600; consumers only ever need `r`).
    pub mode: u32,
    /// Versions kept (K >= 1): older ones are reclaimed when no consumer
    /// holds them.
    pub keep: usize,
    /// Force a mechanism; `None` takes [`crate::best_mechanism`] (the
    /// environment's `HOBBES_XASM_MECHANISM`, else the probe).
    pub mechanism: Option<Mechanism>,
    /// Most extents a version may have before the snapshot compacts it
    /// (2..=65536).
    pub max_extents: usize,
}

impl Default for RegionOptions {
    fn default() -> Self {
        RegionOptions {
            name: String::new(),
            mode: 0,
            keep: DEFAULT_KEEP,
            mechanism: None,
            max_extents: DEFAULT_MAX_EXTENTS,
        }
    }
}

impl RegionOptions {
    /// Defaults with a name.
    pub fn named(name: impl Into<String>) -> Self {
        RegionOptions {
            name: name.into(),
            ..Default::default()
        }
    }
}

/// What one snapshot did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// The version published (`<region>@<version>`).
    pub version: u64,
    /// Pages written since the previous snapshot (all of them for the first).
    pub dirty_pages: u64,
    /// Pages copied into the pool (dirty pages, or all when a full copy was
    /// needed).
    pub copied_pages: u64,
    /// Extra pages copied to bring the extent count back under budget.
    pub compacted_pages: u64,
    /// Extents of this version (mappings of an attachment).
    pub extents: u64,
    /// Older versions reclaimed by this snapshot.
    pub reclaimed_versions: u64,
    /// Time the call took.
    pub elapsed: Duration,
}

/// A producer's bookkeeping, for monitoring and leak checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProducerStats {
    /// The newest published version (0 = none yet).
    pub latest_version: u64,
    /// Versions published and not reclaimed.
    pub live_versions: usize,
    /// Live versions beyond the newest K (held by consumers or aliases).
    pub held_versions: usize,
    /// Extents of the latest version.
    pub latest_extents: u64,
    /// Pool memfd size (its address range; holes cost nothing).
    pub pool_size_bytes: u64,
    /// Pool memory actually used.
    pub pool_resident_bytes: u64,
    /// Pool slots allocated, in bytes.
    pub pool_allocated_bytes: u64,
    /// Free slots whose memory is kept for the next snapshot to reuse (at
    /// most what the latest reclaim freed), in bytes.
    pub pool_kept_bytes: u64,
    /// Pool memory kept in frames (whole-chunk copies no version uses any
    /// more, kept while the region is fragmented so that compaction can
    /// refresh them instead of copying chunks afresh), in bytes.
    pub pool_frame_bytes: u64,
}

/// A published segment of a version.
struct Published {
    segid: SegId,
    /// The table memfd: its exclusive flock is the reclaim check.
    table: OwnedFd,
    /// An extra name (the Kitten-style `xemem_make` of a copy): pins the
    /// version until removed.
    alias: bool,
    removed: bool,
}

struct VersionRec {
    tables: Vec<Published>,
}

/// A region whose contents are published as consistent versions.
///
/// `Send` but not `Sync`: [`Producer::snapshot`] takes `&mut self`. Other
/// threads may write the region between snapshots (through
/// [`Producer::as_ptr`]) but not during one: treat `snapshot` like a
/// barrier.
pub struct Producer {
    name: String,
    addr: usize,
    len: usize,
    page: usize,
    /// Memory this crate mapped (unmapped on drop).
    owned: bool,
    mode: u32,
    keep: usize,
    max_extents: usize,
    mechanism: Mechanism,
    tracker: Option<Tracker>,
    pool: Pool,
    extents: ExtentMap,
    ledger: Ledger,
    frames: Frames,
    /// Snapshots in a row that rewrote no chunk (frames are released
    /// after `CALM_SNAPSHOTS`).
    calm_snapshots: u64,
    /// The latest snapshot's writes were scattered: frames are in use.
    fragmented: bool,
    /// Region pages per chunk (the unit of compaction and of frames).
    chunk_pages: u64,
    /// Which pages each snapshot found written, per chunk (what a frame
    /// refresh must copy).
    written: WriteLog,
    versions: BTreeMap<u64, VersionRec>,
    last_version: u64,
    /// Dirty information was lost (a failed snapshot): copy all next time.
    copy_all_next: bool,
    channel: Option<ChannelWriter>,
    _not_sync: PhantomData<Cell<()>>,
}

fn check_options(op: &'static str, len: usize, opts: &RegionOptions) -> Result<Mechanism> {
    let page = hobbes_sys::page_size();
    let name = &opts.name;
    if name.is_empty()
        || name.len() > MAX_NAME_LEN
        || name
            .chars()
            .any(|c| c == '@' || c.is_whitespace() || c.is_control())
    {
        return Err(XasmError::invalid(
            op,
            format!("region name {name:?} must be 1-{MAX_NAME_LEN} characters, no spaces, no '@'"),
        ));
    }
    if len == 0 || !len.is_multiple_of(page) {
        return Err(XasmError::invalid(
            op,
            format!("region {name:?}: length {len} must be a non-zero multiple of the page size ({page})"),
        ));
    }
    if opts.mode & !0o777 != 0 {
        return Err(XasmError::invalid(
            op,
            format!("region {name:?}: mode {:o} has bits beyond 0777", opts.mode),
        ));
    }
    if opts.keep == 0 {
        return Err(XasmError::invalid(
            op,
            format!("region {name:?}: keep must be at least 1"),
        ));
    }
    let max = composite::MAX_EXTENTS as usize;
    if !(2..=max).contains(&opts.max_extents) {
        return Err(XasmError::invalid(
            op,
            format!(
                "region {name:?}: max_extents {} is not in 2..={max}",
                opts.max_extents
            ),
        ));
    }
    let m = match opts.mechanism {
        Some(m) => m,
        None => match track::env_mechanism() {
            Ok(Some(m)) => m,
            Ok(None) => track::best_mechanism(),
            Err(e) => return Err(XasmError::invalid(op, format!("region {name:?}: {e}"))),
        },
    };
    if !track::mechanism_available(m) {
        return Err(XasmError::Unsupported {
            op,
            reason: format!(
                "region {name:?}: mechanism {m} is not available here: {}",
                track::scan_unavailable_reason().unwrap_or_default()
            ),
        });
    }
    Ok(m)
}

impl Producer {
    /// A new region of `len` bytes (a multiple of the page size) of zeroed
    /// private memory, tracked from now on. Nothing is published until the
    /// first [`snapshot`](Self::snapshot); the channel `opts.name` exists at
    /// once (EEXIST when the name is taken).
    pub fn create(len: usize, opts: &RegionOptions) -> Result<Producer> {
        const OP: &str = "xasm_region_create";
        let m = check_options(OP, len, opts)?;
        let mem = Mapping::anon_noreserve(len, None).map_err(XasmError::sys(
            OP,
            format!("region {:?}", opts.name),
            "mmap",
        ))?;
        // SAFETY: a fresh private anonymous mapping; the producer owns it
        // (unmaps it on drop) once `start` succeeds, `mem` until then.
        let p = unsafe { Self::start(OP, mem.addr(), len, true, m, opts) }?;
        let _ = mem.into_raw();
        Ok(p)
    }

    /// As [`create`](Self::create), at exactly `addr` (which must be free:
    /// EEXIST otherwise). For the Kitten-style `arena_map_backed_region`.
    pub fn create_at(addr: usize, len: usize, opts: &RegionOptions) -> Result<Producer> {
        const OP: &str = "arena_map_backed_region";
        let m = check_options(OP, len, opts)?;
        if addr == 0 || !addr.is_multiple_of(hobbes_sys::page_size()) {
            return Err(XasmError::invalid(
                OP,
                format!(
                    "region {:?}: address {addr:#x} is not a non-null page boundary",
                    opts.name
                ),
            ));
        }
        let mem = Mapping::anon_noreserve(len, Some(addr)).map_err(XasmError::sys(
            OP,
            format!("region {:?} at {addr:#x}", opts.name),
            "mmap(MAP_FIXED_NOREPLACE)",
        ))?;
        // SAFETY: as in `create`: a fresh private anonymous mapping.
        let p = unsafe { Self::start(OP, mem.addr(), len, true, m, opts) }?;
        let _ = mem.into_raw();
        Ok(p)
    }

    /// Track an existing page-aligned range of this process's private
    /// anonymous memory in place (no copy, no remap). The memory stays the
    /// caller's: it is not unmapped when the producer is dropped.
    ///
    /// # Safety
    /// `[addr, addr+len)` must be mapped, read-write, private memory of
    /// this process that stays mapped until the producer is dropped. With
    /// the `mprotect` mechanism the range is made read-only between writes:
    /// system calls that write into it (`read(2)` into a buffer there) fail
    /// with EFAULT instead of faulting; write it from user code.
    pub unsafe fn register(addr: *mut u8, len: usize, opts: &RegionOptions) -> Result<Producer> {
        const OP: &str = "xasm_region_register";
        let m = check_options(OP, len, opts)?;
        let addr = addr as usize;
        if addr == 0 || !addr.is_multiple_of(hobbes_sys::page_size()) {
            return Err(XasmError::invalid(
                OP,
                format!(
                    "region {:?}: address {addr:#x} is not a non-null page boundary",
                    opts.name
                ),
            ));
        }
        // SAFETY: per this function's contract, passed on.
        unsafe { Self::start(OP, addr, len, false, m, opts) }
    }

    /// Track `[addr, addr+len)` and open its pool and channel.
    ///
    /// # Safety
    /// As for [`register`](Self::register): mapped read-write private
    /// anonymous memory of this process, page aligned, that stays mapped
    /// until the producer is dropped (which unmaps it when `owned`).
    unsafe fn start(
        op: &'static str,
        addr: usize,
        len: usize,
        owned: bool,
        m: Mechanism,
        opts: &RegionOptions,
    ) -> Result<Producer> {
        let name = opts.name.clone();
        let what = || format!("region {name:?}");
        // Tracking is per base page: keep transparent huge pages out.
        let _ = mm::advise(addr, len, Advice::NoHugePage);
        // SAFETY: per this function's contract; the tracker is dropped
        // before the memory is unmapped (`Drop for Producer`).
        let tracker = unsafe { Tracker::new(m, addr, len) }.map_err(|(call, e)| {
            if e == nix::errno::Errno::ENOSPC && call == "mprotect tracking slot" {
                XasmError::NoSpace {
                    op,
                    reason: format!(
                        "{}: the mprotect mechanism tracks at most {} regions per process",
                        what(),
                        track::MPROTECT_MAX_REGIONS
                    ),
                }
            } else {
                XasmError::sys(op, what(), call)(e)
            }
        })?;
        let pool = Pool::new(&name, len as u64)
            .map_err(|(call, e)| XasmError::sys(op, what(), call)(e))?;
        let mode = if opts.mode == 0 {
            DEFAULT_MODE
        } else {
            opts.mode
        };
        let keep = u32::try_from(opts.keep).unwrap_or(u32::MAX);
        let channel = ChannelWriter::create(&name, mode, len as u64, keep, m)?;
        Ok(Producer {
            name,
            addr,
            len,
            page: hobbes_sys::page_size(),
            owned,
            mode,
            keep: opts.keep,
            max_extents: opts.max_extents,
            mechanism: m,
            tracker: Some(tracker),
            pool,
            extents: ExtentMap::default(),
            ledger: Ledger::default(),
            frames: Frames::default(),
            calm_snapshots: 0,
            fragmented: false,
            chunk_pages: (CHUNK_BYTES / hobbes_sys::page_size() as u64).max(1),
            written: WriteLog::new(
                (len / hobbes_sys::page_size()) as u64,
                (CHUNK_BYTES / hobbes_sys::page_size() as u64).max(1),
            ),
            versions: BTreeMap::new(),
            last_version: 0,
            copy_all_next: false,
            channel: Some(channel),
            _not_sync: PhantomData,
        })
    }

    /// The region's first byte. Writes through it (from any thread, between
    /// snapshots) are tracked.
    pub fn as_ptr(&self) -> *mut u8 {
        self.addr as *mut u8
    }

    /// The region's length in bytes: a non-zero multiple of the page size.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: regions are never empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The region as a slice (the working memory).
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: the region is mapped read-write for self's lifetime (a
        // write-protected page faults and is resolved by the tracker);
        // &mut self excludes other references made through this method.
        unsafe { std::slice::from_raw_parts_mut(self.addr as *mut u8, self.len) }
    }

    /// The dirty-tracking mechanism this region uses (chosen at creation).
    pub fn mechanism(&self) -> Mechanism {
        self.mechanism
    }

    /// The region's node-wide name ([`RegionOptions::name`]).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The latest published version (0 = none yet).
    pub fn latest(&self) -> u64 {
        self.versions.keys().next_back().copied().unwrap_or(0)
    }

    fn what(&self) -> String {
        format!("region {:?}", self.name)
    }

    /// Publish the region's current contents as the next version
    /// `<name>@<N>` (N = 1, 2, ...), announce it on the channel, and
    /// reclaim old versions no consumer holds beyond the newest K.
    ///
    /// Costs: finding the written pages (a page-table walk, or the bitmap
    /// of the mprotect mechanism), copying them into the pool, writing the
    /// extent table and one request to the name server. The first snapshot
    /// copies the whole region. No thread may write the region during the
    /// call. On failure nothing is published and the next snapshot copies
    /// the whole region again (its version number is then skipped).
    pub fn snapshot(&mut self) -> Result<SnapshotInfo> {
        const OP: &str = "xasm_snapshot";
        let t0 = Instant::now();
        let version = self.last_version + 1;
        let pages = (self.len / self.page) as u64;
        let tracker = self
            .tracker
            .as_mut()
            .expect("a live producer has a tracker");
        let dirty = match tracker.collect() {
            Ok(d) => d,
            Err((call, e)) => {
                self.copy_all_next = true;
                return Err(XasmError::sys(OP, self.what(), call)(e));
            }
        };
        self.last_version = version;
        let (dirty_pages, runs) = match dirty {
            _ if version == 1 || self.copy_all_next => (pages, vec![(0, pages)]),
            Dirty::All => (pages, vec![(0, pages)]),
            Dirty::Runs(r) => (r.iter().map(|(_, n)| n).sum(), r),
        };
        // From here the tracker is re-armed: a failure must not lose writes.
        self.copy_all_next = true;
        // Scattered writes: hold frames from now on, before the retirement
        // below frees pieces of them (else they break up).
        let touched = self.extents.touched_chunks(&runs, self.chunk_pages);
        let scattered = self.scattered(&touched);
        if scattered && !self.frames.holding() {
            let none = self.frames.set_holding(true);
            debug_assert!(none.is_empty());
        }
        // Versions this one pushes out of the newest K, retired first (the
        // latest stays gettable): their slots and frames are free for this
        // snapshot to reuse, and one request below makes this version and
        // removes them.
        let retiring = self.retire_replaced();
        for v in &retiring {
            self.ledger.remove_live(*v);
        }
        self.free_unused();
        let (copied, compacted) = match self.copy_version(OP, version, &runs, &touched, scattered) {
            Ok(c) => c,
            Err(e) => {
                self.finish_retired(&retiring, false);
                let _ = self.pool.rotate();
                return Err(e);
            }
        };
        self.copy_all_next = false;
        let vname = format!("{}@{version}", self.name);
        let retire_ids = self.segids_of(&retiring);
        let published = self.publish_table(OP, &vname, pages, &retire_ids);
        // Retired either way: on failure remove them one by one.
        self.finish_retired(&retiring, published.is_ok());
        let published = match published {
            Ok(p) => p,
            Err(e) => {
                // Never visible: free what only it used.
                self.free_unused();
                let _ = self.pool.rotate();
                return Err(e);
            }
        };
        self.ledger.add_live(version);
        self.versions.insert(
            version,
            VersionRec {
                tables: vec![published],
            },
        );
        if let Some(ch) = &self.channel {
            ch.publish(version);
        }
        let reclaimed = retiring.len() + self.reclaim_old();
        self.tend_frames(version);
        let _ = self.pool.rotate();
        Ok(SnapshotInfo {
            version,
            dirty_pages,
            copied_pages: copied,
            compacted_pages: compacted,
            extents: self.extents.len() as u64,
            reclaimed_versions: reclaimed as u64,
            elapsed: t0.elapsed(),
        })
    }

    /// Bring the latest table to version `version`, whose written pages
    /// are `runs`: copy them, and rewrite whole chunks where the table
    /// would otherwise go over its extent budget. Returns (written pages
    /// copied, extra pages copied to stay within the budget).
    fn copy_version(
        &mut self,
        op: &'static str,
        version: u64,
        runs: &[(u64, u64)],
        touched: &[Touched],
        scattered: bool,
    ) -> Result<(u64, u64)> {
        for &(p, n) in runs {
            self.written.record(version, p, n);
        }
        let rewrite = self.plan_rewrites(touched, scattered);
        let chunk = self.chunk_pages;
        // Written pages of the other chunks: copied where they are.
        let in_place: Vec<(u64, u64)> = runs
            .iter()
            .flat_map(|&(p, n)| split_at_chunks(p, n, chunk))
            .filter(|(p, _)| rewrite.binary_search(&(p / chunk)).is_err())
            .collect();
        let mut copied = self.copy_runs(op, version, &in_place)?;
        let mut extra = 0;
        let (written, more) = self.rewrite_chunks(op, version, &rewrite)?;
        copied += written;
        extra += more;
        extra += self.compact(op, version)?;
        // Frames are held for scattered writes only: holding them for a
        // region written in runs that compacted once would keep its freed
        // slots from reuse, scatter its next copies over the pool and
        // fragment it more.
        self.fragmented = scattered;
        Ok((copied, extra))
    }

    /// Region pages `[first, first+n)` of chunk `c`.
    fn chunk_range(&self, c: u64) -> (u64, u64) {
        let pages = (self.len / self.page) as u64;
        let p = c * self.chunk_pages;
        (p, self.chunk_pages.min(pages - p))
    }

    /// Which written chunks to rewrite whole instead of copying their
    /// written pages where they are: when the writes are scattered (see
    /// `scattered`), those that can be rewritten for at
    /// most `REFRESH_COPIES_PER_EXTENT` extra page copies per extent they
    /// save. Refreshing a chunk's retired frame costs the pages written
    /// since the frame's version (scattered writes: the chunk stays one
    /// extent for about two copies per written page); a chunk without one
    /// costs the whole chunk, which pays once it is fragmented enough, and
    /// gives it its second frame. Going over `max_extents` is `compact`'s.
    fn plan_rewrites(&self, touched: &[Touched], scattered: bool) -> Vec<u64> {
        // Only for scattered writes: runs are copied where they are (one
        // copy per page), even in a region that compacted lately.
        if !scattered {
            return Vec::new();
        }
        let mut plan = Vec::new();
        for t in touched {
            let e = t.after;
            let copies = match self.frames.retired_content(t.chunk) {
                Some(v) => self.written.count_since(t.chunk, v),
                None => self.chunk_range(t.chunk).1,
            };
            let extra = copies.saturating_sub(t.written);
            // Two extents saved at least: a chunk written whole is one or
            // two extents (across its edges) where it is anyway.
            if e > 2 && extra as isize <= REFRESH_COPIES_PER_EXTENT * (e - 1) {
                plan.push(t.chunk);
            }
        }
        plan
    }

    /// Whether this snapshot's writes are scattered: most written pages
    /// are in chunks they split into at least one more extent each (single
    /// pages here and there, not runs), and the table would be past an
    /// eighth of its budget (a page or two written each step is not worth
    /// frames) unless the writes were scattered lately (frames held).
    fn scattered(&self, touched: &[Touched]) -> bool {
        let growth: isize = touched.iter().map(|t| t.after - t.before).sum();
        // Once scattered (frames held), the table stays small: judge by the
        // pages alone then.
        if !self.frames.holding()
            && self.extents.len() as isize + growth <= (self.max_extents / 8) as isize
        {
            return false;
        }
        let (mut in_scattered, mut all) = (0, 0);
        for t in touched {
            all += t.written;
            if t.after > 2 && (t.after - 1) as u64 >= t.written {
                in_scattered += t.written;
            }
        }
        all > 0 && 2 * in_scattered >= all
    }

    /// Rewrite `chunks` (sorted) whole: refresh those with a retired frame,
    /// copy the others afresh, adjacent ones into one run. Returns (pages
    /// written by this version, other pages copied).
    fn rewrite_chunks(
        &mut self,
        op: &'static str,
        version: u64,
        chunks: &[u64],
    ) -> Result<(u64, u64)> {
        let mut points = Vec::new();
        let copied = self.copy_chunks(op, version, chunks, &mut points);
        // The chunks copied before any failure are pointed at their frames
        // all the same: their frames hold them now.
        self.point_chunks_at_frames(&mut points, version);
        copied
    }

    /// `rewrite_chunks`' copies: each chunk rewritten whole goes to
    /// `points`, for the table to be pointed at its frame afterwards, all
    /// at once.
    fn copy_chunks(
        &mut self,
        op: &'static str,
        version: u64,
        chunks: &[u64],
        points: &mut Vec<Pointing>,
    ) -> Result<(u64, u64)> {
        let (mut written, mut other) = (0, 0);
        let mut fresh: Vec<(u64, u64)> = Vec::new();
        for &c in chunks {
            if let Some(frame) = self.frames.take_retired(c) {
                let (w, o) = self.refresh(op, version, c, frame, points)?;
                written += w;
                other += o;
            } else {
                match fresh.last_mut() {
                    Some(last) if last.0 + last.1 == c => last.1 += 1,
                    _ => fresh.push((c, 1)),
                }
            }
        }
        for (first, count) in fresh {
            let (w, o) = self.fresh_frames(op, version, first, count, points)?;
            written += w;
            other += o;
        }
        Ok((written, other))
    }

    /// Copy chunks `[first, first+count)` whole into one new run of slots
    /// (a frame each, next to each other, so that they coalesce into one
    /// extent) and point their pages there. Returns (pages written by this
    /// version, other pages copied).
    fn fresh_frames(
        &mut self,
        op: &'static str,
        version: u64,
        first: u64,
        count: u64,
        points: &mut Vec<Pointing>,
    ) -> Result<(u64, u64)> {
        let (base, _) = self.chunk_range(first);
        let (last, last_n) = self.chunk_range(first + count - 1);
        let n = last + last_n - base;
        let piece = self
            .pool
            .alloc_run(n)
            .map_err(|(call, e)| XasmError::sys(op, self.what(), call)(e))?;
        let page = self.page as u64;
        let at = self.addr + (base * page) as usize;
        // SAFETY: pages of the region, mapped (readable) while self lives;
        // the region is quiescent during a snapshot.
        let part = unsafe { std::slice::from_raw_parts(at as *const u8, (n * page) as usize) };
        if let Err((call, e)) = self.pool.write(&piece, &[part]) {
            let _ = self.pool.free(piece.slot, n);
            return Err(XasmError::sys(op, self.what(), call)(e));
        }
        for c in first..first + count {
            let (p, _) = self.chunk_range(c);
            points.push(Pointing {
                chunk: c,
                slot: piece.slot + (p - base),
            });
        }
        let written = (first..first + count)
            .map(|c| self.written.count_since(c, version - 1))
            .sum::<u64>();
        Ok((written, n - written))
    }

    /// Rewrite chunk `c` into its retired frame: copy the pages written
    /// since the frame's version and point the chunk's pages at the frame.
    /// Returns (pages written by this version, other pages copied).
    fn refresh(
        &mut self,
        op: &'static str,
        version: u64,
        c: u64,
        frame: Retired,
        points: &mut Vec<Pointing>,
    ) -> Result<(u64, u64)> {
        let (base, n) = self.chunk_range(c);
        debug_assert_eq!(n, frame.len);
        let page = self.page as u64;
        // The pages written since the frame's version, as runs.
        let runs = self.written.runs_since(c, frame.content);
        let copies: u64 = runs.iter().map(|(_, n)| n).sum();
        let written = self.written.count_since(c, version - 1);
        // Copies go through the window (a memcpy: half what pwrite costs
        // per page here) once the frame is mapped there. Written pages land
        // anywhere in it, a few at a time: map it whole once (about 0.2 ms
        // for 2 MiB) rather than piece by piece over the refreshes to come,
        // but only for a refresh big enough to pay for that (the pool maps
        // smaller ones' pieces as it writes them).
        if copies >= MAP_FRAME_AT_COPIES && !self.pool.all_mapped(frame.slot, frame.len) {
            self.pool.map_into_window(frame.slot, frame.len);
        }
        for (start, len) in runs {
            let at = self.addr + ((base + start) * page) as usize;
            // SAFETY: pages of the region, mapped (readable) while self
            // lives; the region is quiescent during a snapshot.
            let part =
                unsafe { std::slice::from_raw_parts(at as *const u8, (len * page) as usize) };
            let piece = Piece {
                slot: frame.slot + start,
                len,
                pages: Pages::Existing,
            };
            if let Err((call, e)) = self.pool.write(&piece, &[part]) {
                // Partly rewritten: no longer a copy of any version.
                self.frames.forget_taken(frame.slot);
                let _ = self.pool.free(frame.slot, frame.len);
                return Err(XasmError::sys(op, self.what(), call)(e));
            }
        }
        points.push(Pointing {
            chunk: c,
            slot: frame.slot,
        });
        Ok((written, copies - written))
    }

    /// Chunks of version `version` are the frames in `points` (just
    /// written whole or refreshed): one extent each; the slots they had are
    /// replaced. One pass over the table for all of them (see
    /// `ExtentMap::redirect_many`).
    fn point_chunks_at_frames(&mut self, points: &mut [Pointing], version: u64) {
        points.sort_unstable_by_key(|p| p.chunk);
        let runs: Vec<(u64, u64, u64)> = points
            .iter()
            .map(|p| {
                let (base, n) = self.chunk_range(p.chunk);
                (base, n, p.slot)
            })
            .collect();
        let mut replaced = Vec::new();
        self.extents.redirect_many(&runs, &mut replaced);
        for &(s, l) in &replaced {
            self.ledger.replaced(s, l, version);
        }
        for (p, &(_, n, _)) in points.iter().zip(&runs) {
            self.ledger.born(p.slot, n, version);
            self.frames.register(p.slot, n, p.chunk, version);
        }
    }

    /// After a snapshot: hold frames while the region's writes are
    /// scattered; release them after `CALM_SNAPSHOTS` snapshots in a row
    /// without; let retired frames nobody refreshed lately go. A region
    /// written in runs never holds any: its freed slots are reused at once,
    /// as without frames.
    fn tend_frames(&mut self, version: u64) {
        let fragmented = self.fragmented;
        self.calm_snapshots = if fragmented {
            0
        } else {
            self.calm_snapshots + 1
        };
        let hold = fragmented || (self.frames.holding() && self.calm_snapshots < CALM_SNAPSHOTS);
        let mut release = Vec::new();
        if hold != self.frames.holding() {
            release = self.frames.set_holding(hold);
        }
        release.extend(self.frames.expire(version));
        for (s, l) in release {
            let _ = self.pool.free(s, l);
        }
    }

    /// Copy region pages `runs` into fresh pool slots and redirect the
    /// latest table to them. Returns the pages copied.
    fn copy_runs(&mut self, op: &'static str, version: u64, runs: &[(u64, u64)]) -> Result<u64> {
        let total: u64 = runs.iter().map(|(_, n)| n).sum();
        if total == 0 {
            return Ok(0);
        }
        let pieces = self
            .pool
            .alloc(total)
            .map_err(|(call, e)| XasmError::sys(op, self.what(), call)(e))?;
        // Lay the runs over the pieces in order: (page, pages, slot).
        let mut moves: Vec<Vec<(u64, u64, u64)>> = Vec::with_capacity(pieces.len());
        let mut run_iter = runs.iter().copied();
        let mut cur = run_iter.next();
        for piece in &pieces {
            let mut left = piece.len;
            let mut at = piece.slot;
            let mut group = Vec::new();
            while left > 0 {
                let Some((p, n)) = cur else { break };
                let k = n.min(left);
                group.push((p, k, at));
                at += k;
                left -= k;
                cur = if k == n {
                    run_iter.next()
                } else {
                    Some((p + k, n - k))
                };
            }
            moves.push(group);
        }
        let page = self.page as u64;
        let mut replaced = Vec::new();
        for (i, group) in moves.iter().enumerate() {
            let parts: Vec<&[u8]> = group
                .iter()
                .map(|&(p, n, _)| {
                    let at = self.addr + (p * page) as usize;
                    // SAFETY: pages of the region, mapped (readable) while
                    // self lives; the region is quiescent during a snapshot
                    // (the caller's contract) and the slices die with `parts`.
                    unsafe { std::slice::from_raw_parts(at as *const u8, (n * page) as usize) }
                })
                .collect();
            if let Err((call, e)) = self.pool.write(&pieces[i], &parts) {
                for p in &pieces[i..] {
                    let _ = self.pool.free(p.slot, p.len);
                }
                return Err(XasmError::sys(op, self.what(), call)(e));
            }
            for &(p, n, slot) in group {
                replaced.clear();
                self.extents.redirect(p, n, slot, &mut replaced);
                for &(s, l) in &replaced {
                    self.ledger.replaced(s, l, version);
                }
                self.ledger.born(slot, n, version);
                // Whole chunks copied in one run are frames.
                let chunk = self.chunk_pages;
                let mut c = p.div_ceil(chunk);
                while c * chunk < p + n {
                    let (cp, cn) = self.chunk_range(c);
                    if cp + cn > p + n {
                        break;
                    }
                    self.frames.register(slot + (cp - p), cn, c, version);
                    c += 1;
                }
            }
        }
        Ok(total)
    }

    /// Over budget (after copying): rewrite whole chunks, refreshing their
    /// frames where possible, until the table has at most half the budget.
    /// Returns the pages copied.
    fn compact(&mut self, op: &'static str, version: u64) -> Result<u64> {
        let target = self.max_extents / 2;
        let mut copied = 0;
        // Only over budget; then down to `target`, so that the next
        // snapshots have room before compacting again (a region written in
        // runs settles under its budget and stops compacting).
        let mut limit = self.max_extents;
        for _round in 0..4 {
            if self.extents.len() <= limit {
                break;
            }
            limit = target;
            let plan = self.compaction_plan(target);
            if plan.is_empty() {
                break;
            }
            // These chunks' written pages were copied before: all extra.
            let (written, more) = self.rewrite_chunks(op, version, &plan)?;
            copied += written + more;
        }
        Ok(copied)
    }

    /// Which chunks to rewrite whole to bring the table to `target`
    /// extents: the fewest pages copied per extent saved first. A chunk
    /// whose retired frame can be refreshed costs the pages written since
    /// that frame's version; one without costs the whole chunk.
    fn compaction_plan(&self, target: usize) -> Vec<u64> {
        let mut need = self.extents.len() as isize - target as isize;
        // (chunk, extents saved, pages copied)
        let mut cands: Vec<(u64, u64, u64)> = self
            .extents
            .chunk_counts(self.chunk_pages)
            .into_iter()
            .filter(|(_, k)| *k > 1)
            .map(|(c, k)| {
                let copies = match self.frames.retired_content(c) {
                    Some(v) => self.written.count_since(c, v),
                    None => self.chunk_range(c).1,
                };
                (c, (k - 1) as u64, copies)
            })
            .collect();
        // Fewest pages per extent saved first (cross-multiplied).
        cands.sort_by(|a, b| (a.2 * b.1).cmp(&(b.2 * a.1)).then(a.0.cmp(&b.0)));
        let mut plan = Vec::new();
        for (c, saves, _) in cands {
            if need <= 0 {
                break;
            }
            plan.push(c);
            need -= saves as isize;
        }
        plan.sort_unstable();
        plan
    }

    /// Write the latest table (its first `pages` pages) into a new table
    /// memfd and export it as the composite segment `name`, removing the
    /// segments `retire` in the same request.
    fn publish_table(
        &self,
        op: &'static str,
        name: &str,
        pages: u64,
        retire: &[SegId],
    ) -> Result<Published> {
        let extents = self.extents.table(self.page as u64, pages);
        self.export(op, name, pages * self.page as u64, &extents, false, retire)
    }

    fn export(
        &self,
        op: &'static str,
        name: &str,
        size: u64,
        extents: &[Extent],
        alias: bool,
        retire: &[SegId],
    ) -> Result<Published> {
        let what = || format!("version {name}");
        let cname = CString::new(format!("xasm-table:{name}"))
            .map_err(|_| XasmError::invalid(op, format!("{} has a NUL byte", what())))?;
        let table = hobbes_sys::memfd_create(&cname, MemfdFlags::empty())
            .map_err(XasmError::sys(op, what(), "memfd_create"))?;
        composite::write_table(table.as_fd(), self.page as u32, size, extents)
            .map_err(XasmError::xemem(op, what()))?;
        let opts = MakeOptions {
            name: Some(name.to_string()),
            mode: self.mode,
            ..Default::default()
        };
        let segid =
            hobbes_xemem::make_composite_retiring(&table, self.pool.fd(), size, &opts, retire)
                .map_err(XasmError::xemem(op, what()))?;
        Ok(Published {
            segid,
            table,
            alias,
            removed: false,
        })
    }

    /// Free pool slots no live version uses (frames' pieces are held
    /// while the region is fragmented).
    fn free_unused(&mut self) {
        let freed = self.ledger.sweep();
        for (s, l) in self.frames.absorb(&freed, self.last_version) {
            let _ = self.pool.free(s, l);
        }
    }

    /// Reclaim versions beyond the newest K that nobody holds.
    fn reclaim_old(&mut self) -> usize {
        let old: Vec<u64> = self
            .versions
            .keys()
            .rev()
            .skip(self.keep)
            .copied()
            .collect();
        let mut n = 0;
        for v in old {
            if self.try_reclaim(v) {
                n += 1;
            }
        }
        if n > 0 {
            self.free_unused();
        }
        n
    }

    /// Retire and remove version `v` if no consumer holds any of its
    /// tables (`flock(LOCK_EX|LOCK_NB)` on our own descriptions succeeds)
    /// and no alias pins it.
    fn try_reclaim(&mut self, v: u64) -> bool {
        if !self.try_retire(v) {
            return false;
        }
        self.finish_retired(&[v], false);
        true
    }

    /// Take exclusive locks on all of version `v`'s tables (no consumer
    /// holds it) and mark them retired: from then on no get succeeds. The
    /// locks stay (our descriptions) until the tables are dropped.
    fn try_retire(&mut self, v: u64) -> bool {
        let Some(rec) = self.versions.get(&v) else {
            return false;
        };
        if rec.tables.iter().any(|t| t.alias && !t.removed) {
            return false;
        }
        let mut locked = Vec::new();
        for t in &rec.tables {
            match hobbes_sys::try_lock_exclusive(t.table.as_fd()) {
                Ok(true) => locked.push(t),
                _ => {
                    for l in locked {
                        let _ = hobbes_sys::unlock(l.table.as_fd());
                    }
                    return false;
                }
            }
        }
        // Holding the locks: a consumer's get now fails its shared lock or
        // reads `retired`.
        for t in &rec.tables {
            let _ = composite::mark_retired(t.table.as_fd());
        }
        true
    }

    /// Retire the versions the next one pushes out of the newest K (never
    /// the latest: with K = 1 it goes after the next is published).
    fn retire_replaced(&mut self) -> Vec<u64> {
        let candidates: Vec<u64> = self
            .versions
            .keys()
            .rev()
            .skip(self.keep.saturating_sub(1).max(1))
            .copied()
            .collect();
        candidates
            .into_iter()
            .filter(|&v| self.try_retire(v))
            .collect()
    }

    /// The name server ids of retired versions' tables, for one make to
    /// remove; none (each removed by itself afterwards) past the limit.
    fn segids_of(&self, versions: &[u64]) -> Vec<SegId> {
        let ids: Vec<SegId> = versions
            .iter()
            .filter_map(|v| self.versions.get(v))
            .flat_map(|r| r.tables.iter().filter(|t| !t.removed).map(|t| t.segid))
            .collect();
        if ids.len() > hobbes_proto::msg::MAX_RETIRE {
            Vec::new()
        } else {
            ids
        }
    }

    /// Forget retired versions: their segments were removed by the make
    /// that replaced them (`removed_by_make`), else remove them now.
    fn finish_retired(&mut self, versions: &[u64], removed_by_make: bool) {
        let batched = removed_by_make && !self.segids_of(versions).is_empty();
        for v in versions {
            if let Some(rec) = self.versions.remove(v) {
                if !batched {
                    for t in rec.tables.iter().filter(|t| !t.removed) {
                        let _ = hobbes_xemem::remove(t.segid);
                    }
                }
            }
            self.ledger.remove_live(*v);
        }
        if !versions.is_empty() {
            self.free_unused();
        }
    }

    /// Retry reclaiming old versions that were held at their time (the
    /// snapshot does this too). Returns how many were reclaimed.
    pub fn reclaim(&mut self) -> Result<usize> {
        let n = self.reclaim_old();
        let _ = self.pool.rotate();
        Ok(n)
    }

    /// Counters: versions, extents, pool memory.
    pub fn stats(&self) -> ProducerStats {
        let (size, resident, allocated, kept) = self.pool.usage();
        ProducerStats {
            latest_version: self.latest(),
            live_versions: self.versions.len(),
            held_versions: self.versions.len().saturating_sub(self.keep),
            latest_extents: self.extents.len() as u64,
            pool_size_bytes: size,
            pool_resident_bytes: resident,
            pool_allocated_bytes: allocated,
            pool_kept_bytes: kept,
            pool_frame_bytes: (self.frames.retired_pages() + self.frames.held_pages())
                * self.page as u64,
        }
    }

    /// Publish live version `version` (its first `size` bytes) under one
    /// more name, as a composite segment sharing the version's pool pages:
    /// the Kitten-style `xemem_make` of a copy. The alias pins the version
    /// (it is not reclaimed) until [`Producer::alias_removed`] says the
    /// alias segment was removed.
    pub fn publish_alias(&mut self, version: u64, name: &str, size: u64) -> Result<SegId> {
        const OP: &str = "xemem_make";
        let page = self.page as u64;
        if size == 0 || !size.is_multiple_of(page) || size > self.len as u64 {
            return Err(XasmError::invalid(
                OP,
                format!(
                    "{}: size {size} must be a non-zero multiple of the page size up to the region's {} bytes",
                    self.what(),
                    self.len
                ),
            ));
        }
        let rec = self.versions.get(&version).ok_or_else(|| {
            XasmError::not_found(OP, format!("version {}@{version} is not live", self.name))
        })?;
        let primary = &rec.tables[0];
        let (_, extents) = composite::read_table(primary.table.as_fd()).map_err(
            XasmError::xemem(OP, format!("version {}@{version}", self.name)),
        )?;
        let clipped: Vec<Extent> = extents
            .into_iter()
            .filter(|e| e.seg_offset < size)
            .map(|e| Extent {
                len: e.len.min(size - e.seg_offset),
                ..e
            })
            .collect();
        let published = self.export(OP, name, size, &clipped, true, &[])?;
        let segid = published.segid;
        self.versions
            .get_mut(&version)
            .expect("checked above")
            .tables
            .push(published);
        Ok(segid)
    }

    /// The alias segment `segid` was removed (by `xemem_remove`): it no
    /// longer pins its version, which is reclaimed once nobody holds it.
    /// Returns whether `segid` was an alias of this region.
    pub fn alias_removed(&mut self, segid: SegId) -> bool {
        for rec in self.versions.values_mut() {
            for t in rec.tables.iter_mut() {
                if t.alias && t.segid == segid {
                    t.removed = true;
                    return true;
                }
            }
        }
        false
    }

    /// Remove an alias made by [`publish_alias`](Self::publish_alias).
    pub fn remove_alias(&mut self, segid: SegId) -> Result<()> {
        const OP: &str = "xasm_remove_alias";
        if !self.versions.values().any(|r| {
            r.tables
                .iter()
                .any(|t| t.alias && t.segid == segid && !t.removed)
        }) {
            return Err(XasmError::not_found(
                OP,
                format!("{}: segment {segid} is not a live alias", self.what()),
            ));
        }
        hobbes_xemem::remove(segid).map_err(XasmError::xemem(OP, self.what()))?;
        self.alias_removed(segid);
        Ok(())
    }

    /// Numbers of the live (published, not reclaimed) versions.
    pub fn live_versions(&self) -> Vec<u64> {
        self.versions.keys().copied().collect()
    }
}

/// A chunk rewritten whole into the frame at `slot`, to point the table at.
struct Pointing {
    chunk: u64,
    slot: u64,
}

/// `[p, p+n)` cut at chunk boundaries.
fn split_at_chunks(p: u64, n: u64, chunk: u64) -> impl Iterator<Item = (u64, u64)> {
    let end = p + n;
    let mut at = p;
    std::iter::from_fn(move || {
        if at >= end {
            return None;
        }
        let stop = ((at / chunk + 1) * chunk).min(end);
        let piece = (at, stop - at);
        at = stop;
        Some(piece)
    })
}

impl Drop for Producer {
    fn drop(&mut self) {
        // Wake waiters first: they see the close, then the names vanish.
        if let Some(ch) = &self.channel {
            ch.close();
        }
        // Pool pages stay: consumers' attachments keep them (the kernel
        // frees them with the last mapping), so nothing is punched here.
        for rec in self.versions.values() {
            for t in &rec.tables {
                if !t.removed {
                    let _ = hobbes_xemem::remove(t.segid);
                }
            }
        }
        self.versions.clear();
        drop(self.channel.take());
        drop(self.tracker.take());
        if self.owned {
            // SAFETY: the region `create` mapped; the tracker and channel
            // are gone and `self` hands out no reference past its life.
            let _ = unsafe { mm::munmap(self.addr, self.len) };
        }
    }
}
