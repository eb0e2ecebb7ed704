//! XASM coupling: the published state is an XASM region; every step ends
//! with `snapshot()` (version N = step N), and the analytics wait on the
//! region's channel and attach versions read-only. No locks, no copies by
//! the application, no torn reads.

use std::time::{Duration, Instant};

use hobbes_xasm::{Consumer, Producer, RegionOptions, XasmError};

use super::{Control, CouplingOptions, Exec, Mode, Next, PublishStats, Publisher, Subscriber};
use crate::error::{Error, Result};
use crate::state::View;

pub struct XasmPublisher {
    // Dropped first: the channel closes, then the control segment goes.
    producer: Producer,
    ctl: Control,
    len: usize,
    exec: Exec,
    timeout: Duration,
    stats: PublishStats,
}

impl XasmPublisher {
    pub fn create(region: &str, exec: Exec, len: usize, opts: &CouplingOptions) -> Result<Self> {
        let producer = Producer::create(
            len,
            &RegionOptions {
                name: region.to_string(),
                mode: opts.segment_mode,
                keep: opts.keep,
                ..Default::default()
            },
        )
        .map_err(|e| Error::coupling("create xasm region", region, e))?;
        let ctl = Control::create(region, Mode::Xasm, exec, len, opts)?;
        // Analytics started after the first steps would miss them (or, in a
        // short run, everything): start once they are there.
        ctl.wait_consumer(opts.timeout)?;
        let stats = PublishStats {
            mechanism: Some(producer.mechanism().to_string()),
            ..Default::default()
        };
        Ok(XasmPublisher {
            producer,
            ctl,
            len,
            exec,
            timeout: opts.timeout,
            stats,
        })
    }
}

impl Publisher for XasmPublisher {
    fn state(&mut self) -> &mut [u8] {
        let len = self.len;
        &mut self.producer.as_mut_slice()[..len]
    }

    fn begin_step(&mut self, _step: u64) -> Result<()> {
        Ok(())
    }

    fn publish(&mut self, step: u64) -> Result<()> {
        let info = self
            .producer
            .snapshot()
            .map_err(|e| Error::coupling("snapshot", self.producer.name(), e))?;
        self.stats.published += 1;
        self.stats.snapshot_s += info.elapsed.as_secs_f64();
        self.stats.dirty_pages += info.dirty_pages;
        self.stats.copied_pages += info.copied_pages;
        if self.exec == Exec::Sync {
            let t = Instant::now();
            self.ctl.wait_ack(step, self.timeout)?;
            self.stats.ack_wait_s += t.elapsed().as_secs_f64();
        }
        Ok(())
    }

    fn finish(&mut self, last_step: u64) -> Result<()> {
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

pub struct XasmSubscriber {
    consumer: Consumer,
    ctl: Control,
    last_version: u64,
    timeout: Duration,
}

impl XasmSubscriber {
    pub fn open(region: &str, opts: &CouplingOptions) -> Result<Self> {
        let mut ctl = Control::open(region, opts)?;
        if ctl.mode() != Some(Mode::Xasm) {
            return Err(Error::coupling(
                "analyze",
                region,
                format!(
                    "published in mode {}, not xasm (give analyze the simulation's --mode)",
                    ctl.mode().map_or("unknown", Mode::name)
                ),
            ));
        }
        ctl.register_consumer();
        // The producer creates the region before the control segment.
        let consumer =
            Consumer::open(region).map_err(|e| Error::coupling("open xasm region", region, e))?;
        Ok(XasmSubscriber {
            consumer,
            ctl,
            last_version: 0,
            timeout: opts.timeout,
        })
    }
}

impl Subscriber for XasmSubscriber {
    fn next(&mut self, f: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<Next> {
        let region = self.consumer.name().to_string();
        let start = Instant::now();
        loop {
            // Read "finished" before "latest": a finished producer published
            // its last version before saying so.
            let finished = self.ctl.finished().is_some();
            if let Some(v) = self.consumer.latest().filter(|&v| v > self.last_version) {
                match self.consumer.attach(v) {
                    Ok(snap) => {
                        let bytes = snap.as_slice();
                        let step = View::parse(bytes, &region)?.step;
                        f(bytes)?;
                        drop(snap);
                        self.last_version = v;
                        // Async too: the producer's drain waits for the last step.
                        self.ctl.ack(step);
                        return Ok(Next::Consumed { step });
                    }
                    // Async: reclaimed meanwhile (a newer one exists), or
                    // the producer exited and took its versions along.
                    Err(XasmError::NotFound { .. }) if !finished => {}
                    Err(_) if finished || self.consumer.is_closed() => return Ok(Next::Finished),
                    Err(e) => return Err(Error::coupling("attach version", &region, e)),
                }
            } else if finished {
                return Ok(Next::Finished);
            }
            match self
                .consumer
                .wait_newer(self.last_version, Some(Duration::from_millis(100)))
            {
                Ok(_) => {}
                // Closed: whatever is left was seen above, or is gone.
                Err(XasmError::ProducerGone { .. }) => {
                    if self.consumer.latest().unwrap_or(0) <= self.last_version {
                        return Ok(Next::Finished);
                    }
                }
                Err(e) => return Err(Error::coupling("wait for a version", &region, e)),
            }
            if start.elapsed() > self.timeout {
                return Err(Error::Timeout {
                    op: "wait for a new version",
                    object: region,
                    secs: self.timeout.as_secs_f64(),
                    reason: format!("nothing after version {}", self.last_version),
                });
            }
        }
    }

    fn exec(&self) -> Option<Exec> {
        Some(self.ctl.exec())
    }
}
