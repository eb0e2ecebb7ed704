//! The paper's worst case: the state lives in one XEMEM segment `R` whose
//! first page holds a ticket spinlock (spun on with no backoff). The
//! simulation holds it while computing and writing a step, the analytics
//! while reading and analysing one, so compute and exchange serialize.
//! A ticket lock (FIFO) rather than test-and-set: a producer that unlocks
//! and relocks at once would otherwise starve the analytics.
//!
//! A side that dies (killed) holding or queued for the lock leaves the
//! other spinning until its timeout, which then names the lock. A side
//! that exits normally says so in the control segment, and the survivor
//! takes the lock over.

use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::time::{Duration, Instant};

use hobbes_xemem::{Access, Attachment, Grant, MakeOptions, Segment};

use super::{Control, CouplingOptions, Exec, Mode, Next, PublishStats, Publisher, Subscriber};
use crate::error::{Error, Result};
use crate::state::View;
use crate::sys::{Shared, PAGE};

const O_NEXT: usize = 0;
const O_SERVING: usize = 4;

/// Take the ticket lock in page 0 of `shm`; returns the time spent
/// spinning. `other_gone` is checked every few thousand spins: when the
/// other side is gone for good, the lock is taken over.
fn lock<K>(
    shm: &Shared<K>,
    name: &str,
    timeout: Duration,
    other_gone: impl Fn() -> bool,
) -> Result<Duration> {
    let (next, serving) = (shm.u32_at(O_NEXT), shm.u32_at(O_SERVING));
    let ticket = next.fetch_add(1, Relaxed);
    let start = Instant::now();
    let mut spins = 0u32;
    while serving.load(Acquire) != ticket {
        std::hint::spin_loop();
        spins = spins.wrapping_add(1);
        if spins.is_multiple_of(4096) {
            if other_gone() {
                serving.store(ticket, Release);
                break;
            }
            if start.elapsed() > timeout {
                return Err(Error::Timeout {
                    op: "take spinlock",
                    object: name.to_string(),
                    secs: timeout.as_secs_f64(),
                    reason: "its holder does not release it (killed?)".into(),
                });
            }
        }
    }
    Ok(start.elapsed())
}

fn unlock<K>(shm: &Shared<K>) {
    shm.u32_at(O_SERVING).fetch_add(1, Release);
}

pub struct SpinPublisher {
    data: Shared<Segment>,
    len: usize,
    held: bool,
    ctl: Control,
    exec: Exec,
    timeout: Duration,
    stats: PublishStats,
}

impl SpinPublisher {
    pub fn create(region: &str, exec: Exec, len: usize, opts: &CouplingOptions) -> Result<Self> {
        let seg = Segment::alloc(
            PAGE + len,
            &MakeOptions {
                name: Some(region.to_string()),
                mode: opts.segment_mode,
                ..Default::default()
            },
        )
        .map_err(|e| Error::coupling("create spinlock segment", region, e))?;
        let seg_len = seg.len();
        // SAFETY: alloc mapped the segment read-write and page aligned for
        // seg.len() >= PAGE + len bytes; the Segment (kept inside) unmaps it.
        let data = unsafe { Shared::new(seg.as_ptr(), seg_len, seg) };
        let ctl = Control::create(region, Mode::Spinlock, exec, len, opts)?;
        // Analytics started after the first steps would miss them (or, in a
        // short run, everything): start once they are there.
        ctl.wait_consumer(opts.timeout)?;
        Ok(SpinPublisher {
            data,
            len,
            held: false,
            ctl,
            exec,
            timeout: opts.timeout,
            stats: PublishStats::default(),
        })
    }
}

impl Publisher for SpinPublisher {
    fn state(&mut self) -> &mut [u8] {
        let len = self.len;
        &mut self.data.bytes_mut()[..len]
    }

    fn begin_step(&mut self, _step: u64) -> Result<()> {
        let ctl = &self.ctl;
        let waited = lock(&self.data, ctl.name(), self.timeout, || ctl.consumer_gone())?;
        self.held = true;
        self.stats.lock_wait_s += waited.as_secs_f64();
        Ok(())
    }

    fn publish(&mut self, step: u64) -> Result<()> {
        if self.held {
            unlock(&self.data);
            self.held = false;
        }
        self.stats.published += 1;
        if self.exec == Exec::Sync {
            let t = Instant::now();
            self.ctl.wait_ack(step, self.timeout)?;
            self.stats.ack_wait_s += t.elapsed().as_secs_f64();
        }
        Ok(())
    }

    fn finish(&mut self, last_step: u64) -> Result<()> {
        if self.held {
            unlock(&self.data);
            self.held = false;
        }
        self.ctl.finish(last_step);
        Ok(())
    }

    fn drain(&mut self, last_step: u64) -> Result<()> {
        self.ctl.wait_consumed(last_step, self.timeout)
    }

    fn stats(&self) -> PublishStats {
        self.stats.clone()
    }
}

impl Drop for SpinPublisher {
    fn drop(&mut self) {
        // Before the control segment says "finished" (its own drop).
        if self.held {
            unlock(&self.data);
        }
    }
}

pub struct SpinSubscriber {
    data: Shared<(Attachment, Grant)>,
    len: usize,
    ctl: Control,
    last: u64,
    timeout: Duration,
}

impl SpinSubscriber {
    pub fn open(region: &str, opts: &CouplingOptions) -> Result<Self> {
        let mut ctl = Control::open(region, opts)?;
        if ctl.mode() != Some(Mode::Spinlock) {
            return Err(Error::coupling(
                "analyze",
                region,
                format!(
                    "published in mode {}, not spinlock (give analyze the simulation's --mode)",
                    ctl.mode().map_or("unknown", Mode::name)
                ),
            ));
        }
        ctl.register_consumer();
        let len = ctl.state_len();
        let segid = hobbes_xemem::lookup(region)
            .map_err(|e| Error::coupling("look up", region, e))?
            .ok_or_else(|| Error::coupling("look up", region, "no such segment"))?;
        let grant = Grant::get(segid, Access::ReadWrite)
            .map_err(|e| Error::coupling("get spinlock segment", region, e))?;
        let att = grant
            .attach(0, PAGE + len)
            .map_err(|e| Error::coupling("attach spinlock segment", region, e))?;
        // SAFETY: a read-write attachment of PAGE + len bytes, page aligned;
        // the Attachment (kept inside) unmaps it.
        let data = unsafe { Shared::new(att.as_ptr(), PAGE + len, (att, grant)) };
        Ok(SpinSubscriber {
            data,
            len,
            ctl,
            last: 0,
            timeout: opts.timeout,
        })
    }
}

impl Subscriber for SpinSubscriber {
    fn next(&mut self, f: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<Next> {
        let start = Instant::now();
        loop {
            let ctl = &self.ctl;
            // Once the producer finished it never takes the lock again.
            lock(&self.data, ctl.name(), self.timeout, || {
                ctl.finished().is_some()
            })?;
            let bytes = &self.data.bytes()[..self.len];
            // The consumer may win the lock before the producer's first
            // publish: an all-zero header is "nothing yet", not bad state.
            let unpublished = bytes.iter().take(8).all(|&b| b == 0);
            let step = match View::parse(bytes, self.ctl.name()) {
                _ if unpublished => 0,
                Ok(v) => v.step,
                Err(e) => {
                    unlock(&self.data);
                    return Err(e);
                }
            };
            if step > self.last {
                let r = f(bytes);
                unlock(&self.data);
                r?;
                self.last = step;
                // Async too: the producer's drain waits for the last step.
                self.ctl.ack(step);
                return Ok(Next::Consumed { step });
            }
            unlock(&self.data);
            if self.ctl.finished().is_some_and(|last| last <= self.last) {
                return Ok(Next::Finished);
            }
            if start.elapsed() > self.timeout {
                return Err(Error::Timeout {
                    op: "wait for a new step",
                    object: self.ctl.name().to_string(),
                    secs: self.timeout.as_secs_f64(),
                    reason: format!("no step after {}", self.last),
                });
            }
            // No backoff: straight back to the lock (the worst case).
        }
    }

    fn exec(&self) -> Option<Exec> {
        Some(self.ctl.exec())
    }
}
