//! The control segment `R.ctl`: one page of atomics the producer creates
//! and the analytics attach read-write. It tells the analytics how the
//! producer runs (mode, execution, state size), carries the sync
//! acknowledgement (a futex word), and the finish and consumer-gone flags.

use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::time::{Duration, Instant};

use hobbes_sys::{futex_wait, futex_wake_all};
use hobbes_xemem::{Access, Attachment, Grant, MakeOptions, Segment};

use super::{CouplingOptions, Exec, Mode};
use crate::error::{Error, Result};
use crate::sys::{Shared, PAGE};

const MAGIC: u64 = u64::from_le_bytes(*b"HINSCTL1");
const O_MAGIC: usize = 0;
const O_MODE: usize = 8;
const O_EXEC: usize = 12;
const O_STATE_LEN: usize = 16;
/// Last step the analytics consumed (futex word).
const O_ACK: usize = 24;
/// 0: no consumer yet, 1: attached, 2: gone.
const O_CONSUMER: usize = 28;
/// Futex word bumped when the producer finishes.
const O_FINISHED: usize = 32;
const O_LAST_STEP: usize = 40;

const CONSUMER_ATTACHED: u32 = 1;
const CONSUMER_GONE: u32 = 2;

enum Keep {
    Own(#[allow(dead_code)] Segment),
    Attached(#[allow(dead_code)] Attachment, #[allow(dead_code)] Grant),
}

/// One side's handle on a region's control segment `R.ctl` (one page). The producer creates
/// and exports it ([`Control::create`]); the analytics attach it read-write. Dropping it
/// signals the other side: a registered consumer marks itself gone (a waiting sync producer
/// stops waiting), a producer that had not finished marks the region finished (step 0) so the
/// analytics stop.
pub struct Control {
    shm: Shared<Keep>,
    name: String,
    /// This side created the segment.
    producer: bool,
    /// This side registered as the consumer.
    consumer: bool,
}

/// Poll `f` every `every` until it returns Some or `timeout` passes.
pub(crate) fn poll<T>(
    timeout: Duration,
    every: Duration,
    mut f: impl FnMut() -> Result<Option<T>>,
) -> Result<Option<T>> {
    let start = Instant::now();
    loop {
        if let Some(v) = f()? {
            return Ok(Some(v));
        }
        if start.elapsed() >= timeout {
            return Ok(None);
        }
        std::thread::sleep(every);
    }
}

impl Control {
    /// The control segment's XEMEM name for region `region`: `<region>.ctl`.
    pub fn name_of(region: &str) -> String {
        format!("{region}.ctl")
    }

    /// The producer's side: export `R.ctl`.
    pub fn create(
        region: &str,
        mode: Mode,
        exec: Exec,
        state_len: usize,
        opts: &CouplingOptions,
    ) -> Result<Control> {
        let name = Control::name_of(region);
        let seg = Segment::alloc(
            PAGE,
            &MakeOptions {
                name: Some(name.clone()),
                mode: opts.segment_mode,
                ..Default::default()
            },
        )
        .map_err(|e| Error::coupling("create control segment", &name, e))?;
        // SAFETY: alloc mapped the segment read-write, page aligned, for
        // seg.len() >= PAGE bytes; the Segment (kept inside) unmaps it.
        let shm = unsafe { Shared::new(seg.as_ptr(), seg.len(), Keep::Own(seg)) };
        shm.u32_at(O_MODE).store(mode.code(), Relaxed);
        shm.u32_at(O_EXEC).store(exec as u32, Relaxed);
        shm.u64_at(O_STATE_LEN).store(state_len as u64, Relaxed);
        shm.u64_at(O_MAGIC).store(MAGIC, Release);
        Ok(Control {
            shm,
            name,
            producer: true,
            consumer: false,
        })
    }

    /// The analytics' side: wait for `R.ctl` to be exported and ready, then
    /// attach it read-write.
    pub fn open(region: &str, opts: &CouplingOptions) -> Result<Control> {
        let name = Control::name_of(region);
        let segid = poll(opts.timeout, Duration::from_millis(10), || {
            hobbes_xemem::lookup(&name).map_err(|e| Error::coupling("look up", &name, e))
        })?
        .ok_or_else(|| Error::Timeout {
            op: "wait for producer",
            object: name.clone(),
            secs: opts.timeout.as_secs_f64(),
            reason: "no simulation published this region (is it running, with the same --region?)"
                .into(),
        })?;
        let grant = Grant::get(segid, Access::ReadWrite)
            .map_err(|e| Error::coupling("get control segment", &name, e))?;
        let att = grant
            .attach(0, PAGE)
            .map_err(|e| Error::coupling("attach control segment", &name, e))?;
        // SAFETY: a read-write attachment of PAGE bytes at a page-aligned
        // address; the Attachment (kept inside) unmaps it.
        let shm = unsafe { Shared::new(att.as_ptr(), PAGE, Keep::Attached(att, grant)) };
        let ready = poll(opts.timeout, Duration::from_millis(1), || {
            Ok((shm.u64_at(O_MAGIC).load(Acquire) == MAGIC).then_some(()))
        })?;
        if ready.is_none() {
            return Err(Error::coupling(
                "open control segment",
                &name,
                "not initialized by its producer (not a hobbes-insitu control segment?)",
            ));
        }
        Ok(Control {
            shm,
            name,
            producer: false,
            consumer: false,
        })
    }

    /// The analytics' side, once it checked the mode: from now on its exit
    /// (this value's drop) tells a waiting producer to stop waiting.
    pub fn register_consumer(&mut self) {
        self.shm
            .u32_at(O_CONSUMER)
            .store(CONSUMER_ATTACHED, Release);
        let _ = futex_wake_all(self.shm.u32_at(O_CONSUMER));
        self.consumer = true;
    }

    /// The control segment's XEMEM name (`R.ctl`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The mode the producer publishes in; `None` when the word holds no known mode (a
    /// segment from another program or version).
    pub fn mode(&self) -> Option<Mode> {
        Mode::from_code(self.shm.u32_at(O_MODE).load(Relaxed))
    }

    /// Whether the producer waits for acknowledgements (any word other than 0 reads as
    /// async).
    pub fn exec(&self) -> Exec {
        match self.shm.u32_at(O_EXEC).load(Relaxed) {
            0 => Exec::Sync,
            _ => Exec::Async,
        }
    }

    /// Bytes of published state the producer allocated (header page plus arrays), as it
    /// wrote them at creation.
    pub fn state_len(&self) -> usize {
        self.shm.u64_at(O_STATE_LEN).load(Relaxed) as usize
    }

    /// Analytics: step `step` is consumed.
    pub fn ack(&self, step: u64) {
        self.shm.u32_at(O_ACK).store(step as u32, Release);
        let _ = futex_wake_all(self.shm.u32_at(O_ACK));
    }

    /// Producer: wait until step `step` was consumed. Errors when the
    /// analytics are gone or `timeout` passes.
    pub fn wait_ack(&self, step: u64, timeout: Duration) -> Result<()> {
        let word = self.shm.u32_at(O_ACK);
        let start = Instant::now();
        loop {
            let now = word.load(Acquire);
            if now >= step as u32 {
                return Ok(());
            }
            if self.consumer_gone() {
                return Err(Error::coupling(
                    "wait for analytics",
                    &self.name,
                    format!("the analytics exited before consuming step {step}"),
                ));
            }
            let left = timeout.saturating_sub(start.elapsed());
            if left.is_zero() {
                return Err(Error::Timeout {
                    op: "wait for analytics",
                    object: self.name.clone(),
                    secs: timeout.as_secs_f64(),
                    reason: format!("step {step} not consumed (last consumed: {now})"),
                });
            }
            // Bounded so that a consumer that died without saying so (killed)
            // is noticed through the timeout, and one that said so at once.
            let _ = futex_wait(word, now, left.min(Duration::from_millis(100)));
        }
    }

    /// Producer: wait until analytics registered (or registered and left).
    pub fn wait_consumer(&self, timeout: Duration) -> Result<()> {
        let word = self.shm.u32_at(O_CONSUMER);
        let start = Instant::now();
        loop {
            let now = word.load(Acquire);
            if now != 0 {
                return Ok(());
            }
            let left = timeout.saturating_sub(start.elapsed());
            if left.is_zero() {
                return Err(Error::Timeout {
                    op: "wait for analytics",
                    object: self.name.clone(),
                    secs: timeout.as_secs_f64(),
                    reason: "no analytics opened this region (start `hobbes-insitu analyze` with the same --region and --mode)".into(),
                });
            }
            let _ = futex_wait(word, now, left);
        }
    }

    /// Producer, after its last step: wait until the analytics consumed
    /// `last_step` or left. Their leaving is not an error here.
    pub fn wait_consumed(&self, last_step: u64, timeout: Duration) -> Result<()> {
        match self.wait_ack(last_step, timeout) {
            Err(_) if self.consumer_gone() => Ok(()),
            other => other,
        }
    }

    /// Producer: no step after `last_step` comes.
    pub fn finish(&self, last_step: u64) {
        self.shm.u64_at(O_LAST_STEP).store(last_step, Relaxed);
        self.shm.u32_at(O_FINISHED).store(1, Release);
        let _ = futex_wake_all(self.shm.u32_at(O_FINISHED));
    }

    /// The producer's last step once it finished.
    pub fn finished(&self) -> Option<u64> {
        (self.shm.u32_at(O_FINISHED).load(Acquire) != 0)
            .then(|| self.shm.u64_at(O_LAST_STEP).load(Relaxed))
    }

    /// Whether the registered analytics have exited (dropped their `Control`); a producer
    /// then stops waiting for acknowledgements. `false` before any consumer registered.
    pub fn consumer_gone(&self) -> bool {
        self.shm.u32_at(O_CONSUMER).load(Acquire) == CONSUMER_GONE
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        if self.consumer {
            // Wake a producer waiting for an acknowledgement that never comes.
            self.shm.u32_at(O_CONSUMER).store(CONSUMER_GONE, Release);
            let _ = futex_wake_all(self.shm.u32_at(O_ACK));
        } else if self.producer && self.finished().is_none() {
            // A producer that failed: let the analytics stop waiting.
            self.finish(0);
        }
    }
}
