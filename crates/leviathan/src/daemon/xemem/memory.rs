//! Where a segment's memory lives, and how the name server hands it out.
//!
//! The name server itself (names, segids, permissions, lifetimes) never
//! looks inside a [`SegmentMemory`]: it checks a make into one, asks it for
//! the descriptors a permitted requester gets, and asks it to come back from
//! its owner after a restart. Today every segment is host memory reached
//! through a descriptor of a shared-memory file (a memfd, or an unnamed file
//! in the daemon's huge-page tmpfs or on hugetlbfs; "memfd" below means any
//! of them): a page-aligned range of one (the whole of a file made for the
//! segment, or part of a larger one such as an enclave's RAM file), or a
//! composite segment's table and pool. Memory that only a guest can reach
//! (a segment mapped into a VM) is a new variant here, with its own grant;
//! nothing else in the name server changes.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{FileExt, MetadataExt};

use hobbes_proto::model::{Access, CompositeInfo, SegmentRecord};
use hobbes_proto::msg::{ErrorCode, XememComposite, XememMake};
use hobbes_proto::xemem_table;

use super::super::{internal, refuse, Refusal};
use crate::sys;

/// What a descriptor that cannot back a segment is told.
const NOT_SHARED: &str = "is not a memfd or a file on tmpfs or hugetlbfs";

/// A segment's memory, as the name server holds it.
pub enum SegmentMemory {
    /// `[offset, offset+len)` of a host memfd, page-aligned. Requesters get
    /// a descriptor of the memfd and map from `offset`.
    FileRange {
        /// The memfd.
        file: OwnedFd,
        /// Where the segment starts in it.
        offset: u64,
        /// The segment's length.
        len: u64,
    },
    /// A composite (read-only, versioned) segment: its extent table and the
    /// pool the extents point into (docs/xemem.md, "Composite segments").
    Composite {
        /// The extent table memfd.
        table: OwnedFd,
        /// The pool memfd.
        pool: OwnedFd,
    },
}

/// What the record says of a segment's memory.
pub struct Described {
    /// Inode of the memfd requesters map (the table, for a composite).
    pub inode: u64,
    /// Where the segment starts in it.
    pub offset: u64,
    /// A composite segment's shape.
    pub composite: Option<CompositeInfo>,
}

impl SegmentMemory {
    /// Check the memory an `xemem_make` brought (`invalid_spec` naming the
    /// problem) and take it: `memfd` (a composite's table) and `pool`.
    pub fn from_make(
        make: &XememMake,
        memfd: OwnedFd,
        pool: Option<OwnedFd>,
    ) -> Result<(SegmentMemory, Described), Refusal> {
        let bad = |why: String| refuse(ErrorCode::InvalidSpec, why);
        if !sys::is_shared_memory_file(memfd.as_fd()) {
            return Err(bad(match pool.is_some() {
                true => format!("the composite segment's table descriptor {NOT_SHARED}"),
                false => format!("the segment's descriptor {NOT_SHARED}"),
            }));
        }
        let meta = std::fs::File::from(memfd.try_clone().map_err(internal)?)
            .metadata()
            .map_err(internal)?;
        match (pool, make.composite) {
            (Some(pool), Some(c)) => {
                if make.offset != 0 {
                    return Err(bad(format!(
                        "a composite segment starts at offset 0 of its table, not {}",
                        make.offset
                    )));
                }
                let info = check_composite(make.size, &memfd, &pool, c)?;
                let described = Described {
                    inode: meta.ino(),
                    offset: 0,
                    composite: Some(info),
                };
                let memory = SegmentMemory::Composite { table: memfd, pool };
                Ok((memory, described))
            }
            _ => {
                // A hugetlbfs file's block size is its huge page size.
                let unit = (meta.blksize()).max(hobbes_sys::page_size() as u64);
                check_range(make.offset, make.size, meta.len(), unit)?;
                let described = Described {
                    inode: meta.ino(),
                    offset: make.offset,
                    composite: None,
                };
                let memory = SegmentMemory::FileRange {
                    file: memfd,
                    offset: make.offset,
                    len: make.size,
                };
                Ok((memory, described))
            }
        }
    }

    /// The descriptors a requester granted `access` gets, in the order the
    /// protocol gives them (protocol.md §4.3): the memfd, or a read-only
    /// reopening of it; a composite's pool after its table.
    pub fn grant(&self, access: Access) -> Result<Vec<OwnedFd>, Refusal> {
        match self {
            SegmentMemory::FileRange { file, .. } => Ok(vec![match access {
                Access::ReadWrite => file.try_clone().map_err(internal)?,
                // A new open file description, read-only: mmap(PROT_WRITE,
                // MAP_SHARED) of it fails.
                Access::ReadOnly => reopen_read_only(file)?,
            }]),
            // Read-only whatever was asked (the name server refuses a
            // read-write get first). The table is the grantee's own open
            // file description, which its hold (flock) is taken on.
            SegmentMemory::Composite { table, pool } => {
                Ok(vec![reopen_read_only(table)?, reopen_read_only(pool)?])
            }
        }
    }

    /// After a restart: the memory of `rec`, taken back from its live owner
    /// by descriptor number with `take` (`pidfd_getfd`), checked to be the
    /// same files (inode) the record names.
    pub fn recover(
        rec: &SegmentRecord,
        take: impl Fn(i32) -> Result<OwnedFd, String>,
    ) -> Result<SegmentMemory, String> {
        let file = take(rec.owner_fd)?;
        let (ino, len) = inode_and_len(&file)?;
        if ino != rec.backing_inode {
            return Err(format!(
                "descriptor {} of pid {} is no longer the segment's memfd",
                rec.owner_fd, rec.owner_pid
            ));
        }
        let Some(c) = rec.composite else {
            if rec.backing_offset + rec.size > len {
                return Err(format!(
                    "the segment's memfd shrank to {len} bytes while leviathan was down"
                ));
            }
            return Ok(SegmentMemory::FileRange {
                file,
                offset: rec.backing_offset,
                len: rec.size,
            });
        };
        let pool = take(c.pool_owner_fd)?;
        if inode_and_len(&pool)?.0 != c.pool_inode {
            return Err(format!(
                "descriptor {} of pid {} is no longer the segment's pool memfd",
                c.pool_owner_fd, rec.owner_pid
            ));
        }
        Ok(SegmentMemory::Composite { table: file, pool })
    }
}

impl SegmentMemory {
    /// The device of the file requesters map (`st_dev`): with the record's
    /// inode it names the file in `/proc/PID/maps` and `/proc/locks`.
    pub fn device(&self) -> Option<u64> {
        let file = match self {
            SegmentMemory::FileRange { file, .. } => file,
            SegmentMemory::Composite { table, .. } => table,
        };
        nix::sys::stat::fstat(file).ok().map(|st| st.st_dev)
    }
}

impl std::fmt::Display for SegmentMemory {
    /// For logs: where the memory lives.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SegmentMemory::FileRange { offset, len, .. } => {
                write!(f, "memfd bytes {offset:#x}+{len:#x}")
            }
            SegmentMemory::Composite { .. } => write!(f, "extent table and pool memfds"),
        }
    }
}

/// A plain segment's range must start on a page of the file (`page`
/// bytes), be non-empty and lie inside the memfd.
fn check_range(offset: u64, size: u64, file_len: u64, page: u64) -> Result<(), Refusal> {
    let bad = |why: String| refuse(ErrorCode::InvalidSpec, why);
    if !offset.is_multiple_of(page) {
        return Err(bad(format!(
            "segment offset {offset:#x} in its memfd is not a multiple of the page size ({page})"
        )));
    }
    match offset.checked_add(size) {
        Some(end) if size > 0 && end <= file_len => Ok(()),
        _ if offset == 0 => Err(bad(format!(
            "segment size {size} is zero or larger than its memfd ({file_len} bytes)"
        ))),
        _ => Err(bad(format!(
            "segment of {size} bytes at offset {offset:#x} is empty or runs past its memfd ({file_len} bytes)"
        ))),
    }
}

fn inode_and_len(fd: &OwnedFd) -> Result<(u64, u64), String> {
    let meta = std::fs::File::from(fd.try_clone().map_err(|e| e.to_string())?)
        .metadata()
        .map_err(|e| e.to_string())?;
    Ok((meta.ino(), meta.len()))
}

/// A new read-only open file description of `fd` (via /proc/self/fd).
fn reopen_read_only(fd: &OwnedFd) -> Result<OwnedFd, Refusal> {
    Ok(
        std::fs::File::open(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .map_err(internal)?
            .into(),
    )
}

/// Check a composite make: the pool a memfd, the table valid (read whole,
/// bounded by `MAX_EXTENTS`), its size equal to `size`, not retired, and
/// the pool long enough for every extent.
fn check_composite(
    size: u64,
    table: &OwnedFd,
    pool: &OwnedFd,
    c: XememComposite,
) -> Result<CompositeInfo, Refusal> {
    let bad = |why: String| refuse(ErrorCode::InvalidSpec, why);
    if !sys::is_shared_memory_file(pool.as_fd()) {
        return Err(bad(format!(
            "the composite segment's pool descriptor {NOT_SHARED}"
        )));
    }
    let table = std::fs::File::from(table.try_clone().map_err(internal)?);
    let len = table.metadata().map_err(internal)?.len();
    let max = xemem_table::HEADER_SIZE as u64
        + xemem_table::MAX_EXTENTS * xemem_table::EXTENT_SIZE as u64;
    if len > max {
        return Err(bad(format!(
            "composite segment table is {len} bytes, more than {max} ({} extents)",
            xemem_table::MAX_EXTENTS
        )));
    }
    let mut bytes = vec![0u8; len as usize];
    table.read_exact_at(&mut bytes, 0).map_err(internal)?;
    let (header, extents) = xemem_table::parse_table(&bytes).map_err(|e| bad(e.to_string()))?;
    if header.size != size {
        return Err(bad(format!(
            "composite segment size {size} differs from its table's size {}",
            header.size
        )));
    }
    if header.retired {
        return Err(bad("composite segment table is marked retired".into()));
    }
    let pool_file = std::fs::File::from(pool.try_clone().map_err(internal)?);
    let pool_meta = pool_file.metadata().map_err(internal)?;
    if pool_meta.len() < header.pool_size {
        return Err(bad(format!(
            "composite segment pool is {} bytes; its table needs {}",
            pool_meta.len(),
            header.pool_size
        )));
    }
    Ok(CompositeInfo {
        pool_owner_fd: c.pool_owner_fd,
        pool_inode: pool_meta.ino(),
        extents: extents.len() as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_must_be_aligned_non_empty_and_inside_the_file() {
        let page = hobbes_sys::page_size() as u64;
        assert!(check_range(0, page, page, page).is_ok());
        assert!(check_range(page, page, 2 * page, page).is_ok());
        let msg = |r: Result<(), Refusal>| r.unwrap_err().message;
        assert!(msg(check_range(0, 0, page, page)).contains("zero or larger"));
        assert!(msg(check_range(0, 2 * page, page, page)).contains("larger than its memfd"));
        assert!(
            msg(check_range(1, page, 2 * page, page)).contains("not a multiple of the page size")
        );
        assert!(msg(check_range(page, page, page, page)).contains("runs past its memfd"));
        assert!(msg(check_range(page, u64::MAX, page, page)).contains("runs past"));
    }
}
