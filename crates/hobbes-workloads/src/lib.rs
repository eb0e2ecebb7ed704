//! The seeds' in situ workloads and their coupling modes. See docs/insitu.md.
//!
//! - Simulations: [`snap`] (SNAP-style discrete-ordinates sweeps publishing
//!   scalar flux and velocities) and [`hpccg`] (HPCCG-style conjugate
//!   gradient on a 27-point stencil).
//! - Analytics: [`analytics`] (STREAM-style bandwidth kernel, spectrum
//!   analysis with rustfft).
//! - [`coupling`]: none, stub, xasm and spinlock modes; sync and async.
//! - [`run`]: the simulation and analytics loops with their timing, and both
//!   as two processes; [`report`]: the table and the share-vs-size plot.
//! - [`demo`]: `hobbes-insitu demo` (what `hobbes demo insitu` runs): both
//!   sides in two enclaves of a leviathan, every size and mode, the report.
//!
//! ```no_run
//! use hobbes_workloads::{run_sim, Exec, Mode, Run, Workload};
//! let run = Run::new(Workload::Snap, 16, 20, Mode::Stub, Exec::Async, "demo");
//! let report = run_sim(&run, &mut |_| {})?;
//! println!("{:.3}% in situ", report.share * 100.0);
//! # Ok::<(), hobbes_workloads::Error>(())
//! ```

#![deny(missing_docs)]

pub mod analytics;
pub mod coupling;
pub mod demo;
mod error;
pub mod hpccg;
pub mod report;
pub mod run;
pub mod snap;
pub mod state;
mod sys;

pub use coupling::{CouplingOptions, Exec, Mode};
pub use error::{Error, Result};
pub use run::{
    run_analytics, run_pair, run_sim, AnalyticsKind, AnalyticsReport, Analyze, PairReport, Run,
    SimProgress, SimReport, Workload,
};
