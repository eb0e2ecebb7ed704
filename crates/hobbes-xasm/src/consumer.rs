//! The consumer: find a region's channel, wait for versions, attach them
//! read-only.

use std::time::{Duration, Instant};

use hobbes_xemem::{Access, ApId, SegId, XememError};

use crate::channel::ChannelReader;
use crate::error::{Result, XasmError};
use crate::track::Mechanism;

/// How often a waiting consumer checks that the producer still exists.
const LIVENESS_PERIOD: Duration = Duration::from_millis(100);

/// A consumer of one region: no IPC to read the latest version or to wait.
pub struct Consumer {
    name: String,
    channel: ChannelReader,
}

impl Consumer {
    /// Find region `region`'s channel in the Node Information Service and
    /// map it read-only. NotFound when no such region exists (yet).
    pub fn open(region: &str) -> Result<Consumer> {
        Ok(Consumer {
            name: region.to_string(),
            channel: ChannelReader::open(region)?,
        })
    }

    /// The region's name, as passed to [`Consumer::open`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The latest published version, read from the channel (no IPC).
    pub fn latest(&self) -> Option<u64> {
        Some(self.channel.latest()).filter(|v| *v > 0)
    }

    /// Bytes of every version.
    pub fn region_len(&self) -> usize {
        self.channel.region_len as usize
    }

    /// Versions the producer keeps (K).
    pub fn keep(&self) -> usize {
        self.channel.keep as usize
    }

    /// The producer's mechanism, as it announced it.
    pub fn mechanism(&self) -> Option<Mechanism> {
        self.channel.mechanism
    }

    /// True when the producer closed the region or is gone (one NIS lookup).
    pub fn is_closed(&self) -> bool {
        self.channel.closed() || !self.channel_alive().unwrap_or(true)
    }

    /// Whether the channel segment we mapped is still the one exported
    /// under the region's name.
    fn channel_alive(&self) -> Result<bool> {
        let found = hobbes_xemem::lookup(&self.name).map_err(XasmError::xemem(
            "xasm_wait_newer",
            format!("channel of region {:?}", self.name),
        ))?;
        Ok(found == Some(self.channel.segid))
    }

    /// Wait until a version newer than `than` is published and return it;
    /// `Ok(None)` after `timeout` (`None` waits forever). Blocks on the
    /// channel's futex; every ~100 ms it also checks that the producer's
    /// channel still exists. `ProducerGone` when the producer closed the
    /// region or exited without a newer version.
    pub fn wait_newer(&self, than: u64, timeout: Option<Duration>) -> Result<Option<u64>> {
        const OP: &str = "xasm_wait_newer";
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut next_check = Instant::now() + LIVENESS_PERIOD;
        loop {
            let seq = self.channel.seq();
            let latest = self.channel.latest();
            if latest > than {
                return Ok(Some(latest));
            }
            if self.channel.closed() {
                return Err(self.gone(OP, "the producer closed the region"));
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                return Ok(None);
            }
            if now >= next_check {
                if !self.channel_alive()? {
                    return Err(
                        self.gone(OP, "its channel segment was removed (the producer exited)")
                    );
                }
                next_check = Instant::now() + LIVENESS_PERIOD;
            }
            let mut wait = next_check.saturating_duration_since(now);
            if let Some(d) = deadline {
                wait = wait.min(d.saturating_duration_since(now));
            }
            self.channel.wait(seq, wait.max(Duration::from_millis(1)));
        }
    }

    fn gone(&self, op: &'static str, reason: &str) -> XasmError {
        XasmError::ProducerGone {
            op,
            region: self.name.clone(),
            reason: reason.to_string(),
        }
    }

    /// Attach version `version` read-only: lookup `<region>@<version>`, get
    /// it (taking the hold that keeps the producer from reclaiming it) and
    /// map it. NotFound when the version was never published or was
    /// reclaimed.
    pub fn attach(&self, version: u64) -> Result<Snapshot> {
        const OP: &str = "xasm_attach";
        let vname = format!("{}@{version}", self.name);
        if version == 0 {
            return Err(XasmError::invalid(
                OP,
                "version 0 does not exist (versions start at 1)",
            ));
        }
        let segid: SegId = hobbes_xemem::lookup(&vname)
            .map_err(XasmError::xemem(OP, format!("version {vname}")))?
            .ok_or_else(|| {
                XasmError::not_found(
                    OP,
                    format!("version {vname} is not published (not yet, or reclaimed)"),
                )
            })?;
        let apid = hobbes_xemem::get(segid, Access::ReadOnly).map_err(|e| match e {
            XememError::NotFound { .. } => {
                XasmError::not_found(OP, format!("version {vname} was reclaimed ({e})"))
            }
            e => XasmError::xemem(OP, format!("version {vname}"))(e),
        })?;
        let len = self.region_len();
        match hobbes_xemem::attach(apid, 0, len) {
            Ok(p) => Ok(Snapshot {
                version,
                apid,
                addr: p as usize,
                len,
            }),
            Err(e) => {
                let _ = hobbes_xemem::release(apid);
                Err(XasmError::xemem(OP, format!("version {vname}"))(e))
            }
        }
    }

    /// Attach the latest version (None when nothing is published yet). A
    /// version reclaimed between reading its number and the attach is
    /// retried with the newer one.
    pub fn attach_latest(&self) -> Result<Option<Snapshot>> {
        for _ in 0..16 {
            let Some(v) = self.latest() else {
                return Ok(None);
            };
            match self.attach(v) {
                Err(XasmError::NotFound { .. }) if self.channel.latest() != v => continue,
                other => return other.map(Some),
            }
        }
        Err(XasmError::Busy {
            op: "xasm_attach",
            what: format!("region {:?}", self.name),
            reason: "versions were reclaimed faster than they could be attached".into(),
        })
    }
}

/// A read-only view of one version. Dropping it detaches and releases the
/// hold; the producer may then reclaim the version.
pub struct Snapshot {
    version: u64,
    apid: ApId,
    addr: usize,
    len: usize,
}

impl Snapshot {
    /// The version this view shows (1 for the first snapshot, then
    /// increasing).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The version's bytes, the whole region as it was at that snapshot.
    /// They never change while the view lives.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the attachment is mapped read-only for len bytes until
        // drop, and nobody writes published pages.
        unsafe { std::slice::from_raw_parts(self.addr as *const u8, self.len) }
    }

    /// The first byte of the view: read-only memory (a write faults),
    /// valid for [`len`](Self::len) bytes until the snapshot is dropped.
    pub fn as_ptr(&self) -> *const u8 {
        self.addr as *const u8
    }

    /// The region's length in bytes (a multiple of the page size).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: versions are never empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        let _ = hobbes_xemem::detach(self.addr as *mut u8);
        let _ = hobbes_xemem::release(self.apid);
    }
}
