//! Quick per-page cost of XASM snapshots (the formal benchmark, with the
//! fork COW peer, is `hobbes-bench xasm`): a 64 MiB region, every page
//! written between snapshots, keep 1; prints the write (fault) and the
//! snapshot cost per page of each round.
//!
//! ```sh
//! cargo build --release -p leviathan -p hobbes-xasm --example snapcost
//! target/release/leviathan --state-dir /tmp/x --unprivileged &
//! HOBBES_STATE_DIR=/tmp/x target/release/examples/snapcost scan   # or mprotect
//! ```

use std::time::Instant;

use hobbes_xasm::{Mechanism, Producer, RegionOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pages = 16384usize;
    let m: Mechanism = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "scan".into())
        .parse()?;
    let opts = RegionOptions {
        mechanism: Some(m),
        keep: 1,
        ..RegionOptions::named("snapcost")
    };
    let mut p = Producer::create(pages * 4096, &opts)?;
    p.as_mut_slice().fill(1);
    p.snapshot()?;
    for round in 0..12u8 {
        let t = Instant::now();
        let mem = p.as_mut_slice();
        for i in 0..pages {
            mem[i * 4096] = round;
        }
        let write = t.elapsed().as_nanos() as f64 / pages as f64;
        let t = Instant::now();
        let info = p.snapshot()?;
        let snap = t.elapsed().as_nanos() as f64 / pages as f64;
        let st = p.stats();
        println!(
            "{m} round {round}: write {write:.0} ns/page, snapshot {snap:.0} ns/page ({} copied), pool resident {} MiB",
            info.copied_pages,
            st.pool_resident_bytes >> 20
        );
    }
    Ok(())
}
