//! The extent table of a composite XEMEM segment: the bytes of its *table
//! memfd*, which say where each part of the segment lives in the pool memfd
//! (docs/xemem.md, "Composite segments"). Pure encoding and validation, no
//! I/O: the name server and `hobbes_xemem::composite` share it.
//!
//! Little endian. A 64-byte header, then `extent_count` extents of 24 bytes:
//!
//! | offset | field | |
//! |---|---|---|
//! | 0 | magic | `b"XEMEMEXT"` |
//! | 8 | format | u32 = 1 |
//! | 12 | page_size | u32, a power of two (4 KiB..1 GiB) |
//! | 16 | extent_count | u64, 1..=[`MAX_EXTENTS`] |
//! | 24 | size | u64, segment bytes |
//! | 32 | pool_size | u64, pool bytes needed: max(pool_offset + len) |
//! | 40 | retired | u32, 0 or 1 (set by the producer only) |
//! | 44 | reserved | 20 zero bytes |
//!
//! Extent: seg_offset u64, pool_offset u64, len u64; sorted by seg_offset,
//! contiguous from 0 to size, page aligned, non-empty. The table comes from
//! another process, maybe a malicious one: every field is checked and a bad
//! table is an error naming the problem, never a panic.

use std::fmt;

/// First 8 bytes of every table.
pub const TABLE_MAGIC: [u8; 8] = *b"XEMEMEXT";
/// The only table format this build reads and writes (header offset 8).
pub const TABLE_FORMAT: u32 = 1;
/// Bytes of the header.
pub const HEADER_SIZE: usize = 64;
/// Bytes of one extent.
pub const EXTENT_SIZE: usize = 24;
/// Most extents a table may have: an attachment maps each extent separately
/// and a process has at most `vm.max_map_count` (65530 by default) mappings.
pub const MAX_EXTENTS: u64 = 1 << 16;
/// Byte offset of the `retired` word in the header.
pub const RETIRED_OFFSET: u64 = 40;
/// Smallest and largest page sizes a table may name.
pub const MIN_PAGE_SIZE: u32 = 4096;
/// Largest page size a table may name: 1 GiB.
pub const MAX_PAGE_SIZE: u32 = 1 << 30;
/// Offsets and sizes must fit `off_t`.
const MAX_OFFSET: u64 = i64::MAX as u64;

/// One contiguous part of the segment: `[seg_offset, seg_offset+len)` of the
/// segment is `[pool_offset, pool_offset+len)` of the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Extent {
    /// Where the part starts in the segment, bytes; each extent starts where
    /// the previous one ended (the first at 0).
    pub seg_offset: u64,
    /// Where the part starts in the pool memfd, bytes; page aligned.
    pub pool_offset: u64,
    /// Bytes in the part: non-zero, a multiple of the page size.
    pub len: u64,
}

/// The decoded header of a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableHeader {
    /// Table format, [`TABLE_FORMAT`].
    pub format: u32,
    /// Page size every offset and length is aligned to, bytes: a power of two
    /// in [`MIN_PAGE_SIZE`]..=[`MAX_PAGE_SIZE`].
    pub page_size: u32,
    /// Extents following the header, 1..=[`MAX_EXTENTS`].
    pub extent_count: u64,
    /// Segment bytes.
    pub size: u64,
    /// Pool bytes the extents need (the highest `pool_offset + len`).
    pub pool_size: u64,
    /// The producer retired this version (header word at [`RETIRED_OFFSET`]).
    pub retired: bool,
}

/// What is wrong with a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableError(pub String);

impl fmt::Display for TableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad composite segment table: {}", self.0)
    }
}

impl std::error::Error for TableError {}

fn bad(reason: impl Into<String>) -> TableError {
    TableError(reason.into())
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

impl TableHeader {
    /// Bytes of the whole table (header and extents).
    pub fn table_len(&self) -> u64 {
        HEADER_SIZE as u64 + self.extent_count * EXTENT_SIZE as u64
    }

    /// The header's [`HEADER_SIZE`] bytes, little endian, reserved bytes zero
    /// (no check: [`parse_header`] checks).
    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..8].copy_from_slice(&TABLE_MAGIC);
        b[8..12].copy_from_slice(&self.format.to_le_bytes());
        b[12..16].copy_from_slice(&self.page_size.to_le_bytes());
        b[16..24].copy_from_slice(&self.extent_count.to_le_bytes());
        b[24..32].copy_from_slice(&self.size.to_le_bytes());
        b[32..40].copy_from_slice(&self.pool_size.to_le_bytes());
        b[40..44].copy_from_slice(&u32::from(self.retired).to_le_bytes());
        b
    }
}

/// Decode and check a header on its own (the extents are checked by
/// [`parse_extents`]). `bytes` must hold at least [`HEADER_SIZE`] bytes.
pub fn parse_header(bytes: &[u8]) -> Result<TableHeader, TableError> {
    if bytes.len() < HEADER_SIZE {
        return Err(bad(format!(
            "{} bytes, shorter than the {HEADER_SIZE}-byte header",
            bytes.len()
        )));
    }
    if bytes[0..8] != TABLE_MAGIC {
        return Err(bad(format!(
            "magic {:02x?} is not \"XEMEMEXT\"",
            &bytes[0..8]
        )));
    }
    let h = TableHeader {
        format: u32_at(bytes, 8),
        page_size: u32_at(bytes, 12),
        extent_count: u64_at(bytes, 16),
        size: u64_at(bytes, 24),
        pool_size: u64_at(bytes, 32),
        retired: false,
    };
    if h.format != TABLE_FORMAT {
        return Err(bad(format!(
            "format {} (only {TABLE_FORMAT} is known)",
            h.format
        )));
    }
    check_page_size(h.page_size)?;
    let retired = u32_at(bytes, 40);
    if retired > 1 {
        return Err(bad(format!("retired word is {retired}, not 0 or 1")));
    }
    if bytes[44..HEADER_SIZE].iter().any(|b| *b != 0) {
        return Err(bad("reserved header bytes 44..64 are not zero"));
    }
    if h.extent_count == 0 || h.extent_count > MAX_EXTENTS {
        return Err(bad(format!(
            "extent count {} is not in 1..={MAX_EXTENTS}",
            h.extent_count
        )));
    }
    let page = u64::from(h.page_size);
    if h.size == 0 || h.size > MAX_OFFSET || !h.size.is_multiple_of(page) {
        return Err(bad(format!(
            "segment size {:#x} is not a non-zero multiple of the page size {page:#x}",
            h.size
        )));
    }
    if h.pool_size == 0 || h.pool_size > MAX_OFFSET || !h.pool_size.is_multiple_of(page) {
        return Err(bad(format!(
            "pool size {:#x} is not a non-zero multiple of the page size {page:#x}",
            h.pool_size
        )));
    }
    Ok(TableHeader {
        retired: retired == 1,
        ..h
    })
}

fn check_page_size(page_size: u32) -> Result<(), TableError> {
    if !page_size.is_power_of_two() || !(MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&page_size) {
        return Err(bad(format!(
            "page size {page_size} is not a power of two in {MIN_PAGE_SIZE}..={MAX_PAGE_SIZE}"
        )));
    }
    Ok(())
}

/// Check extents against a segment of `size` bytes and `page_size` pages:
/// sorted, contiguous from 0 to `size`, aligned, non-empty, within `off_t`.
/// Returns the pool bytes they need.
pub fn check_extents(page_size: u32, size: u64, extents: &[Extent]) -> Result<u64, TableError> {
    check_page_size(page_size)?;
    let page = u64::from(page_size);
    if extents.is_empty() || extents.len() as u64 > MAX_EXTENTS {
        return Err(bad(format!(
            "extent count {} is not in 1..={MAX_EXTENTS}",
            extents.len()
        )));
    }
    let mut cursor = 0u64;
    let mut pool_size = 0u64;
    for (i, e) in extents.iter().enumerate() {
        if e.seg_offset != cursor {
            return Err(bad(format!(
                "extent {i} starts at segment offset {:#x}, expected {cursor:#x} (extents must be sorted and leave no gap or overlap)",
                e.seg_offset
            )));
        }
        if e.len == 0 || !e.len.is_multiple_of(page) || !e.pool_offset.is_multiple_of(page) {
            return Err(bad(format!(
                "extent {i} (pool offset {:#x}, length {:#x}) is empty or not aligned to the page size {page:#x}",
                e.pool_offset, e.len
            )));
        }
        let pool_end = e
            .pool_offset
            .checked_add(e.len)
            .filter(|end| *end <= MAX_OFFSET)
            .ok_or_else(|| {
                bad(format!(
                    "extent {i} pool range {:#x}+{:#x} overflows",
                    e.pool_offset, e.len
                ))
            })?;
        cursor = cursor
            .checked_add(e.len)
            .filter(|end| *end <= size)
            .ok_or_else(|| {
                bad(format!(
                    "extent {i} ({:#x}+{:#x}) runs past the segment size {size:#x}",
                    e.seg_offset, e.len
                ))
            })?;
        pool_size = pool_size.max(pool_end);
    }
    if cursor != size {
        return Err(bad(format!(
            "extents cover {cursor:#x} bytes, the segment size is {size:#x}"
        )));
    }
    Ok(pool_size)
}

/// Decode and check the extents that follow `header`: `bytes` is exactly
/// `extent_count` extents.
pub fn parse_extents(header: &TableHeader, bytes: &[u8]) -> Result<Vec<Extent>, TableError> {
    let want = header.extent_count.saturating_mul(EXTENT_SIZE as u64);
    if bytes.len() as u64 != want {
        return Err(bad(format!(
            "{} bytes of extents, the header's count {} needs {want}",
            bytes.len(),
            header.extent_count
        )));
    }
    let extents: Vec<Extent> = bytes
        .chunks_exact(EXTENT_SIZE)
        .map(|c| Extent {
            seg_offset: u64_at(c, 0),
            pool_offset: u64_at(c, 8),
            len: u64_at(c, 16),
        })
        .collect();
    let pool_size = check_extents(header.page_size, header.size, &extents)?;
    if pool_size != header.pool_size {
        return Err(bad(format!(
            "header pool size {:#x}, the extents need {pool_size:#x}",
            header.pool_size
        )));
    }
    Ok(extents)
}

/// Decode and check a whole table (its file's full contents).
pub fn parse_table(bytes: &[u8]) -> Result<(TableHeader, Vec<Extent>), TableError> {
    let header = parse_header(bytes)?;
    if bytes.len() as u64 != header.table_len() {
        return Err(bad(format!(
            "table is {} bytes, {} extents need {}",
            bytes.len(),
            header.extent_count,
            header.table_len()
        )));
    }
    let extents = parse_extents(&header, &bytes[HEADER_SIZE..])?;
    Ok((header, extents))
}

/// Encode a table (not retired) after checking the extents.
pub fn encode_table(page_size: u32, size: u64, extents: &[Extent]) -> Result<Vec<u8>, TableError> {
    let pool_size = check_extents(page_size, size, extents)?;
    let header = TableHeader {
        format: TABLE_FORMAT,
        page_size,
        extent_count: extents.len() as u64,
        size,
        pool_size,
        retired: false,
    };
    let mut out = Vec::with_capacity(header.table_len() as usize);
    out.extend_from_slice(&header.encode());
    for e in extents {
        out.extend_from_slice(&e.seg_offset.to_le_bytes());
        out.extend_from_slice(&e.pool_offset.to_le_bytes());
        out.extend_from_slice(&e.len.to_le_bytes());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const P: u64 = 4096;

    fn ext(seg: u64, pool: u64, len: u64) -> Extent {
        Extent {
            seg_offset: seg * P,
            pool_offset: pool * P,
            len: len * P,
        }
    }

    fn two() -> Vec<Extent> {
        vec![ext(0, 4, 2), ext(2, 0, 1)]
    }

    #[test]
    fn round_trips() {
        let bytes = encode_table(4096, 3 * P, &two()).unwrap();
        assert_eq!(bytes.len(), HEADER_SIZE + 2 * EXTENT_SIZE);
        let (h, e) = parse_table(&bytes).unwrap();
        assert_eq!(e, two());
        assert_eq!(
            h,
            TableHeader {
                format: 1,
                page_size: 4096,
                extent_count: 2,
                size: 3 * P,
                pool_size: 6 * P,
                retired: false
            }
        );
        assert_eq!(&bytes[0..8], b"XEMEMEXT");
        let mut retired = bytes.clone();
        retired[RETIRED_OFFSET as usize] = 1;
        assert!(parse_table(&retired).unwrap().0.retired);
    }

    fn err(bytes: &[u8]) -> String {
        parse_table(bytes).unwrap_err().to_string()
    }

    #[test]
    fn rejects_bad_headers() {
        let good = encode_table(4096, 3 * P, &two()).unwrap();
        let mut b = good.clone();
        b[0] = b'Y';
        assert!(err(&b).contains("magic"));
        let mut b = good.clone();
        b[8] = 2;
        assert!(err(&b).contains("format 2"));
        let mut b = good.clone();
        b[12..16].copy_from_slice(&4097u32.to_le_bytes());
        assert!(err(&b).contains("page size 4097"));
        let mut b = good.clone();
        b[40] = 2;
        assert!(err(&b).contains("retired"));
        let mut b = good.clone();
        b[63] = 1;
        assert!(err(&b).contains("reserved"));
        let mut b = good.clone();
        b[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(err(&b).contains("extent count"));
        let mut b = good.clone();
        b[16..24].copy_from_slice(&0u64.to_le_bytes());
        assert!(err(&b).contains("extent count"));
        let mut b = good.clone();
        b[16..24].copy_from_slice(&3u64.to_le_bytes());
        assert!(err(&b).contains("3 extents need"));
        let mut b = good.clone();
        b[24..32].copy_from_slice(&(4 * P).to_le_bytes());
        assert!(err(&b).contains("cover"));
        let mut b = good.clone();
        b[32..40].copy_from_slice(&(7 * P).to_le_bytes());
        assert!(err(&b).contains("pool size"));
        assert!(err(&good[..10]).contains("shorter"));
        assert!(err(&good[..good.len() - 1]).contains("need"));
    }

    #[test]
    fn rejects_bad_extents() {
        let gap = vec![ext(0, 0, 1), ext(2, 1, 1)];
        assert!(encode_table(4096, 3 * P, &gap)
            .unwrap_err()
            .0
            .contains("expected 0x1000"));
        let overlap = vec![ext(0, 0, 2), ext(1, 1, 2)];
        assert!(encode_table(4096, 3 * P, &overlap).is_err());
        let empty = vec![ext(0, 0, 0), ext(0, 0, 3)];
        assert!(encode_table(4096, 3 * P, &empty)
            .unwrap_err()
            .0
            .contains("empty"));
        let unaligned = vec![Extent {
            seg_offset: 0,
            pool_offset: 1,
            len: P,
        }];
        assert!(encode_table(4096, P, &unaligned).is_err());
        let past = vec![ext(0, 0, 4)];
        assert!(encode_table(4096, 3 * P, &past)
            .unwrap_err()
            .0
            .contains("past the segment size"));
        let overflow = vec![Extent {
            seg_offset: 0,
            pool_offset: u64::MAX - P + 1,
            len: P,
        }];
        assert!(encode_table(4096, P, &overflow)
            .unwrap_err()
            .0
            .contains("overflows"));
        assert!(encode_table(4096, P, &[]).is_err());
        // A hand-made table with an extent beyond the header's pool size.
        let mut b = encode_table(4096, 3 * P, &two()).unwrap();
        b[32..40].copy_from_slice(&(2 * P).to_le_bytes());
        assert!(err(&b).contains("extents need 0x6000"));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_table(&bytes);
            let _ = parse_header(&bytes);
        }

        #[test]
        fn mutated_tables_never_panic(
            lens in proptest::collection::vec(1u64..8, 1..12),
            flips in proptest::collection::vec((0usize..400, any::<u8>()), 0..6),
        ) {
            let mut seg = 0;
            let extents: Vec<Extent> = lens.iter().rev().scan(0u64, |pool, len| {
                let e = Extent { seg_offset: 0, pool_offset: *pool * P, len: len * P };
                *pool += len + 1;
                Some(e)
            }).map(|mut e| { e.seg_offset = seg; seg += e.len; e }).collect();
            let mut bytes = encode_table(4096, seg, &extents).unwrap();
            prop_assert_eq!(parse_table(&bytes).unwrap().1, extents);
            for (at, v) in flips {
                let n = bytes.len();
                bytes[at % n] = v;
            }
            if let Ok((h, e)) = parse_table(&bytes) {
                // Whatever parses is consistent.
                prop_assert_eq!(e.len() as u64, h.extent_count);
                prop_assert_eq!(e.iter().map(|e| e.len).sum::<u64>(), h.size);
            }
        }
    }
}
