//! XASM: consistent copy-on-write snapshots of a producer's memory,
//! published as XEMEM segments. See docs/xasm.md.
//!
//! A producer registers a region of its memory and calls
//! [`Producer::snapshot`] whenever the contents are consistent (a time
//! step); each call publishes version N as the read-only composite XEMEM
//! segment `<region>@<N>` and announces it on the region's channel.
//! Consumers in any enclave wait on the channel and attach versions; a
//! version never changes under them, and the producer keeps computing.
//!
//! ```no_run
//! use hobbes_xasm::{Consumer, Producer, RegionOptions};
//!
//! // Producer: 1 MiB of state, snapshots every step.
//! let mut p = Producer::create(1 << 20, &RegionOptions::named("flux"))?;
//! for step in 0..10u8 {
//!     p.as_mut_slice()[..4096].fill(step);   // compute
//!     let info = p.snapshot()?;              // publish flux@<N>
//!     assert_eq!(info.version, step as u64 + 1);
//! }
//!
//! // Consumer, any process, any enclave:
//! let c = Consumer::open("flux")?;
//! let v = c.wait_newer(0, None)?.expect("waited forever");
//! let snap = c.attach(v)?;                   // read-only, never torn
//! let _sum: u64 = snap.as_slice().iter().map(|b| *b as u64).sum();
//! # Ok::<(), hobbes_xasm::XasmError>(())
//! ```
//!
//! Pages written between two snapshots are found by one of two mechanisms
//! ([`Mechanism`]): `scan` (userfaultfd asynchronous write-protection and
//! `PAGEMAP_SCAN`, Linux 6.7+) or `mprotect` (a SIGSEGV handler, any
//! kernel); only those pages are copied into the region's pool at the
//! snapshot, and unchanged pages are shared between versions.

#![deny(missing_docs)]

mod channel;
mod consumer;
mod error;
mod extents;
mod frames;
mod ledger;
mod pool;
mod producer;
pub mod registry;
mod sys;
mod track;
mod writelog;

pub use consumer::{Consumer, Snapshot};
pub use error::{Result, XasmError};
pub use producer::{
    Producer, ProducerStats, RegionOptions, SnapshotInfo, DEFAULT_KEEP, DEFAULT_MAX_EXTENTS,
    MAX_NAME_LEN,
};
pub use track::{
    best_mechanism, mechanism_available, scan_unavailable_reason, Mechanism, MECHANISM_ENV,
    MPROTECT_MAX_REGIONS,
};

/// Helpers for tests and benchmarks: descriptor and mapping counts, the
/// cycle counter.
pub mod diag {
    /// Open descriptors of this process.
    pub fn open_fds() -> usize {
        crate::sys::open_fds()
    }

    /// Mappings of this process (lines of /proc/self/maps).
    pub fn mappings() -> usize {
        std::fs::read_to_string("/proc/self/maps")
            .map(|m| m.lines().count())
            .unwrap_or(0)
    }

    /// The CPU's cycle counter (rdtsc on x86-64, else 0).
    pub fn cycles() -> u64 {
        crate::sys::cycles()
    }
}
