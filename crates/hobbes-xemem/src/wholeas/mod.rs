//! Whole-address-space shares: XPMEM's `xpmem_make(NULL,
//! XPMEM_MAXADDR_SIZE, ..)` without a kernel module.
//!
//! The share is a segment whose memory is a one-page *control memfd*; the
//! name server checks each `get` against its mode and hands that memfd out
//! as usual (read-only for a read-only get), and it is the capability the
//! owner asks for. The control memfd names the owner's socket; the owner
//! runs a service thread there ([`owner`]) that converts ranges on demand
//! into one sparse *address-space file* in which a page's offset is its
//! address, and punches pages the owner unmaps out of it. Attachers map
//! that file at offset = owner address ([`peer`]); a fault thread asks the
//! owner again for pages punched out, so attachments follow the owner's
//! address space. docs/xemem.md, "Whole-address-space shares".

pub(crate) mod owner;
pub(crate) mod peer;
mod sys;

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use hobbes_proto::xpmem_as::Control;

use crate::{MakeOptions, PageKind, Result, SegId, SegmentRecord, XememError};

pub use peer::Peer;

/// Share this process's whole address space: returns the segid others
/// `get`. Starts the owner's service thread on the first call; later calls
/// make more segments (with their own modes) over the same share.
pub fn make_whole(opts: &MakeOptions) -> Result<SegId> {
    const OP: &str = "xpmem_make";
    if opts.mode & !0o777 != 0 {
        return Err(XememError::invalid(
            OP,
            format!("mode {:o} has bits beyond 0777", opts.mode),
        ));
    }
    let owner = owner::get_or_start().map_err(|reason| XememError::Other { op: OP, reason })?;
    let control = owner.control.try_clone().map_err(|e| XememError::Other {
        op: OP,
        reason: e.to_string(),
    })?;
    let mut st = crate::state::lock();
    crate::export(
        &mut st,
        0,
        0,
        hobbes_sys::page_size(),
        control,
        PageKind::Base,
        opts,
    )
}

/// For a segment just got: a connection to its owner when it is a
/// whole-address-space share (its memory is a control memfd), else `None`.
pub(crate) fn peer_for(record: &SegmentRecord, memfd: &OwnedFd) -> Result<Option<Arc<Peer>>> {
    if record.size != hobbes_sys::page_size() as u64 || record.page_kind != PageKind::Base {
        return Ok(None);
    }
    let mut magic = [0u8; 8];
    match nix::sys::uio::pread(memfd.as_fd(), &mut magic, 0) {
        Ok(8) if Control::is_control(&magic) => Peer::connect(memfd).map(|p| Some(Arc::new(p))),
        _ => Ok(None),
    }
}

/// Counters of this process's whole-address-space shares (tests and
/// benchmarks).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Attaches served from the attachment cache.
    pub cache_hits: u64,
    /// Attaches that asked the owner.
    pub cache_misses: u64,
    /// Attachment faults resolved by asking the owner again.
    pub faults: u64,
    /// As owner: ensure requests served.
    pub ensures: u64,
    /// As owner: bytes converted into the address-space file.
    pub converted: u64,
    /// As owner: bytes punched out after unmaps.
    pub punched: u64,
}

/// This process's counters.
pub fn stats() -> Stats {
    let mut s = Stats {
        cache_hits: peer::STATS.hits.load(Ordering::Relaxed),
        cache_misses: peer::STATS.misses.load(Ordering::Relaxed),
        faults: peer::STATS.faults.load(Ordering::Relaxed),
        ..Default::default()
    };
    if let Some(o) = owner::current() {
        s.ensures = o.stats.ensures.load(Ordering::Relaxed);
        s.converted = o.stats.converted.load(Ordering::Relaxed);
        s.punched = o.stats.punched.load(Ordering::Relaxed);
    }
    s
}
