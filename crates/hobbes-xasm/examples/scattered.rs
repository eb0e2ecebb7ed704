//! Snapshot latency of a region written at random (the formal benchmark,
//! with its memcpy floor, is `hobbes-bench xasm`): prints each round's
//! snapshot time, extents and compacted pages, to watch a write pattern
//! settle or to profile one.
//!
//! ```sh
//! cargo build --release -p leviathan -p hobbes-xasm --example scattered
//! target/release/leviathan --state-dir /tmp/x --unprivileged &
//! HOBBES_STATE_DIR=/tmp/x target/release/examples/scattered 1024 0.01 1 4096 20
//! #                                       region MiB, density, run pages, max_extents, rounds
//! ```

use std::time::Instant;

use hobbes_xasm::{Producer, RegionOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let arg = |i: usize, d: &str| std::env::args().nth(i).unwrap_or_else(|| d.to_string());
    let mib: usize = arg(1, "1024").parse()?;
    let density: f64 = arg(2, "0.01").parse()?;
    let run: usize = arg(3, "1").parse::<usize>()?.max(1);
    let max_extents: usize = arg(4, "4096").parse()?;
    let rounds: usize = arg(5, "20").parse()?;
    let pages = mib << 8;
    let opts = RegionOptions {
        max_extents,
        ..RegionOptions::named("scattered")
    };
    let mut p = Producer::create(pages * 4096, &opts)?;
    p.as_mut_slice().fill(1);
    p.snapshot()?;
    let n = (pages as f64 * density) as usize;
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for round in 0..rounds {
        let mem = p.as_mut_slice();
        let mut written = 0;
        while written < n {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let first = ((x >> 33) as usize % (pages / run)) * run;
            for pg in first..first + run {
                mem[pg * 4096] = mem[pg * 4096].wrapping_add(1);
            }
            written += run;
        }
        let f0 = minor_faults();
        let t = Instant::now();
        let info = p.snapshot()?;
        let faults = minor_faults() - f0;
        let st = p.stats();
        println!(
            "round {round:>3}: {:>9.3} ms  faults {faults:>6}  dirty {:>6}  compacted {:>7}  extents {:>6}  frames {:>5} MiB  pool {:>5} MiB",
            t.elapsed().as_secs_f64() * 1e3,
            info.dirty_pages,
            info.compacted_pages,
            info.extents,
            st.pool_frame_bytes >> 20,
            st.pool_resident_bytes >> 20,
        );
    }
    Ok(())
}

/// This process's minor page faults so far.
fn minor_faults() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Field 10 (minflt), counted after the command name's closing parenthesis.
    stat.rsplit(')')
        .next()
        .and_then(|rest| rest.split_whitespace().nth(7))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
