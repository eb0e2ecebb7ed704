//! The out-of-band channel consumers wait on: a one-page XEMEM segment
//! named after the region, holding a header with the latest version and a
//! futex word bumped (and woken, shared futex) on every publish and on
//! close. Consumers map it read-only and wait without IPC.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use hobbes_sys::{futex_wait, futex_wake_all, Mapping};
use hobbes_xemem::{Access, ApId, MakeOptions, SegId};

use crate::error::{Result, XasmError};
use crate::sys;
use crate::track::Mechanism;

pub(crate) const MAGIC: [u8; 8] = *b"XASMCHN1";
pub(crate) const FORMAT: u32 = 1;

/// The channel page's header (little endian on the only platforms we run).
#[repr(C)]
pub(crate) struct Header {
    magic: [u8; 8],
    format: u32,
    page_size: u32,
    region_len: u64,
    keep: u32,
    mechanism: u32,
    /// Latest published version, 0 = none yet.
    latest: AtomicU64,
    /// Futex word: bumped on every publish and on close.
    seq: AtomicU32,
    closed: AtomicU32,
    producer_pid: u32,
    _reserved: [u32; 3],
}

/// The producer's side: owns the segment.
pub(crate) struct ChannelWriter {
    /// The page: private anonymous, converted in place into the segment's
    /// memfd by `make`; unmapped when the writer drops (after `drop`).
    mem: Mapping,
    segid: SegId,
}

impl ChannelWriter {
    /// Export a channel named `name` (EEXIST when the name is taken).
    pub fn create(name: &str, mode: u32, region_len: u64, keep: u32, m: Mechanism) -> Result<Self> {
        const OP: &str = "xasm_region_create";
        let page = hobbes_sys::page_size();
        let mut mem = Mapping::anon_noreserve(page, None).map_err(XasmError::sys(
            OP,
            format!("channel of region {name:?}"),
            "mmap",
        ))?;
        let header = Header {
            magic: MAGIC,
            format: FORMAT,
            page_size: page as u32,
            region_len,
            keep,
            mechanism: m.code(),
            latest: AtomicU64::new(0),
            seq: AtomicU32::new(0),
            closed: AtomicU32::new(0),
            producer_pid: sys::pid(),
            _reserved: [0; 3],
        };
        // SAFETY: a fresh page-aligned mapping of one page, ours alone;
        // Header (64 bytes) fits and needs no more than page alignment.
        unsafe { mem.as_mut_ptr().cast::<Header>().write(header) };
        let opts = MakeOptions {
            name: Some(name.to_string()),
            mode,
            ..Default::default()
        };
        // Converted in place into a memfd: same address, now shared.
        match hobbes_xemem::make_mapping(&mut mem, &opts) {
            Ok(segid) => Ok(ChannelWriter { mem, segid }),
            Err(e) => Err(XasmError::xemem(OP, format!("channel segment {name:?}"))(e)),
        }
    }

    fn header(&self) -> &Header {
        // SAFETY: `create` wrote a Header at the start of the page, which
        // stays mapped while `self` lives; it changes only through atomics.
        unsafe { &*self.mem.as_ptr().cast::<Header>() }
    }

    /// Announce version `v` and wake every waiter.
    pub fn publish(&self, v: u64) {
        let h = self.header();
        h.latest.store(v, Ordering::Release);
        h.seq.fetch_add(1, Ordering::AcqRel);
        let _ = futex_wake_all(&h.seq);
    }

    /// Mark the region closed and wake every waiter.
    pub fn close(&self) {
        let h = self.header();
        h.closed.store(1, Ordering::Release);
        h.seq.fetch_add(1, Ordering::AcqRel);
        let _ = futex_wake_all(&h.seq);
    }
}

impl Drop for ChannelWriter {
    fn drop(&mut self) {
        self.close();
        let _ = hobbes_xemem::remove(self.segid);
        // `mem` unmaps the page next.
    }
}

/// A consumer's read-only view of a channel.
pub(crate) struct ChannelReader {
    pub segid: SegId,
    apid: ApId,
    addr: usize,
    pub region_len: u64,
    pub keep: u32,
    pub mechanism: Option<Mechanism>,
    pub producer_pid: u32,
}

impl ChannelReader {
    pub fn open(name: &str) -> Result<Self> {
        const OP: &str = "xasm_consumer_open";
        let what = || format!("channel of region {name:?}");
        let segid = hobbes_xemem::lookup(name)
            .map_err(XasmError::xemem(OP, what()))?
            .ok_or_else(|| XasmError::not_found(OP, format!("no XASM region {name:?}")))?;
        let apid =
            hobbes_xemem::get(segid, Access::ReadOnly).map_err(XasmError::xemem(OP, what()))?;
        let page = hobbes_sys::page_size();
        let addr = match hobbes_xemem::attach(apid, 0, page) {
            Ok(a) => a as usize,
            Err(e) => {
                let _ = hobbes_xemem::release(apid);
                return Err(XasmError::xemem(OP, what())(e));
            }
        };
        let mut r = ChannelReader {
            segid,
            apid,
            addr,
            region_len: 0,
            keep: 0,
            mechanism: None,
            producer_pid: 0,
        };
        let h = r.header();
        if h.magic != MAGIC || h.format != FORMAT || h.page_size as usize != page {
            return Err(XasmError::invalid(
                OP,
                format!(
                    "segment {name:?} is not an XASM channel (magic {:02x?}, format {}, page size {})",
                    h.magic, h.format, h.page_size
                ),
            ));
        }
        (r.region_len, r.keep, r.mechanism, r.producer_pid) = (
            h.region_len,
            h.keep,
            Mechanism::from_code(h.mechanism),
            h.producer_pid,
        );
        if r.region_len == 0 || !r.region_len.is_multiple_of(page as u64) {
            return Err(XasmError::invalid(
                OP,
                format!(
                    "channel {name:?} gives a bad region length {}",
                    r.region_len
                ),
            ));
        }
        Ok(r)
    }

    fn header(&self) -> &Header {
        // SAFETY: a read-only attachment of the channel page, mapped until
        // drop; the producer wrote the Header before exporting it and
        // changes it only through atomics.
        unsafe { &*(self.addr as *const Header) }
    }

    pub fn latest(&self) -> u64 {
        self.header().latest.load(Ordering::Acquire)
    }

    pub fn seq(&self) -> u32 {
        self.header().seq.load(Ordering::Acquire)
    }

    pub fn closed(&self) -> bool {
        self.header().closed.load(Ordering::Acquire) != 0
    }

    /// Wait while the futex word is still `seq`, at most `timeout`.
    pub fn wait(&self, seq: u32, timeout: Duration) {
        let _ = futex_wait(&self.header().seq, seq, timeout);
    }
}

impl Drop for ChannelReader {
    fn drop(&mut self) {
        let _ = hobbes_xemem::detach(self.addr as *mut u8);
        let _ = hobbes_xemem::release(self.apid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout() {
        assert_eq!(std::mem::size_of::<Header>(), 64);
        assert_eq!(std::mem::offset_of!(Header, latest), 32);
        assert_eq!(std::mem::offset_of!(Header, seq), 40);
    }
}
