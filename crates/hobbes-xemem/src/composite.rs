//! Composite (versioned, read-only) segments: the segment's own memfd, the
//! *table memfd*, holds a header and an extent table saying where each part
//! of the segment lives in a second memfd, the *pool*. Attaching maps the
//! extents read-only into one contiguous range. XASM publishes its versions
//! so (docs/xemem.md, "Composite segments").
//!
//! The byte format and its validation live in `hobbes_proto::xemem_table`
//! (the name server checks tables too); this module reads and writes tables
//! in memfds.
//!
//! ```no_run
//! use std::os::fd::AsFd;
//! use hobbes_xemem::composite::{write_table, Extent};
//! # fn memfd() -> std::os::fd::OwnedFd { unimplemented!() }
//! let (table, pool) = (memfd(), memfd()); // pool: 2 pages written by the producer
//! let extents = [Extent { seg_offset: 0, pool_offset: 4096, len: 4096 },
//!                Extent { seg_offset: 4096, pool_offset: 0, len: 4096 }];
//! write_table(table.as_fd(), 4096, 8192, &extents)?;
//! let opts = hobbes_xemem::MakeOptions { name: Some("field@1".into()), ..Default::default() };
//! let segid = hobbes_xemem::make_composite(&table, &pool, 8192, &opts)?;
//! # Ok::<(), hobbes_xemem::XememError>(())
//! ```

use std::os::fd::BorrowedFd;

use hobbes_proto::xemem_table::{self, TableError};
pub use hobbes_proto::xemem_table::{
    Extent, TableHeader, EXTENT_SIZE, HEADER_SIZE, MAX_EXTENTS, RETIRED_OFFSET, TABLE_FORMAT,
    TABLE_MAGIC,
};
use nix::errno::Errno;

use crate::error::{Result, XememError};

const OP_WRITE: &str = "xemem_write_table";
const OP_READ: &str = "xemem_read_table";

fn invalid(op: &'static str) -> impl Fn(TableError) -> XememError {
    move |e| XememError::invalid(op, e.to_string())
}

/// Write a table into `fd` (a memfd, normally fresh): the header (not
/// retired) and `extents`, which must be sorted, contiguous from 0 to
/// `size`, aligned to `page_size` and non-empty; the file is truncated to
/// the table's exact length.
pub fn write_table(
    fd: BorrowedFd<'_>,
    page_size: u32,
    size: u64,
    extents: &[Extent],
) -> Result<()> {
    let bytes = xemem_table::encode_table(page_size, size, extents).map_err(invalid(OP_WRITE))?;
    hobbes_sys::ftruncate(fd, bytes.len() as u64)
        .map_err(XememError::sys(OP_WRITE, "ftruncate"))?;
    pwrite_all(fd, &bytes, 0).map_err(XememError::sys(OP_WRITE, "pwrite"))
}

/// Read and validate the table in `fd`: header fields, extent count against
/// the file's length, extents (order, coverage, alignment, bounds). A bad
/// table is `InvalidArgument` naming the problem.
pub fn read_table(fd: BorrowedFd<'_>) -> Result<(TableHeader, Vec<Extent>)> {
    let file_len = nix::sys::stat::fstat(fd)
        .map_err(XememError::sys(OP_READ, "fstat"))?
        .st_size;
    let file_len = u64::try_from(file_len).unwrap_or(0);
    let mut head = [0u8; HEADER_SIZE];
    let n = pread_full(fd, &mut head, 0).map_err(XememError::sys(OP_READ, "pread"))?;
    let header = xemem_table::parse_header(&head[..n]).map_err(invalid(OP_READ))?;
    // The count is bounded by MAX_EXTENTS, so this buffer is too.
    if file_len != header.table_len() {
        return Err(XememError::invalid(
            OP_READ,
            format!(
                "bad composite segment table: the file is {file_len} bytes, {} extents need {}",
                header.extent_count,
                header.table_len()
            ),
        ));
    }
    let mut body = vec![0u8; header.table_len() as usize - HEADER_SIZE];
    let n =
        pread_full(fd, &mut body, HEADER_SIZE as u64).map_err(XememError::sys(OP_READ, "pread"))?;
    let extents = xemem_table::parse_extents(&header, &body[..n]).map_err(invalid(OP_READ))?;
    Ok((header, extents))
}

/// Read only the retired flag (a consumer's check at get).
pub fn is_retired(fd: BorrowedFd<'_>) -> Result<bool> {
    let mut word = [0u8; 4];
    let n = pread_full(fd, &mut word, RETIRED_OFFSET).map_err(XememError::sys(OP_READ, "pread"))?;
    if n != 4 {
        return Err(XememError::invalid(
            OP_READ,
            "bad composite segment table: shorter than its header",
        ));
    }
    Ok(u32::from_le_bytes(word) != 0)
}

/// Mark a table retired (the producer, holding `flock(LOCK_EX)` on it,
/// before it removes the segment): a consumer whose get races the removal
/// sees the flag and fails NotFound. Only one byte changes, 0 to 1, so a
/// concurrent reader sees either value, never a torn one.
pub fn mark_retired(fd: BorrowedFd<'_>) -> Result<()> {
    const OP: &str = "xemem_mark_retired";
    pwrite_all(fd, &1u32.to_le_bytes(), RETIRED_OFFSET).map_err(XememError::sys(OP, "pwrite"))
}

/// Read until `buf` is full or end of file; returns the bytes read.
fn pread_full(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    offset: u64,
) -> std::result::Result<usize, Errno> {
    let mut done = 0;
    while done < buf.len() {
        let at = i64::try_from(offset + done as u64).map_err(|_| Errno::EINVAL)?;
        match nix::sys::uio::pread(fd, &mut buf[done..], at) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

fn pwrite_all(fd: BorrowedFd<'_>, buf: &[u8], offset: u64) -> std::result::Result<(), Errno> {
    let mut done = 0;
    while done < buf.len() {
        let at = i64::try_from(offset + done as u64).map_err(|_| Errno::EINVAL)?;
        match nix::sys::uio::pwrite(fd, &buf[done..], at) {
            Ok(0) => return Err(Errno::EIO),
            Ok(n) => done += n,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::os::fd::AsFd;

    const P: u64 = 4096;

    fn memfd() -> std::os::fd::OwnedFd {
        hobbes_sys::memfd_create(c"xemem-table-test", hobbes_sys::MemfdFlags::empty()).unwrap()
    }

    fn extents() -> Vec<Extent> {
        vec![
            Extent {
                seg_offset: 0,
                pool_offset: 3 * P,
                len: P,
            },
            Extent {
                seg_offset: P,
                pool_offset: 0,
                len: 2 * P,
            },
        ]
    }

    #[test]
    fn write_read_retire() {
        let fd = memfd();
        write_table(fd.as_fd(), 4096, 3 * P, &extents()).unwrap();
        let (h, e) = read_table(fd.as_fd()).unwrap();
        assert_eq!(e, extents());
        assert_eq!(
            (h.size, h.pool_size, h.extent_count, h.retired),
            (3 * P, 4 * P, 2, false)
        );
        assert!(!is_retired(fd.as_fd()).unwrap());
        mark_retired(fd.as_fd()).unwrap();
        assert!(is_retired(fd.as_fd()).unwrap());
        assert!(read_table(fd.as_fd()).unwrap().0.retired);
        // Rewriting a table truncates it to the new length.
        write_table(fd.as_fd(), 4096, P, &extents()[..1]).unwrap();
        let (h, e) = read_table(fd.as_fd()).unwrap();
        assert_eq!((h.extent_count, e.len(), h.retired), (1, 1, false));
    }

    #[test]
    fn bad_tables_are_invalid_argument() {
        let fd = memfd();
        let gap = [
            extents()[0],
            Extent {
                seg_offset: 2 * P,
                ..extents()[1]
            },
        ];
        let e = write_table(fd.as_fd(), 4096, 4 * P, &gap).unwrap_err();
        assert_eq!(e.errno(), libc::EINVAL);
        assert!(e.to_string().contains("expected 0x1000"), "{e}");
        // Empty file, then a file longer than its count says.
        let e = read_table(fd.as_fd()).unwrap_err();
        assert!(e.to_string().contains("shorter"), "{e}");
        write_table(fd.as_fd(), 4096, 3 * P, &extents()).unwrap();
        hobbes_sys::ftruncate(fd.as_fd(), (HEADER_SIZE + 3 * EXTENT_SIZE) as u64).unwrap();
        let e = read_table(fd.as_fd()).unwrap_err();
        assert_eq!(e.errno(), libc::EINVAL);
        assert!(e.to_string().contains("2 extents need 112"), "{e}");
        // A huge count is refused from the header, before any allocation.
        write_table(fd.as_fd(), 4096, 3 * P, &extents()).unwrap();
        pwrite_all(fd.as_fd(), &(1u64 << 40).to_le_bytes(), 16).unwrap();
        let e = read_table(fd.as_fd()).unwrap_err();
        assert!(e.to_string().contains("extent count"), "{e}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]
        #[test]
        fn read_table_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let fd = memfd();
            pwrite_all(fd.as_fd(), &bytes, 0).unwrap();
            let _ = read_table(fd.as_fd());
            let _ = is_retired(fd.as_fd());
        }

        #[test]
        fn read_table_of_a_mutated_table_never_panics(at in 0usize..112, v in any::<u8>()) {
            let fd = memfd();
            write_table(fd.as_fd(), 4096, 3 * P, &extents()).unwrap();
            pwrite_all(fd.as_fd(), &[v], at as u64).unwrap();
            if let Ok((h, e)) = read_table(fd.as_fd()) {
                prop_assert_eq!(e.iter().map(|e| e.len).sum::<u64>(), h.size);
            }
        }
    }
}
