//! The process-global registry of regions behind the C API (`xasm.h`):
//! handles for `xasm_region_*`, the address spaces of the Kitten-style
//! calls (`arena_map_backed_region*`, `aspace_copy`), and the hook
//! `xemem_make` consults to publish a region's copy instead of converting
//! the range.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};

use hobbes_xemem::SegId;

use crate::error::{Result, XasmError};
use crate::producer::{Producer, SnapshotInfo};

/// A registered region.
pub struct Region {
    id: u64,
    /// The Kitten-style address space id it belongs to, if any.
    aspace: Option<u64>,
    addr: usize,
    len: usize,
    name: String,
    producer: Mutex<Producer>,
}

static REGIONS: Mutex<BTreeMap<u64, Arc<Region>>> = Mutex::new(BTreeMap::new());
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn regions() -> MutexGuard<'static, BTreeMap<u64, Arc<Region>>> {
    REGIONS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Register a producer; returns its region (its `id` is the C handle).
pub fn insert(producer: Producer, aspace: Option<u64>) -> Arc<Region> {
    let r = Arc::new(Region {
        id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        aspace,
        addr: producer.as_ptr() as usize,
        len: producer.len(),
        name: producer.name().to_string(),
        producer: Mutex::new(producer),
    });
    regions().insert(r.id, r.clone());
    r
}

/// The region with C handle `id`; `None` when no such handle is
/// registered (never, or removed).
pub fn get(id: u64) -> Option<Arc<Region>> {
    regions().get(&id).cloned()
}

/// Unregister; the producer is dropped when the last user lets go.
pub fn remove(id: u64) -> Option<Arc<Region>> {
    regions().remove(&id)
}

impl Region {
    /// The C handle: process-local, > 0, never reused.
    pub fn id(&self) -> u64 {
        self.id
    }
    /// The region's first byte in this process (page-aligned).
    pub fn addr(&self) -> usize {
        self.addr
    }
    /// The region's length in bytes (a multiple of the page size).
    pub fn len(&self) -> usize {
        self.len
    }
    /// Always false: regions are never empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The region's node-wide name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Snapshot now; `Busy` (EBUSY) when another thread is snapshotting
    /// (or otherwise using) this region at the same time.
    pub fn snapshot(&self, op: &'static str) -> Result<SnapshotInfo> {
        match self.producer.try_lock() {
            Ok(mut p) => p.snapshot(),
            Err(TryLockError::Poisoned(p)) => p.into_inner().snapshot(),
            Err(TryLockError::WouldBlock) => Err(XasmError::Busy {
                op,
                what: format!("region {:?}", self.name),
                reason: "another snapshot of it is in progress".into(),
            }),
        }
    }

    /// Run `f` on the producer (waits for a snapshot in progress).
    pub fn with<T>(&self, f: impl FnOnce(&mut Producer) -> T) -> T {
        let mut p = self.producer.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut p)
    }
}

/// The Kitten-style `aspace_copy`: snapshot every region of address space
/// `aspace`, in creation order. Returns the highest version published.
pub fn aspace_copy(aspace: u64) -> Result<u64> {
    const OP: &str = "aspace_copy";
    let list: Vec<Arc<Region>> = regions()
        .values()
        .filter(|r| r.aspace == Some(aspace))
        .cloned()
        .collect();
    if list.is_empty() {
        return Err(XasmError::not_found(
            OP,
            format!("address space {aspace} has no backed regions (arena_map_backed_region)"),
        ));
    }
    let mut latest = 0;
    for r in list {
        latest = latest.max(r.snapshot(OP)?.version);
    }
    Ok(latest)
}

/// The name of the XASM region `[addr, addr+len)` overlaps, if any.
pub fn region_at(addr: usize, len: usize) -> Option<String> {
    let end = addr.checked_add(len)?;
    regions()
        .values()
        .find(|r| r.addr < end && addr < r.addr + r.len)
        .map(|r| r.name.clone())
}

/// The `xemem_make` hook. `None` when `[addr, addr+len)` touches no XASM
/// region (make it as usual). Otherwise the range must start at a region
/// whose copy exists (`aspace_copy` or `xasm_snapshot`): its latest version
/// (first `len` bytes) is published as a composite segment named `name`,
/// which pins that version until `xemem_remove`.
pub fn publish_copy(addr: usize, len: usize, name: Option<&str>) -> Option<Result<SegId>> {
    const OP: &str = "xemem_make";
    let end = addr.checked_add(len)?;
    let region = regions()
        .values()
        .find(|r| r.addr < end && addr < r.addr + r.len)
        .cloned()?;
    Some((|| {
        if addr != region.addr {
            return Err(XasmError::invalid(
                OP,
                format!(
                    "range {addr:#x}+{len:#x} overlaps XASM region {:?} ({:#x}+{:#x}); xemem_make of a region publishes its copy and must start at the region",
                    region.name, region.addr, region.len
                ),
            ));
        }
        let name = name.ok_or_else(|| {
            XasmError::invalid(
                OP,
                format!(
                    "publishing the copy of region {:?} needs a name",
                    region.name
                ),
            )
        })?;
        region.with(|p| {
            let v = p.latest();
            if v == 0 {
                return Err(XasmError::invalid(
                    OP,
                    format!(
                        "region {:?} has no copy yet: call aspace_copy (or xasm_snapshot) first",
                        region.name
                    ),
                ));
            }
            p.publish_alias(v, name, len as u64)
        })
    })())
}

/// The `xemem_remove` hook: an alias segment made by [`publish_copy`] no
/// longer pins its version.
pub fn segment_removed(segid: SegId) {
    let list: Vec<Arc<Region>> = regions().values().cloned().collect();
    for r in list {
        if r.with(|p| p.alias_removed(segid)) {
            return;
        }
    }
}
