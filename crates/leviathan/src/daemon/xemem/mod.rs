//! XEMEM name server: segment ids, names, permissions and lifetimes.
//!
//! The daemon keeps every segment's memory ([`memory::SegmentMemory`]: where
//! it lives and how a permitted requester gets it) and signal channel while
//! the segment exists, watches each owner with a pidfd (the owner's exit
//! removes its segments), and after a restart recovers the memory from the
//! owners with `pidfd_getfd`. Attachments are the requesters' own mappings:
//! they stay valid until detached, whatever happens to the owner or the
//! daemon; `attachers` counts them. See docs/xemem.md.

mod attachers;
mod memory;

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hobbes_proto::model::{
    Access, AppId, EnclaveId, SegId, SegmentInfo, SegmentRecord, HOST_ENCLAVE,
};
use hobbes_proto::msg::{ErrorCode, XememMake, MAX_RETIRE};

use hobbes_nis::NisTxn;

use super::enclaves::TxError;
use super::{internal, now_ms, refuse, Daemon, Refusal};
use crate::sys::{self, PeerCred};

/// Longest segment name.
const MAX_SEGMENT_NAME: usize = 128;

use memory::{Described, SegmentMemory};

/// The name server's references to one segment.
pub struct Held {
    /// Its memory.
    memory: SegmentMemory,
    /// Its signal channel (an eventfd), when `signalled`.
    eventfd: Option<OwnedFd>,
    /// The owner's pidfd: readable when the owner exits.
    owner: Option<OwnedFd>,
}

/// The name server's own state: its references to every segment's memory,
/// behind one lock that is never held while calling out (the records
/// themselves are in the NIS).
#[derive(Default)]
pub struct NameServer {
    held: Mutex<HashMap<SegId, Held>>,
    /// Makers whose enclave and app are settled, by pid: (start time,
    /// enclave, app). Finding a host process's owner walks its ancestry in
    /// /proc (about 0.1 ms), and an XASM producer makes a segment every
    /// snapshot. The start time tells a reused pid apart.
    owners: Mutex<HashMap<u32, MakerOwner>>,
}

/// A maker's start time and the enclave and app it belongs to.
type MakerOwner = (u64, EnclaveId, Option<AppId>);

/// Makers remembered in `NameServer::owners` before it starts over.
const MAX_REMEMBERED_OWNERS: usize = 4096;

impl NameServer {
    /// No segment held.
    pub fn new() -> NameServer {
        NameServer::default()
    }

    /// Record a new segment with `record` (its NIS transaction) and hold
    /// `held` as its memory in one step: gets take this lock, so none finds
    /// the record (lookups read the NIS directly) before the memory is held.
    fn record_and_hold(
        &self,
        record: impl FnOnce() -> Result<SegmentRecord, Refusal>,
        held: Held,
    ) -> Result<SegmentRecord, Refusal> {
        let mut map = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let rec = record()?;
        map.insert(rec.segid, held);
        Ok(rec)
    }

    /// Hold `backing` as segment `segid`'s memory.
    fn keep(&self, segid: SegId, backing: Held) {
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(segid, backing);
    }

    /// Drop the references to segment `segid`'s memory.
    fn drop_backing(&self, segid: SegId) {
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&segid);
    }

    /// `f` of segment `segid`'s backing, or `None` when none is held.
    fn with_backing<T>(&self, segid: SegId, f: impl FnOnce(&Held) -> T) -> Option<T> {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.get(&segid).map(f)
    }

    /// The device each held segment's file is on (see `attachers`).
    fn devices(&self) -> HashMap<SegId, u64> {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.iter()
            .filter_map(|(segid, h)| Some((*segid, h.memory.device()?)))
            .collect()
    }

    /// The segments whose owner has exited (its pidfd is readable).
    fn exited_owners(&self) -> Vec<SegId> {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let mut ids = Vec::new();
        let mut polls: Vec<nix::poll::PollFd> = Vec::new();
        for (segid, b) in held.iter() {
            if let Some(owner) = &b.owner {
                ids.push(*segid);
                polls.push(nix::poll::PollFd::new(
                    owner.as_fd(),
                    nix::poll::PollFlags::POLLIN,
                ));
            }
        }
        let _ = nix::poll::poll(&mut polls, nix::poll::PollTimeout::ZERO);
        ids.into_iter()
            .zip(&polls)
            .filter(|(_, p)| p.revents().is_some_and(|r| !r.is_empty()))
            .map(|(id, _)| id)
            .collect()
    }
}

impl Daemon {
    /// Serve `xemem_make` (protocol.md §4.1, docs/xemem.md): record a segment
    /// owned by `peer` over the memfd in `fds` (for a composite segment the
    /// table memfd then the pool memfd; then the eventfd when `signalled`),
    /// retiring `make.retire` in the same transaction, and keep references to
    /// the memory so that `xemem_get` can hand it out after the maker is gone.
    /// The wrong number of descriptors is `bad_request`; a descriptor that is
    /// not a memfd, a size of zero or beyond the memfd, a bad name, a bad
    /// composite table or more than 64 segments to retire is `invalid_spec`;
    /// a taken name or segid is `conflict`; a retired segment that does not
    /// exist or that the peer may not remove is `not_found` /
    /// `permission_denied`, and then nothing changes.
    pub fn xemem_make(
        &self,
        peer: &PeerCred,
        make: &XememMake,
        fds: Vec<OwnedFd>,
    ) -> Result<SegmentRecord, Refusal> {
        // Validation first, all of it before the NIS changes: a refused make
        // changes nothing (not even the retired segments).
        let fds = MakeFds::split(make, fds)?;
        let (memory, described) = SegmentMemory::from_make(make, fds.memfd, fds.pool)?;
        check_name_and_segid(make)?;
        self.check_retire(peer, &make.retire)?;
        // The owner's pidfd is opened while it waits for this answer (so it
        // is alive): its exit then removes the segment (`watch_segment_owners`).
        let owner = sys::pidfd_open(peer.pid).ok();
        let held = Held {
            memory,
            eventfd: fds.eventfd,
            owner,
        };
        let memory = held.memory.to_string();
        let record = self
            .xemem
            .record_and_hold(|| self.record_segment(peer, make, described), held)?;
        self.made(&record, make, &memory);
        Ok(record)
    }

    /// The one NIS transaction of a make: retire `make.retire`, check the
    /// name, take a segid, count it, write the record.
    fn record_segment(
        &self,
        peer: &PeerCred,
        make: &XememMake,
        memory: Described,
    ) -> Result<SegmentRecord, Refusal> {
        let owner_start_time = sys::proc_start_time(peer.pid);
        let (owner_enclave, owner_app) = self.maker_owner(peer.pid, owner_start_time);
        let mode = if make.mode == 0 {
            0o600
        } else {
            make.mode & 0o777
        };
        self.tx(|t| {
            // First, so the new segment may take a retired one's name.
            retire_in(t, &make.retire)?;
            if let Some(name) = &make.name {
                if let Some(other) = t.segment_by_name(name)? {
                    return Err(refuse(
                        ErrorCode::Conflict,
                        format!("segment name {name:?} is taken by segment {other}"),
                    )
                    .into());
                }
            }
            let segid = take_segid(t, make.segid)?;
            let mut rec = SegmentRecord {
                segid,
                name: make.name.clone(),
                size: make.size,
                page_kind: make.page_kind,
                mode,
                owner_uid: peer.uid,
                owner_gid: peer.gid,
                owner_enclave,
                owner_app,
                owner_pid: peer.pid,
                owner_start_time,
                owner_fd: make.owner_fd,
                owner_event_fd: make.owner_event_fd,
                owner_addr: make.owner_addr,
                backing_inode: memory.inode,
                backing_offset: memory.offset,
                signalled: make.signalled,
                created_ms: now_ms(),
                rev: 0,
                composite: memory.composite,
            };
            t.put_segment(&mut rec)?;
            Ok::<_, TxError>(rec)
        })
    }

    /// Which enclave and app the maker `pid` (started at `start_time`)
    /// belongs to: [`Daemon::whose_process`], remembered once it is settled
    /// (an app, or a host process with no enclave's control process among
    /// its ancestors; an app not yet recorded under its control process is
    /// asked again next time).
    fn maker_owner(&self, pid: u32, start_time: Option<u64>) -> (EnclaveId, Option<AppId>) {
        let Some(start) = start_time else {
            return self.whose_process(pid);
        };
        let remembered = self
            .xemem
            .owners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&pid)
            .copied();
        if let Some((at, enclave, app)) = remembered {
            if at == start {
                return (enclave, app);
            }
        }
        let (enclave, app) = self.whose_process(pid);
        if app.is_some() || enclave == HOST_ENCLAVE {
            let mut owners = self.xemem.owners.lock().unwrap_or_else(|p| p.into_inner());
            if owners.len() >= MAX_REMEMBERED_OWNERS {
                owners.clear();
            }
            owners.insert(pid, (start, enclave, app));
        }
        (enclave, app)
    }

    /// After the record and the memory are held: log, and let go of the
    /// retired segments' memory (their records went in the same transaction).
    fn made(&self, record: &SegmentRecord, make: &XememMake, memory: &str) {
        // An XASM producer makes a composite version (and retires an older
        // one) per snapshot, up to thousands a second: those two lines are
        // debug, so the log at info keeps what an administrator acts on.
        let extents = record.composite.map(|c| c.extents);
        if extents.is_some() {
            tracing::debug!(segid = record.segid, name = ?record.name, size = record.size, owner = record.owner_pid, enclave = record.owner_enclave, memory, extents, "segment made");
        } else {
            tracing::info!(segid = record.segid, name = ?record.name, size = record.size, owner = record.owner_pid, enclave = record.owner_enclave, memory, "segment made");
        }
        for &r in &make.retire {
            self.xemem.drop_backing(r);
            tracing::debug!(segid = r, by = record.segid, "segment gone: retired");
        }
    }

    /// A make may retire at most MAX_RETIRE segments, each of which the
    /// caller could remove itself.
    fn check_retire(&self, peer: &PeerCred, retire: &[SegId]) -> Result<(), Refusal> {
        if retire.len() > MAX_RETIRE {
            return Err(refuse(
                ErrorCode::InvalidSpec,
                format!(
                    "a make may retire at most {MAX_RETIRE} segments, not {}",
                    retire.len()
                ),
            ));
        }
        for &r in retire {
            let rec = self.segment(r).map_err(|e| {
                refuse(
                    ErrorCode::NotFound,
                    format!("cannot retire segment {r}: {}", e.message),
                )
            })?;
            if peer.uid != 0 && peer.uid != rec.owner_uid {
                return Err(refuse(
                    ErrorCode::PermissionDenied,
                    format!(
                        "permission denied: cannot retire segment {r}: it belongs to uid {}",
                        rec.owner_uid
                    ),
                ));
            }
        }
        Ok(())
    }

    fn segment(&self, segid: SegId) -> Result<SegmentRecord, Refusal> {
        self.nis
            .reader()
            .segment(segid)
            .map_err(internal)?
            .ok_or_else(|| {
                refuse(
                    ErrorCode::NotFound,
                    format!("no segment {segid} (hobbes list-segments shows them)"),
                )
            })
    }

    /// Serve `xemem_remove`: delete segment `segid`'s record and drop the
    /// daemon's references to its memory (processes that attached it keep
    /// their mappings). Root or the owner's uid only (`permission_denied`);
    /// `not_found` for an unknown segment.
    pub fn xemem_remove(&self, peer: &PeerCred, segid: SegId) -> Result<(), Refusal> {
        let rec = self.segment(segid)?;
        if peer.uid != 0 && peer.uid != rec.owner_uid {
            return Err(refuse(
                ErrorCode::PermissionDenied,
                format!("permission denied: segment {segid} belongs to uid {}; only it or root may remove it", rec.owner_uid),
            ));
        }
        self.forget_segment(segid, "removed");
        Ok(())
    }

    fn forget_segment(&self, segid: SegId, why: &str) {
        let _ = self.tx(|t| {
            t.delete_segment(segid)?;
            Ok::<_, TxError>(())
        });
        self.xemem.drop_backing(segid);
        tracing::info!(segid, why, "segment gone");
    }

    /// Check the permit and hand out descriptors: the memfd (or a read-only
    /// reopening of it) and the eventfd.
    pub fn xemem_get(
        &self,
        peer: &PeerCred,
        segid: SegId,
        access: Access,
    ) -> Result<(SegmentRecord, Vec<OwnedFd>), Refusal> {
        let rec = self.segment(segid)?;
        if rec.composite.is_some() && access == Access::ReadWrite {
            return Err(refuse(
                ErrorCode::PermissionDenied,
                format!(
                    "permission denied: segment {segid}{} is a composite (read-only, versioned) segment; get it read-only",
                    rec.name.as_deref().map(|n| format!(" ({n})")).unwrap_or_default()
                ),
            ));
        }
        let need = match access {
            Access::ReadOnly => 0o4,
            Access::ReadWrite => 0o6,
        };
        let allowed = peer.uid == 0 || peer.uid == rec.owner_uid || {
            let bits =
                if peer.gid == rec.owner_gid || sys::groups_of(peer.pid).contains(&rec.owner_gid) {
                    (rec.mode >> 3) & 0o7
                } else {
                    rec.mode & 0o7
                };
            bits & need == need
        };
        if !allowed {
            return Err(refuse(
                ErrorCode::PermissionDenied,
                format!(
                    "permission denied: segment {segid} (mode {:o}, uid {} gid {}) does not grant {} access to uid {} gid {}",
                    rec.mode,
                    rec.owner_uid,
                    rec.owner_gid,
                    if access == Access::ReadOnly { "read" } else { "read-write" },
                    peer.uid,
                    peer.gid
                ),
            ));
        }
        let fds = self.xemem.with_backing(segid, |b| {
            let mut fds = b.memory.grant(access)?;
            if let Some(e) = &b.eventfd {
                fds.push(e.try_clone().map_err(internal)?);
            }
            Ok::<_, Refusal>(fds)
        });
        let fds = fds.ok_or_else(|| {
            refuse(
                ErrorCode::NotFound,
                format!("segment {segid} has no backing (its owner is gone)"),
            )
        })??;
        Ok((rec, fds))
    }

    /// Serve `xemem_lookup`: the record of the segment named `name`, or
    /// `not_found`. Open to anyone: access is checked at `xemem_get`.
    pub fn xemem_lookup(&self, name: &str) -> Result<SegmentRecord, Refusal> {
        self.nis
            .reader()
            .segment_by_name(name)
            .map_err(internal)?
            .ok_or_else(|| refuse(ErrorCode::NotFound, format!("no segment named {name:?}")))
    }

    /// Serve `xemem_signal`: add one to segment `segid`'s eventfd, waking its
    /// waiters. `not_found` for an unknown segment (or one whose memory the
    /// daemon no longer holds), `invalid_spec` for one made without a signal
    /// channel.
    pub fn xemem_signal(&self, segid: SegId) -> Result<(), Refusal> {
        let rec = self.segment(segid)?;
        if !rec.signalled {
            return Err(refuse(
                ErrorCode::InvalidSpec,
                format!(
                    "segment {segid} has no signal channel (make it with xemem_make_signalled)"
                ),
            ));
        }
        let signalled = self.xemem.with_backing(segid, |b| {
            b.eventfd
                .as_ref()
                .map(|e| nix::unistd::write(e, &1u64.to_ne_bytes()))
        });
        signalled
            .flatten()
            .ok_or_else(|| {
                refuse(
                    ErrorCode::NotFound,
                    format!("segment {segid} has no backing"),
                )
            })?
            .map_err(|e| internal(format!("signal segment {segid}: {e}")))?;
        Ok(())
    }

    /// Segments with their live attachments (`attachers`).
    pub fn xemem_list(&self) -> Result<Vec<SegmentInfo>, Refusal> {
        let segments = self.nis.reader().segments().map_err(internal)?;
        let mut found = attachers::scan(&segments, &self.xemem.devices());
        Ok(segments
            .into_iter()
            .map(|record| {
                let mine = found.remove(&record.segid).unwrap_or_default();
                SegmentInfo {
                    attachments: mine.iter().map(|(_, n)| n).sum(),
                    attachers: mine.iter().map(|(p, _)| *p).collect(),
                    record,
                }
            })
            .collect())
    }

    /// Remove the segments of owners that exited. Runs forever.
    pub fn watch_segment_owners(self: Arc<Self>) {
        while !self.is_shutting_down() {
            let gone = self.xemem.exited_owners();
            for segid in gone {
                self.forget_segment(segid, "its owner exited");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// After a restart: take the descriptors back from live owners; forget
    /// segments whose owner is gone.
    pub fn recover_segments(&self) {
        for rec in self.nis.reader().segments().unwrap_or_default() {
            match self.recover(&rec) {
                Ok(b) => {
                    tracing::info!(
                        segid = rec.segid,
                        owner = rec.owner_pid,
                        "segment recovered from its owner"
                    );
                    self.xemem.keep(rec.segid, b);
                }
                Err(why) => self.forget_segment(rec.segid, &why),
            }
        }
    }

    fn recover(&self, rec: &SegmentRecord) -> Result<Held, String> {
        if !sys::same_process_alive(rec.owner_pid, rec.owner_start_time) {
            return Err("its owner exited while leviathan was down".into());
        }
        let pidfd = sys::pidfd_open(rec.owner_pid)
            .map_err(|e| format!("pidfd_open({}): {e}", rec.owner_pid))?;
        let take = |fd: i32| {
            sys::pidfd_getfd(pidfd.as_fd(), fd).map_err(|e| {
                format!(
                    "cannot recover descriptor {fd} from pid {}: {e}",
                    rec.owner_pid
                )
            })
        };
        let memory = SegmentMemory::recover(rec, take)?;
        let eventfd = rec.owner_event_fd.map(take).transpose()?;
        Ok(Held {
            memory,
            eventfd,
            owner: Some(pidfd),
        })
    }
}

/// The descriptors that came with an `xemem_make`, by role.
struct MakeFds {
    /// The segment's memfd; a composite segment's extent table.
    memfd: OwnedFd,
    /// A composite segment's pool memfd.
    pool: Option<OwnedFd>,
    /// The signal channel of a `signalled` segment.
    eventfd: Option<OwnedFd>,
}

impl MakeFds {
    /// Check the number of descriptors (`bad_request`); name each by its
    /// role.
    fn split(make: &XememMake, fds: Vec<OwnedFd>) -> Result<MakeFds, Refusal> {
        let composite = make.composite.is_some();
        let want = 1 + usize::from(composite) + usize::from(make.signalled);
        if fds.len() != want {
            return Err(refuse(
                ErrorCode::BadRequest,
                format!(
                    "xemem_make carries {} descriptors; expected {want} (the {}{})",
                    fds.len(),
                    if composite {
                        "table memfd, the pool memfd"
                    } else {
                        "memfd"
                    },
                    if make.signalled {
                        " and the eventfd"
                    } else {
                        ""
                    }
                ),
            ));
        }
        let mut fds = fds.into_iter();
        let memfd = fds.next().ok_or_else(|| internal("descriptor vanished"))?;
        let pool = match composite {
            true => Some(fds.next().ok_or_else(|| internal("descriptor vanished"))?),
            false => None,
        };
        let eventfd = fds.next();
        Ok(MakeFds {
            memfd,
            pool,
            eventfd,
        })
    }
}

/// Check an `xemem_make`'s name and segid (`invalid_spec`).
fn check_name_and_segid(make: &XememMake) -> Result<(), Refusal> {
    if let Some(name) = &make.name {
        if name.is_empty()
            || name.len() > MAX_SEGMENT_NAME
            || name.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(refuse(
                ErrorCode::InvalidSpec,
                format!("segment name {name:?} must be 1-{MAX_SEGMENT_NAME} characters, no spaces"),
            ));
        }
    }
    if make.segid.is_some_and(|s| s <= 0) {
        return Err(refuse(
            ErrorCode::InvalidSpec,
            "a requested segid must be positive",
        ));
    }
    Ok(())
}

/// Inside a make's transaction: delete the retired segments' records
/// (`not_found` for one that is gone, undoing the whole make).
fn retire_in(t: &mut NisTxn, retire: &[SegId]) -> Result<(), TxError> {
    for &r in retire {
        if t.segment(r)?.is_none() {
            return Err(refuse(
                ErrorCode::NotFound,
                format!("cannot retire segment {r}: no such segment"),
            )
            .into());
        }
        t.delete_segment(r)?;
    }
    Ok(())
}

/// Inside a make's transaction: the requested segid if free (else
/// `conflict`), or the next free one; the header's counters follow.
fn take_segid(t: &mut NisTxn, requested: Option<SegId>) -> Result<SegId, TxError> {
    let mut h = t.header()?.ok_or_else(|| internal("NIS has no header"))?;
    let segid = match requested {
        Some(s) if t.segment(s)?.is_some() => {
            return Err(refuse(ErrorCode::Conflict, format!("segid {s} is taken")).into());
        }
        Some(s) => s,
        None => {
            let mut s = h.counters.next_segid.max(1);
            while t.segment(s)?.is_some() {
                s += 1;
            }
            s
        }
    };
    h.counters.next_segid = h.counters.next_segid.max(segid + 1);
    h.counters.segments_made += 1;
    t.put_header(&h)?;
    Ok(segid)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lookups read the NIS directly: while a new segment's record is
    /// written, gets (which take the name server's lock) must wait, so no
    /// get finds the record before the memory is held.
    #[test]
    fn a_new_segment_is_recorded_and_held_in_one_step() {
        let ns = NameServer::new();
        let file = hobbes_sys::memfd_create(c"test", hobbes_sys::MemfdFlags::empty()).unwrap();
        let held = Held {
            memory: SegmentMemory::FileRange {
                file,
                offset: 0,
                len: 4096,
            },
            eventfd: None,
            owner: None,
        };
        let rec = ns
            .record_and_hold(
                || {
                    assert!(
                        ns.held.try_lock().is_err(),
                        "gets wait while the record is written"
                    );
                    Ok(SegmentRecord {
                        segid: 7,
                        ..attachers::tests::test_record()
                    })
                },
                held,
            )
            .unwrap();
        assert_eq!(rec.segid, 7);
        assert_eq!(ns.with_backing(7, |_| ()), Some(()));
    }
}
