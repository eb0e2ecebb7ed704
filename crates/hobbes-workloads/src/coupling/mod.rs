//! Coupling modes: how the simulation's published state reaches the
//! analytics. The simulation allocates its published state through a
//! [`Publisher`]; the analytics read it through a [`Subscriber`].
//!
//! | mode       | producer                                   | consumer                         |
//! |------------|--------------------------------------------|----------------------------------|
//! | `none`     | plain memory, no calls (the isolated run)  | none                             |
//! | `stub`     | plain memory, no-op calls                  | no-op: nothing to read           |
//! | `xasm`     | XASM region, `snapshot()` every step       | `wait_newer` + `attach`          |
//! | `spinlock` | XEMEM segment: ticket spinlock + state,    | takes the same lock to read      |
//! |            | held while computing and writing a step    | and analyse (serialized)         |
//!
//! Execution: `sync` (the producer waits until the analytics consumed step
//! N before computing N+1, futex on the acknowledgement word of the control
//! segment) or `async` (never waits; the analytics take the latest state).
//!
//! Names on the node, for region R: the data (`R`: the XASM channel, or the
//! spinlock segment; versions `R@N`) and the control segment `R.ctl` (one
//! page: mode, execution, state size, acknowledgement and finish words).

mod control;
mod spinlock;
mod xasm;

use std::time::Duration;

use hobbes_sys::Mapping as AnonMap;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

pub use control::Control;

/// How the simulation and the analytics are coupled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Isolated: plain memory, no analytics.
    None,
    /// No-op calls of the coupling API (the lower bound).
    Stub,
    /// XASM copy-on-write snapshots.
    Xasm,
    /// XEMEM shared memory serialized by a spinlock (the worst case).
    Spinlock,
}

/// Whether the producer waits for the analytics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Exec {
    /// After publishing step N the producer waits until the analytics consumed N, so they
    /// see every step.
    Sync,
    /// The producer never waits; the analytics take the latest state at their own pace and
    /// the steps they miss are counted as skipped.
    Async,
}

impl Mode {
    /// Every mode, in the report's order (the isolated run first).
    pub const ALL: [Mode; 4] = [Mode::None, Mode::Stub, Mode::Xasm, Mode::Spinlock];

    /// The mode's command-line, JSON and report name (`none`, `stub`, `xasm`, `spinlock`).
    pub fn name(self) -> &'static str {
        match self {
            Mode::None => "none",
            Mode::Stub => "stub",
            Mode::Xasm => "xasm",
            Mode::Spinlock => "spinlock",
        }
    }

    /// Whether the mode exchanges data (and needs a running leviathan).
    pub fn exchanges(self) -> bool {
        matches!(self, Mode::Xasm | Mode::Spinlock)
    }

    fn code(self) -> u32 {
        self as u32 + 1
    }

    fn from_code(c: u32) -> Option<Mode> {
        Mode::ALL.get((c as usize).checked_sub(1)?).copied()
    }
}

impl Exec {
    /// The execution's command-line, JSON and report name (`sync`, `async`).
    pub fn name(self) -> &'static str {
        match self {
            Exec::Sync => "sync",
            Exec::Async => "async",
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::fmt::Display for Exec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Knobs shared by both sides.
#[derive(Debug, Clone)]
pub struct CouplingOptions {
    /// The longest any single wait may take (a lock, an acknowledgement,
    /// the other side appearing) before it is an error.
    pub timeout: Duration,
    /// XASM versions kept (K).
    pub keep: usize,
    /// Permission bits of the segments for other users.
    pub segment_mode: u32,
}

impl Default for CouplingOptions {
    fn default() -> Self {
        CouplingOptions {
            timeout: Duration::from_secs(60),
            keep: 2,
            segment_mode: 0o600,
        }
    }
}

/// What a publisher did, beyond the step times the driver measures.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PublishStats {
    /// States made available to the analytics (stub and none: 0).
    pub published: u64,
    /// XASM: the dirty-tracking mechanism (scan or mprotect).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mechanism: Option<String>,
    /// Seconds inside snapshot() (XASM).
    pub snapshot_s: f64,
    /// Seconds waiting for the analytics' acknowledgements (sync).
    pub ack_wait_s: f64,
    /// Seconds spinning for the lock (spinlock).
    pub lock_wait_s: f64,
    /// XASM: pages found written and pages copied, over all snapshots.
    pub dirty_pages: u64,
    /// XASM: pages copied into versions, over all snapshots (0 in the other modes).
    pub copied_pages: u64,
}

/// The producer's side: owns the published state's memory.
pub trait Publisher: Send {
    /// The published state's memory (zeroed at first; page aligned).
    fn state(&mut self) -> &mut [u8];
    /// Called before computing step `step` (spinlock: take the lock).
    fn begin_step(&mut self, step: u64) -> Result<()>;
    /// Step `step` is complete in [`Publisher::state`]: publish it; in sync
    /// execution also wait until the analytics consumed it.
    fn publish(&mut self, step: u64) -> Result<()>;
    /// No more steps come: tell the analytics.
    fn finish(&mut self, last_step: u64) -> Result<()>;
    /// After the timed loop: wait (bounded) until the analytics consumed the
    /// last state or left, so the state outlives the producer's exit as long
    /// as it is needed (async analytics would otherwise miss the last one).
    fn drain(&mut self, _last_step: u64) -> Result<()> {
        Ok(())
    }
    /// What was published and how long the coupling calls took so far.
    fn stats(&self) -> PublishStats;
}

/// What [`Subscriber::next`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// A state stamped with this step was analysed.
    Consumed {
        /// The step stamped in the state that was analysed.
        step: u64,
    },
    /// The producer finished and nothing newer is left.
    Finished,
}

/// The analytics' side.
pub trait Subscriber {
    /// Wait for a state newer than the last one consumed and run `f` on its
    /// bytes (the published state layout, see [`crate::state`]).
    fn next(&mut self, f: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<Next>;
    /// The producer's execution mode (None for stub).
    fn exec(&self) -> Option<Exec>;
}

/// The publisher for `mode`: state of `len` bytes named `region`.
pub fn publisher(
    mode: Mode,
    exec: Exec,
    region: &str,
    len: usize,
    opts: &CouplingOptions,
) -> Result<Box<dyn Publisher>> {
    check_region(region)?;
    match mode {
        Mode::None | Mode::Stub => Ok(Box::new(Plain::new(len, mode == Mode::Stub)?)),
        Mode::Spinlock => Ok(Box::new(spinlock::SpinPublisher::create(
            region, exec, len, opts,
        )?)),
        Mode::Xasm => Ok(Box::new(xasm::XasmPublisher::create(
            region, exec, len, opts,
        )?)),
    }
}

/// The subscriber for `mode` on `region` (waits up to the timeout for the
/// producer to appear).
pub fn subscriber(mode: Mode, region: &str, opts: &CouplingOptions) -> Result<Box<dyn Subscriber>> {
    check_region(region)?;
    match mode {
        Mode::None => Err(Error::invalid(
            "analyze",
            "mode none is the isolated run: it has no analytics (use stub, xasm or spinlock)",
        )),
        Mode::Stub => Ok(Box::new(StubSubscriber)),
        Mode::Spinlock => Ok(Box::new(spinlock::SpinSubscriber::open(region, opts)?)),
        Mode::Xasm => Ok(Box::new(xasm::XasmSubscriber::open(region, opts)?)),
    }
}

/// Region names become XEMEM segment names (`R`, `R@N`, `R.ctl`).
fn check_region(region: &str) -> Result<()> {
    let ok = !region.is_empty()
        && region.len() <= 90
        && region
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "region",
            format!("{region:?}: use 1-90 characters of A-Z a-z 0-9 - _ ."),
        ))
    }
}

/// `none` and `stub`: private memory. Stub's calls are kept out of line so
/// they cost what a call into an empty library function costs.
struct Plain {
    mem: AnonMap,
    stub: bool,
}

impl Plain {
    fn new(len: usize, stub: bool) -> Result<Plain> {
        let mem = AnonMap::anon(len).map_err(|e| {
            Error::coupling(
                "allocate state",
                format!("{len} bytes"),
                std::io::Error::from(e),
            )
        })?;
        Ok(Plain { mem, stub })
    }
}

#[inline(never)]
fn stub_call(step: u64) -> Result<()> {
    std::hint::black_box(step);
    Ok(())
}

impl Publisher for Plain {
    fn state(&mut self) -> &mut [u8] {
        self.mem.as_mut_slice()
    }
    fn begin_step(&mut self, step: u64) -> Result<()> {
        if self.stub {
            stub_call(step)?;
        }
        Ok(())
    }
    fn publish(&mut self, step: u64) -> Result<()> {
        if self.stub {
            stub_call(step)?;
        }
        Ok(())
    }
    fn finish(&mut self, last_step: u64) -> Result<()> {
        if self.stub {
            stub_call(last_step)?;
        }
        Ok(())
    }
    fn stats(&self) -> PublishStats {
        PublishStats::default()
    }
}

/// Stub analytics: the API's calls do nothing, so there is never a state.
struct StubSubscriber;

impl Subscriber for StubSubscriber {
    fn next(&mut self, _: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<Next> {
        stub_call(0)?;
        Ok(Next::Finished)
    }
    fn exec(&self) -> Option<Exec> {
        None
    }
}
