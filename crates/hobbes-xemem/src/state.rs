//! Process-global XEMEM state behind one mutex: the connection to the name
//! server and the registries of backings, own segments, grants and
//! attachments.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::sync::{Mutex, MutexGuard};

use hobbes_client::{Client, ClientError};

use crate::composite::Extent;
use crate::error::{connection_broke, Result, XememError};
use crate::{Access, ApId, PageKind, SegId, SegmentRecord};

/// A memfd this process maps at `[addr, addr+len)` from offset 0: memory
/// `alloc` made or `make` converted. A later `make` of exactly that range
/// reuses it instead of converting again.
pub struct Backing {
    pub addr: usize,
    pub len: usize,
    pub memfd: OwnedFd,
    pub inode: u64,
    pub page_kind: PageKind,
}

/// A segment this process made. The descriptors stay open until remove: the
/// name server recovers them from here after a restart.
pub struct OwnSegment {
    /// Held, never read: the name server may take it back (`pidfd_getfd`).
    #[allow(dead_code)]
    pub memfd: OwnedFd,
    /// A composite segment's pool (held likewise).
    #[allow(dead_code)]
    pub pool: Option<OwnedFd>,
    pub eventfd: Option<OwnedFd>,
    pub inode: u64,
}

/// An access permit from `get`.
pub struct Grant {
    pub segid: SegId,
    pub access: Access,
    pub record: SegmentRecord,
    /// The segment's memfd; a composite segment's table, our own open file
    /// description of it, on which the hold (a shared flock) is taken.
    pub memfd: OwnedFd,
    pub eventfd: Option<OwnedFd>,
    pub composite: Option<CompositeGrant>,
    /// A whole-address-space share: the connection to its owner.
    pub whole: Option<std::sync::Arc<crate::wholeas::Peer>>,
}

/// What a composite segment's permit adds: its pool and validated table.
pub struct CompositeGrant {
    pub pool: OwnedFd,
    pub extents: Vec<Extent>,
}

/// A mapping made by `attach`: `[base, base+len)`, handed out as `base + delta`.
#[derive(Debug)]
pub struct Mapped {
    pub base: usize,
    pub len: usize,
    /// A composite segment's table descriptor (a dup of the grant's): keeps
    /// the hold while mapped, also after the permit is released.
    #[allow(dead_code)]
    pub hold: Option<OwnedFd>,
}

pub struct State {
    client: Option<(Client, u32)>,
    pub backings: Vec<Backing>,
    pub own: BTreeMap<SegId, OwnSegment>,
    pub grants: BTreeMap<ApId, Grant>,
    /// Keyed by the mapping's base address.
    pub attachments: BTreeMap<usize, Mapped>,
    next_apid: ApId,
}

static STATE: Mutex<State> = Mutex::new(State::new());

/// The process's state, locked. A panic while it was held leaves it usable:
/// every update is a single insert or remove.
pub fn lock() -> MutexGuard<'static, State> {
    STATE.lock().unwrap_or_else(|p| p.into_inner())
}

impl State {
    const fn new() -> Self {
        State {
            client: None,
            backings: Vec::new(),
            own: BTreeMap::new(),
            grants: BTreeMap::new(),
            attachments: BTreeMap::new(),
            next_apid: 0,
        }
    }

    /// A private state, apart from the process's.
    #[cfg(test)]
    pub fn default_for_tests() -> Self {
        Self::new()
    }
}

/// Whether a failed request may be sent again on a fresh connection.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Repeating it changes nothing (get, remove, list, lookup).
    Idempotent,
    /// It may have taken effect before the connection broke (make, signal).
    Once,
}

impl State {
    /// Run `f` on the connection to the name server: connected lazily, and
    /// again after fork() (a child must not share its parent's stream) or
    /// when the connection broke.
    pub fn call<T>(
        &mut self,
        op: &'static str,
        retry: Retry,
        mut f: impl FnMut(&mut Client) -> std::result::Result<T, ClientError>,
    ) -> Result<T> {
        let pid = std::process::id();
        for attempt in 0..2 {
            let client = match &mut self.client {
                Some((c, owner)) if *owner == pid => c,
                slot => {
                    let c = Client::connect_default().map_err(|e| XememError::client(op, e))?;
                    &mut slot.insert((c, pid)).0
                }
            };
            match f(client) {
                Ok(v) => return Ok(v),
                Err(e) if connection_broke(&e) => {
                    self.client = None;
                    if attempt == 0 && retry == Retry::Idempotent {
                        continue;
                    }
                    return Err(XememError::client(op, e));
                }
                Err(e) => return Err(XememError::client(op, e)),
            }
        }
        unreachable!("the second attempt returns")
    }

    pub fn add_grant(&mut self, grant: Grant) -> ApId {
        self.next_apid += 1;
        let apid = self.next_apid;
        self.grants.insert(apid, grant);
        apid
    }

    /// The attachment containing `addr`: its key, base and length.
    pub fn attachment_at(&self, addr: usize) -> Option<(usize, usize, usize)> {
        self.attachments
            .range(..=addr)
            .next_back()
            .map(|(k, m)| (*k, m.base, m.len))
            .filter(|(_, base, len)| addr >= *base && addr < base + len)
    }
}
