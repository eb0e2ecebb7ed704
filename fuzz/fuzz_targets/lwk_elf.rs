//! An LWK enclave loads whatever executable a user names: no bytes may
//! crash the ELF parser, and every program it accepts must load: each
//! segment's file bytes at `vaddr - lo`, zeroes everywhere else, whatever
//! the buffer held before.

#![no_main]

use libfuzzer_sys::fuzz_target;
use lwk_vmm::elf::{self, Program, MAX_IMAGE_BYTES, PAGE_SIZE, USER_ADDRESS_END};

/// Larger images are checked for their layout only: filling them would
/// make the fuzzer crawl.
const LOAD_LIMIT: u64 = 64 << 20;

fuzz_target!(|file: &[u8]| {
    let Ok(p) = elf::parse(file) else { return };
    check_layout(&p, file);
    if p.image_bytes() > LOAD_LIMIT {
        return;
    }
    let n = p.image_bytes() as usize;
    let mut image = vec![0u8; n];
    p.load(file, &mut image).expect("an accepted program loads");
    let mut dirty = vec![0xa5u8; n];
    p.load(file, &mut dirty).expect("an accepted program loads");
    assert!(image == dirty, "load leaves no old byte behind");

    let mut covered = vec![false; n];
    for s in &p.segments {
        let at = (s.vaddr - p.lo) as usize;
        let (fs, ms, off) = (
            s.file_size as usize,
            s.mem_size as usize,
            s.file_offset as usize,
        );
        assert_eq!(
            &image[at..at + fs],
            &file[off..off + fs],
            "file bytes at vaddr - lo"
        );
        assert!(
            image[at + fs..at + ms].iter().all(|&b| b == 0),
            "bss is zero"
        );
        covered[at..at + ms].iter_mut().for_each(|c| *c = true);
    }
    assert!(
        image.iter().zip(&covered).all(|(&b, &c)| c || b == 0),
        "bytes outside every segment are zero"
    );
});

/// What `parse` promises about every program it accepts.
fn check_layout(p: &Program, file: &[u8]) {
    assert!(
        (p.lo | p.hi) & (PAGE_SIZE - 1) == 0 && p.lo < p.hi,
        "page-aligned extent"
    );
    assert!(p.hi <= USER_ADDRESS_END && p.image_bytes() <= MAX_IMAGE_BYTES);
    assert!(p.max_align.is_power_of_two() && p.max_align >= PAGE_SIZE);
    assert_eq!(p.phentsize, 56);
    assert!(!p.segments.is_empty());
    for s in &p.segments {
        assert!(
            s.vaddr >= p.lo && s.vaddr + s.mem_size <= p.hi,
            "segment inside [lo, hi)"
        );
        assert!(s.file_size <= s.mem_size && s.mem_size > 0);
        assert!(
            s.file_offset + s.file_size <= file.len() as u64,
            "file bytes in the file"
        );
    }
    let mut by_address: Vec<_> = p
        .segments
        .iter()
        .map(|s| (s.vaddr, s.vaddr + s.mem_size))
        .collect();
    by_address.sort_unstable();
    assert!(
        by_address.windows(2).all(|w| w[0].1 <= w[1].0),
        "no overlap"
    );
    let entry_ok = p
        .segments
        .iter()
        .any(|s| s.executable && p.entry >= s.vaddr && p.entry < s.vaddr + s.mem_size);
    assert!(entry_ok, "the entry point is in an executable segment");
    let table = u64::from(p.phnum) * 56;
    let phdrs_ok = p
        .segments
        .iter()
        .any(|s| p.phdr_vaddr >= s.vaddr && p.phdr_vaddr + table <= s.vaddr + s.file_size);
    assert!(phdrs_ok, "the program headers are loaded");
}
