//! `hobbes-bench xasm`: XASM snapshots against the kernel's own
//! copy-on-write, in the same run.
//!
//! 1. Total cost per page written after a snapshot: the write fault plus
//!    everything the next snapshot spends (finding the page, copying it,
//!    publishing the version), in ns and cycles (rdtsc), for the `scan`
//!    and `mprotect` mechanisms, against the COW fault of a page shared
//!    with a `fork` child. Target: no more than the kernel (1x).
//! 2. Snapshot publish latency of a 1 GiB region with 0%, 0.1%, 1% and 10%
//!    of its pages written (single pages at random with the default extent
//!    budget and with a large one, and random 64-page runs), per mechanism,
//!    against a memcpy of the same pages, both from a cold cache, each level
//!    on a fresh region once settled. Targets: single pages within 3x, runs
//!    within 2x.

use std::time::Instant;

use anyhow::{Context, Result};
use hobbes_xasm::{diag, mechanism_available, Mechanism, Producer, RegionOptions};

use crate::{header, median, row, BenchDaemon};

const PAGE: usize = 4096;
const ROUNDS: usize = 9;
/// Pages written per round of the per-page bench (64 MiB).
const COST_PAGES: usize = 16384;
/// Issue 15: a page written and snapshotted costs no more than the kernel's
/// own COW fault (the XASM paper's claim was within 2x).
const COST_TARGET: f64 = 1.0;

pub fn bench(d: &BenchDaemon) -> Result<()> {
    std::env::set_var(hobbes_client::proto::ENV_STATE_DIR, d.dir.path());
    std::env::remove_var(hobbes_client::proto::ENV_SOCKET);
    std::env::remove_var(hobbes_client::proto::ENV_NIS);
    std::env::remove_var(hobbes_xasm::MECHANISM_ENV);
    let mechanisms: Vec<Mechanism> = [Mechanism::Scan, Mechanism::Mprotect]
        .into_iter()
        .filter(|m| {
            let ok = mechanism_available(*m);
            if !ok {
                println!(
                    "{m}: not available here ({})",
                    hobbes_xasm::scan_unavailable_reason().unwrap_or_default()
                );
            }
            ok
        })
        .collect();
    let started = Instant::now();
    per_page_cost(&mechanisms)?;
    publish_latency(&mechanisms)?;
    println!("\nxasm bench took {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Write one word into each of `pages` pages of `mem`: (ns, cycles) per page.
fn write_pages(mem: &mut [u8], pages: usize, value: u8) -> (f64, f64) {
    let t = Instant::now();
    let c0 = diag::cycles();
    for p in 0..pages {
        mem[p * PAGE] = value;
    }
    // The stores must happen (the COW buffer is never read again).
    std::hint::black_box(&mut *mem);
    let c1 = diag::cycles();
    (
        t.elapsed().as_nanos() as f64 / pages as f64,
        (c1 - c0) as f64 / pages as f64,
    )
}

/// One mechanism's per-page numbers for one round.
struct Round {
    fault_ns: f64,
    fault_cycles: f64,
    snap_ns: f64,
    snap_cycles: f64,
}

fn xasm_round(p: &mut Producer, value: u8) -> Result<Round> {
    let (fault_ns, fault_cycles) = write_pages(p.as_mut_slice(), COST_PAGES, value);
    let t = Instant::now();
    let c0 = diag::cycles();
    let info = p.snapshot()?;
    let c1 = diag::cycles();
    let snap = t.elapsed().as_nanos() as f64;
    anyhow::ensure!(
        info.copied_pages == COST_PAGES as u64,
        "copied {} pages, wrote {COST_PAGES}",
        info.copied_pages
    );
    Ok(Round {
        fault_ns,
        fault_cycles,
        snap_ns: snap / COST_PAGES as f64,
        snap_cycles: (c1 - c0) as f64 / COST_PAGES as f64,
    })
}

/// The kernel's COW: pages shared with a fork child, written by the parent.
fn fork_round(mem: &mut [u8], value: u8) -> Result<(f64, f64)> {
    let (r, w) = nix::unistd::pipe()?;
    // SAFETY: the child only calls async-signal-safe functions (read, _exit)
    // before it exits.
    let pid = match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Child => {
            drop(w);
            let mut b = [0u8; 1];
            let _ = nix::unistd::read(&r, &mut b);
            // SAFETY: _exit never returns and runs no destructors.
            unsafe { libc::_exit(0) }
        }
        nix::unistd::ForkResult::Parent { child } => child,
    };
    drop(r);
    let cost = write_pages(mem, COST_PAGES, value);
    drop(w);
    nix::sys::wait::waitpid(pid, None)?;
    Ok(cost)
}

fn per_page_cost(mechanisms: &[Mechanism]) -> Result<()> {
    let mut producers = Vec::new();
    for m in mechanisms {
        let opts = RegionOptions {
            mechanism: Some(*m),
            keep: 1,
            ..RegionOptions::named(format!("bench-cost-{m}"))
        };
        let mut p = Producer::create(COST_PAGES * PAGE, &opts)?;
        // Populated and published once: the rounds measure re-writes.
        p.as_mut_slice().fill(1);
        p.snapshot()?;
        producers.push(p);
    }
    let mut cow = vec![1u8; COST_PAGES * PAGE];
    let mut rounds: Vec<Vec<Round>> = (0..mechanisms.len()).map(|_| Vec::new()).collect();
    let (mut cow_ns, mut cow_cycles) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let value = round as u8 + 2;
        // Rotate the order so no one always runs first.
        for k in 0..=mechanisms.len() {
            let i = (k + round) % (mechanisms.len() + 1);
            if i == mechanisms.len() {
                let (ns, cy) = fork_round(&mut cow, value)?;
                cow_ns.push(ns);
                cow_cycles.push(cy);
            } else {
                rounds[i].push(xasm_round(&mut producers[i], value)?);
            }
        }
    }
    let (cow_ns, cow_cycles) = (median(cow_ns), median(cow_cycles));
    header(&format!(
        "XASM: total cost per page written after a snapshot ({COST_PAGES} pages = 64 MiB per round, median of {ROUNDS})"
    ));
    for (m, r) in mechanisms.iter().zip(&rounds) {
        let med = |f: fn(&Round) -> f64| median(r.iter().map(f).collect());
        let (fault, snap) = (med(|r| r.fault_ns), med(|r| r.snap_ns));
        let (fault_cy, snap_cy) = (med(|r| r.fault_cycles), med(|r| r.snap_cycles));
        let total = median(r.iter().map(|r| r.fault_ns + r.snap_ns).collect());
        let total_cy = median(r.iter().map(|r| r.fault_cycles + r.snap_cycles).collect());
        let ratio = total / cow_ns;
        let verdict = if ratio <= COST_TARGET {
            "met"
        } else {
            "missed"
        };
        row(
            &format!("{m}: fault + snapshot (ns/page) vs fork COW fault"),
            total,
            cow_ns,
            "ns",
            &format!("<= {COST_TARGET}x: {verdict}"),
        );
        row(
            &format!("{m}: fault + snapshot (cycles/page) vs fork COW"),
            total_cy,
            cow_cycles,
            "cy",
            "",
        );
        println!(
            "    {m}: write fault {fault:.0} ns ({fault_cy:.0} cycles), snapshot {snap:.0} ns ({snap_cy:.0} cycles) per page"
        );
    }
    Ok(())
}

/// `n` distinct pages of `pages`, in runs of `run` pages starting at
/// random run-aligned places.
fn random_pages(n: usize, pages: usize, run: usize, seed: u64) -> Vec<usize> {
    let runs = pages / run;
    let mut x = seed | 1;
    let mut taken = vec![false; runs];
    let mut v = Vec::with_capacity(n);
    while v.len() < n {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let r = (x >> 33) as usize % runs;
        if !taken[r] {
            taken[r] = true;
            v.extend((r * run..(r + 1) * run).take(n - v.len()));
        }
    }
    v
}

/// Bytes streamed through to push the written pages out of the caches
/// before each timed copy (this node reports a 260 MiB L3).
const EVICT_BYTES: usize = 320 << 20;

/// Read and write every cache line of `buf`, so that what was cached before
/// (the pages just written, or just copied) is not.
fn evict_caches(buf: &mut [u8]) {
    for line in buf.chunks_mut(64) {
        line[0] = line[0].wrapping_add(1);
    }
    std::hint::black_box(&mut *buf);
}

fn verdict(ratio: f64, target: f64) -> String {
    let met = if ratio <= target { "met" } else { "missed" };
    format!("<= {target}x: {met}")
}

/// How the written pages are laid out, and the extent budget.
struct Pattern {
    what: &'static str,
    run: usize,
    max_extents: usize,
}

fn publish_latency(mechanisms: &[Mechanism]) -> Result<()> {
    const GIB: usize = 1 << 30;
    const REPS: usize = 7;
    let pages = GIB / PAGE;
    // Each level starts from a fresh region and runs this many rounds
    // before it is measured, so that the medians are the steady state of
    // that write pattern (scattered writes first build each chunk's
    // frames: the longest of these rounds is printed).
    const WARMUP: usize = 32;
    let levels = [0.0, 0.001, 0.01, 0.10];
    let patterns = [
        Pattern {
            what: "single pages",
            run: 1,
            max_extents: hobbes_xasm::DEFAULT_MAX_EXTENTS,
        },
        Pattern {
            what: "single pages, max_extents 65536",
            run: 1,
            max_extents: 65536,
        },
        Pattern {
            what: "64-page runs",
            run: 64,
            max_extents: hobbes_xasm::DEFAULT_MAX_EXTENTS,
        },
    ];
    header(&format!(
        "XASM: snapshot publish latency, 1 GiB region, written pages at random (median of {REPS}; floor: memcpy of the written pages; both from a cold cache)"
    ));
    let mut scratch = vec![0u8; pages / 10 * PAGE];
    let mut evict = vec![1u8; EVICT_BYTES];
    for m in mechanisms {
        for pat in &patterns {
            let opts = RegionOptions {
                mechanism: Some(*m),
                keep: 2,
                max_extents: pat.max_extents,
                ..RegionOptions::named(format!("bench-1g-{m}"))
            };
            for level in levels {
                let mut p = Producer::create(GIB, &opts).context("1 GiB region")?;
                p.as_mut_slice().fill(1);
                let t = Instant::now();
                let first = p.snapshot()?;
                if level == 0.0 {
                    println!(
                        "    {m}, {}: first snapshot (copies all 1 GiB): {:.1} ms, {} extents",
                        pat.what,
                        t.elapsed().as_secs_f64() * 1e3,
                        first.extents
                    );
                }
                let n = (pages as f64 * level) as usize;
                let (mut ours, mut floor, mut compacted) = (Vec::new(), Vec::new(), Vec::new());
                let mut extents = 0;
                let mut warmup_max: f64 = 0.0;
                for round in 0..WARMUP + REPS {
                    let seed = (round as u64 + 1) * 7919 + n as u64;
                    let dirty = random_pages(n, pages, pat.run, seed);
                    let mem = p.as_mut_slice();
                    for &pg in &dirty {
                        mem[pg * PAGE] = round as u8;
                    }
                    if round >= WARMUP {
                        evict_caches(&mut evict);
                    }
                    let t = Instant::now();
                    let info = p.snapshot()?;
                    if round < WARMUP {
                        warmup_max = warmup_max.max(t.elapsed().as_secs_f64() * 1e6);
                        continue;
                    }
                    ours.push(t.elapsed().as_secs_f64() * 1e6);
                    compacted.push(info.compacted_pages as f64);
                    extents = extents.max(info.extents);
                    anyhow::ensure!(info.copied_pages as usize == n, "{info:?}");
                    // The floor: copying the same pages out of the region,
                    // from a cold cache too (right after the snapshot they
                    // would be in it, which favours the floor).
                    evict_caches(&mut evict);
                    let mem = p.as_mut_slice();
                    let t = Instant::now();
                    for (i, &pg) in dirty.iter().enumerate() {
                        scratch[i * PAGE..(i + 1) * PAGE]
                            .copy_from_slice(&mem[pg * PAGE..(pg + 1) * PAGE]);
                    }
                    floor.push(t.elapsed().as_secs_f64() * 1e6);
                    std::hint::black_box(&scratch);
                }
                // The mean too: the median of a pattern that compacts every
                // few snapshots leaves the compactions out.
                let mean = ours.iter().sum::<f64>() / ours.len().max(1) as f64;
                let (o, f) = (median(ours), median(floor));
                // Issue 15's targets: single pages within 3x of the copy,
                // runs within 2x.
                let target = match (n, pat.run) {
                    (0, _) => String::new(),
                    (_, 1) => verdict(o / f, 3.0),
                    _ => verdict(o / f, 2.0),
                };
                row(
                    &format!("{m}: {:>4}% {}", level * 100.0, pat.what),
                    o,
                    f.max(0.01),
                    "us",
                    &target,
                );
                if n == 0 {
                    println!(
                        "    (nothing written: {:.1} ns per region page to find that out and publish)",
                        o * 1e3 / pages as f64
                    );
                } else {
                    println!(
                        "    ({n} pages written, up to {extents} extents, median {} pages compacted; mean {:.0} us = {:.2}x; {WARMUP} rounds before: longest {:.1} ms)",
                        median(compacted),
                        mean,
                        mean / f.max(0.01),
                        warmup_max / 1e3
                    );
                }
            }
        }
    }
    Ok(())
}
