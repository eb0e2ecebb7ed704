//! xasm-probe: one side of an XASM exchange, for tests that run producers
//! and consumers as separate processes (on the host or in enclaves).
//!
//! The region has a fixed layout so any consumer can check any version on
//! its own: page 0 is a header (step, data pages, magic); then a stamp
//! table (one u64 per data page: the step that last wrote it); then the data
//! pages. Step s writes a subset of data pages (a deterministic function of
//! the seed and s), filling every word of each with `s << 24 | page`,
//! records s in the table, sets the header's step, and snapshots: version s.
//! A consumer of version v checks the header says v, every data page is
//! whole and carries the stamp the table records for it (at most v), and
//! every page step v wrote says v. A torn or mixed snapshot fails.
//!
//! Exit codes: 0 success, 1 error, 3 a check failed.

use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use hobbes_xasm::{diag, Consumer, Mechanism, Producer, RegionOptions, Snapshot, XasmError};

#[derive(Parser)]
#[command(about = "XASM producer/consumer (test helper)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run STEPS steps, one snapshot each, as fast as possible.
    Produce(ProduceArgs),
    /// Read commands from stdin (write P N | snap | reclaim | stats | quit | exit).
    Interactive(RegionArgs),
    /// Attach every newest version until the producer is gone; check each.
    Consume(ConsumeArgs),
    /// Attach one version and keep it until stdin says "check" (re-check)
    /// or closes; then wait for a newer version (expecting the producer gone).
    Hold(HoldArgs),
    /// Print which mechanisms work here: `MECHANISM scan yes|no <why>`.
    Mechanisms,
}

#[derive(Args, Clone)]
struct RegionArgs {
    #[arg(long)]
    name: String,
    /// Data pages (the region adds a header page and the stamp table).
    #[arg(long, default_value_t = 256)]
    pages: u64,
    #[arg(long, default_value_t = 2)]
    keep: usize,
    /// scan or mprotect (default: HOBBES_XASM_MECHANISM, else the probe).
    #[arg(long)]
    mechanism: Option<Mechanism>,
    #[arg(long, default_value_t = hobbes_xasm::DEFAULT_MAX_EXTENTS)]
    max_extents: usize,
    #[arg(long, default_value_t = 0o644, value_parser = parse_octal)]
    mode: u32,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Args)]
struct ProduceArgs {
    #[command(flatten)]
    region: RegionArgs,
    #[arg(long, default_value_t = 1000)]
    steps: u64,
    /// Fail (exit 3) when the pool's resident memory exceeds this.
    #[arg(long)]
    max_pool_mib: Option<u64>,
    /// Before the first step, wait (up to 60 s) until this many consumers
    /// have the region's channel open (the name server counts them).
    #[arg(long, default_value_t = 0)]
    wait_consumers: u32,
    /// Keep the region this long after the last step.
    #[arg(long, default_value_t = 0)]
    linger_ms: u64,
}

#[derive(Args)]
struct ConsumeArgs {
    #[arg(long)]
    name: String,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Fail unless at least this many versions were checked.
    #[arg(long, default_value_t = 1)]
    min_versions: u64,
    /// How long to retry opening the region.
    #[arg(long, default_value_t = 20_000)]
    open_ms: u64,
}

#[derive(Args)]
struct HoldArgs {
    #[arg(long)]
    name: String,
    /// The producer's seed (a `produce` run): also check that every page
    /// the version's own step wrote carries its stamp.
    #[arg(long)]
    seed: Option<u64>,
    /// The version (default: the latest).
    #[arg(long)]
    version: Option<u64>,
}

fn parse_octal(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s.trim_start_matches("0o"), 8).map_err(|e| format!("{s:?}: {e}"))
}

struct Failure {
    code: u8,
    message: String,
}

impl From<XasmError> for Failure {
    fn from(e: XasmError) -> Self {
        Failure {
            code: 1,
            message: e.to_string(),
        }
    }
}

fn check_failed(message: impl Into<String>) -> Failure {
    Failure {
        code: 3,
        message: message.into(),
    }
}

fn main() -> ExitCode {
    let result = match Cli::parse().cmd {
        Cmd::Produce(a) => produce(a),
        Cmd::Interactive(a) => interactive(a),
        Cmd::Consume(a) => consume(a),
        Cmd::Hold(a) => hold(a),
        Cmd::Mechanisms => {
            for m in [Mechanism::Scan, Mechanism::Mprotect] {
                let why = match m {
                    Mechanism::Scan => hobbes_xasm::scan_unavailable_reason().unwrap_or_default(),
                    Mechanism::Mprotect => String::new(),
                };
                let ok = hobbes_xasm::mechanism_available(m);
                say(format!(
                    "MECHANISM {m} {} {why}",
                    if ok { "yes" } else { "no" }
                ));
            }
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            println!("FAILED {}", f.message);
            eprintln!("error: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

fn say(line: String) {
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

// ---------------------------------------------------------------- layout

const PAGE: usize = 4096;
const MAGIC: u64 = 0x5841_534d_5052_4f42; // "XASMPROB"

/// Where things are in the region.
#[derive(Clone, Copy)]
struct Layout {
    pages: u64,
    table_pages: u64,
}

impl Layout {
    fn new(pages: u64) -> Layout {
        Layout {
            pages,
            table_pages: (pages * 8).div_ceil(PAGE as u64),
        }
    }

    fn from_header(bytes: &[u8]) -> Result<Layout, Failure> {
        if word(bytes, 2) != MAGIC {
            return Err(check_failed(
                "header magic missing: not an xasm-probe region",
            ));
        }
        Ok(Layout::new(word(bytes, 1)))
    }

    fn region_len(&self) -> usize {
        (1 + self.table_pages + self.pages) as usize * PAGE
    }

    fn data(&self, p: u64) -> usize {
        (1 + self.table_pages + p) as usize * PAGE
    }

    fn table_word(&self, p: u64) -> usize {
        PAGE / 8 + p as usize
    }
}

fn word(bytes: &[u8], i: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&bytes[i * 8..i * 8 + 8]);
    u64::from_le_bytes(w)
}

fn set_word(bytes: &mut [u8], i: usize, v: u64) {
    bytes[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
}

fn stamp(step: u64, page: u64) -> u64 {
    (step << 24) | page
}

/// splitmix64
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
}

/// The data pages step `step` writes: none, all, or a run plus scattered pages.
fn subset(seed: u64, step: u64, pages: u64) -> Vec<u64> {
    let mut rng = Rng(seed ^ step.wrapping_mul(0xD1B5_4A32_D192_ED03));
    let mut v: Vec<u64> = match step % 8 {
        0 => Vec::new(),
        1 => (0..pages).collect(),
        _ => {
            let start = rng.below(pages);
            let len = rng.below(pages / 4 + 1);
            let mut v: Vec<u64> = (start..(start + len).min(pages)).collect();
            for _ in 0..rng.below(32) {
                v.push(rng.below(pages));
            }
            v
        }
    };
    v.sort_unstable();
    v.dedup();
    v
}

/// Write step `step`'s pages into the working memory.
fn write_step(mem: &mut [u8], layout: &Layout, step: u64, pages: &[u64]) {
    for &p in pages {
        let s = stamp(step, p).to_le_bytes();
        let at = layout.data(p);
        for w in mem[at..at + PAGE].chunks_exact_mut(8) {
            w.copy_from_slice(&s);
        }
        set_word(mem, layout.table_word(p), step);
    }
    set_word(mem, 0, step);
    set_word(mem, 1, layout.pages);
    set_word(mem, 2, MAGIC);
}

/// Check a whole version; returns how many data pages carried stamp `v`.
fn check_version(snap: &Snapshot, seed: Option<u64>) -> Result<u64, Failure> {
    let bytes = snap.as_slice();
    let v = snap.version();
    let layout = Layout::from_header(bytes)?;
    if layout.region_len() != bytes.len() {
        return Err(check_failed(format!(
            "version {v}: layout needs {} bytes, the version has {}",
            layout.region_len(),
            bytes.len()
        )));
    }
    if word(bytes, 0) != v {
        return Err(check_failed(format!(
            "version {v}: header says step {}",
            word(bytes, 0)
        )));
    }
    let mut fresh = 0;
    for p in 0..layout.pages {
        let s = word(bytes, layout.table_word(p));
        if s > v {
            return Err(check_failed(format!(
                "version {v}: page {p} is recorded as written at later step {s}"
            )));
        }
        let want = if s == 0 { 0 } else { stamp(s, p) };
        let at = layout.data(p);
        let page = &bytes[at..at + PAGE];
        // Every word equals the first (the page shifted by one word is the
        // same bytes: one memcmp), and the first is the stamp.
        if word(page, 0) != want || page[8..] != page[..PAGE - 8] {
            let (i, got) = page
                .chunks_exact(8)
                .map(|w| u64::from_le_bytes(w.try_into().expect("8 bytes")))
                .enumerate()
                .find(|(_, w)| *w != want)
                .unwrap_or((0, want));
            return Err(check_failed(format!(
                "TORN version {v}: page {p} word {i} is {got:#x}, expected {want:#x} (step {s})"
            )));
        }
        fresh += u64::from(s == v);
    }
    for p in seed.map_or(Vec::new(), |seed| subset(seed, v, layout.pages)) {
        let s = word(bytes, layout.table_word(p));
        if s != v {
            return Err(check_failed(format!(
                "STALE version {v}: page {p} was written at step {v} but the version has step {s}"
            )));
        }
    }
    Ok(fresh)
}

fn region_options(a: &RegionArgs) -> RegionOptions {
    RegionOptions {
        name: a.name.clone(),
        mode: a.mode,
        keep: a.keep,
        mechanism: a.mechanism,
        max_extents: a.max_extents,
    }
}

// -------------------------------------------------------------- producer

fn produce(a: ProduceArgs) -> Result<(), Failure> {
    let layout = Layout::new(a.region.pages);
    let mut p = Producer::create(layout.region_len(), &region_options(&a.region))?;
    say(format!(
        "REGION {} len={} mechanism={}",
        p.name(),
        p.len(),
        p.mechanism()
    ));
    if a.wait_consumers > 0 {
        wait_consumers(p.name(), a.wait_consumers)?;
    }
    // The NIS reader (two descriptors, opened once per process: retiring
    // makes check it) belongs to the base, not to growth over the run.
    let _ = hobbes_xemem::lookup(p.name());
    let base_fds = diag::open_fds();
    let (mut max_resident, mut max_size, mut max_fds, mut max_extents, mut max_live) =
        (0, 0, 0, 0, 0);
    let (mut copied, mut dirty, mut compacted) = (0u64, 0u64, 0u64);
    let t0 = Instant::now();
    for step in 1..=a.steps {
        let pages = subset(a.region.seed, step, layout.pages);
        write_step(p.as_mut_slice(), &layout, step, &pages);
        let info = p.snapshot()?;
        if info.version != step {
            return Err(check_failed(format!(
                "step {step} published version {}",
                info.version
            )));
        }
        copied += info.copied_pages;
        dirty += info.dirty_pages;
        compacted += info.compacted_pages;
        let st = p.stats();
        max_resident = max_resident.max(st.pool_resident_bytes);
        max_size = max_size.max(st.pool_size_bytes);
        max_extents = max_extents.max(st.latest_extents);
        max_live = max_live.max(st.live_versions);
        max_fds = max_fds.max(diag::open_fds());
        if let Some(mib) = a.max_pool_mib {
            if st.pool_resident_bytes > mib << 20 {
                return Err(check_failed(format!(
                    "LEAK at step {step}: pool resident {} bytes > {mib} MiB ({st:?})",
                    st.pool_resident_bytes
                )));
            }
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    say(format!(
        "DONE steps={} secs={secs:.2} per_snapshot_us={:.1} dirty={dirty} copied={copied} compacted={compacted} max_resident={max_resident} max_pool_size={max_size} max_extents={max_extents} max_live={max_live} base_fds={base_fds} max_fds={max_fds} region_len={} mechanism={}",
        a.steps,
        secs * 1e6 / a.steps.max(1) as f64,
        p.len(),
        p.mechanism()
    ));
    std::thread::sleep(Duration::from_millis(a.linger_ms));
    drop(p);
    say("CLOSED".into());
    Ok(())
}

/// Poll the name server until `n` processes map the channel `name`.
fn wait_consumers(name: &str, n: u32) -> Result<(), Failure> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let list = hobbes_xemem::list().map_err(|e| check_failed(format!("list: {e}")))?;
        let have = list
            .iter()
            .find(|s| s.record.name.as_deref() == Some(name))
            .map_or(0, |s| s.attachments);
        if have >= n {
            say(format!("CONSUMERS {have}"));
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(check_failed(format!(
                "only {have} of {n} consumers opened region {name} in 60 s"
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn stats_line(p: &Producer) -> String {
    let st = p.stats();
    format!(
        "latest={} live={} held={} extents={} resident={} size={} allocated={} kept={} frames={} versions={:?}",
        st.latest_version,
        st.live_versions,
        st.held_versions,
        st.latest_extents,
        st.pool_resident_bytes,
        st.pool_size_bytes,
        st.pool_allocated_bytes,
        st.pool_kept_bytes,
        st.pool_frame_bytes,
        p.live_versions()
    )
}

fn interactive(a: RegionArgs) -> Result<(), Failure> {
    let layout = Layout::new(a.pages);
    let mut p = Producer::create(layout.region_len(), &region_options(&a))?;
    say(format!(
        "REGION {} len={} mechanism={}",
        p.name(),
        p.len(),
        p.mechanism()
    ));
    let mut step = 0;
    let mut pending: Vec<u64> = Vec::new();
    for line in std::io::stdin().lock().lines() {
        let line = line.map_err(|e| check_failed(format!("stdin: {e}")))?;
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["write", first, n] => {
                let (first, n): (u64, u64) = (first.parse().unwrap_or(0), n.parse().unwrap_or(0));
                pending.extend((first..first + n).filter(|x| *x < layout.pages));
                say("OK".into());
            }
            ["snap"] => {
                step += 1;
                let pages = std::mem::take(&mut pending);
                write_step(p.as_mut_slice(), &layout, step, &pages);
                let i = p.snapshot()?;
                say(format!(
                    "SNAP version={} dirty={} copied={} compacted={} extents={} reclaimed={} us={} {}",
                    i.version,
                    i.dirty_pages,
                    i.copied_pages,
                    i.compacted_pages,
                    i.extents,
                    i.reclaimed_versions,
                    i.elapsed.as_micros(),
                    stats_line(&p)
                ));
            }
            ["touch"] => {
                // Snapshot with nothing written at all (not even the header).
                let i = p.snapshot()?;
                step = i.version;
                say(format!(
                    "SNAP version={} dirty={} copied={} compacted={} extents={} reclaimed={} us={} {}",
                    i.version,
                    i.dirty_pages,
                    i.copied_pages,
                    i.compacted_pages,
                    i.extents,
                    i.reclaimed_versions,
                    i.elapsed.as_micros(),
                    stats_line(&p)
                ));
            }
            ["reclaim"] => {
                let n = p.reclaim()?;
                say(format!("RECLAIMED {n} {}", stats_line(&p)));
            }
            ["stats"] => say(format!("STATS {}", stats_line(&p))),
            ["quit"] => break,
            // Exit without dropping the producer (as a crash would).
            ["exit"] => std::process::exit(0),
            _ => say(format!("ERR unknown command {line:?}")),
        }
    }
    drop(p);
    say("CLOSED".into());
    Ok(())
}

// -------------------------------------------------------------- consumer

fn open(name: &str, open_ms: u64) -> Result<Consumer, Failure> {
    let deadline = Instant::now() + Duration::from_millis(open_ms);
    loop {
        match Consumer::open(name) {
            Ok(c) => return Ok(c),
            Err(XasmError::NotFound { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn consume(a: ConsumeArgs) -> Result<(), Failure> {
    let c = open(&a.name, a.open_ms)?;
    say(format!("OPEN {}", a.name));
    let (base_maps, base_fds) = (diag::mappings(), diag::open_fds());
    let (mut max_maps, mut max_fds) = (base_maps, base_fds);
    let (mut checked, mut missed, mut fresh_pages) = (0u64, 0u64, 0u64);
    let mut last = 0;
    let end = loop {
        let v = match c.wait_newer(last, Some(Duration::from_secs(30))) {
            Ok(Some(v)) => v,
            Ok(None) => break "timeout".to_string(),
            Err(XasmError::ProducerGone { reason, .. }) => break reason,
            Err(e) => return Err(e.into()),
        };
        last = v;
        match c.attach(v) {
            Ok(snap) => {
                max_maps = max_maps.max(diag::mappings());
                max_fds = max_fds.max(diag::open_fds());
                fresh_pages += check_version(&snap, Some(a.seed))?;
                checked += 1;
            }
            // Reclaimed before we got to it (we lag): fine, take the next.
            Err(XasmError::NotFound { .. }) => missed += 1,
            Err(e) => return Err(e.into()),
        }
    };
    let (maps, fds) = (diag::mappings(), diag::open_fds());
    say(format!(
        "CONSUMED checked={checked} missed={missed} last={last} fresh_pages={fresh_pages} base_maps={base_maps} max_maps={max_maps} end_maps={maps} base_fds={base_fds} max_fds={max_fds} end_fds={fds} end={end:?}"
    ));
    if checked < a.min_versions {
        return Err(check_failed(format!(
            "checked only {checked} versions, wanted {}",
            a.min_versions
        )));
    }
    Ok(())
}

fn hold(a: HoldArgs) -> Result<(), Failure> {
    let c = open(&a.name, 10_000)?;
    let snap = match a.version {
        Some(v) => c.attach(v)?,
        None => c
            .attach_latest()?
            .ok_or_else(|| check_failed("nothing published yet"))?,
    };
    check_version(&snap, a.seed)?;
    say(format!("HELD {}", snap.version()));
    let mut lines = std::io::stdin().lock().lines();
    while let Some(Ok(line)) = lines.next() {
        if line.trim() == "check" {
            check_version(&snap, a.seed)?;
            say(format!("INTACT {}", snap.version()));
        } else if line.trim() == "wait" {
            match c.wait_newer(c.latest().unwrap_or(0), Some(Duration::from_secs(10))) {
                Err(XasmError::ProducerGone { reason, .. }) => say(format!("GONE {reason}")),
                Ok(v) => say(format!("NEWER {v:?}")),
                Err(e) => say(format!("ERROR {e} errno={}", e.errno())),
            }
        } else if line.trim() == "release" {
            break;
        }
    }
    let v = snap.version();
    drop(snap);
    say(format!("RELEASED {v}"));
    Ok(())
}
