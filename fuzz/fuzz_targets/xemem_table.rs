//! An XASM version's extent table is written by the producer and read by
//! every consumer and the name server: no bytes may crash the parser, and
//! every table it accepts must cover the segment exactly and re-encode to
//! the same table.

#![no_main]

use hobbes_proto::xemem_table::{encode_table, parse_table};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok((header, extents)) = parse_table(bytes) {
        let mut next = 0;
        for e in &extents {
            assert_eq!(e.seg_offset, next, "extents are contiguous");
            next += e.len;
        }
        assert_eq!(next, header.size, "extents cover the segment");
        let again = encode_table(header.page_size, header.size, &extents).expect("re-encodes");
        let (h2, e2) = parse_table(&again).expect("its own encoding parses");
        assert_eq!((h2.size, e2), (header.size, extents));
    }
});
